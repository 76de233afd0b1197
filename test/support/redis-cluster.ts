import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, waitForPort } from './global-setup.js';

const run = promisify(execFile);

/** A private Redis Cluster of masters on loopback, started from `redis-server` in cluster mode. */
export interface OwnCluster {
  /** `redis://127.0.0.1:PORT` of every master, for `redis.cluster.nodes`. */
  nodes: string[];
  ports: number[];
  /** Kills every node and removes its files. Safe to call twice. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** Fails with a one-line hint when redis-server or redis-cli is missing. */
function requireTools(): void {
  for (const tool of ['redis-server', 'redis-cli']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      throw new Error(
        `the Redis Cluster tests need ${tool} on PATH (apt-get install redis-server, or brew install redis)`,
      );
    }
  }
}

/**
 * Starts `masters` redis-server processes with `--cluster-enabled yes` on free ports, joins them
 * with `redis-cli --cluster create … --cluster-replicas 0`, and waits until every node reports
 * `cluster_state:ok` with all 16384 slots assigned.
 */
export async function startRedisCluster(masters = 3): Promise<OwnCluster> {
  requireTools();
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-cluster-'));
  const ports: number[] = [];
  // The cluster bus needs a port too (by default port + 10000, which may not exist): pick both.
  const used = new Set<number>();
  const pick = async (): Promise<number> => {
    for (;;) {
      const p = await freePort();
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
  };
  const procs: ChildProcess[] = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(
      procs.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (p.exitCode !== null || p.signalCode !== null) return resolve();
            p.once('exit', () => resolve());
            p.kill('SIGKILL');
          }),
      ),
    );
    for (const p of procs) live.delete(p);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters; i++) {
      const port = await pick();
      const bus = await pick();
      ports.push(port);
      const p = spawn(
        'redis-server',
        [
          '--port',
          String(port),
          '--cluster-port',
          String(bus),
          '--bind',
          '127.0.0.1',
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout',
          '5000',
          '--save',
          '',
          '--appendonly',
          'no',
          '--dir',
          dir,
        ],
        { stdio: 'ignore' },
      );
      procs.push(p);
      live.add(p);
    }
    await Promise.all(ports.map((p) => waitForPort(p)));
    await run(
      'redis-cli',
      [
        '--cluster',
        'create',
        ...ports.map((p) => `127.0.0.1:${p}`),
        '--cluster-replicas',
        '0',
        '--cluster-yes',
      ],
      { timeout: 20_000 },
    );
    const deadline = Date.now() + 20_000;
    for (;;) {
      const infos = await Promise.all(
        ports.map((p) =>
          run('redis-cli', ['-p', String(p), 'cluster', 'info'], { timeout: 5000 }).then(
            (r) => r.stdout,
            () => '',
          ),
        ),
      );
      const ok = infos.every(
        (i) =>
          /cluster_state:ok/.test(i) &&
          /cluster_slots_assigned:16384/.test(i) &&
          new RegExp(`cluster_known_nodes:${masters}\\b`).test(i),
      );
      if (ok) break;
      if (Date.now() > deadline) throw new Error(`Redis Cluster did not become ready:\n${infos.join('\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes: ports.map((p) => `redis://127.0.0.1:${p}`), ports, stop };
}
