import type {
  AdmitInput,
  AdmitResult,
  BucketView,
  Dimension,
  LimitStore,
  PeekView,
  SettleInput,
  SpendView,
} from './types.js';

interface DimState {
  r: number | null;
  rt: number;
  t: number | null;
  tt: number;
  /** lease member -> expiry */
  leases: Map<string, number>;
  spend: Map<string, number>;
}

/**
 * The same algorithm as the Redis Lua scripts, for one process: the single-instance mode, and
 * the per-instance fallback while Redis is unreachable (failMode: open).
 */
export class MemoryLimitStore implements LimitStore {
  private readonly state = new Map<string, DimState>();

  private get(id: string): DimState {
    let s = this.state.get(id);
    if (!s) {
      s = { r: null, rt: 0, t: null, tt: 0, leases: new Map(), spend: new Map() };
      this.state.set(id, s);
    }
    return s;
  }

  async admit(i: AdmitInput): Promise<AdmitResult> {
    const member = `${i.leaseId}|${i.costNano}`;
    const next: { r: number | null; t: number | null }[] = [];
    for (const [n, d] of i.dims.entries()) {
      const s = this.get(d.id);
      let r: number | null = null;
      let t: number | null = null;
      if (d.rpm !== null) {
        r = refill(s.r, s.rt, d.rpm, i.now);
        if (r < 1) return { ok: false, dim: n, limit: 'rpm', capacity: d.rpm, level: r };
      }
      if (d.tpm !== null) {
        t = refill(s.t, s.tt, d.tpm, i.now);
        if (!i.hit) {
          if (i.tokens > d.tpm) return { ok: false, dim: n, limit: 'tpm_never', capacity: d.tpm, level: t };
          if (t < i.tokens) return { ok: false, dim: n, limit: 'tpm', capacity: d.tpm, level: t };
        }
      }
      for (const [m, exp] of s.leases) if (exp <= i.now) s.leases.delete(m);
      if (d.maxConcurrent !== null && s.leases.size >= d.maxConcurrent) {
        return { ok: false, dim: n, limit: 'concurrency', capacity: d.maxConcurrent, level: s.leases.size };
      }
      if (d.budgetNano !== null && !i.hit) {
        let used = s.spend.get(periodKey(d, i.day, i.month)) ?? 0;
        for (const m of s.leases.keys()) used += Number(m.slice(m.lastIndexOf('|') + 1));
        if (used >= d.budgetNano)
          return { ok: false, dim: n, limit: 'budget', capacity: d.budgetNano, level: used };
      }
      next.push({ r, t });
    }
    const views: BucketView[] = i.dims.map((d, n) => {
      const s = this.get(d.id);
      const v = next[n]!;
      if (v.r !== null) {
        s.r = v.r - 1;
        s.rt = i.now;
      }
      if (v.t !== null) {
        s.t = i.hit ? v.t : v.t - i.tokens;
        s.tt = i.now;
      }
      if (i.lease) s.leases.set(member, i.now + i.leaseTtlMs);
      return {
        requests: d.rpm === null ? null : { limit: d.rpm, remaining: s.r ?? 0 },
        tokens: d.tpm === null ? null : { limit: d.tpm, remaining: s.t ?? 0 },
      };
    });
    return { ok: true, views, lease: member };
  }

  async settle(x: SettleInput): Promise<void> {
    for (const d of x.dims) {
      const s = this.get(d.id);
      if (d.tpm !== null && x.tokenDelta !== 0 && s.t !== null) {
        s.t = Math.min(d.tpm, refill(s.t, s.tt, d.tpm, x.now) - x.tokenDelta);
        s.tt = x.now;
      }
      s.leases.delete(x.lease);
      if (x.costNano > 0) {
        for (const k of [`d:${x.day}`, `m:${x.month}`, 't'])
          s.spend.set(k, (s.spend.get(k) ?? 0) + x.costNano);
      }
    }
  }

  async renew(dims: Dimension[], lease: string, expiresAt: number): Promise<void> {
    for (const d of dims) {
      const s = this.get(d.id);
      if (s.leases.has(lease)) s.leases.set(lease, expiresAt);
    }
  }

  async peek(dim: Dimension, now: number): Promise<PeekView> {
    const s = this.get(dim.id);
    let inUse = 0;
    for (const exp of s.leases.values()) if (exp > now) inUse++;
    return {
      requests: dim.rpm === null ? null : refill(s.r, s.rt, dim.rpm, now),
      tokens: dim.tpm === null ? null : refill(s.t, s.tt, dim.tpm, now),
      inUse,
    };
  }

  async spend(dim: Dimension, day: string, month: string): Promise<SpendView> {
    const s = this.get(dim.id);
    return {
      day: s.spend.get(`d:${day}`) ?? 0,
      month: s.spend.get(`m:${month}`) ?? 0,
      total: s.spend.get('t') ?? 0,
    };
  }
}

function refill(level: number | null, at: number, cap: number, now: number): number {
  return level === null ? cap : Math.min(cap, level + ((now - at) * cap) / 60000);
}

const periodKey = (d: Dimension, day: string, month: string): string =>
  d.period === 'day' ? `d:${day}` : d.period === 'month' ? `m:${month}` : 't';
