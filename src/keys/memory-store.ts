import { GatewayError } from '../errors/gateway-error.js';
import type { KeyStore } from './store.js';
import type { AuditEntry, KeyRecord, Page, TeamRecord } from './types.js';

const nameKey = (k: KeyRecord): string => `${k.team ?? ''}\u0000${k.name}`;

/** Single-instance key store: nothing persists across restarts. */
export class MemoryKeyStore implements KeyStore {
  private readonly keys = new Map<string, KeyRecord>();
  private readonly byHash = new Map<string, string>();
  private readonly byName = new Map<string, string>();
  private readonly teams = new Map<string, TeamRecord>();
  private readonly audit: AuditEntry[] = [];
  private readonly listeners: ((id: string) => void)[] = [];
  /** One process: every change is seen at once. */
  readonly live = true;

  async getByHash(sha256: string): Promise<KeyRecord | null> {
    const id = this.byHash.get(sha256);
    return id === undefined ? null : (this.keys.get(id) ?? null);
  }

  async get(id: string): Promise<KeyRecord | null> {
    return this.keys.get(id) ?? null;
  }

  async create(key: KeyRecord): Promise<void> {
    if (this.byName.has(nameKey(key))) throw conflict(key);
    this.byName.set(nameKey(key), key.id);
    this.keys.set(key.id, key);
    for (const s of key.secrets) this.byHash.set(s.sha256, key.id);
  }

  async replace(previous: KeyRecord, next: KeyRecord): Promise<void> {
    if (nameKey(previous) !== nameKey(next)) {
      if (this.byName.has(nameKey(next))) throw conflict(next);
      this.byName.delete(nameKey(previous));
      this.byName.set(nameKey(next), next.id);
    }
    for (const s of previous.secrets) this.byHash.delete(s.sha256);
    for (const s of next.secrets) this.byHash.set(s.sha256, next.id);
    this.keys.set(next.id, next);
    this.emit(next.id);
  }

  async delete(key: KeyRecord): Promise<void> {
    this.keys.delete(key.id);
    this.byName.delete(nameKey(key));
    for (const s of key.secrets) this.byHash.delete(s.sha256);
    this.emit(key.id);
  }

  async list(opts: { team?: string; limit: number; cursor?: string }): Promise<Page<KeyRecord>> {
    const ids = [...this.keys.keys()].sort();
    const all = ids
      .filter((id) => opts.cursor === undefined || id > opts.cursor)
      .map((id) => this.keys.get(id)!)
      .filter((k) => opts.team === undefined || k.team === opts.team);
    const data = all.slice(0, opts.limit);
    return { data, nextCursor: all.length > opts.limit ? data[data.length - 1]!.id : null };
  }

  async getTeam(name: string): Promise<TeamRecord | null> {
    return this.teams.get(name) ?? null;
  }

  async putTeam(team: TeamRecord): Promise<void> {
    this.teams.set(team.name, team);
    this.emit('*');
  }

  async listTeams(): Promise<TeamRecord[]> {
    return [...this.teams.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async appendAudit(entry: AuditEntry): Promise<void> {
    this.audit.push(entry);
  }

  async listAudit(opts: { limit: number; cursor?: string }): Promise<Page<AuditEntry>> {
    // Newest first; the cursor is the id of the last entry of the previous page.
    const newest = [...this.audit].reverse();
    const start = opts.cursor === undefined ? 0 : newest.findIndex((e) => e.id === opts.cursor) + 1;
    const data = newest.slice(start, start + opts.limit);
    const more = start + opts.limit < newest.length;
    return { data, nextCursor: more ? data[data.length - 1]!.id : null };
  }

  onInvalidate(listener: (id: string) => void): void {
    this.listeners.push(listener);
  }

  private emit(id: string): void {
    for (const l of this.listeners) l(id);
  }

  async close(): Promise<void> {}
}

export const conflict = (k: { name: string; team: string | null }): GatewayError =>
  new GatewayError(
    'conflict',
    `A key named '${k.name}' already exists in ${k.team ? `team '${k.team}'` : 'no team'}.`,
    {
      param: 'name',
    },
  );
