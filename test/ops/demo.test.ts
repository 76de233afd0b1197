import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// `npm run demo` (scripts/demo.ts): starts, prints working snippets, stops cleanly on Ctrl-C.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const TSX = join(ROOT, 'node_modules/tsx/dist/cli.mjs');

// Variables that would steer the demo (it reads PORT, HOST and LOG_LEVEL only, but a stray
// provider or Redis variable must not matter either).
const STRIPPED = [
  'GATEWAY_CONFIG',
  'HOST',
  'REDIS_URL',
  'ADMIN_API_KEY',
  'LOG_LEVEL',
  'OPENAI_API_KEY',
  'NODE_OPTIONS',
];

interface Curl {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** The curl commands as printed: `curl <flags> URL \ -H '...' \ -H '...' \ -d '...'`. */
function parseCurls(text: string): Curl[] {
  const out: Curl[] = [];
  for (const m of text.matchAll(/^curl -\w+ (\S+) \\\n((?:\s+-H '[^']*' \\\n)+)\s+-d '([^']*)'$/gm)) {
    const headers: Record<string, string> = {};
    for (const h of m[2]!.matchAll(/-H '([^:]+): ([^']*)'/g)) headers[h[1]!.toLowerCase()] = h[2]!;
    out.push({ url: m[1]!, headers, body: m[3]! });
  }
  return out;
}

describe('npm run demo', () => {
  let child: ChildProcess | null = null;
  afterAll(() => {
    // Only if the test failed half-way: the demo's whole process group, by its id.
    if (child?.pid && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }
  });

  it('prints a working curl (JSON and stream), SDK snippet and admin key, and stops on Ctrl-C with exit 0', async () => {
    const env: Record<string, string | undefined> = { ...process.env, PORT: '0' };
    for (const k of STRIPPED) delete env[k];
    // tsx as `npm run demo` runs it, in its own process group so that SIGINT reaches it the way
    // Ctrl-C in a terminal does (npm/npx themselves report a signal death, not the demo's code).
    child = spawn(process.execPath, [TSX, 'scripts/demo.ts'], {
      cwd: ROOT,
      env: env as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child!.once('exit', (code, signal) => r({ code, signal })),
    );

    const deadline = Date.now() + 20_000;
    while (!stdout.includes('Press Ctrl-C to stop')) {
      if (child.exitCode !== null)
        throw new Error(`demo exited early (${child.exitCode}):\n${stdout}\n${stderr}`);
      if (Date.now() > deadline) throw new Error(`demo not ready in 20 s:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }

    const curls = parseCurls(stdout);
    expect(curls).toHaveLength(2);
    const [json, stream] = curls as [Curl, Curl];
    const clientKey = /^\s+client key\s+(sk-tg-\S+)/m.exec(stdout)?.[1];
    const adminKey = /^\s+admin key\s+(\S+)/m.exec(stdout)?.[1];
    expect(clientKey).toBeTruthy();
    expect(adminKey).toBeTruthy();
    expect(json.headers['authorization']).toBe(`Bearer ${clientKey}`);

    // The JSON curl, as fetch.
    const res = await fetch(json.url, { method: 'POST', headers: json.headers, body: json.body });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body.object).toBe('chat.completion');
    expect(body.choices[0].message.content).toBe('echo: Hello, tollgate!');
    expect(body.usage.total_tokens).toBeGreaterThan(0);

    // The streamed curl.
    expect(JSON.parse(stream.body).stream).toBe(true);
    const sres = await fetch(stream.url, { method: 'POST', headers: stream.headers, body: stream.body });
    expect(sres.status).toBe(200);
    expect(sres.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const sse = await sres.text();
    expect(sse).toContain('"chat.completion.chunk"');
    expect(sse.trimEnd().endsWith('data: [DONE]')).toBe(true);

    // The SDK snippet, verbatim, with the repository's `openai` package.
    const snippet = /^import OpenAI from 'openai';\n[\s\S]*?\n\n/m.exec(stdout)?.[0];
    expect(snippet).toBeTruthy();
    const sdk = spawnSync(process.execPath, ['--input-type=module', '-e', snippet!], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(sdk.status, sdk.stderr).toBe(0);
    expect(sdk.stdout).toContain('echo: Hello, tollgate!');

    // The admin key works on the admin API.
    const base = new URL(json.url).origin;
    const keys = await fetch(`${base}/admin/keys`, { headers: { authorization: `Bearer ${adminKey}` } });
    expect(keys.status).toBe(200);
    expect(((await keys.json()) as any).data.map((k: any) => k.name)).toEqual(['demo-key']);

    // Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
    process.kill(-child.pid!, 'SIGINT');
    const timer = setTimeout(() => process.kill(-child!.pid!, 'SIGKILL'), 15_000);
    const { code, signal } = await exited;
    clearTimeout(timer);
    expect({ code, signal }, stderr).toEqual({ code: 0, signal: null });
    // And it is really gone.
    await expect(fetch(`${base}/healthz`)).rejects.toThrow();
  });
});
