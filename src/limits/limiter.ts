import { randomUUID } from 'node:crypto';
import type { Config, ModelConfig } from '../config/schema.js';
import { GatewayError } from '../errors/gateway-error.js';
import type { Authenticated } from '../keys/key-service.js';
import type { KeyRecord, TeamRecord } from '../keys/types.js';
import { costOf } from '../metering/record.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Logger } from '../server/logger.js';
import { withDeadline } from '../store/redis.js';
import { ChurnMap } from '../util/churn-map.js';
import { goDuration } from './duration.js';
import type { MemoryLimitStore } from './memory-limit-store.js';
import type { AdmitResult, BucketView, Dimension, LimitStore, PeekView, SpendView } from './types.js';

const LEASE_TTL_MS = 60_000;
const RENEW_EVERY_MS = 20_000;

// Lease ids: unique across instances by a random prefix per process, then a counter (a UUID per
// request cost more and made every admission 20 bytes longer).
const LEASE_PREFIX = randomUUID().slice(0, 12);
let leaseCounter = 0;
const nextLeaseId = (): string => `${LEASE_PREFIX}.${(leaseCounter++).toString(36)}`;

export interface AdmitRequest {
  model: ModelConfig;
  /** Prompt tokens, counted only when some dimension has a token limit. */
  promptTokens: () => number;
  outputTokens: number;
  /** A cache hit: one request, no tokens, no budget. */
  hit: boolean;
  /** A hit answered at once from memory: checked against concurrency, but holds no slot. */
  instant?: boolean;
}

/** An admitted request: its rate-limit headers, and the settlement to call once it is over. */
export interface Admission {
  headers: Record<string, string>;
  /** Settles against the real usage (null: none known) and frees the concurrency slot. Idempotent. */
  settle(tokens: number | null, costUsd: number): void;
}

/** Limits, spend and remaining of one dimension. */
export interface DimensionStatus {
  limits: { rpm: number | null; tpm: number | null; maxConcurrent: number | null };
  budget: { usd: number; period: string } | null;
  spend: { dayUsd: number; monthUsd: number; totalUsd: number };
  remaining: {
    requests: number | null;
    tokens: number | null;
    concurrent: number | null;
    budgetUsd: number | null;
  };
}

export interface KeyStatus extends DimensionStatus {
  team: DimensionStatus | null;
}

interface Active {
  store: LimitStore;
  dims: Dimension[];
}

/**
 * Per-key and per-team limits and budgets (SPEC section 6): one store call admits or refuses
 * every dimension at once; settlement is one more call after the response, off its path.
 */
export class Limiter {
  private readonly active = new ChurnMap<string, Active>();
  private readonly dims = new WeakMap<KeyRecord, { team: TeamRecord | null; dims: Dimension[] }>();
  /** Runs while requests hold leases (an idle gateway runs no timers; see UsageWriter). */
  private renewTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly shared: LimitStore | null,
    private readonly local: MemoryLimitStore,
    private readonly opts: {
      defaults: Config['limits']['defaults'];
      failMode: 'open' | 'closed';
      deadlineMs: number;
      metrics: Metrics | null;
      logger: Logger;
    },
  ) {}

  /** Stops lease renewal and writes the settlements the store still holds. */
  async close(): Promise<void> {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = null;
    await this.shared?.flush?.().catch(() => {});
  }

  /**
   * The dimensions of a key: itself (defaults fill missing limits) and its team, if any. Built
   * once per key and team record (records are replaced, not changed, when an admin edits them).
   */
  dimensions(key: KeyRecord, team: TeamRecord | null): Dimension[] {
    const known = this.dims.get(key);
    if (known && known.team === team) return known.dims;
    const dims = this.buildDimensions(key, team);
    this.dims.set(key, { team, dims });
    return dims;
  }

  private buildDimensions(key: KeyRecord, team: TeamRecord | null): Dimension[] {
    const tag = key.team === null ? `k:${key.id}` : `t:${key.team}`;
    const d = this.opts.defaults;
    const pick = (v: number | null | undefined, def: number | null): number | null =>
      v === undefined ? def : v;
    const dims: Dimension[] = [
      {
        id: `key:${key.id}`,
        kind: 'key',
        name: key.name,
        tag,
        rpm: pick(key.limits.rpm, d.rpm),
        tpm: pick(key.limits.tpm, d.tpm),
        maxConcurrent: pick(key.limits.maxConcurrent, d.maxConcurrent),
        budgetNano: key.budget ? Math.round(key.budget.usd * 1e9) : null,
        period: key.budget?.period ?? 'total',
      },
    ];
    if (key.team !== null) {
      dims.push({
        id: `team:${key.team}`,
        kind: 'team',
        name: key.team,
        tag,
        rpm: pick(team?.limits.rpm, null),
        tpm: pick(team?.limits.tpm, null),
        maxConcurrent: pick(team?.limits.maxConcurrent, null),
        budgetNano: team?.budget ? Math.round(team.budget.usd * 1e9) : null,
        period: team?.budget?.period ?? 'total',
      });
    }
    return dims;
  }

  async admit(p: Authenticated, req: AdmitRequest): Promise<Admission> {
    const dims = this.dimensions(p.key, p.team);
    const countTokens = !req.hit && dims.some((d) => d.tpm !== null);
    const prompt = countTokens ? req.promptTokens() : 0;
    const tokens = prompt + (countTokens ? req.outputTokens : 0);
    const costNano = req.hit
      ? 0
      : Math.round(
          costOf(
            { promptTokens: prompt, cachedTokens: 0, completionTokens: req.outputTokens },
            req.model.pricing,
          ) * 1e9,
        );
    const now = Date.now();
    const input = {
      dims,
      now,
      ...periods(now),
      leaseId: nextLeaseId(),
      leaseTtlMs: LEASE_TTL_MS,
      tokens,
      costNano,
      hit: req.hit,
      lease: !(req.hit && req.instant === true),
    };
    let store: LimitStore = this.shared ?? this.local;
    let result: AdmitResult;
    try {
      result = this.shared
        ? await withDeadline(this.shared.admit(input), this.opts.deadlineMs)
        : await this.local.admit(input);
    } catch (err) {
      this.opts.metrics?.storeErrors.inc({ store: 'limits', op: 'admit' });
      this.opts.logger.warn(
        { err: (err as Error).message, failMode: this.opts.failMode },
        'limit store unavailable',
      );
      if (this.opts.failMode === 'closed') {
        throw new GatewayError('service_unavailable', 'Rate limiting is unavailable; please retry shortly.');
      }
      store = this.local;
      result = await this.local.admit(input);
    }
    if (!result.ok) throw this.refusal(p.key, dims, result, tokens);
    const lease = result.lease;
    // A hit without a slot has nothing to settle: no tokens, no cost, no lease.
    if (!input.lease) return { headers: headersFor(result.views), settle: () => {} };
    this.active.set(lease, { store, dims });
    if (this.renewTimer === null) {
      this.renewTimer = setInterval(() => this.renew(), RENEW_EVERY_MS);
      this.renewTimer.unref();
    }
    let settled = false;
    return {
      headers: headersFor(result.views),
      settle: (actual, costUsd) => {
        if (settled) return;
        settled = true;
        this.active.delete(lease);
        const now2 = Date.now();
        const delta = countTokens && actual !== null ? actual - tokens : 0;
        const s = {
          dims,
          now: now2,
          ...periods(now2),
          lease,
          tokenDelta: delta,
          costNano: Math.round(costUsd * 1e9),
        };
        const op = store === this.shared ? withDeadline(store.settle(s), 5000) : store.settle(s);
        op.then(
          () => this.updateBudgetGauges(store, dims),
          (err: Error) => {
            this.opts.metrics?.storeErrors.inc({ store: 'limits', op: 'settle' });
            this.opts.logger.warn(
              { err: err.message },
              'limit settlement failed; the lease expires by itself',
            );
          },
        );
      },
    };
  }

  /**
   * A key's effective limits, current-period spend and what remains, for itself and its team
   * (`GET /me`, `GET /admin/keys/{id}`). Reads only; takes nothing from any bucket.
   */
  async status(p: Authenticated): Promise<KeyStatus> {
    // Settlements this instance still holds back are written first: the answer includes every
    // request that has ended here.
    const flushed = this.shared?.flush?.();
    if (flushed) await withDeadline(flushed, 5000).catch(() => {});
    const [key, team] = await Promise.all(this.dimensions(p.key, p.team).map((d) => this.dimensionStatus(d)));
    return { ...key!, team: team ?? null };
  }

  /**
   * The x-ratelimit-* headers as things stand, taking nothing: for authenticated answers that
   * end before admission (validation errors, model lists). Empty when the store does not answer.
   */
  async peekHeaders(p: Authenticated): Promise<Record<string, string>> {
    const dims = this.dimensions(p.key, p.team);
    if (!dims.some((d) => d.rpm !== null || d.tpm !== null)) return {};
    const now = Date.now();
    const store = this.shared ?? this.local;
    try {
      const peeks = await withDeadline(
        Promise.all(dims.map((d) => store.peek(d, now))),
        this.opts.deadlineMs,
      );
      return headersFor(
        dims.map((d, i) => ({
          requests: d.rpm === null ? null : { limit: d.rpm, remaining: peeks[i]!.requests ?? d.rpm },
          tokens: d.tpm === null ? null : { limit: d.tpm, remaining: peeks[i]!.tokens ?? d.tpm },
        })),
      );
    } catch {
      return {};
    }
  }

  private async dimensionStatus(d: Dimension): Promise<DimensionStatus> {
    const now = Date.now();
    const { day, month } = periods(now);
    const read = async (store: LimitStore) => Promise.all([store.spend(d, day, month), store.peek(d, now)]);
    let spend: SpendView;
    let peek: PeekView;
    try {
      [spend, peek] = this.shared ? await withDeadline(read(this.shared), 5000) : await read(this.local);
    } catch {
      [spend, peek] = await read(this.local);
    }
    return {
      limits: { rpm: d.rpm, tpm: d.tpm, maxConcurrent: d.maxConcurrent },
      budget: d.budgetNano === null ? null : { usd: d.budgetNano / 1e9, period: d.period },
      spend: { dayUsd: spend.day / 1e9, monthUsd: spend.month / 1e9, totalUsd: spend.total / 1e9 },
      remaining: {
        requests: peek.requests === null ? null : Math.max(0, Math.floor(peek.requests)),
        tokens: peek.tokens === null ? null : Math.max(0, Math.floor(peek.tokens)),
        concurrent: d.maxConcurrent === null ? null : Math.max(0, d.maxConcurrent - peek.inUse),
        budgetUsd: d.budgetNano === null ? null : Math.max(0, d.budgetNano - spend[d.period]) / 1e9,
      },
    };
  }

  private renew(): void {
    if (this.active.size === 0) {
      clearInterval(this.renewTimer!);
      this.renewTimer = null;
      return;
    }
    const expiresAt = Date.now() + LEASE_TTL_MS;
    for (const [lease, a] of this.active.entries()) {
      a.store.renew(a.dims, lease, expiresAt).catch(() => {
        this.opts.metrics?.storeErrors.inc({ store: 'limits', op: 'renew' });
      });
    }
  }

  private updateBudgetGauges(store: LimitStore, dims: Dimension[]): void {
    const m = this.opts.metrics;
    if (!m) return;
    const { day, month } = periods(Date.now());
    for (const d of dims) {
      if (d.budgetNano === null) continue;
      const budget = d.budgetNano;
      store.spend(d, day, month).then(
        (s) => {
          // A key's series carries its team, so the dashboard's team filter shows it.
          const labels =
            d.kind === 'key'
              ? { team: d.tag.startsWith('t:') ? d.tag.slice(2) : '', key: m.keyLabel(d.name) }
              : { team: d.name, key: '' };
          m.budgetRemaining.set(labels, Math.max(0, budget - s[d.period]) / 1e9);
        },
        () => {},
      );
    }
  }

  private refusal(
    key: KeyRecord,
    dims: Dimension[],
    r: Extract<AdmitResult, { ok: false }>,
    tokens: number,
  ): GatewayError {
    const d = dims[r.dim]!;
    const who = `${d.kind} '${d.name}'`;
    const m = this.opts.metrics;
    const count = (limit: string): void =>
      m?.rateLimited.inc({ team: key.team ?? '', key: m.keyLabel(key.name), limit });
    switch (r.limit) {
      case 'rpm':
      case 'tpm': {
        const need = r.limit === 'rpm' ? 1 : tokens;
        const waitMs = r.capacity === 0 ? 60_000 : Math.ceil(((need - r.level) * 60000) / r.capacity);
        count(r.limit);
        const kind = r.limit === 'rpm' ? 'requests' : 'tokens';
        const state = {
          [`x-ratelimit-limit-${kind}`]: String(r.capacity),
          [`x-ratelimit-remaining-${kind}`]: '0',
          [`x-ratelimit-reset-${kind}`]: goDuration(
            r.capacity === 0 ? 0 : Math.ceil(((r.capacity - r.level) * 60000) / r.capacity),
          ),
        };
        const label = r.limit === 'rpm' ? 'requests per minute (RPM)' : 'tokens per minute (TPM)';
        const used = Math.max(0, Math.round(r.capacity - r.level));
        return new GatewayError(
          'rate_limit_exceeded',
          `Rate limit reached for ${who} on ${label}: Limit ${r.capacity}, Used ${used}, Requested ${need}. Please try again in ${goDuration(waitMs)}.`,
          {
            type: r.limit === 'rpm' ? 'requests' : 'tokens',
            headers: {
              ...state,
              'retry-after': String(Math.max(1, Math.ceil(waitMs / 1000))),
              'retry-after-ms': String(waitMs),
              ...(r.capacity === 0 && { 'x-should-retry': 'false' }),
            },
          },
        );
      }
      case 'tpm_never':
        count('tpm');
        return new GatewayError(
          'rate_limit_exceeded',
          `Request too large for ${who} on tokens per minute (TPM): Limit ${r.capacity}, Requested ${tokens}. The input or output tokens must be reduced in order to run successfully.`,
          { type: 'tokens', headers: { 'x-should-retry': 'false' } },
        );
      case 'concurrency':
        count('concurrency');
        return new GatewayError(
          'rate_limit_exceeded',
          `Rate limit reached for ${who} on concurrent requests: Limit ${r.capacity}, In use ${r.level}. Please try again in 1s.`,
          { type: 'concurrency', headers: { 'retry-after': '1', 'retry-after-ms': '1000' } },
        );
      case 'budget':
        count('budget');
        return new GatewayError(
          'insufficient_quota',
          `You exceeded the budget of ${who}: $${(r.capacity / 1e9).toFixed(2)} per ${d.period === 'total' ? 'lifetime' : d.period}. The budget resets ${d.period === 'total' ? 'never' : `at the start of the next ${d.period} (UTC)`}.`,
          { headers: { 'x-should-retry': 'false' } },
        );
    }
  }
}

const DAY_MS = 86_400_000;
let periodsOf: { dayNumber: number; periods: { day: string; month: string } } | null = null;

/** The UTC day and month of `now` (computed once per day: every admission and settlement asks). */
function periods(now: number): { day: string; month: string } {
  const dayNumber = Math.floor(now / DAY_MS);
  if (periodsOf?.dayNumber !== dayNumber) {
    const iso = new Date(dayNumber * DAY_MS).toISOString();
    periodsOf = { dayNumber, periods: { day: iso.slice(0, 10), month: iso.slice(0, 7) } };
  }
  return periodsOf.periods;
}

/** x-ratelimit-* from the dimension with the least remaining, for requests and for tokens. */
function headersFor(views: BucketView[]): Record<string, string> {
  const h: Record<string, string> = {};
  for (const kind of ['requests', 'tokens'] as const) {
    let best: { limit: number; remaining: number } | null = null;
    for (const v of views) {
      const b = v[kind];
      if (b && (best === null || b.remaining < best.remaining)) best = b;
    }
    if (!best) continue;
    const remaining = Math.max(0, Math.floor(best.remaining));
    h[`x-ratelimit-limit-${kind}`] = String(best.limit);
    h[`x-ratelimit-remaining-${kind}`] = String(remaining);
    const resetMs = best.limit === 0 ? 0 : ((best.limit - best.remaining) * 60000) / best.limit;
    h[`x-ratelimit-reset-${kind}`] = goDuration(Math.max(0, Math.ceil(resetMs)));
  }
  return h;
}
