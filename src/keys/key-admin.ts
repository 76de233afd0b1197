import { randomBytes } from 'node:crypto';
import { generateKey, hashKey, keyPrefix } from '../auth/key-format.js';
import type { Budget, LimitsInput } from '../config/schema.js';
import { GatewayError, notFound } from '../errors/gateway-error.js';
import type { KeyStore } from './store.js';
import type { AuditEntry, KeyRecord, Page, Role, TeamRecord } from './types.js';

/** Who is calling the admin API: the root admin key, or a team-admin key (own team only). */
export type Actor = { kind: 'root' } | { kind: 'team-admin'; key: KeyRecord };

export interface CreateKeyInput {
  name: string;
  team?: string | null;
  role?: Role;
  limits?: LimitsInput;
  budget?: Budget | null;
  models?: string[] | null;
  expiresAt?: string | null;
  metadata?: Record<string, unknown>;
}

export type UpdateKeyInput = Partial<Omit<CreateKeyInput, 'role'>> & { disabled?: boolean };

const LIMIT_FIELDS = ['rpm', 'tpm', 'maxConcurrent'] as const;

export const newId = (prefix: string): string => `${prefix}_${randomBytes(12).toString('base64url')}`;
const actorName = (a: Actor): string => (a.kind === 'root' ? 'root' : a.key.id);

/** Admin operations on keys and teams, each written to the audit trail. */
export class KeyAdmin {
  constructor(
    private readonly store: KeyStore,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** Loads a key the actor may see; another team's key is indistinguishable from a missing one. */
  async visible(actor: Actor, id: string): Promise<KeyRecord> {
    const key = await this.store.get(id);
    if (key === null || !mayManage(actor, key, false)) throw notFound(`No key with id '${id}'.`);
    return key;
  }

  async create(actor: Actor, input: CreateKeyInput): Promise<{ record: KeyRecord; secret: string }> {
    const role = input.role ?? 'member';
    let team = input.team ?? null;
    if (actor.kind === 'team-admin') {
      if (role !== 'member') throw forbidden('Only the root admin key can create team-admin keys.');
      if (team !== null && team !== actor.key.team) throw notFound(`No team '${team}'.`);
      team = actor.key.team;
      await this.checkWithinTeam(team, input.limits);
    }
    if (role === 'team-admin' && team === null) {
      throw new GatewayError('invalid_request_error', 'A team-admin key needs a team.', { param: 'team' });
    }
    const secret = generateKey();
    const at = this.now().toISOString();
    const record: KeyRecord = {
      id: newId('key'),
      name: input.name,
      team,
      role,
      prefix: keyPrefix(secret),
      limits: input.limits ?? {},
      budget: input.budget ?? null,
      models: input.models ?? null,
      expiresAt: input.expiresAt ?? null,
      createdAt: at,
      updatedAt: at,
      disabled: false,
      metadata: input.metadata ?? {},
      secrets: [{ sha256: hashKey(secret), validUntil: null }],
    };
    await this.store.create(record);
    await this.audit(actor, 'key.created', record.id, { name: record.name, team, role });
    return { record, secret };
  }

  async update(actor: Actor, id: string, patch: UpdateKeyInput): Promise<KeyRecord> {
    const prev = await this.editable(actor, id);
    if (actor.kind === 'team-admin') {
      if (patch.team !== undefined && patch.team !== actor.key.team)
        throw forbidden('A team admin cannot move keys to another team.');
      await this.checkWithinTeam(actor.key.team, { ...prev.limits, ...patch.limits });
    }
    const next: KeyRecord = {
      ...prev,
      ...(patch.name !== undefined && { name: patch.name }),
      ...(patch.team !== undefined && { team: patch.team }),
      ...(patch.limits !== undefined && { limits: { ...prev.limits, ...patch.limits } }),
      ...(patch.budget !== undefined && { budget: patch.budget }),
      ...(patch.models !== undefined && { models: patch.models }),
      ...(patch.expiresAt !== undefined && { expiresAt: patch.expiresAt }),
      ...(patch.disabled !== undefined && { disabled: patch.disabled }),
      ...(patch.metadata !== undefined && { metadata: patch.metadata }),
      updatedAt: this.now().toISOString(),
    };
    if (next.role === 'team-admin' && next.team === null) throw forbidden('A team-admin key needs a team.');
    await this.store.replace(prev, next);
    await this.audit(actor, 'key.updated', id, { fields: Object.keys(patch) });
    return next;
  }

  async rotate(
    actor: Actor,
    id: string,
    graceSeconds: number,
  ): Promise<{ record: KeyRecord; secret: string }> {
    const prev = await this.editable(actor, id);
    const now = this.now();
    const secret = generateKey();
    const graceUntil = graceSeconds > 0 ? new Date(now.getTime() + graceSeconds * 1000).toISOString() : null;
    // Only the newest previous secret gets a grace period; anything older ends now.
    const current = prev.secrets.find((s) => s.validUntil === null);
    const secrets: KeyRecord['secrets'] = [{ sha256: hashKey(secret), validUntil: null }];
    if (current && graceUntil) secrets.push({ sha256: current.sha256, validUntil: graceUntil });
    const next: KeyRecord = { ...prev, prefix: keyPrefix(secret), secrets, updatedAt: now.toISOString() };
    await this.store.replace(prev, next);
    await this.audit(actor, 'key.rotated', id, { graceSeconds });
    return { record: next, secret };
  }

  async revoke(actor: Actor, id: string): Promise<void> {
    const key = await this.editable(actor, id);
    await this.store.delete(key);
    await this.audit(actor, 'key.revoked', id, { name: key.name, team: key.team });
  }

  async list(
    actor: Actor,
    opts: { team?: string; limit: number; cursor?: string },
  ): Promise<Page<KeyRecord>> {
    if (actor.kind === 'team-admin') {
      if (opts.team !== undefined && opts.team !== actor.key.team) return { data: [], nextCursor: null };
      return this.store.list({ ...opts, team: actor.key.team! });
    }
    return this.store.list(opts);
  }

  async setTeam(
    actor: Actor,
    name: string,
    input: { limits?: LimitsInput; budget?: Budget | null },
  ): Promise<TeamRecord> {
    const prev = await this.store.getTeam(name);
    const team: TeamRecord = {
      name,
      limits: input.limits !== undefined ? { ...prev?.limits, ...input.limits } : (prev?.limits ?? {}),
      budget: input.budget !== undefined ? input.budget : (prev?.budget ?? null),
      updatedAt: this.now().toISOString(),
    };
    await this.store.putTeam(team);
    await this.audit(actor, 'team.updated', name, { limits: team.limits, budget: team.budget });
    return team;
  }

  private async editable(actor: Actor, id: string): Promise<KeyRecord> {
    const key = await this.visible(actor, id);
    if (!mayManage(actor, key, true)) throw forbidden('A team admin can only manage member keys.');
    return key;
  }

  /** A team admin may not hand out limits above its team's own. */
  private async checkWithinTeam(team: string | null, limits: LimitsInput | undefined): Promise<void> {
    if (team === null || limits === undefined) return;
    const t = await this.store.getTeam(team);
    if (!t) return;
    for (const f of LIMIT_FIELDS) {
      const cap = t.limits[f];
      const want = limits[f];
      if (cap === undefined || cap === null || want === undefined) continue;
      if (want === null || want > cap)
        throw forbidden(`The ${f} limit cannot exceed the team's own (${cap}).`);
    }
  }

  private async audit(
    actor: Actor,
    action: AuditEntry['action'],
    target: string,
    details: Record<string, unknown>,
  ): Promise<void> {
    await this.store.appendAudit({
      id: newId('aud'),
      time: this.now().toISOString(),
      actor: actorName(actor),
      action,
      target,
      details,
    });
  }
}

function mayManage(actor: Actor, key: KeyRecord, editing: boolean): boolean {
  if (actor.kind === 'root') return true;
  if (key.team !== actor.key.team) return false;
  return !editing || key.role === 'member' || key.id === actor.key.id;
}

const forbidden = (message: string): GatewayError => new GatewayError('forbidden', message);
