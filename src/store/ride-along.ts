import type { RedisClient } from './redis.js';

// A response-cache lookup in Lua, shared by the cache's own script and the limit admission that
// may carry it. KEYS[ko + 1] the entry, KEYS[ko + 2] its miss lock, then an entry and a lock per
// finish of an earlier leader; ARGV[ao + 1] the lock's TTL, then an entry's bytes ('' for none) and
// its TTL per finish. The finishes are written first; then the entry, or else an attempt at the
// lock: returns the entry (false for none) and 1 if the lock was taken.
export const LOOKUP_LUA = `
local function lookup(ko, ao, nk)
  for r = 3, nk, 2 do
    if ARGV[ao + r - 1] ~= '' then redis.call('SET', KEYS[ko + r], ARGV[ao + r - 1], 'PX', ARGV[ao + r]) end
    redis.call('DEL', KEYS[ko + r + 1])
  end
  local e = redis.call('GET', KEYS[ko + 1])
  if e then return e, 0 end
  if redis.call('SET', KEYS[ko + 2], '1', 'PX', ARGV[ao + 1], 'NX') then return false, 1 end
  return false, 0
end
`;

/** The reply of a lookup: the entry's bytes (or null) and 1 if the miss lock was taken. */
export type LookupReply = [Buffer | null, number];

/** A cache lookup waiting for a ride: its keys and arguments as LOOKUP_LUA takes them. */
export interface Rider {
  keys: string[];
  args: (string | number | Buffer)[];
  done(reply: LookupReply): void;
  failed(err: unknown): void;
  /** Sends the lookup on its own: no admission took it. */
  alone(): void;
}

/**
 * On a single Redis server, a request's cache lookup rides along with its limit admission: both
 * leave in one script call instead of two (the request's two round trips were already one; this
 * saves the second call's work in the gateway and in Redis). The cache posts the lookup; the next
 * admission on the same connection takes it. One that nothing has taken by the end of the turn of
 * the event loop, when the connection's gathered writes leave anyway, goes on its own.
 */
export class RideAlong {
  private waiting: Rider[] = [];
  private scheduled = false;

  post(rider: Rider): void {
    this.waiting.push(rider);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.sendLeftAlone());
    }
  }

  /** The oldest lookup waiting, now the caller's to send (and to answer or fail). */
  take(): Rider | undefined {
    return this.waiting.shift();
  }

  private sendLeftAlone(): void {
    this.scheduled = false;
    const left = this.waiting;
    this.waiting = [];
    for (const r of left) r.alone();
  }
}

const byClient = new WeakMap<RedisClient, RideAlong>();

/** The one RideAlong of a connection, shared by the stores that use it. */
export function rideAlongFor(redis: RedisClient): RideAlong {
  let r = byClient.get(redis);
  if (!r) {
    r = new RideAlong();
    byClient.set(redis, r);
  }
  return r;
}
