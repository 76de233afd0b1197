import type { Config } from '../config/schema.js';
import type { KeyRecord } from '../keys/types.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ChatRequest } from '../proxy/chat-request.js';
import { withDeadline } from '../store/redis.js';
import { ChurnMap } from '../util/churn-map.js';
import type { CacheEntry, CacheStore } from './cache-store.js';
import { cacheKeyOf } from './canonical.js';
import { LiveFeed } from './live-feed.js';

/** The client's Cache-Control, as far as the gateway honours it. */
export interface CacheControl {
  noStore: boolean;
  noCache: boolean;
  maxAgeSeconds: number | null;
}

export function parseCacheControl(header: string | undefined): CacheControl {
  const h = header?.toLowerCase() ?? '';
  const maxAge = /(?:^|[,\s])max-age\s*=\s*(\d+)/.exec(h);
  return {
    noStore: /(?:^|[,\s])no-store\b/.test(h),
    noCache: /(?:^|[,\s])no-cache\b/.test(h),
    maxAgeSeconds: maxAge ? Number(maxAge[1]) : null,
  };
}

/**
 * A miss in progress. The leader fetches and finishes it; waiters receive what it produced (or
 * null) and, in this instance, may follow its stream live. Everyone `leave`s when done; the
 * upstream request is aborted only when the last one has left before the end.
 */
export type Flight =
  | {
      leader: true;
      feed: LiveFeed;
      finish(entry: CacheEntry | null): void;
      leave(): void;
      onAbandoned(abort: () => void): void;
    }
  | { leader: false; feed: LiveFeed | null; result: Promise<CacheEntry | null>; leave(): void };

interface LocalFlight {
  result: Promise<CacheEntry | null>;
  feed: LiveFeed;
  listeners: number;
  abort: (() => void) | null;
}

/** What opening the cache for a request gives: an entry to serve, or a part in a miss. */
export type Opened = { entry: CacheEntry } | { entry: null; flight: Flight };

const POLL_MS = 25;
// The in-process tier in front of Redis: small, short-lived, so a repeated hit costs no round
// trip. It takes entries found in the store (asked for again), not every answer stored: misses
// that are never repeated would only fill it.
const LOCAL_MAX_BYTES = 32 * 1024 * 1024;
const LOCAL_TTL_MS = 60_000;

/**
 * The response cache (SPEC section 7): exact match on the canonical request within a scope,
 * single flight within the instance (a promise per entry) and across instances (a Redis lock
 * taken in the same round trip as the lookup; waiters poll for the leader's entry). Any store
 * trouble is a miss, never an error.
 */
export class ResponseCache {
  private readonly flights = new ChurnMap<string, LocalFlight>();
  private readonly near = new Map<string, { entry: CacheEntry; expires: number; bytes: number }>();
  private nearBytes = 0;

  constructor(
    private readonly store: CacheStore,
    private readonly cfg: Config['cache'],
    private readonly deadlineMs: number,
    private readonly metrics: Metrics | null,
    /** The store is remote (Redis): recent entries are kept in process too. */
    private readonly remote = true,
  ) {}

  private nearGet(id: string, maxAgeSeconds: number | null): CacheEntry | null {
    const n = this.near.get(id);
    if (!n) return null;
    if (n.expires <= Date.now()) {
      this.nearDrop(id);
      return null;
    }
    if (maxAgeSeconds !== null && Date.now() - n.entry.createdAt > maxAgeSeconds * 1000) return null;
    return n.entry;
  }

  private nearPut(id: string, entry: CacheEntry): void {
    if (!this.remote) return;
    this.nearDrop(id);
    const bytes = entry.body.length;
    const remaining = this.cfg.ttlSeconds * 1000 - (Date.now() - entry.createdAt);
    const ttl = Math.min(LOCAL_TTL_MS, remaining);
    if (ttl <= 0 || bytes > LOCAL_MAX_BYTES / 16) return;
    // Oldest first out (Map keeps insertion order).
    for (const oldest of this.near.keys()) {
      if (this.nearBytes + bytes <= LOCAL_MAX_BYTES) break;
      this.nearDrop(oldest);
    }
    this.near.set(id, { entry, expires: Date.now() + ttl, bytes });
    this.nearBytes += bytes;
  }

  private nearDrop(id: string): void {
    const n = this.near.get(id);
    if (!n) return;
    this.near.delete(id);
    this.nearBytes -= n.bytes;
  }

  get maxEntryBytes(): number {
    return this.cfg.maxEntryBytes;
  }

  /** Entry id: scope + hash of the canonical request. A key never reads another scope's entries. */
  idFor(key: KeyRecord, modelId: string, req: ChatRequest): string {
    const scope =
      this.cfg.scope === 'global'
        ? 'g'
        : this.cfg.scope === 'team' && key.team !== null
          ? `t:${key.team}`
          : `k:${key.id}`;
    return `${scope}:${cacheKeyOf(modelId, req)}`;
  }

  countBypass(): void {
    this.metrics?.cacheLookupsOf.get('bypass').inc();
  }

  /** Writes the leaders' entries the store still holds back (at shutdown). */
  async flush(): Promise<void> {
    await this.store.flush?.();
  }

  /** Stores a leader's entry (a remote store sends it with its next lookup) and frees its lock. */
  private finishInStore(id: string, entry: CacheEntry | null): void {
    withDeadline(this.store.finish(id, entry, this.cfg.ttlSeconds * 1000), 5000).catch(() => {
      this.metrics?.storeErrors.inc({ store: 'cache', op: 'set' });
    });
  }

  /** A hit from the in-process tier, if it has a fresh entry (no I/O). */
  nearHit(id: string, control: CacheControl): CacheEntry | null {
    if (control.noCache) return null;
    const e = this.nearGet(id, control.maxAgeSeconds);
    if (e) this.metrics?.cacheLookupsOf.get('hit').inc();
    return e;
  }

  /** Looks the request up and, on a miss, joins or leads the single flight for it. */
  async open(id: string, control: CacheControl): Promise<Opened> {
    const local = control.noCache ? undefined : this.flights.get(id);
    if (local) {
      this.metrics?.cacheLookupsOf.get('hit').inc();
      local.listeners++;
      return {
        entry: null,
        flight: { leader: false, feed: local.feed, result: local.result, leave: () => this.leave(local) },
      };
    }
    let resolve!: (e: CacheEntry | null) => void;
    const result = new Promise<CacheEntry | null>((r) => {
      resolve = r;
    });
    const flight: LocalFlight = { result, feed: new LiveFeed(), listeners: 1, abort: null };
    this.flights.set(id, flight);
    const done = (e: CacheEntry | null): void => {
      if (this.flights.get(id) === flight) this.flights.delete(id);
      flight.feed.close();
      resolve(e);
    };
    const lockTtl = this.cfg.lockWaitMs + 1000;
    let entry: CacheEntry | null = null;
    let locked = true;
    try {
      if (control.noCache) {
        locked = await withDeadline(this.store.lock(id, lockTtl), this.deadlineMs);
      } else {
        ({ entry, locked } = await withDeadline(this.store.getOrLock(id, lockTtl), this.deadlineMs));
        if (
          entry &&
          control.maxAgeSeconds !== null &&
          Date.now() - entry.createdAt > control.maxAgeSeconds * 1000
        ) {
          entry = null;
          locked = await withDeadline(this.store.lock(id, lockTtl), this.deadlineMs);
        }
      }
      this.metrics?.cacheLookupsOf.get(entry ? 'hit' : 'miss').inc();
    } catch {
      // Without the store there is neither an entry nor cross-instance coordination: lead.
      this.metrics?.cacheLookupsOf.get('error').inc();
      this.metrics?.storeErrors.inc({ store: 'cache', op: 'get' });
      return { entry: null, flight: this.leadership(id, flight, done, false) };
    }
    if (entry) {
      this.nearPut(id, entry);
      done(entry);
      return { entry };
    }
    if (locked) return { entry: null, flight: this.leadership(id, flight, done, true) };
    // Another instance is fetching this answer: wait for its entry, else lead ourselves.
    const polled = await this.pollFor(id);
    if (polled) {
      this.nearPut(id, polled);
      done(polled);
      return {
        entry: null,
        flight: { leader: false, feed: null, result: Promise.resolve(polled), leave: () => {} },
      };
    }
    return { entry: null, flight: this.leadership(id, flight, done, false) };
  }

  private leave(flight: LocalFlight): void {
    flight.listeners--;
    if (flight.listeners === 0) flight.abort?.();
  }

  private leadership(
    id: string,
    flight: LocalFlight,
    done: (e: CacheEntry | null) => void,
    holdsLock: boolean,
  ): Flight {
    return {
      leader: true,
      feed: flight.feed,
      leave: () => this.leave(flight),
      onAbandoned: (abort) => {
        flight.abort = abort;
      },
      finish: (entry) => {
        if (entry || holdsLock) this.finishInStore(id, entry);
        done(entry);
      },
    };
  }

  private async pollFor(id: string): Promise<CacheEntry | null> {
    const deadline = Date.now() + this.cfg.lockWaitMs;
    try {
      while (Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        const e = await withDeadline(this.store.get(id), this.deadlineMs);
        if (e) return e;
        // The lock is gone: either the entry has just been written, or the leader failed.
        if (!(await withDeadline(this.store.locked(id), this.deadlineMs))) {
          return await withDeadline(this.store.get(id), this.deadlineMs);
        }
      }
    } catch {
      return null;
    }
    return null;
  }
}
