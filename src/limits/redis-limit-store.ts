import { Cluster } from 'ioredis';
import type { RedisClient } from '../store/redis.js';
import { LOOKUP_LUA, type LookupReply, type RideAlong, rideAlongFor } from '../store/ride-along.js';
import { ChurnMap } from '../util/churn-map.js';
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

// Five keys per dimension, all under the request's hash tag (one Cluster slot):
// bucket state hash, lease zset (member "<lease>|<reserved nano-USD>", score = expiry),
// and spend counters for the day, the month and all time.
const KEYS_PER_DIM = 5;

// Shared by the scripts. `level`: a bucket's level at `now` (capacity `cap` per minute, refilled
// continuously from `v` at `at`) less `minus`. `spend`: adds a cost to one dimension's day,
// month and all-time counters (its keys from KEYS[k + 1]); the day and month counters get their
// expiry when created.
const SHARED_FN = `
local function level(v, at, cap, now, minus)
  return math.min(cap, v + (now - at) * cap / 60000 - minus)
end
local function spend(k, cost)
  if redis.call('INCRBY', KEYS[k + 3], cost) == cost then redis.call('EXPIRE', KEYS[k + 3], 172800) end
  if redis.call('INCRBY', KEYS[k + 4], cost) == cost then redis.call('EXPIRE', KEYS[k + 4], 3456000) end
  redis.call('INCRBY', KEYS[k + 5], cost)
end
`;

// Admission, with the settlements waiting on these dimensions carried in (so a key's next request
// finds its previous one's slot free and tokens refunded, with no round trip of their own). Each
// dimension's bucket is read once: the settlement's token correction and the check both work on
// that level, and one write stores the result. Only if every dimension admits is anything taken,
// so a refusal consumes nothing anywhere (the settlement is written either way). Buckets refill
// continuously (capacity = limit per minute).
// Work that need not happen per request is done when due: the bucket's expiry is renewed when
// the time in its field x is a lease TTL old, and expired leases (of a crashed instance) are
// removed only when they could matter: when the slots look full, and then along with the renewal.
// Levels go back as integer thousandths (Redis truncates Lua numbers to integers); the numbers of
// a refusal as strings.
// Its input `a` is AdmitArgs (below), decoded by the script around it; KEYS: 5 per dimension.
const ADMIT_BODY = `
local now, member, need, ttl = a.now, a.lease, a.need, a.ttl
local hit, lease = a.hit ~= 0, a.hit ~= 2
local delta, cost, released = a.settle.delta, a.settle.cost, a.settle.leases
local lim, rs, ts, xs, settled = {}, {}, {}, {}, {}
for d = 0, ndim - 1 do
  local k, dm = d * ${KEYS_PER_DIM}, a.dims[d + 1]
  -- A dimension with no limit at all (a team without settings) needs neither a check nor a lease.
  lim[d] = dm.leased
  if lim[d] then
    if #released > 0 then redis.call('ZREM', KEYS[k + 2], unpack(released)) end
    local st = redis.call('HMGET', KEYS[k + 1], 'r', 'rt', 't', 'tt', 'x')
    xs[d] = tonumber(st[5])
    if dm.rpm >= 0 then
      local r = tonumber(st[1])
      if r == nil then r = dm.rpm else r = level(r, tonumber(st[2]), dm.rpm, now, 0) end
      rs[d] = r
    end
    if dm.tpm >= 0 then
      local t = tonumber(st[3])
      if t == nil then t = dm.tpm else
        t = level(t, tonumber(st[4]), dm.tpm, now, delta)
        settled[d] = delta ~= 0
      end
      ts[d] = t
    end
  end
  if cost > 0 then spend(k, cost) end
end
-- Refused: only the settlement's token correction is written.
local function refuse(d, what, cap, level)
  for e = 0, ndim - 1 do
    if settled[e] then redis.call('HSET', KEYS[e * ${KEYS_PER_DIM} + 1], 't', ts[e], 'tt', now) end
  end
  return {0, d, what, tostring(cap), tostring(level)}
end
for d = 0, ndim - 1 do
  local k, dm = d * ${KEYS_PER_DIM}, a.dims[d + 1]
  if lim[d] then
    local r, t = rs[d], ts[d]
    if r ~= nil and r < 1 then return refuse(d, 'rpm', dm.rpm, r) end
    if t ~= nil and not hit then
      if need > dm.tpm then return refuse(d, 'tpm_never', dm.tpm, t) end
      if t < need then return refuse(d, 'tpm', dm.tpm, t) end
    end
    local leases = KEYS[k + 2]
    if dm.maxc >= 0 then
      local used = redis.call('ZCARD', leases)
      if used >= dm.maxc then
        redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
        used = redis.call('ZCARD', leases)
        if used >= dm.maxc then return refuse(d, 'concurrency', dm.maxc, used) end
      end
    end
    if dm.budget >= 0 and not hit then
      local pk = KEYS[k + 3]
      if dm.period == 'month' then pk = KEYS[k + 4] elseif dm.period == 'total' then pk = KEYS[k + 5] end
      local used = tonumber(redis.call('GET', pk) or '0')
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '(' .. now, '+inf')) do
        used = used + tonumber(string.match(m, '|(%d+)$') or '0')
      end
      if used >= dm.budget then return refuse(d, 'budget', dm.budget, used) end
    end
  end
end
local out = {1}
for d = 0, ndim - 1 do
  local k = d * ${KEYS_PER_DIM}
  local r, t = rs[d], ts[d]
  if r ~= nil then r = r - 1 end
  if t ~= nil and not hit then t = t - need end
  if lim[d] then
    local f = {}
    if r ~= nil then f[1] = 'r'; f[2] = r; f[3] = 'rt'; f[4] = now end
    if t ~= nil then f[#f + 1] = 't'; f[#f + 1] = t; f[#f + 1] = 'tt'; f[#f + 1] = now end
    local renew = xs[d] == nil or now - xs[d] >= ttl
    if renew then f[#f + 1] = 'x'; f[#f + 1] = now end
    if #f > 0 then redis.call('HSET', KEYS[k + 1], unpack(f)) end
    if renew then
      redis.call('PEXPIRE', KEYS[k + 1], 3600000)
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', now)
    end
    if lease then
      redis.call('ZADD', KEYS[k + 2], now + ttl, member)
      redis.call('PEXPIRE', KEYS[k + 2], ttl * 2)
    end
  end
  out[#out + 1] = r == nil and '' or math.floor(r * 1000)
  out[#out + 1] = t == nil and '' or math.floor(t * 1000)
end
return out
`;

// ARGV[1]: AdmitArgs as JSON (one argument instead of ~20: each costs the gateway's Redis client
// more than decoding them costs Redis).
const ADMIT = `${SHARED_FN}
local a = cjson.decode(ARGV[1])
local ndim = #a.dims
${ADMIT_BODY}`;

// Admission with a cache lookup riding along (single server only: the lookup's keys are in other
// slots). KEYS: the admission's, then the lookup's; ARGV: AdmitArgs, then the lookup's. Returns
// the admission's reply, the entry and the lock flag.
const ADMIT_LOOKUP = `${SHARED_FN}${LOOKUP_LUA}
local a = cjson.decode(ARGV[1])
local ndim = #a.dims
local function admit()
${ADMIT_BODY}
end
local res = admit()
local ko = ndim * ${KEYS_PER_DIM}
local entry, locked = lookup(ko, 1, #KEYS - ko)
return {res, entry, locked}
`;

// Settlement of the requests that ended on one set of dimensions, when no admission has carried
// it: tokens corrected by their real usage (refund or charge, summed), their leases released,
// their real cost added to the spend counters. ARGV[1]: {now, dims: DimJson[], settle: SettleJson}
// as JSON.
const SETTLE = `${SHARED_FN}
local a = cjson.decode(ARGV[1])
local now, delta, cost, released = a.now, a.settle.delta, a.settle.cost, a.settle.leases
for d = 0, #a.dims - 1 do
  local k, dm = d * ${KEYS_PER_DIM}, a.dims[d + 1]
  if dm.tpm >= 0 and delta ~= 0 then
    local st = redis.call('HMGET', KEYS[k + 1], 't', 'tt')
    local t = tonumber(st[1])
    if t ~= nil then
      redis.call('HSET', KEYS[k + 1], 't', level(t, tonumber(st[2]), dm.tpm, now, delta), 'tt', now)
    end
  end
  if #released > 0 and dm.leased then redis.call('ZREM', KEYS[k + 2], unpack(released)) end
  if cost > 0 then spend(k, cost) end
end
return 1
`;

/** A settlement as the scripts read it: token delta, cost (nano-USD), leases to release. */
interface SettleJson {
  delta: number;
  cost: number;
  leases: string[];
}

/**
 * A dimension as both scripts read it. Limits are -1 where it has none; `leased`: it has some
 * limit, so it is checked and its requests hold leases (a team without settings has neither).
 */
interface DimJson {
  rpm: number;
  tpm: number;
  maxc: number;
  budget: number;
  period: Dimension['period'];
  leased: boolean;
}

/** The admission script's argument. */
interface AdmitArgs {
  now: number;
  /** The lease member: "<lease id>|<reserved nano-USD>". */
  lease: string;
  need: number;
  ttl: number;
  /** 0: a miss; 1: a hit; 2: a hit served at once (checked against the slots, takes none). */
  hit: 0 | 1 | 2;
  dims: DimJson[];
  settle: SettleJson;
}

type Script = (...args: (string | number)[]) => Promise<unknown>;

/** A key and, when it has one, its team: the most dimensions a request has. */
const MAX_DIMS = 2;
/** How long a settlement waits for an admission on the same dimensions to carry it. */
const SETTLE_WAIT_MS = 20;
/** Most leases released by one call (Lua's unpack has a limit). */
const MAX_LEASES = 1000;

/** Settlements of requests on one set of dimensions (and one day), summed until they are written. */
interface PendingSettle {
  keys: string[];
  dims: Dimension[];
  now: number;
  tokenDelta: number;
  costNano: number;
  leases: string[];
  waiters: { resolve: () => void; reject: (err: unknown) => void }[];
}

/**
 * Limits in Redis: one Lua call admits a request, shared by every instance. Settlements are
 * summed per set of dimensions and ride along with the next admission on those dimensions (the
 * same Lua call), or go on their own after SETTLE_WAIT_MS when no admission comes. On a single
 * server, the admission also carries the request's cache lookup (see RideAlong).
 */
export class RedisLimitStore implements LimitStore {
  private readonly redis: RedisClient;
  private readonly scripts = new Map<string, Script>();
  private readonly riders: RideAlong | null;
  private readonly admitLookup: ((...args: (string | number | Buffer)[]) => Promise<unknown>) | null;
  private readonly pending = new ChurnMap<string, PendingSettle>();
  private readonly keyCache = new Map<string, string[]>();
  private readonly dimsJsonOf = new WeakMap<Dimension[], string>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    redis: RedisClient,
    private readonly prefix: string,
  ) {
    this.redis = redis;
    // One definition per number of dimensions, with its fixed number of keys, so a call's first
    // argument is its first key: ioredis's auto-pipelining groups Cluster commands by the slot of
    // the first argument, and a leading key count would put the call in another node's pipeline
    // (which then fails as a whole: "All keys in the pipeline should belong to the same slots").
    // Defined up front: pipelines copy the commands defined when they are created.
    for (let n = 1; n <= MAX_DIMS; n++) {
      for (const [kind, lua] of [
        ['Admit', ADMIT],
        ['Settle', SETTLE],
      ] as const) {
        const name = `tollgate${kind}${n}`;
        redis.defineCommand(name, { numberOfKeys: n * KEYS_PER_DIM, lua });
        this.scripts.set(name, (...args) => (redis as unknown as Record<string, Script>)[name]!(...args));
      }
    }
    if (redis instanceof Cluster) {
      this.riders = null;
      this.admitLookup = null;
    } else {
      // Key count first: the lookup's keys vary with the finishes it carries. Replies as Buffers:
      // the entry is raw bytes.
      redis.defineCommand('tollgateAdmitLookup', { lua: ADMIT_LOOKUP });
      const call = redis as unknown as Record<string, Script>;
      this.riders = rideAlongFor(redis);
      this.admitLookup = (...args) => call['tollgateAdmitLookupBuffer']!(...(args as (string | number)[]));
    }
  }

  private script(kind: 'Admit' | 'Settle', dims: number): Script {
    const s = this.scripts.get(`tollgate${kind}${dims}`);
    if (!s) throw new Error(`no limit script for ${dims} dimensions`);
    return s;
  }

  private keys(dims: Dimension[], day: string, month: string): string[] {
    if (dims.length === 1) return this.dimensionKeys(dims[0]!, day, month);
    const keys: string[] = [];
    for (const d of dims) keys.push(...this.dimensionKeys(d, day, month));
    return keys;
  }

  /** Names the set of dimensions (and day) that settlements are summed for: their day-spend keys. */
  private static group(keys: string[], dims: number): string {
    return dims === 1 ? keys[2]! : `${keys[2]!} ${keys[KEYS_PER_DIM + 2]!}`;
  }

  /** A dimension's five keys for a day, built once (every admission and settlement needs them). */
  private dimensionKeys(d: Dimension, day: string, month: string): string[] {
    const id = `${d.tag}\u0000${d.id}\u0000${day}`;
    let keys = this.keyCache.get(id);
    if (keys === undefined) {
      const base = `{${this.prefix}lim:${d.tag}}:${d.id}`;
      keys = [`${base}:b`, `${base}:l`, `${base}:sd:${day}`, `${base}:sm:${month}`, `${base}:st`];
      // Bounded: a new day's keys replace the old ones; a burst of keys just starts over.
      if (this.keyCache.size >= 10_000) this.keyCache.clear();
      this.keyCache.set(id, keys);
    }
    return keys;
  }

  /** A dimension set as the scripts read it (DimJson[]), as JSON, built once per set. */
  private dimsJson(dims: Dimension[]): string {
    let json = this.dimsJsonOf.get(dims);
    if (json === undefined) {
      const a: DimJson[] = dims.map((d) => ({
        rpm: d.rpm ?? -1,
        tpm: d.tpm ?? -1,
        maxc: d.maxConcurrent ?? -1,
        budget: d.budgetNano ?? -1,
        period: d.period,
        leased: d.rpm !== null || d.tpm !== null || d.maxConcurrent !== null || d.budgetNano !== null,
      }));
      json = JSON.stringify(a);
      this.dimsJsonOf.set(dims, json);
    }
    return json;
  }

  async admit(i: AdmitInput): Promise<AdmitResult> {
    const member = `${i.leaseId}|${i.costNano}`;
    const keys = this.keys(i.dims, i.day, i.month);
    const group = RedisLimitStore.group(keys, i.dims.length);
    const carried = this.pending.get(group);
    if (carried) this.pending.delete(group);
    const hit: AdmitArgs['hit'] = i.hit ? (i.lease ? 1 : 2) : 0;
    // AdmitArgs, written out: JSON.stringify of the object cost ~2 us a request.
    const argv = `{"now":${i.now},"lease":${JSON.stringify(member)},"need":${i.tokens},"ttl":${i.leaseTtlMs},"hit":${hit},"dims":${this.dimsJson(i.dims)},"settle":${settleJson(carried)}}`;
    const rider = this.riders?.take();
    let res: (string | number | Buffer)[];
    let lookup: LookupReply | null = null;
    try {
      if (rider) {
        const reply = (await this.admitLookup!(
          keys.length + rider.keys.length,
          ...keys,
          ...rider.keys,
          argv,
          ...rider.args,
        )) as [(number | Buffer)[], Buffer | null, number];
        res = reply[0];
        lookup = [reply[1], reply[2]];
      } else {
        res = (await this.script('Admit', i.dims.length)(...keys, argv)) as (string | number)[];
      }
    } catch (err) {
      rider?.failed(err);
      // Not written: the settlements go back in line for a call of their own.
      if (carried) this.enqueue(group, carried);
      throw err;
    }
    if (lookup) rider!.done(lookup);
    if (carried) for (const w of carried.waiters) w.resolve();
    if (res[0] !== 1) {
      return {
        ok: false,
        dim: Number(res[1]),
        limit: String(res[2]) as 'rpm',
        capacity: Number(String(res[3])),
        level: Number(String(res[4])),
      };
    }
    // Levels in thousandths; a dimension without that limit sends an empty string.
    const views: BucketView[] = i.dims.map((d, n) => {
      const r = res[1 + n * 2];
      const t = res[2 + n * 2];
      return {
        requests: d.rpm === null || typeof r !== 'number' ? null : { limit: d.rpm, remaining: r / 1000 },
        tokens: d.tpm === null || typeof t !== 'number' ? null : { limit: d.tpm, remaining: t / 1000 },
      };
    });
    return { ok: true, views, lease: member };
  }

  /** Resolves once the settlement is written (with an admission, or on its own). */
  settle(s: SettleInput): Promise<void> {
    const keys = this.keys(s.dims, s.day, s.month);
    return new Promise<void>((resolve, reject) => {
      this.enqueue(RedisLimitStore.group(keys, s.dims.length), {
        keys,
        dims: s.dims,
        now: s.now,
        tokenDelta: s.tokenDelta,
        costNano: s.costNano,
        leases: [s.lease],
        waiters: [{ resolve, reject }],
      });
    });
  }

  /** Writes every waiting settlement now (the timer's job; also at shutdown). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const all = this.pending.values();
    this.pending.clear();
    await Promise.allSettled(all.map((p) => this.write(p)));
  }

  /** Adds settlements to those waiting on the same dimensions. */
  private enqueue(group: string, s: PendingSettle): void {
    const p = this.pending.get(group);
    if (!p) this.pending.set(group, s);
    else {
      p.dims = s.dims;
      p.now = Math.max(p.now, s.now);
      p.tokenDelta += s.tokenDelta;
      p.costNano += s.costNano;
      p.leases.push(...s.leases);
      p.waiters.push(...s.waiters);
      if (p.leases.length >= MAX_LEASES) {
        this.pending.delete(group);
        void this.write(p);
        return;
      }
    }
    this.timer ??= setTimeout(() => void this.flush(), SETTLE_WAIT_MS).unref();
  }

  private write(p: PendingSettle): Promise<void> {
    const args = `{"now":${p.now},"dims":${this.dimsJson(p.dims)},"settle":${settleJson(p)}}`;
    const settle = this.script('Settle', p.dims.length);
    return settle(...p.keys, args).then(
      () => {
        for (const w of p.waiters) w.resolve();
      },
      (err: unknown) => {
        for (const w of p.waiters) w.reject(err);
      },
    );
  }

  async renew(dims: Dimension[], lease: string, expiresAt: number): Promise<void> {
    const keys = this.keys(dims, '', '');
    // The set outlives its longest lease: a request running alone keeps its slot past the
    // expiry the last admission gave the set.
    const keepMs = 2 * Math.max(0, expiresAt - Date.now());
    await Promise.all(
      dims.flatMap((_, n) => {
        const leases = keys[n * KEYS_PER_DIM + 1]!;
        return [this.redis.zadd(leases, 'XX', expiresAt, lease), this.redis.pexpire(leases, keepMs)];
      }),
    );
  }

  async peek(dim: Dimension, now: number): Promise<PeekView> {
    const k = this.keys([dim], '', '');
    const [st, inUse] = await Promise.all([
      this.redis.hmget(k[0]!, 'r', 'rt', 't', 'tt'),
      this.redis.zcount(k[1]!, now, '+inf'),
    ]);
    return {
      requests: dim.rpm === null ? null : level(st[0], st[1], dim.rpm, now),
      tokens: dim.tpm === null ? null : level(st[2], st[3], dim.tpm, now),
      inUse,
    };
  }

  async spend(dim: Dimension, day: string, month: string): Promise<SpendView> {
    const k = this.keys([dim], day, month);
    const [d, m, t] = await this.redis.mget(k[2]!, k[3]!, k[4]!);
    return { day: Number(d ?? 0), month: Number(m ?? 0), total: Number(t ?? 0) };
  }
}

/** SettleJson of the settlements an admission carries (none: all zero). */
function settleJson(p: PendingSettle | undefined): string {
  return p
    ? `{"delta":${p.tokenDelta},"cost":${p.costNano},"leases":${JSON.stringify(p.leases)}}`
    : '{"delta":0,"cost":0,"leases":[]}';
}

function level(
  value: string | null | undefined,
  at: string | null | undefined,
  cap: number,
  now: number,
): number {
  if (value === null || value === undefined) return cap;
  return Math.min(cap, Number(value) + ((now - Number(at)) * cap) / 60000);
}
