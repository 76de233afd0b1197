import type { Budget, LimitsInput } from '../config/schema.js';

export type Role = 'member' | 'team-admin';

/** A hash under which a key's secret is accepted; after rotation the old one lives until `validUntil`. */
export interface KeySecret {
  sha256: string;
  validUntil: string | null;
}

/** A team API key as stored. Never contains the secret itself. */
export interface KeyRecord {
  id: string;
  name: string;
  team: string | null;
  role: Role;
  prefix: string;
  limits: LimitsInput;
  budget: Budget | null;
  models: string[] | null;
  expiresAt: string | null;
  createdAt: string;
  updatedAt: string;
  disabled: boolean;
  metadata: Record<string, unknown>;
  secrets: KeySecret[];
  /** Declared in the config file: read-only through the admin API. */
  fromConfig?: boolean;
}

export interface TeamRecord {
  name: string;
  limits: LimitsInput;
  budget: Budget | null;
  updatedAt: string;
}

export interface AuditEntry {
  id: string;
  time: string;
  actor: string;
  action: 'key.created' | 'key.updated' | 'key.rotated' | 'key.revoked' | 'team.updated';
  target: string;
  details?: Record<string, unknown>;
}

export interface Page<T> {
  data: T[];
  nextCursor: string | null;
}

/** The public view of a key: everything but its hashes. */
export function publicKey(k: KeyRecord): Omit<KeyRecord, 'secrets' | 'fromConfig'> {
  const { secrets: _s, fromConfig: _f, ...rest } = k;
  return rest;
}
