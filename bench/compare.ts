// `npm run bench:compare -- <git ref>`: this checkout's gateway against the gateway built from
// another commit, both loaded at the same time. On a shared machine single runs move by 10-15 %
// with whatever else the host runs; two builds measured side by side see the same conditions, so
// a difference of a few percent shows. Each side has its own mock upstream and its own Redis, and
// its own wrk at CONNS connections (cache misses, every feature on, as `npm run bench`); the
// rounds start the two loads in alternating order.
//
// Environment:
//   COMPARE_ROUNDS   rounds (default 6)
//   BENCH_DURATION   seconds per round (default 10)
//   BENCH_WARMUP     seconds of warm-up, both sides at once (default 3)
//   COMPARE_CONNS    connections per side (default 16)
//   BENCH_TIMEOUT    overall limit in seconds (default 900)
//
// The other commit is checked out in a temporary git worktree (removed at the end) and built with
// this checkout's node_modules. Results: a table on stdout and `.bench/compare.json`.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  buildDist,
  buildHelpers,
  CLK_TCK,
  cpuTicks,
  errorsOf,
  installCleanup,
  issueKey,
  log,
  median,
  OUT_DIR,
  onCleanup,
  positive,
  printTable,
  ROOT,
  RUN_ID,
  requireWrk,
  runMain,
  sanityCheck,
  seconds,
  setLogTag,
  sleep,
  startGateway,
  startHelper,
  startRedis,
  tempDir,
  type WrkResult,
  wrk,
} from './harness.js';

setLogTag('compare');
const ref = process.argv[2];
if (!ref || ref.startsWith('-')) {
  process.stderr.write(
    'usage: npm run bench:compare -- <git ref>   (e.g. main~3; compares this checkout with that commit)\n',
  );
  process.exit(2);
}
requireWrk();

const ROUNDS = Math.max(1, Math.round(positive('COMPARE_ROUNDS', 6, 'number of rounds')));
const DURATION = Math.max(1, Math.round(seconds('BENCH_DURATION', 10)));
const WARMUP = Math.max(1, Math.round(seconds('BENCH_WARMUP', 3)));
const CONNS = Math.max(1, Math.round(positive('COMPARE_CONNS', 16, 'number of connections')));
installCleanup(seconds('BENCH_TIMEOUT', 900), 'BENCH_TIMEOUT');

/** A worktree of `ref`, built; removed at cleanup. */
function checkout(commit: string): string {
  const dir = join(tempDir(), 'other');
  execFileSync('git', ['worktree', 'add', '--detach', dir, commit], { cwd: ROOT, stdio: 'pipe' });
  onCleanup(async () => {
    spawnSync('git', ['worktree', 'remove', '--force', dir], { cwd: ROOT, stdio: 'ignore' });
  });
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  buildDist(dir);
  return dir;
}

interface Side {
  name: string;
  base: string;
  auth: string;
  pid: number;
  redisPid: number | undefined;
}

interface Round {
  first: string;
  sides: { name: string; rps: number; gatewayUs: number; redisUs: number | null; errors: number }[];
}

async function main(): Promise<number> {
  mkdirSync(OUT_DIR, { recursive: true });
  const commit = execFileSync('git', ['rev-parse', '--short', ref!], { cwd: ROOT, encoding: 'utf8' }).trim();
  log(`building this checkout and ${ref} (${commit})`);
  buildDist(ROOT);
  const other = checkout(commit);
  const { mockMain } = buildHelpers();

  const sides: Side[] = [];
  for (const [i, [name, root]] of [
    ['this checkout', ROOT],
    [`${ref} (${commit})`, other],
  ].entries()) {
    const mock = await startHelper(`mock ${i}`, mockMain, ['--port', '0']);
    const prefix = `compare:${RUN_ID}:${i}:`;
    const redis = await startRedis(prefix);
    const gw = await startGateway({
      mockUrl: mock.url,
      redisUrl: redis.url,
      prefix,
      name: `gateway ${i}`,
      main: join(root!, 'dist', 'main.js'),
    });
    const auth = `Bearer ${await issueKey(gw)}`;
    await sanityCheck(name!, gw.base, auth);
    sides.push({ name: name!, base: gw.base, auth, pid: gw.pid, redisPid: redis.pid });
  }

  const load = (s: Side, label: string, secs: number): Promise<WrkResult> =>
    wrk({
      label,
      base: s.base,
      auth: s.auth,
      threads: 1,
      connections: CONNS,
      seconds: secs,
      mode: 'miss',
      pid: s.pid,
    });
  await Promise.all(sides.map((s) => load(s, `warm-up ${s.name}`, WARMUP)));

  const rounds: Round[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? sides : [...sides].reverse();
    const redisBefore = order.map((s) => (s.redisPid ? cpuTicks(s.redisPid) : 0));
    const runs = await Promise.all(
      order.map(async (s, i) => {
        if (i > 0) await sleep(50);
        return load(s, `round ${r + 1}/${ROUNDS} ${s.name}`, DURATION);
      }),
    );
    rounds.push({
      first: order[0]!.name,
      sides: sides.map((s) => {
        const i = order.indexOf(s);
        const run = runs[i]!;
        const redisUs = s.redisPid
          ? (((cpuTicks(s.redisPid) - redisBefore[i]!) / CLK_TCK) * 1e6) / run.requests
          : null;
        return {
          name: s.name,
          rps: run.rps,
          gatewayUs: (run.cpuMsPerRequest ?? Number.NaN) * 1000,
          redisUs,
          errors: errorsOf(run),
        };
      }),
    });
  }

  const body = rounds.map((r, i) => {
    const [a, b] = r.sides as [Round['sides'][0], Round['sides'][0]];
    return [
      String(i + 1),
      r.first === a.name ? 'this' : 'other',
      `${a.rps.toFixed(0)} / ${b.rps.toFixed(0)}`,
      `${a.gatewayUs.toFixed(0)} / ${b.gatewayUs.toFixed(0)}`,
      a.redisUs !== null && b.redisUs !== null ? `${a.redisUs.toFixed(0)} / ${b.redisUs.toFixed(0)}` : '—',
      `${(a.rps / b.rps).toFixed(3)}x`,
      `${(a.gatewayUs / b.gatewayUs).toFixed(3)}x`,
    ];
  });
  const ratio = (f: (s: Round['sides'][0]) => number | null) =>
    median(rounds.map((r) => (f(r.sides[0]!) ?? Number.NaN) / (f(r.sides[1]!) ?? Number.NaN)));
  const summary = {
    rps: ratio((s) => s.rps),
    gatewayCpu: ratio((s) => s.gatewayUs),
    redisCpu: ratio((s) => s.redisUs),
  };
  body.push(['median', '', '', '', '', `${summary.rps.toFixed(3)}x`, `${summary.gatewayCpu.toFixed(3)}x`]);
  printTable(
    [
      'round',
      'started first',
      'req/s this / other',
      'gateway µs/req',
      'Redis µs/req',
      'req/s ratio',
      'CPU ratio',
    ],
    body,
  );
  process.stdout.write(
    `  this checkout against ${ref} (${commit}): ${CONNS} connections each, ${DURATION}s rounds, both loaded at once\n` +
      `  median ratios (this / other): throughput ${summary.rps.toFixed(3)}x, gateway CPU per request ${summary.gatewayCpu.toFixed(3)}x, Redis CPU per request ${summary.redisCpu.toFixed(3)}x\n`,
  );
  const failed = rounds.flatMap((r) => r.sides).reduce((n, s) => n + s.errors, 0);
  if (failed > 0) log(`${failed} requests failed (wrk errors): check the gateways' output`);
  writeFileSync(
    join(OUT_DIR, 'compare.json'),
    `${JSON.stringify({ ref, commit, rounds, summary }, null, 2)}\n`,
  );
  return failed > 0 ? 1 : 0;
}

void runMain(main);
