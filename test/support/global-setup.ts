import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { connect, createServer } from 'node:net';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

let redis: ChildProcess | undefined;

/**
 * Tests need a real Redis: TEST_REDIS_URL when set (never REDIS_URL, which may be production),
 * else a throwaway redis-server on a free port, else a one-line explanation.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let url = process.env['TEST_REDIS_URL'];
  if (!url) {
    try {
      execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    } catch {
      throw new Error(
        'tests need Redis: set TEST_REDIS_URL=redis://host:port, or put redis-server on PATH (apt-get install redis-server)',
      );
    }
    const port = await freePort();
    redis = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      {
        stdio: 'ignore',
      },
    );
    url = `redis://127.0.0.1:${port}`;
    await waitForPort(port);
  }
  project.provide('redisUrl', url);
  return async () => {
    redis?.kill('SIGTERM');
  };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

/** Resolves once something listens on `port` (or, with `up` false, once nothing does); 10 s at most. */
export async function waitForPort(port: number, up = true): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (open === up) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`port ${port} did not come ${up ? 'up' : 'down'} within 10 s (redis-server)`);
}
