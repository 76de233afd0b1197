import { Cluster } from 'ioredis';
import type { TokenUsage } from '../proxy/usage.js';
import type { RedisClient } from '../store/redis.js';
import {
  LOOKUP_LUA,
  type LookupReply,
  type RideAlong,
  type Rider,
  rideAlongFor,
} from '../store/ride-along.js';

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
  /**
   * Stores the leader's entry (if any) and releases its lock. A remote store may hold it back
   * briefly to send it with its next lookup; it resolves once written.
   */
  finish(id: string, entry: CacheEntry | null, ttlMs: number): Promise<void>;
  /** Writes what `finish` holds back (at shutdown). */
  flush?(): Promise<void>;
  /** Whether some instance still holds the lock (its leader is still fetching). */
  locked(id: string): Promise<boolean>;
}

// Entry and lock share the id as hash tag, so both live in one Redis Cluster slot.
const LOOKUP = `${LOOKUP_LUA}
return {lookup(0, 0, #KEYS)}
`;

// The leader's answer stored (when there is one) and its lock released, in one call: a waiter
// that sees the lock gone finds the entry.
const FINISH = `
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('DEL', KEYS[2])
return 1
`;

/**
 * How long a finish may wait for a lookup to carry it: waiters on other instances poll every
 * 25 ms anyway, and a quiet instance writes it after this.
 */
const FINISH_WAIT_MS = 10;

interface HeldFinish {
  entryKey: string;
  lockKey: string;
  raw: Buffer | string;
  ttlMs: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}
type Scripted = RedisClient & {
  tollgateCacheFinish(entry: string, lock: string, raw: Buffer | string, ttl: number): Promise<number>;
  /** The Buffer-reply form ioredis defines next to every script: entries are raw bytes. */
  tollgateCacheLookupBuffer(entry: string, lock: string, ttl: number): Promise<LookupReply>;
  /** Key count first: the number of finishes carried varies. */
  tollgateCacheFinishThenLookupBuffer(...args: (string | number | Buffer)[]): Promise<LookupReply>;
};

const decodeReply = ([raw, locked]: LookupReply): { entry: CacheEntry | null; locked: boolean } => ({
  entry: raw ? decodeEntry(raw) : null,
  locked: Number(locked) === 1,
});

/** A lookup (with the finishes it carries) waiting for an admission to take it along. */
class PendingLookup implements Rider {
  constructor(
    private readonly redis: Scripted,
    readonly keys: string[],
    readonly args: (string | number | Buffer)[],
    private readonly held: HeldFinish[],
    private readonly resolve: (r: { entry: CacheEntry | null; locked: boolean }) => void,
    private readonly reject: (err: unknown) => void,
  ) {}

  done(reply: LookupReply): void {
    for (const h of this.held) h.resolve();
    this.resolve(decodeReply(reply));
  }

  failed(err: unknown): void {
    for (const h of this.held) h.reject(err);
    this.reject(err);
  }

  alone(): void {
    this.redis.tollgateCacheFinishThenLookupBuffer(this.keys.length, ...this.keys, ...this.args).then(
      (reply) => this.done(reply),
      (err: unknown) => this.failed(err),
    );
  }
}

export class RedisCacheStore implements CacheStore {
  private readonly redis: Scripted;
  /**
   * On a single server, lookups ride along with limit admissions and finishes with lookups. A
   * Cluster spreads entries over slots, so nothing rides with another key's call there.
   */
  private readonly riders: RideAlong | null;
  private held: HeldFinish[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    redis: RedisClient,
    private readonly prefix: string,
  ) {
    redis.defineCommand('tollgateCacheLookup', { numberOfKeys: 2, lua: LOOKUP });
    redis.defineCommand('tollgateCacheFinishThenLookup', { lua: LOOKUP });
    redis.defineCommand('tollgateCacheFinish', { numberOfKeys: 2, lua: FINISH });
    this.redis = redis as Scripted;
    this.riders = redis instanceof Cluster ? null : rideAlongFor(redis);
  }

  private entryKey(id: string): string {
    return `${this.prefix}cache:{${id}}`;
  }

  private lockKey(id: string): string {
    return `${this.prefix}cache-lock:{${id}}`;
  }

  async getOrLock(id: string, lockTtlMs: number): Promise<{ entry: CacheEntry | null; locked: boolean }> {
    if (!this.riders) {
      return decodeReply(
        await this.redis.tollgateCacheLookupBuffer(this.entryKey(id), this.lockKey(id), lockTtlMs),
      );
    }
    const held = this.takeHeld();
    const keys: string[] = [this.entryKey(id), this.lockKey(id)];
    const args: (string | number | Buffer)[] = [lockTtlMs];
    for (const h of held) {
      keys.push(h.entryKey, h.lockKey);
      args.push(h.raw, h.ttlMs);
    }
    const riders = this.riders;
    return new Promise((resolve, reject) => {
      riders.post(new PendingLookup(this.redis, keys, args, held, resolve, reject));
    });
  }

  async get(id: string): Promise<CacheEntry | null> {
    const raw = await this.redis.getBuffer(this.entryKey(id));
    return raw === null ? null : decodeEntry(raw);
  }

  async lock(id: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.set(this.lockKey(id), '1', 'PX', ttlMs, 'NX')) === 'OK';
  }

  finish(id: string, entry: CacheEntry | null, ttlMs: number): Promise<void> {
    const raw = entry ? encodeEntry(entry) : '';
    if (!this.riders) {
      return this.redis.tollgateCacheFinish(this.entryKey(id), this.lockKey(id), raw, ttlMs).then(() => {});
    }
    return new Promise<void>((resolve, reject) => {
      this.held.push({ entryKey: this.entryKey(id), lockKey: this.lockKey(id), raw, ttlMs, resolve, reject });
      this.timer ??= setTimeout(() => void this.flush(), FINISH_WAIT_MS).unref();
    });
  }

  /** Writes the held finishes on their own (the timer's job when no lookup came; at shutdown). */
  async flush(): Promise<void> {
    await Promise.all(
      this.takeHeld().map((h) =>
        this.redis.tollgateCacheFinish(h.entryKey, h.lockKey, h.raw, h.ttlMs).then(h.resolve, h.reject),
      ),
    );
  }

  /** The finishes held so far, now this call's to write; the timer has nothing left to do. */
  private takeHeld(): HeldFinish[] {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const held = this.held;
    this.held = [];
    return held;
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
