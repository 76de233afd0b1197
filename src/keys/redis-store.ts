import type { RedisClient } from '../store/redis.js';
import { conflict } from './memory-store.js';
import type { KeyStore } from './store.js';
import type { AuditEntry, KeyRecord, Page, TeamRecord } from './types.js';

const AUDIT_MAXLEN = 100000;

/**
 * Keys, teams and audit trail in Redis, shared by every instance. Changes are announced on a
 * pub/sub channel so each instance drops its local lookup cache entry at once.
 */
export class RedisKeyStore implements KeyStore {
  private readonly listeners: ((id: string) => void)[] = [];
  private readonly channel: string;
  private subscribed = false;

  constructor(
    private readonly redis: RedisClient,
    private readonly subscriber: RedisClient,
    private readonly prefix: string,
  ) {
    this.channel = `${prefix}keys:invalidate`;
    subscriber.on('message', (ch: string, id: string) => {
      if (ch === this.channel) this.emit(id);
    });
    // The client has no offline queue, so SUBSCRIBE must wait until the connection is ready,
    // and is repeated after every reconnect. Until it is confirmed, invalidations may be missed:
    // `live` is false meanwhile (callers do not trust their caches), and everything cached is
    // dropped once it is confirmed.
    const lost = (): void => {
      this.subscribed = false;
    };
    subscriber.on('close', lost);
    subscriber.on('end', lost);
    subscriber.on('ready', () => this.subscribe());
    if (subscriber.status === 'ready') this.subscribe();
  }

  private subscribe(): void {
    this.subscriber.subscribe(this.channel).then(
      () => {
        this.subscribed = true;
        this.emit('*');
      },
      () => {
        this.subscribed = false;
      },
    );
  }

  /** True while change notifications are being received, so local caches may be trusted. */
  get live(): boolean {
    return this.subscribed && this.subscriber.status === 'ready';
  }

  private k(s: string): string {
    return this.prefix + s;
  }

  private nameKey(k: KeyRecord): string {
    return this.k(`keyname:${k.team ?? ''}:${k.name}`);
  }

  async getByHash(sha256: string): Promise<KeyRecord | null> {
    const id = await this.redis.get(this.k(`keyhash:${sha256}`));
    return id === null ? null : this.get(id);
  }

  async get(id: string): Promise<KeyRecord | null> {
    const raw = await this.redis.get(this.k(`key:${id}`));
    return raw === null ? null : (JSON.parse(raw) as KeyRecord);
  }

  async create(key: KeyRecord): Promise<void> {
    const ok = await this.redis.set(this.nameKey(key), key.id, 'NX');
    if (ok === null) throw conflict(key);
    await this.redis.set(this.k(`key:${key.id}`), JSON.stringify(key));
    await Promise.all([
      ...key.secrets.map((s) => this.redis.set(this.k(`keyhash:${s.sha256}`), key.id)),
      this.redis.zadd(this.k('keys'), 0, key.id),
    ]);
  }

  async replace(previous: KeyRecord, next: KeyRecord): Promise<void> {
    if (this.nameKey(previous) !== this.nameKey(next)) {
      const ok = await this.redis.set(this.nameKey(next), next.id, 'NX');
      if (ok === null) throw conflict(next);
      await this.redis.del(this.nameKey(previous));
    }
    await this.redis.set(this.k(`key:${next.id}`), JSON.stringify(next));
    const keep = new Set(next.secrets.map((s) => s.sha256));
    await Promise.all([
      ...previous.secrets
        .filter((s) => !keep.has(s.sha256))
        .map((s) => this.redis.del(this.k(`keyhash:${s.sha256}`))),
      ...next.secrets.map((s) => this.redis.set(this.k(`keyhash:${s.sha256}`), next.id)),
    ]);
    await this.publish(next.id);
  }

  async delete(key: KeyRecord): Promise<void> {
    await Promise.all([
      ...key.secrets.map((s) => this.redis.del(this.k(`keyhash:${s.sha256}`))),
      this.redis.del(this.k(`key:${key.id}`)),
      this.redis.del(this.nameKey(key)),
      this.redis.zrem(this.k('keys'), key.id),
    ]);
    await this.publish(key.id);
  }

  async list(opts: { team?: string; limit: number; cursor?: string }): Promise<Page<KeyRecord>> {
    const data: KeyRecord[] = [];
    let from = opts.cursor === undefined ? '-' : `(${opts.cursor}`;
    // Scan ids in order, filtering by team, until the page is full or the ids run out.
    for (;;) {
      const ids = await this.redis.zrangebylex(this.k('keys'), from, '+', 'LIMIT', 0, 200);
      if (ids.length === 0) return { data, nextCursor: null };
      // One GET per key, all sent at once (one round trip): an MGET would span Cluster slots.
      const raws = await Promise.all(ids.map((id) => this.redis.get(this.k(`key:${id}`))));
      for (const raw of raws) {
        if (raw === null) continue;
        const key = JSON.parse(raw) as KeyRecord;
        if (opts.team !== undefined && key.team !== opts.team) continue;
        if (data.length === opts.limit) return { data, nextCursor: data[data.length - 1]!.id };
        data.push(key);
      }
      from = `(${ids[ids.length - 1]}`;
    }
  }

  async getTeam(name: string): Promise<TeamRecord | null> {
    const raw = await this.redis.hget(this.k('teams'), name);
    return raw === null ? null : (JSON.parse(raw) as TeamRecord);
  }

  async putTeam(team: TeamRecord): Promise<void> {
    await this.redis.hset(this.k('teams'), team.name, JSON.stringify(team));
    await this.publish('*');
  }

  async listTeams(): Promise<TeamRecord[]> {
    const all = await this.redis.hvals(this.k('teams'));
    return all.map((r) => JSON.parse(r) as TeamRecord).sort((a, b) => a.name.localeCompare(b.name));
  }

  async appendAudit(entry: AuditEntry): Promise<void> {
    await this.redis.xadd(this.k('audit'), 'MAXLEN', '~', AUDIT_MAXLEN, '*', 'entry', JSON.stringify(entry));
  }

  async listAudit(opts: { limit: number; cursor?: string }): Promise<Page<AuditEntry>> {
    const end = opts.cursor === undefined ? '+' : `(${opts.cursor}`;
    const rows = await this.redis.xrevrange(this.k('audit'), end, '-', 'COUNT', opts.limit + 1);
    const page = rows.slice(0, opts.limit);
    const data = page.map(([streamId, fields]) => ({
      ...(JSON.parse(fields[1] ?? '{}') as AuditEntry),
      id: streamId,
    }));
    return { data, nextCursor: rows.length > opts.limit ? page[page.length - 1]![0] : null };
  }

  onInvalidate(listener: (id: string) => void): void {
    this.listeners.push(listener);
  }

  private emit(id: string): void {
    for (const l of this.listeners) l(id);
  }

  private async publish(id: string): Promise<void> {
    this.emit(id);
    await this.redis.publish(this.channel, id);
  }

  async close(): Promise<void> {}
}
