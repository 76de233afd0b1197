import type { AuditEntry, KeyRecord, Page, TeamRecord } from './types.js';

/** Persistence for keys, teams and the audit trail. Redis and in-memory implementations. */
export interface KeyStore {
  getByHash(sha256: string): Promise<KeyRecord | null>;
  get(id: string): Promise<KeyRecord | null>;
  /** Fails with `conflict` when the name is taken within the team. */
  create(key: KeyRecord): Promise<void>;
  /** Replaces the record; `previous` is the stored version (for index maintenance). */
  replace(previous: KeyRecord, next: KeyRecord): Promise<void>;
  delete(key: KeyRecord): Promise<void>;
  list(opts: { team?: string; limit: number; cursor?: string }): Promise<Page<KeyRecord>>;
  getTeam(name: string): Promise<TeamRecord | null>;
  putTeam(team: TeamRecord): Promise<void>;
  listTeams(): Promise<TeamRecord[]>;
  appendAudit(entry: AuditEntry): Promise<void>;
  listAudit(opts: { limit: number; cursor?: string }): Promise<Page<AuditEntry>>;
  /**
   * Whether change notifications are currently arriving. While false, a local cache could miss a
   * revocation and must not be trusted (it may still serve when the store itself is unreachable).
   */
  readonly live: boolean;
  /** Called with a key id (or '*') whenever any instance changes a key, so local caches drop it. */
  onInvalidate(listener: (id: string) => void): void;
  close(): Promise<void>;
}
