import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

/** The repository root: the child runs there so `--import tsx` resolves. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

// Variables that would steer the child away from the config under test.
const STRIPPED = [
  'GATEWAY_CONFIG',
  'PORT',
  'HOST',
  'REDIS_URL',
  'ADMIN_API_KEY',
  'LOG_LEVEL',
  'OPENAI_API_KEY',
  'OPENAI_BASE_URL',
  'AZURE_OPENAI_ENDPOINT',
  'AZURE_OPENAI_API_KEY',
  'AZURE_OPENAI_DEPLOYMENT',
  'OPENAI_API_VERSION',
  'NODE_OPTIONS',
];

export interface ProcessOptions {
  /** Extra environment (wins over everything else). */
  env?: Record<string, string | undefined>;
  /** Admin key handed over as ADMIN_API_KEY; default a random one. Empty string: none. */
  adminKey?: string;
  /** Wait for GET /readyz 200 before resolving (default true). */
  waitReady?: boolean;
  /** How long to wait for readiness (default 15 s). */
  readyTimeoutMs?: number;
  /** Node flags before the script (e.g. V8 GC tracing). */
  nodeArgs?: string[];
}

export interface GatewayProcess {
  /** http://127.0.0.1:PORT once listening ('' when not waited for). */
  url: string;
  adminKey: string;
  child: ChildProcess;
  /** Everything written so far. */
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends a signal (SIGTERM by default). */
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, then SIGKILL after `ms`; resolves on exit. Safe to call twice. */
  terminate(ms?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** JSON log lines from stdout, parsed. */
  logLines(): Record<string, unknown>[];
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Writes a config (object → YAML, or YAML text) to a temp file; returns its path and a cleanup. */
export function writeConfig(config: Record<string, unknown> | string): { path: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-test-'));
  const path = join(dir, 'gateway.yaml');
  writeFileSync(path, typeof config === 'string' ? config : stringify(config));
  return { path, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Runs `node --import tsx src/main.ts` with the given config in GATEWAY_CONFIG. The config
 * should use port 0: the URL is read from the "tollgate listening" log line.
 */
export async function startGatewayProcess(
  config: Record<string, unknown> | string,
  opts: ProcessOptions = {},
): Promise<GatewayProcess> {
  const adminKey = opts.adminKey ?? `admin-${randomBytes(12).toString('hex')}`;
  const file = writeConfig(config);
  const env: Record<string, string | undefined> = { ...process.env };
  for (const k of STRIPPED) delete env[k];
  Object.assign(env, { GATEWAY_CONFIG: file.path, ADMIN_API_KEY: adminKey || undefined }, opts.env);
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), '--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: env as NodeJS.ProcessEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    stderr += s;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => {
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
      live.delete(child);
      file.cleanup();
      done({ code, signal });
    });
  });
  let exitedYet = false;
  void exited.then(() => {
    exitedYet = true;
  });

  const proc: GatewayProcess = {
    url: '',
    adminKey,
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    exited,
    kill(signal = 'SIGTERM') {
      if (!exitedYet) child.kill(signal);
    },
    async terminate(ms = 5000) {
      if (!exitedYet) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), ms);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
    logLines() {
      const out: Record<string, unknown>[] = [];
      for (const line of stdout.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          out.push(JSON.parse(line) as Record<string, unknown>);
        } catch {}
      }
      return out;
    },
  };
  if (opts.waitReady === false) return proc;

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
  while (Date.now() < deadline) {
    if (exitedYet) {
      throw new Error(`gateway exited before it was ready:\n${stdout}\n${stderr}`);
    }
    if (!proc.url) {
      const listening = proc.logLines().find((l) => l['msg'] === 'tollgate listening');
      if (typeof listening?.['url'] === 'string') proc.url = listening['url'];
    }
    if (proc.url) {
      const ok = await fetch(`${proc.url}/readyz`).then(
        (r) => r.status === 200,
        () => false,
      );
      if (ok) return proc;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await proc.terminate(1000);
  throw new Error(`gateway not ready in time:\n${stdout}\n${stderr}`);
}

/** Runs the gateway and waits for it to exit on its own (e.g. an invalid config). */
export async function runGatewayToExit(
  config: Record<string, unknown> | string,
  opts: Omit<ProcessOptions, 'waitReady'> & { timeoutMs?: number } = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const proc = await startGatewayProcess(config, { ...opts, waitReady: false });
  const timer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 15_000);
  const r = await proc.exited;
  clearTimeout(timer);
  return { ...r, stdout: proc.stdout, stderr: proc.stderr };
}
