import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

// Buckets for LLM traffic: whole requests and first tokens run from milliseconds to minutes,
// the gateway's own work from tens of microseconds to tens of milliseconds.
const LLM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600];
const OVERHEAD_BUCKETS = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

export type LimitName = 'rpm' | 'tpm' | 'concurrency' | 'budget';

/** The store operations whose failures are counted (limiter, usage writer, response cache). */
const KNOWN_STORE_OPS: [string, string][] = [
  ['limits', 'admit'],
  ['limits', 'settle'],
  ['limits', 'renew'],
  ['usage', 'write'],
  ['cache', 'get'],
  ['cache', 'set'],
];

/**
 * The series of one metric by label values (in label-name order), each found once and then
 * updated in place. prom-client's own `labels(...).inc()` hashes and validates the label object
 * on every call (and a histogram's `observe` also builds a closure and converts its bucket bound
 * to a property name): with a dozen updates per request that showed in the profile.
 */
export class Children<C> {
  private readonly made = new Map<string, C>();

  constructor(private readonly make: (...values: string[]) => C) {}

  get(...values: string[]): C {
    const id = values.join('\u0000');
    let child = this.made.get(id);
    if (child === undefined) {
      child = this.make(...values);
      this.made.set(id, child);
    }
    return child;
  }

  clear(): void {
    this.made.clear();
  }
}

// A series' entry in its metric's table (`hashMap`: the same shape in prom-client 12-15, also
// read by `forgetKey`), found by the metric's own `labelNames` (values are given in that order)
// and, for a histogram, bucketed by its own `upperBounds`. test/metrics/series.test.ts checks
// every kind against prom-client's own updates, so an upgrade that changes these fails there.
type ValueEntry = { value: number; labels: Record<string, string> };
type HistogramEntry = {
  sum: number;
  count: number;
  bucketValues: Record<string, number>;
  labels: Record<string, string>;
};

function entryOf<E extends { labels: Record<string, string> }>(
  metric: unknown,
  labels: Record<string, string>,
): E {
  const table = (metric as { hashMap: Record<string, E> }).hashMap;
  const names = Object.keys(labels);
  const entry = Object.values(table).find((e) => names.every((n) => e.labels[n] === labels[n]));
  if (!entry) throw new Error('metric series not found after creating it');
  return entry;
}

/** The label object for values given in the order of the metric's `labelNames`. */
function labelsOf(metric: unknown, values: string[]): Record<string, string> {
  const names = (metric as { labelNames: readonly string[] }).labelNames;
  return Object.fromEntries(names.map((n, i) => [n, values[i] ?? '']));
}

/** A counter series: `inc` adds a non-negative finite amount (anything else is ignored). */
export function counterSeries(c: Counter<string>): Children<{ inc(v?: number): void }> {
  return new Children((...values) => {
    const labels = labelsOf(c, values);
    c.inc(labels, 0);
    const e = entryOf<ValueEntry>(c, labels);
    return {
      inc: (v = 1) => {
        if (v > 0 && v !== Number.POSITIVE_INFINITY) e.value += v;
      },
    };
  });
}

/** A gauge series moved up and down by one (requests in flight). */
export function gaugeSeries(g: Gauge<string>): Children<{ inc(): void; dec(): void }> {
  return new Children((...values) => {
    const labels = labelsOf(g, values);
    g.inc(labels, 0);
    const e = entryOf<ValueEntry>(g, labels);
    return {
      inc: () => {
        e.value += 1;
      },
      dec: () => {
        e.value -= 1;
      },
    };
  });
}

/** A histogram series: `observe` counts a finite value in the first bucket whose bound it does not exceed. */
export function histogramSeries(h: Histogram<string>): Children<{ observe(v: number): void }> {
  const buckets = (h as unknown as { upperBounds: readonly number[] }).upperBounds;
  const keys = buckets.map(String);
  return new Children((...values) => {
    const labels = labelsOf(h, values);
    h.zero(labels);
    const e = entryOf<HistogramEntry>(h, labels);
    return {
      observe: (v) => {
        if (!Number.isFinite(v)) return;
        e.sum += v;
        e.count += 1;
        for (let i = 0; i < buckets.length; i++) {
          if (v <= buckets[i]!) {
            e.bucketValues[keys[i]!]! += 1;
            return;
          }
        }
      },
    };
  });
}

/** Every metric of SPEC section 9 in one registry, built once per process. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'model' | 'status' | 'cache' | 'team' | 'key'>;
  readonly duration: Histogram<'route' | 'model' | 'stream' | 'cache'>;
  readonly ttft: Histogram<'model' | 'upstream'>;
  readonly upstreamDuration: Histogram<'upstream' | 'model' | 'status'>;
  readonly overhead: Histogram<'route'>;
  readonly tokens: Counter<'model' | 'team' | 'key' | 'type'>;
  readonly cost: Counter<'model' | 'team' | 'key'>;
  readonly saved: Counter<'model' | 'team' | 'key'>;
  readonly cacheLookups: Counter<'result'>;
  readonly rateLimited: Counter<'team' | 'key' | 'limit'>;
  readonly budgetRemaining: Gauge<'team' | 'key'>;
  readonly upstreamRequests: Counter<'upstream' | 'status'>;
  readonly upstreamRetries: Counter<'upstream' | 'reason'>;
  readonly circuitState: Gauge<'upstream'>;
  readonly inflight: Gauge<'route'>;
  readonly storeErrors: Counter<'store' | 'op'>;
  readonly usageDropped: Counter;
  // Children of the metrics every request touches (see Observer).
  readonly requestsOf: Children<{ inc(): void }>;
  readonly durationOf: Children<{ observe(v: number): void }>;
  readonly overheadOf: Children<{ observe(v: number): void }>;
  readonly inflightOf: Children<{ inc(): void; dec(): void }>;
  readonly tokensOf: Children<{ inc(v: number): void }>;
  readonly costOf: Children<{ inc(v: number): void }>;
  readonly cacheLookupsOf: Children<{ inc(): void }>;
  readonly upstreamRequestsOf: Children<{ inc(): void }>;
  readonly upstreamDurationOf: Children<{ observe(v: number): void }>;

  constructor(readonly keyLabels: boolean) {
    const r = [this.registry];
    const p = 'tollgate_';
    this.requests = new Counter({
      name: `${p}requests_total`,
      help: 'Requests answered, by outcome.',
      labelNames: ['route', 'model', 'status', 'cache', 'team', 'key'],
      registers: r,
    });
    this.duration = new Histogram({
      name: `${p}request_duration_seconds`,
      help: 'Whole request duration, streams to their last byte.',
      labelNames: ['route', 'model', 'stream', 'cache'],
      buckets: LLM_BUCKETS,
      registers: r,
    });
    this.ttft = new Histogram({
      name: `${p}time_to_first_token_seconds`,
      help: 'Time to the first streamed content chunk.',
      labelNames: ['model', 'upstream'],
      buckets: LLM_BUCKETS,
      registers: r,
    });
    this.upstreamDuration = new Histogram({
      name: `${p}upstream_duration_seconds`,
      help: 'Upstream time to response headers.',
      labelNames: ['upstream', 'model', 'status'],
      buckets: LLM_BUCKETS,
      registers: r,
    });
    this.overhead = new Histogram({
      name: `${p}overhead_duration_seconds`,
      help: 'Time spent in the gateway itself, excluding the upstream.',
      labelNames: ['route'],
      buckets: OVERHEAD_BUCKETS,
      registers: r,
    });
    this.tokens = new Counter({
      name: `${p}tokens_total`,
      help: 'Tokens billed by upstreams.',
      labelNames: ['model', 'team', 'key', 'type'],
      registers: r,
    });
    this.cost = new Counter({
      name: `${p}cost_usd_total`,
      help: 'Upstream cost in USD.',
      labelNames: ['model', 'team', 'key'],
      registers: r,
    });
    this.saved = new Counter({
      name: `${p}saved_usd_total`,
      help: 'USD saved by cache hits.',
      labelNames: ['model', 'team', 'key'],
      registers: r,
    });
    this.cacheLookups = new Counter({
      name: `${p}cache_lookups_total`,
      help: 'Response cache lookups.',
      labelNames: ['result'],
      registers: r,
    });
    this.rateLimited = new Counter({
      name: `${p}rate_limited_total`,
      help: 'Requests refused by a limit or budget.',
      labelNames: ['team', 'key', 'limit'],
      registers: r,
    });
    this.budgetRemaining = new Gauge({
      name: `${p}budget_remaining_usd`,
      help: 'Budget left in the current period.',
      labelNames: ['team', 'key'],
      registers: r,
    });
    this.upstreamRequests = new Counter({
      name: `${p}upstream_requests_total`,
      help: 'Attempts sent to upstreams, by status.',
      labelNames: ['upstream', 'status'],
      registers: r,
    });
    this.upstreamRetries = new Counter({
      name: `${p}upstream_retries_total`,
      help: 'Attempts that moved on to another route.',
      labelNames: ['upstream', 'reason'],
      registers: r,
    });
    this.circuitState = new Gauge({
      name: `${p}circuit_state`,
      help: 'Circuit breaker state: 0 closed, 1 half-open, 2 open.',
      labelNames: ['upstream'],
      registers: r,
    });
    this.inflight = new Gauge({
      name: `${p}inflight_requests`,
      help: 'Requests in progress.',
      labelNames: ['route'],
      registers: r,
    });
    this.storeErrors = new Counter({
      name: `${p}store_errors_total`,
      help: 'Failed store operations.',
      labelNames: ['store', 'op'],
      registers: r,
    });
    this.usageDropped = new Counter({
      name: `${p}usage_records_dropped_total`,
      help: 'Usage records lost to a full buffer.',
      registers: r,
    });
    collectDefaultMetrics({ register: this.registry, prefix: p });
    // prom-client's defaults include three gauges named like counters, which `promtool check
    // metrics` rejects; their per-type gauges (nodejs_active_handles{type}, ...) remain.
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ]) {
      this.registry.removeSingleMetric(`${p}${name}`);
    }
    // Series that alerts and dashboards divide by or alert on exist from the start, at 0: a
    // counter born at its first increment makes `rate()` miss that increment and leaves panels
    // empty ("No data") instead of showing zero.
    for (const [store, op] of KNOWN_STORE_OPS) this.storeErrors.inc({ store, op }, 0);
    this.requestsOf = counterSeries(this.requests);
    this.durationOf = histogramSeries(this.duration);
    this.overheadOf = histogramSeries(this.overhead);
    this.inflightOf = gaugeSeries(this.inflight);
    this.tokensOf = counterSeries(this.tokens);
    this.costOf = counterSeries(this.cost);
    this.cacheLookupsOf = counterSeries(this.cacheLookups);
    // Made now, so they exist at 0 from the start (see above).
    for (const result of ['hit', 'miss', 'bypass', 'error']) this.cacheLookupsOf.get(result);
    this.upstreamRequestsOf = counterSeries(this.upstreamRequests);
    this.upstreamDurationOf = histogramSeries(this.upstreamDuration);
  }

  /** The `key` label value: the key's name, or empty when key labels are off. */
  keyLabel(name: string): string {
    return this.keyLabels ? name : '';
  }

  /**
   * Removes a revoked key's series. prom-client only removes exact label sets, so the key's
   * sets are found in the metric's own table (`hashMap`, stable across prom-client 12-15).
   */
  forgetKey(key: string, team?: string | null): void {
    if (!this.keyLabels) return;
    for (const c of [this.requestsOf, this.tokensOf, this.costOf]) c.clear();
    // Key names are unique within a team only: with the team given, a same-named key of another
    // team keeps its series. (The key's own budget gauge may carry an empty team label.)
    const sameTeam = (m: unknown, labels: Record<string, string>): boolean =>
      team === undefined ||
      labels['team'] === (team ?? '') ||
      (m === this.budgetRemaining && labels['team'] === '');
    for (const m of [
      this.requests,
      this.tokens,
      this.cost,
      this.saved,
      this.rateLimited,
      this.budgetRemaining,
    ]) {
      const table = (m as unknown as { hashMap: Record<string, { labels: Record<string, string> }> }).hashMap;
      for (const entry of Object.values(table)) {
        if (entry.labels['key'] === key && sameTeam(m, entry.labels)) m.remove(entry.labels as never);
      }
    }
  }
}
