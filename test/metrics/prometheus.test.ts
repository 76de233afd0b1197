import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { MOCK_KEY, model, startTestGateway, type TestGateway } from '../support/gateway.js';
import { freePort } from '../support/global-setup.js';
import { parseSamples } from './prom-text.js';

// The shipped Prometheus config, alerts and Grafana dashboard against the real thing: promtool
// checks them, a real scrape passes `promtool check metrics`, and a real Prometheus scraping a
// gateway under traffic answers every dashboard query and every alert query with data.
//
// Needs `prometheus` and `promtool` on PATH (Debian/Ubuntu: apt-get install -y prometheus).
// Without them these tests fail, they never skip.

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const PROM_CONFIG = join(ROOT, 'config/prometheus/prometheus.yml');
const ALERTS = join(ROOT, 'config/prometheus/alerts.yml');
const DASHBOARD = join(ROOT, 'config/grafana/tollgate.json');
const MODEL = 'gpt-4.1-mini';

/** Fails (never skips) with one line saying how to install the binary when it is missing. */
function requireBinary(name: 'prometheus' | 'promtool'): string {
  const r = spawnSync(name, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(
      `${name} not found on PATH: install it with \`apt-get install -y prometheus\` (Debian/Ubuntu; provides prometheus and promtool) or from https://prometheus.io/download/`,
    );
  }
  return name;
}

function run(bin: string, args: string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync(bin, args, { encoding: 'utf8', input, timeout: 20_000 });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

interface PanelTarget {
  panel: string;
  refId: string;
  expr: string;
}

function dashboardTargets(): PanelTarget[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
  const out: PanelTarget[] = [];
  for (const p of dash.panels as any[]) {
    for (const t of (p.targets ?? []) as any[]) out.push({ panel: p.title, refId: t.refId, expr: t.expr });
  }
  return out;
}

function alertRules(): { alert: string; expr: string }[] {
  const doc = parseYaml(readFileSync(ALERTS, 'utf8'));
  return (doc.groups as any[]).flatMap((g) => g.rules as { alert: string; expr: string }[]);
}

/**
 * Grafana's variables made concrete for Prometheus's own API: `$__rate_interval` and
 * `$__interval` become 1m (enough for several 1 s scrapes), `$__range` 5m, and every
 * template variable (`$team`, `${team}`, only used in `=~` matchers) matches everything.
 */
function concrete(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '1m')
    .replaceAll('$__interval', '1m')
    .replaceAll('$__range', '5m')
    .replace(/\$\{\w+(?::\w+)?\}|\$\w+/g, '.*');
}

/**
 * An alert expression without its threshold. Every alert in alerts.yml is
 * `<query> <comparison> <number>`; removing every comparison against a number literal
 * (`> 0.05`, `== 2`, `< bool 1`) leaves the query, whose series must exist whether or not the
 * alert would fire.
 */
function withoutThreshold(expr: string): string {
  return expr
    .replace(/\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?(?![\w.])/gi, '')
    .trim();
}

/** Every `tollgate_*` metric name an expression mentions. */
const metricNames = (expr: string): string[] => [...new Set(expr.match(/\btollgate_[a-zA-Z0-9_]+/g) ?? [])];

/** Unique chat traffic (no cache hits unless asked), each request read to its end. */
function client(gw: TestGateway) {
  let n = 0;
  return async (
    key: string,
    opts: { stream?: boolean; mock?: string; content?: string } = {},
  ): Promise<number> => {
    const content =
      opts.content ?? `prometheus test ${++n} ${Date.now()}${opts.mock ? ` [[mock:${opts.mock}]]` : ''}`;
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: 'user', content }],
        ...(opts.stream && { stream: true }),
      }),
    });
    await res.text();
    return res.status;
  };
}

/** A gateway whose model has two routes on the mock, so upstream errors can be retried. */
async function gatewayFor(mock: MockUpstream): Promise<TestGateway> {
  return startTestGateway({
    upstreams: [
      { name: 'primary', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
      { name: 'secondary', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY },
    ],
    models: [
      {
        ...model(MODEL, 'primary'),
        routes: [
          { upstream: 'primary', priority: 1 },
          { upstream: 'secondary', priority: 2 },
        ],
      },
    ],
  });
}

/**
 * Everything the dashboard and alerts look at: plain and streamed requests, a rate-limited key,
 * upstream errors (retried, and failing every route), an upstream 429, a key with a budget,
 * repeated identical requests (cache hits, when the cache answers them).
 */
async function oneOfEverything(
  gw: TestGateway,
  mock: MockUpstream,
): Promise<{ plain: string; other: string; limited: string; budget: string }> {
  const chat = client(gw);
  const keys = {
    plain: (await gw.issueKey({ name: 'plain', team: 'red' })).key,
    other: (await gw.issueKey({ name: 'other', team: 'blue' })).key,
    limited: (await gw.issueKey({ name: 'limited', team: 'red', limits: { rpm: 1 } })).key,
    budget: (await gw.issueKey({ name: 'budgeted', team: 'blue', budget: { usd: 0.5, period: 'day' } })).key,
  };
  expect(await chat(keys.plain)).toBe(200);
  expect(await chat(keys.other, { stream: true })).toBe(200);
  expect(await chat(keys.limited)).toBe(200);
  expect(await chat(keys.limited)).toBe(429);
  expect(await chat(keys.budget)).toBe(200);
  expect(await chat(keys.budget, { stream: true })).toBe(200);
  mock.enqueue({ status: 503 });
  expect(await chat(keys.plain)).toBe(200); // primary 503, retried on secondary
  expect(await chat(keys.plain, { mock: 'status=500' })).toBe(502); // every route fails
  expect(await chat(keys.other, { mock: 'status=429,retryms=1' })).toBe(429); // upstream throttling
  for (let i = 0; i < 3; i++) await chat(keys.other, { content: 'the same question every time' });
  return keys;
}

describe('Prometheus config, alerts and dashboard', () => {
  let mock: MockUpstream;

  beforeAll(async () => {
    mock = await startMockUpstream();
  });
  afterAll(async () => {
    await mock?.close();
  });

  it('promtool accepts config/prometheus/prometheus.yml and alerts.yml', () => {
    const promtool = requireBinary('promtool');
    const config = run(promtool, ['check', 'config', PROM_CONFIG]);
    expect(config.status, config.output).toBe(0);
    expect(config.output).toMatch(/SUCCESS/);
    const rules = run(promtool, ['check', 'rules', ALERTS]);
    expect(rules.status, rules.output).toBe(0);
    expect(rules.output).toMatch(new RegExp(`SUCCESS: ${alertRules().length} rules found`));
  });

  it('the dashboard is provisionable and every query has the tollgate_ prefix', () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
    expect(dash.uid).toBe('tollgate');
    const ids = (dash.panels as any[]).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const targets = dashboardTargets();
    expect(targets.length).toBeGreaterThan(20);
    for (const t of targets) {
      expect(metricNames(t.expr).length, `${t.panel}: ${t.expr}`).toBeGreaterThan(0);
      expect(t.expr, t.panel).not.toMatch(/\b(?!tollgate_)[a-z]+_(?:total|seconds|bytes)\b/);
    }
    for (const p of dash.panels as any[]) {
      if (p.type !== 'row') expect(p.targets?.length ?? 0, p.title).toBeGreaterThan(0);
    }
    const titles = (dash.panels as any[]).map((p) => p.title as string).join('\n');
    for (const want of [
      /request.*status/i,
      /duration/i,
      /first token/i,
      /overhead/i,
      /tokens.*team/i,
      /tokens.*key/i,
      /spend.*team/i,
      /spend.*key/i,
      /cache hit ratio/i,
      /429.*limit/i,
      /upstream.*status/i,
      /retries/i,
      /circuit/i,
      /in-flight/i,
      /store errors/i,
    ]) {
      expect(titles).toMatch(want);
    }
  });

  it('a real scrape under traffic passes promtool check metrics, and names every queried metric', async () => {
    const promtool = requireBinary('promtool');
    const gw = await gatewayFor(mock);
    try {
      await oneOfEverything(gw, mock);
      await gw.gateway.runtime.usage.flush();
      const text = await (await fetch(`${gw.url}/metrics`)).text();
      const check = run(promtool, ['check', 'metrics'], text);
      expect(check.status, check.output).toBe(0);
      expect(check.output).toBe('');

      const exposed = new Set(parseSamples(text).map((s) => s.name));
      const used = [...dashboardTargets().map((t) => t.expr), ...alertRules().map((r) => r.expr)];
      const unknown = [...new Set(used.flatMap(metricNames))].filter((n) => !exposed.has(n));
      expect(unknown, 'metric names queried by the dashboard or alerts but not exposed').toEqual([]);
    } finally {
      await gw.close();
    }
  });

  it('a real Prometheus answers every dashboard query and every alert query with data', {
    timeout: 60_000,
  }, async () => {
    const prometheusBin = requireBinary('prometheus');
    const gw = await gatewayFor(mock);
    const dir = mkdtempSync(join(tmpdir(), 'tollgate-prometheus-'));
    let prom: ChildProcess | null = null;
    let logs = '';
    let stopTraffic = false;
    let traffic: Promise<void> = Promise.resolve();
    try {
      // The shipped config, pointed at this gateway and scraping every second.
      const config = parseYaml(readFileSync(PROM_CONFIG, 'utf8'));
      config.global = { ...config.global, scrape_interval: '1s', evaluation_interval: '1s' };
      config.rule_files = [ALERTS];
      const job = config.scrape_configs[0];
      expect(job.job_name).toBe('tollgate');
      job.static_configs = [{ targets: [new URL(gw.url).host] }];
      writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
      const port = await freePort();
      const api = `http://127.0.0.1:${port}`;
      prom = spawn(
        prometheusBin,
        [
          `--config.file=${join(dir, 'prometheus.yml')}`,
          `--storage.tsdb.path=${join(dir, 'data')}`,
          `--web.listen-address=127.0.0.1:${port}`,
          '--log.level=warn',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      // Should this worker die half-way, Prometheus goes with it.
      const child = prom;
      process.once('exit', () => child.kill('SIGKILL'));
      for (const s of [prom.stdout!, prom.stderr!]) {
        s.setEncoding('utf8').on('data', (d: string) => {
          logs = (logs + d).slice(-8000);
        });
      }
      await until(
        async () => (await fetch(`${api}/-/ready`).catch(() => null))?.status === 200,
        15_000,
        () => `Prometheus did not become ready:\n${logs}`,
      );

      const keys = await oneOfEverything(gw, mock);
      // Steady traffic while Prometheus scrapes, so rates are not zero.
      const chat = client(gw);
      traffic = (async () => {
        while (!stopTraffic) {
          await Promise.all([chat(keys.plain), chat(keys.other, { stream: true }), chat(keys.budget)]);
          await sleep(100);
        }
      })();

      const query = async (expr: string): Promise<{ status: string; result: unknown[]; error?: string }> => {
        const res = await fetch(`${api}/api/v1/query?query=${encodeURIComponent(expr)}`);
        const body = (await res.json()) as any;
        return { status: body.status, result: body.data?.result ?? [], error: body.error };
      };
      const checks = [
        ...dashboardTargets().map((t) => ({
          what: `panel '${t.panel}' ${t.refId}`,
          expr: concrete(t.expr),
          full: null,
        })),
        ...alertRules().map((r) => ({
          what: `alert ${r.alert}`,
          expr: withoutThreshold(r.expr),
          full: r.expr,
        })),
      ];
      for (const c of checks) if (c.full !== null) expect(c.expr, c.what).not.toBe(c.full.trim());

      // Every query answers with data once Prometheus has a few scrapes of the traffic.
      let failures: string[] = [];
      await until(
        async () => {
          failures = [];
          for (const c of checks) {
            const r = await query(c.expr);
            if (r.status !== 'success') failures.push(`${c.what}: ${r.error} in ${c.expr}`);
            else if (r.result.length === 0) failures.push(`${c.what}: no data for ${c.expr}`);
            if (c.full !== null) {
              const whole = await query(c.full);
              if (whole.status !== 'success') failures.push(`${c.what}: ${whole.error} in ${c.full}`);
            }
          }
          return failures.length === 0;
        },
        35_000,
        () => `queries without data after 35 s:\n${failures.join('\n')}\n${logs}`,
      );

      // The alert rules load and evaluate without errors.
      const rules = (await (await fetch(`${api}/api/v1/rules?type=alert`)).json()) as any;
      const loaded = (rules.data.groups as any[]).flatMap((g) => g.rules as any[]);
      expect(loaded.map((r) => r.name).sort()).toEqual(
        alertRules()
          .map((r) => r.alert)
          .sort(),
      );
      for (const r of loaded) expect(r.health, `${r.name}: ${r.lastError ?? ''}`).not.toBe('err');
      const targets = (await (await fetch(`${api}/api/v1/targets`)).json()) as any;
      expect(targets.data.activeTargets.map((t: any) => [t.labels.job, t.health])).toEqual([
        ['tollgate', 'up'],
      ]);
    } finally {
      stopTraffic = true;
      await traffic.catch(() => {});
      if (prom && prom.exitCode === null) {
        const gone = new Promise<void>((r) => prom!.once('exit', () => r()));
        prom.kill('SIGTERM');
        const t = setTimeout(() => prom!.kill('SIGKILL'), 3000);
        await gone;
        clearTimeout(t);
      }
      await gw.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(check: () => Promise<boolean>, ms: number, explain: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(explain());
    await sleep(500);
  }
}
