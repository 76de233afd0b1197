import type { TokenUsage } from '../proxy/usage.js';
import type { RedisClient } from '../store/redis.js';

/** A cached answer: the chat.completion JSON (streams are stored assembled) and its usage. */
export interface CacheEntry {
  createdAt: number;
  body: string;
  usage: TokenUsage | null;
}

/** Where entries and single-flight locks live. */
export interface CacheStore {
  get(id: string): Promise<CacheEntry | null>;
  set(id: string, entry: CacheEntry, ttlMs: number): Promise<void>;
  /** Takes the cross-instance lock for a miss; false if another instance holds it. */
  lock(id: string, ttlMs: number): Promise<boolean>;
  unlock(id: string): Promise<void>;
  /** Whether some instance still holds the lock (its leader is still fetching). */
  locked(id: string): Promise<boolean>;
}

export class RedisCacheStore implements CacheStore {
  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
  ) {}

  async get(id: string): Promise<CacheEntry | null> {
    const raw = await this.redis.get(`${this.prefix}cache:${id}`);
    return raw === null ? null : (JSON.parse(raw) as CacheEntry);
  }

  async set(id: string, entry: CacheEntry, ttlMs: number): Promise<void> {
    await this.redis.set(`${this.prefix}cache:${id}`, JSON.stringify(entry), 'PX', ttlMs);
  }

  async lock(id: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(`${this.prefix}cache-lock:${id}`, '1', 'PX', ttlMs, 'NX')) === 'OK';
  }

  async unlock(id: string): Promise<void> {
    await this.redis.del(`${this.prefix}cache-lock:${id}`);
  }

  async locked(id: string): Promise<boolean> {
    return (await this.redis.exists(`${this.prefix}cache-lock:${id}`)) === 1;
  }
}

/** Single-instance cache with a bounded number of entries (oldest evicted first). */
export class MemoryCacheStore implements CacheStore {
  private readonly entries = new Map<string, { entry: CacheEntry; expires: number }>();
  private readonly locks = new Map<string, number>();

  constructor(private readonly maxEntries = 10_000) {}

  async get(id: string): Promise<CacheEntry | null> {
    const e = this.entries.get(id);
    if (!e) return null;
    if (e.expires <= Date.now()) {
      this.entries.delete(id);
      return null;
    }
    return e.entry;
  }

  async set(id: string, entry: CacheEntry, ttlMs: number): Promise<void> {
    this.entries.delete(id);
    if (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(id, { entry, expires: Date.now() + ttlMs });
  }

  async lock(id: string, ttlMs: number): Promise<boolean> {
    const until = this.locks.get(id);
    if (until !== undefined && until > Date.now()) return false;
    this.locks.set(id, Date.now() + ttlMs);
    return true;
  }

  async unlock(id: string): Promise<void> {
    this.locks.delete(id);
  }

  async locked(id: string): Promise<boolean> {
    return (this.locks.get(id) ?? 0) > Date.now();
  }
}
