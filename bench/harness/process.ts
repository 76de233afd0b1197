// Child processes for the benchmark and the soak: started, watched and always stopped (at the end,
// on error, on SIGINT/SIGTERM and when the overall time limit is reached), plus small shared helpers.
// Call `installCleanup` once, then `runMain(main)`.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const OUT_DIR = join(ROOT, '.bench');
export const RUN_ID = randomBytes(4).toString('hex');

let tag = 'bench';
/** The prefix of log lines and of the temporary directory ('bench' unless changed). */
export function setLogTag(t: string): void {
  tag = t;
}
export const logTag = (): string => tag;
export const log = (msg: string): void => {
  process.stderr.write(`${tag}: ${msg}\n`);
};
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function onPath(cmd: string): boolean {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

/** A positive number from the environment ("10", or "10s" for seconds); exits on anything else. */
export function positive(name: string, def: number, what = 'number of seconds'): number {
  const raw = process.env[name];
  if (!raw) return def;
  const n = Number(raw.replace(/s$/, ''));
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`${name} must be a positive ${what} (got '${raw}')\n`);
    process.exit(1);
  }
  return n;
}

export const seconds = (name: string, def: number): number => positive(name, def);

// ---------------------------------------------------------------------------------------------
// Child processes and cleanup

export interface Child {
  name: string;
  proc: ChildProcess;
  output: string[];
  exitCode: number | null | undefined;
  exited: Promise<void>;
  lineWaiters: ((line: string) => void)[];
}

const children: Child[] = [];
const cleanups: (() => Promise<void>)[] = [];
let tmp: string | null = null;
let interrupted = false;

/** A temporary directory, removed at cleanup. */
export function tempDir(): string {
  tmp ??= mkdtempSync(join(tmpdir(), `tollgate-${tag}-`));
  return tmp;
}

/** Work to do at cleanup before the children are stopped (e.g. removing Redis keys). */
export function onCleanup(fn: () => Promise<void>): void {
  cleanups.push(fn);
}

export function launch(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  stdinPipe = false,
): Child {
  const proc = spawn(cmd, args, { cwd: ROOT, env, stdio: [stdinPipe ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const child: Child = {
    name,
    proc,
    output: [],
    exitCode: undefined,
    exited: Promise.resolve(),
    lineWaiters: [],
  };
  child.exited = new Promise((done) => {
    proc.on('exit', (code, signal) => {
      child.exitCode = code ?? (signal ? -1 : null);
      done();
    });
    proc.on('error', (err) => {
      child.output.push(`spawn error: ${err.message}`);
      child.exitCode = -1;
      done();
    });
  });
  let partial = '';
  const push = (line: string): void => {
    child.output.push(line);
    if (child.output.length > 200) child.output.shift();
  };
  proc.stdout?.on('data', (d: Buffer) => {
    partial += d.toString('utf8');
    let nl = partial.indexOf('\n');
    while (nl >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      push(line);
      for (const w of child.lineWaiters) w(line);
      nl = partial.indexOf('\n');
    }
  });
  proc.stderr?.on('data', (d: Buffer) => {
    for (const line of d.toString('utf8').split('\n')) if (line) push(line);
  });
  children.push(child);
  return child;
}

export function tail(child: Child, n = 40): string {
  const lines = child.output.slice(-n);
  return lines.length ? lines.map((l) => `    | ${l}`).join('\n') : '    | (no output)';
}

/** Waits for a stdout line matching `match`; fails when the child exits or the time is up. */
export function waitForLine(child: Child, match: (line: string) => boolean, ms: number): Promise<string> {
  return new Promise((resolveLine, reject) => {
    const existing = child.output.find(match);
    if (existing !== undefined) return resolveLine(existing);
    const timer = setTimeout(() => {
      reject(new Error(`${child.name} did not start within ${ms / 1000}s\n${tail(child)}`));
    }, ms);
    child.lineWaiters.push((line) => {
      if (match(line)) {
        clearTimeout(timer);
        resolveLine(line);
      }
    });
    void child.exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`${child.name} exited (code ${child.exitCode}) before it was ready\n${tail(child)}`));
    });
  });
}

export async function stopChild(child: Child): Promise<void> {
  if (child.exitCode !== undefined) return;
  child.proc.kill('SIGTERM');
  const killed = await Promise.race([
    child.exited.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 4000)),
  ]);
  if (killed && child.exitCode === undefined) {
    child.proc.kill('SIGKILL');
    await Promise.race([child.exited, new Promise((r) => setTimeout(r, 1000))]);
  }
}

let cleaning: Promise<void> | null = null;
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const fn of cleanups) await fn();
    // Stop in reverse start order: load sources before their upstreams.
    await Promise.all(children.slice().reverse().map(stopChild));
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  })();
  return cleaning;
}

/** Stops everything on exit, SIGINT/SIGTERM, and after `limitSeconds` (named by `limitName`). */
export function installCleanup(limitSeconds: number, limitName: string): void {
  process.on('exit', () => {
    for (const c of children) if (c.exitCode === undefined) c.proc.kill('SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      interrupted = true;
      log(`${sig}: stopping`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  const deadline = setTimeout(() => {
    log(`took longer than ${limitName}=${limitSeconds}s: stopping`);
    void cleanup().finally(() => process.exit(1));
  }, limitSeconds * 1000);
  deadline.unref();
}

/** Runs `main`, cleans up whatever happens and exits with its code (130 when interrupted). */
export async function runMain(main: () => Promise<number>): Promise<never> {
  let code = 1;
  try {
    code = await main();
  } catch (err) {
    if (!interrupted) process.stderr.write(`${tag} failed: ${(err as Error).message}\n`);
    code = 1;
  } finally {
    await cleanup();
  }
  process.exit(interrupted ? 130 : code);
}

// ---------------------------------------------------------------------------------------------
// Helpers

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Output

/** Prints a plain-text table on stdout: a header, a rule and one line per row. */
export function printTable(head: string[], body: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join(' | ')
      .trimEnd();
  process.stdout.write(`\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('-|-')}\n`);
  for (const row of body) process.stdout.write(`${line(row)}\n`);
}
