import { hashKey, hasKeyShape, hasValidChecksum } from '../auth/key-format.js';
import { GatewayError } from '../errors/gateway-error.js';
import { withDeadline } from '../store/redis.js';
import type { KeyStore } from './store.js';
import type { KeyRecord, TeamRecord } from './types.js';

const POSITIVE_TTL_MS = 60_000;
const NEGATIVE_TTL_MS = 5_000;
const MAX_ENTRIES = 50_000;

interface Cached<T> {
  value: T;
  at: number;
}

export interface Authenticated {
  key: KeyRecord;
  team: TeamRecord | null;
}

const invalidKey = (msg = 'Incorrect API key provided.'): GatewayError =>
  new GatewayError('invalid_api_key', msg);

/**
 * Resolves a presented secret to its key, through a per-instance cache that every instance
 * invalidates over the store's change notifications (a revoked key stops working everywhere
 * within the pub/sub latency). When the store is unreachable, keys this instance already knows
 * keep working; unknown ones get 503, since their key may well be valid.
 */
export class KeyService {
  private readonly byHash = new Map<string, Cached<KeyRecord | null>>();
  private readonly teams = new Map<string, Cached<TeamRecord | null>>();
  private readonly fileKeys = new Map<string, KeyRecord>();

  constructor(
    private readonly store: KeyStore,
    fileKeys: KeyRecord[] = [],
    private readonly now: () => number = Date.now,
    /** Deadline of a lookup in the store (hot path); null: none (an in-memory store). */
    private readonly deadlineMs: number | null = null,
  ) {
    for (const k of fileKeys) for (const s of k.secrets) this.fileKeys.set(s.sha256, k);
    store.onInvalidate((id) => this.invalidate(id));
  }

  /**
   * Drops cached entries for one key id (changed or revoked). For '*' (notifications may have
   * been missed, or a team changed) every entry must be checked with the store again, but stays
   * as the fallback while the store cannot answer: after a Redis restart the subscriber may be
   * back before the main connection, and known keys must keep working meanwhile.
   */
  invalidate(id: string): void {
    if (id === '*') {
      for (const c of this.byHash.values()) c.at = Number.NEGATIVE_INFINITY;
      for (const c of this.teams.values()) c.at = Number.NEGATIVE_INFINITY;
      return;
    }
    for (const [hash, c] of this.byHash) if (c.value?.id === id) this.byHash.delete(hash);
  }

  async authenticate(secret: string | undefined): Promise<Authenticated> {
    if (!secret)
      throw invalidKey('You didn\u2019t provide an API key. Provide it as "Authorization: Bearer <key>".');
    if (!hasKeyShape(secret)) throw invalidKey();
    const hash = hashKey(secret);
    // The checksum keeps made-up keys away from the store; a key known here has passed it.
    if (!this.fileKeys.has(hash) && !this.byHash.get(hash)?.value && !hasValidChecksum(secret))
      throw invalidKey();
    const key = this.fileKeys.get(hash) ?? (await this.lookup(hash));
    if (key === null) throw invalidKey();
    const now = this.now();
    const secretEntry = key.secrets.find((s) => s.sha256 === hash);
    if (secretEntry?.validUntil && Date.parse(secretEntry.validUntil) <= now)
      throw invalidKey('This API key was rotated and its grace period has ended.');
    if (key.disabled) throw invalidKey('This API key is disabled.');
    if (key.expiresAt && Date.parse(key.expiresAt) <= now) throw invalidKey('This API key has expired.');
    const team = key.team === null ? null : await this.team(key.team);
    return { key, team };
  }

  private async lookup(hash: string): Promise<KeyRecord | null> {
    const now = this.now();
    const cached = this.byHash.get(hash);
    const ttl = cached?.value ? POSITIVE_TTL_MS : NEGATIVE_TTL_MS;
    // Without live change notifications a cached key might have been revoked elsewhere: ask the store.
    if (cached && now - cached.at < ttl && this.store.live) return cached.value;
    try {
      const value = await this.bounded(this.store.getByHash(hash));
      if (this.byHash.size >= MAX_ENTRIES) this.byHash.clear();
      this.byHash.set(hash, { value, at: now });
      return value;
    } catch {
      if (cached?.value) return cached.value;
      throw new GatewayError('service_unavailable', 'The key store is unavailable; please retry.');
    }
  }

  private bounded<T>(p: Promise<T>): Promise<T> {
    return this.deadlineMs === null ? p : withDeadline(p, this.deadlineMs);
  }

  async team(name: string): Promise<TeamRecord | null> {
    const now = this.now();
    const cached = this.teams.get(name);
    if (cached && now - cached.at < POSITIVE_TTL_MS && this.store.live) return cached.value;
    try {
      const value = await this.bounded(this.store.getTeam(name));
      this.teams.set(name, { value, at: now });
      return value;
    } catch {
      return cached?.value ?? null;
    }
  }
}
