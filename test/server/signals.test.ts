import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../support/process.js';

// A child that reports what onStopSignals decided, then waits (a drain that takes 3 s).
const SCRIPT = `
const { onStopSignals } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'src/server/signals.ts')).href)});
onStopSignals((s) => console.log('stop ' + s), (s) => { console.log('force ' + s); process.exit(1); });
console.log('ready');
setTimeout(() => process.exit(0), 3000);
`;

async function run(gapsMs: number[]): Promise<{ lines: string[]; code: number | null }> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', SCRIPT], {
    cwd: ROOT,
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 20));
  for (const gap of gapsMs) {
    child.kill('SIGINT');
    await new Promise((r) => setTimeout(r, gap));
  }
  const code = await exited;
  return { lines: out.trim().split('\n').slice(1), code };
}

describe('stop signals', () => {
  it('take a repeat within a second for the same Ctrl-C (terminal + npm or tsx relaying it)', async () => {
    expect(await run([100, 0])).toEqual({ lines: ['stop SIGINT'], code: 0 });
  });

  it('force the exit on a second signal later on', async () => {
    expect(await run([1300, 0])).toEqual({ lines: ['stop SIGINT', 'force SIGINT'], code: 1 });
  });
});
