import type { TokenUsage } from '../proxy/usage.js';
import type { RedisClient } from '../store/redis.js';

/** A cached answer: the chat.completion JSON bytes (streams are stored assembled) and its usage. */
export interface CacheEntry {
  createdAt: number;
  body: Buffer;
  usage: TokenUsage | null;
}

// Stored as one JSON line of metadata, then the body's bytes as they are: nothing is escaped or
// re-encoded on the way in or out.
const NL = 0x0a;

export function encodeEntry(e: CacheEntry): Buffer {
  return Buffer.concat([
    Buffer.from(`${JSON.stringify({ createdAt: e.createdAt, usage: e.usage })}\n`),
    e.body,
  ]);
}

export function decodeEntry(raw: Buffer): CacheEntry | null {
  const cut = raw.indexOf(NL);
  if (cut === -1) return null;
  try {
    const meta = JSON.parse(raw.toString('utf8', 0, cut)) as { createdAt: number; usage: TokenUsage | null };
    return { createdAt: meta.createdAt, usage: meta.usage, body: raw.subarray(cut + 1) };
  } catch {
    return null;
  }
}

/** Where entries and single-flight locks live. */
export interface CacheStore {
  /** The entry, or (when there is none) an attempt at the miss lock, in one round trip. */
  getOrLock(id: string, lockTtlMs: number): Promise<{ entry: CacheEntry | null; locked: boolean }>;
  get(id: string): Promise<CacheEntry | null>;
  /** Takes the cross-instance lock for a miss; false if another instance holds it. */
  lock(id: string, ttlMs: number): Promise<boolean>;
  /** Stores the leader's entry (if any) and releases its lock. */
  finish(id: string, entry: CacheEntry | null, ttlMs: number): Promise<void>;
  /** Whether some instance still holds the lock (its leader is still fetching). */
  locked(id: string): Promise<boolean>;
}

// Entry and lock share the id as hash tag, so both live in one Redis Cluster slot.
const GET_OR_LOCK = `
local e = redis.call('GET', KEYS[1])
if e then return {e, 0} end
if redis.call('SET', KEYS[2], '1', 'PX', ARGV[1], 'NX') then return {false, 1} end
return {false, 0}
`;

// The leader's answer stored (when there is one) and its lock released, in one call: a waiter
// that sees the lock gone finds the entry.
const FINISH = `
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('DEL', KEYS[2])
return 1
`;

type Scripted = RedisClient & {
  tollgateCacheFinish(entry: string, lock: string, raw: Buffer | string, ttl: number): Promise<number>;
  /** The Buffer-reply form ioredis defines next to every script: entries are raw bytes. */
  tollgateCacheGetOrLockBuffer(entry: string, lock: string, ttl: number): Promise<[Buffer | null, number]>;
};

export class RedisCacheStore implements CacheStore {
  private readonly redis: Scripted;

  constructor(
    redis: RedisClient,
    private readonly prefix: string,
  ) {
    redis.defineCommand('tollgateCacheGetOrLock', { numberOfKeys: 2, lua: GET_OR_LOCK });
    redis.defineCommand('tollgateCacheFinish', { numberOfKeys: 2, lua: FINISH });
    this.redis = redis as Scripted;
  }

  private entryKey(id: string): string {
    return `${this.prefix}cache:{${id}}`;
  }

  private lockKey(id: string): string {
    return `${this.prefix}cache-lock:{${id}}`;
  }

  async getOrLock(id: string, lockTtlMs: number): Promise<{ entry: CacheEntry | null; locked: boolean }> {
    const [raw, locked] = await this.redis.tollgateCacheGetOrLockBuffer(
      this.entryKey(id),
      this.lockKey(id),
      lockTtlMs,
    );
    return { entry: raw ? decodeEntry(raw) : null, locked: Number(locked) === 1 };
  }

  async get(id: string): Promise<CacheEntry | null> {
    const raw = await this.redis.getBuffer(this.entryKey(id));
    return raw === null ? null : decodeEntry(raw);
  }

  async lock(id: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(this.lockKey(id), '1', 'PX', ttlMs, 'NX')) === 'OK';
  }

  async finish(id: string, entry: CacheEntry | null, ttlMs: number): Promise<void> {
    await this.redis.tollgateCacheFinish(
      this.entryKey(id),
      this.lockKey(id),
      entry ? encodeEntry(entry) : '',
      ttlMs,
    );
  }

  async locked(id: string): Promise<boolean> {
    return (await this.redis.exists(this.lockKey(id))) === 1;
  }
}

/** Single-instance cache with a bounded number of entries (oldest evicted first). */
export class MemoryCacheStore implements CacheStore {
  private readonly entries = new Map<string, { entry: CacheEntry; expires: number }>();
  private readonly locks = new Map<string, number>();

  constructor(private readonly maxEntries = 10_000) {}

  async getOrLock(id: string, lockTtlMs: number): Promise<{ entry: CacheEntry | null; locked: boolean }> {
    const entry = await this.get(id);
    return entry ? { entry, locked: false } : { entry: null, locked: await this.lock(id, lockTtlMs) };
  }

  async get(id: string): Promise<CacheEntry | null> {
    const e = this.entries.get(id);
    if (!e) return null;
    if (e.expires <= Date.now()) {
      this.entries.delete(id);
      return null;
    }
    return e.entry;
  }

  async lock(id: string, ttlMs: number): Promise<boolean> {
    const until = this.locks.get(id);
    if (until !== undefined && until > Date.now()) return false;
    this.locks.set(id, Date.now() + ttlMs);
    return true;
  }

  async finish(id: string, entry: CacheEntry | null, ttlMs: number): Promise<void> {
    if (entry) {
      this.entries.delete(id);
      if (this.entries.size >= this.maxEntries) {
        const oldest = this.entries.keys().next().value;
        if (oldest !== undefined) this.entries.delete(oldest);
      }
      this.entries.set(id, { entry, expires: Date.now() + ttlMs });
    }
    this.locks.delete(id);
  }

  async locked(id: string): Promise<boolean> {
    return (this.locks.get(id) ?? 0) > Date.now();
  }
}
