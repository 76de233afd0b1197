import type { Config } from '../config/schema.js';
import type { KeyRecord } from '../keys/types.js';
import type { Metrics } from '../metrics/metrics.js';
import type { ChatRequest } from '../proxy/chat-request.js';
import { withDeadline } from '../store/redis.js';
import type { CacheEntry, CacheStore } from './cache-store.js';
import { cacheKeyOf } from './canonical.js';

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

/** A miss in progress: the leader finishes it; waiters receive what it produced (or null). */
export type Flight =
  | { leader: true; finish(entry: CacheEntry | null): void }
  | { leader: false; result: Promise<CacheEntry | null> };

interface LocalFlight {
  result: Promise<CacheEntry | null>;
  resolve(e: CacheEntry | null): void;
}

const POLL_MS = 25;

/**
 * The response cache (SPEC section 7): exact match on the canonical request within a scope,
 * single flight within the instance (a promise per key) and across instances (a Redis lock
 * plus polling for the leader's entry). Any store trouble is a miss, never an error.
 */
export class ResponseCache {
  private readonly flights = new Map<string, LocalFlight>();

  constructor(
    private readonly store: CacheStore,
    private readonly cfg: Config['cache'],
    private readonly deadlineMs: number,
    private readonly metrics: Metrics | null,
  ) {}

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

  async lookup(id: string, maxAgeSeconds: number | null): Promise<CacheEntry | null> {
    try {
      const e = await withDeadline(this.store.get(id), this.deadlineMs);
      const fresh =
        e !== null && (maxAgeSeconds === null || Date.now() - e.createdAt <= maxAgeSeconds * 1000);
      this.metrics?.cacheLookups.inc({ result: fresh ? 'hit' : 'miss' });
      return fresh ? e : null;
    } catch {
      this.metrics?.cacheLookups.inc({ result: 'error' });
      this.metrics?.storeErrors.inc({ store: 'cache', op: 'get' });
      return null;
    }
  }

  countBypass(): void {
    this.metrics?.cacheLookups.inc({ result: 'bypass' });
  }

  /** Joins the miss in progress for `id`, or leads it. */
  async begin(id: string): Promise<Flight> {
    const local = this.flights.get(id);
    if (local) return { leader: false, result: local.result };
    let resolve!: (e: CacheEntry | null) => void;
    const result = new Promise<CacheEntry | null>((r) => {
      resolve = r;
    });
    this.flights.set(id, { result, resolve });
    const done = (e: CacheEntry | null): void => {
      this.flights.delete(id);
      resolve(e);
    };
    let locked = true;
    try {
      locked = await withDeadline(this.store.lock(id, this.cfg.lockWaitMs + 1000), this.deadlineMs);
    } catch {
      // Without the store there is no cross-instance coordination: lead.
    }
    if (locked) return this.leadership(id, done, true);
    // Another instance is fetching this answer: wait for its entry, then lead ourselves.
    const entry = await this.pollFor(id);
    if (entry) {
      done(entry);
      return { leader: false, result: Promise.resolve(entry) };
    }
    return this.leadership(id, done, false);
  }

  private leadership(id: string, done: (e: CacheEntry | null) => void, unlock: boolean): Flight {
    return {
      leader: true,
      finish: (entry) => {
        if (entry) {
          withDeadline(this.store.set(id, entry, this.cfg.ttlSeconds * 1000), 5000).catch(() => {
            this.metrics?.storeErrors.inc({ store: 'cache', op: 'set' });
          });
        }
        if (unlock) this.store.unlock(id).catch(() => {});
        done(entry);
      },
    };
  }

  private async pollFor(id: string): Promise<CacheEntry | null> {
    const deadline = Date.now() + this.cfg.lockWaitMs;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      try {
        const e = await withDeadline(this.store.get(id), this.deadlineMs);
        if (e) return e;
        // The lock is gone: either the entry has just been written, or the leader failed.
        if (!(await withDeadline(this.store.locked(id), this.deadlineMs))) {
          return await withDeadline(this.store.get(id), this.deadlineMs);
        }
      } catch {
        return null;
      }
    }
    return null;
  }
}
