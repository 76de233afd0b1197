import { generateKey, hashKey, isWellFormedKey } from '../auth/key-format.js';
import { adminClient, fetchAllPages } from './admin-client.js';
import {
  ADMIN_ENV,
  ADMIN_OPTIONS,
  type Command,
  type CommandGroup,
  FORMAT_OPTION,
  flag,
  type OptionSpec,
  parseChoice,
  parseJsonObject,
  parseLimit,
  parseList,
  parseNonNegativeInt,
  parsePositiveInt,
  parseTimestamp,
  parseUsd,
  str,
  UsageError,
  type Values,
} from './command.js';
import { type Column, formatJson, formatRecord, parseFormat, printChange, renderRows } from './format.js';

// `tollgate keys ...`: team API keys through the admin API, plus the offline `hash` and `generate`.

type Json = Record<string, unknown>;

export const LIMIT_OPTIONS: Record<string, OptionSpec> = {
  rpm: { type: 'string', arg: 'N', description: "requests per minute; 'unlimited' for none, 0 blocks" },
  tpm: { type: 'string', arg: 'N', description: "tokens per minute; 'unlimited' for none, 0 blocks" },
  'max-concurrent': {
    type: 'string',
    arg: 'N',
    description: "concurrent requests; 'unlimited' for none, 0 blocks",
  },
  'budget-usd': {
    type: 'string',
    arg: 'USD',
    description: "spend limit in USD per --budget-period; 'none' removes it",
  },
  'budget-period': { type: 'string', arg: 'PERIOD', description: 'budget period: day, month (UTC) or total' },
};

const LIMIT_FLAGS = [
  ['rpm', 'rpm'],
  ['tpm', 'tpm'],
  ['max-concurrent', 'maxConcurrent'],
] as const;

const BUDGET_PERIODS = ['day', 'month', 'total'] as const;
const ROLES = ['member', 'team-admin'] as const;

/** `{rpm?, tpm?, maxConcurrent?}` from the limit flags, or undefined when none was given. */
export function limitsFromValues(values: Values): Json | undefined {
  const limits: Json = {};
  for (const [name, field] of LIMIT_FLAGS) {
    const v = str(values, name);
    if (v !== undefined) limits[field] = parseLimit(name, v);
  }
  return Object.keys(limits).length ? limits : undefined;
}

/** `{usd, period}`, null (`--budget-usd none`), or undefined when no budget flag was given. */
export function budgetFromValues(values: Values): { usd: number; period: string } | null | undefined {
  const usd = str(values, 'budget-usd');
  const period = str(values, 'budget-period');
  if (usd === undefined) {
    if (period !== undefined) throw new UsageError('--budget-period needs --budget-usd');
    return undefined;
  }
  if (['none', 'null', 'unlimited'].includes(usd.trim().toLowerCase())) {
    if (period !== undefined)
      throw new UsageError(`--budget-period cannot be combined with --budget-usd ${usd}`);
    return null;
  }
  const amount = parseUsd('budget-usd', usd);
  if (period === undefined) throw new UsageError('--budget-usd needs --budget-period day|month|total');
  return { usd: amount, period: parseChoice('budget-period', period, BUDGET_PERIODS) };
}

const NEVER = new Set(['never', 'null', 'none']);

/** The POST /admin/keys body for `keys create`. */
export function keyCreateBody(values: Values): Json {
  const name = str(values, 'name');
  if (name === undefined || name.trim() === '') throw new UsageError('--name is required');
  const body: Json = { name };
  const team = str(values, 'team');
  if (team !== undefined && team !== '') body['team'] = team;
  const role = str(values, 'role');
  if (role !== undefined) body['role'] = parseChoice('role', role, ROLES);
  if (body['role'] === 'team-admin' && body['team'] === undefined)
    throw new UsageError('--role team-admin needs --team');
  const limits = limitsFromValues(values);
  if (limits) body['limits'] = limits;
  const budget = budgetFromValues(values);
  if (budget !== undefined) body['budget'] = budget;
  const models = str(values, 'models');
  if (models !== undefined) body['models'] = parseList(models);
  const expires = str(values, 'expires-at');
  if (expires !== undefined && !NEVER.has(expires.trim().toLowerCase()))
    body['expiresAt'] = parseTimestamp('expires-at', expires);
  const metadata = str(values, 'metadata');
  if (metadata !== undefined) body['metadata'] = parseJsonObject('metadata', metadata);
  return body;
}

/** The PATCH /admin/keys/{id} body for `keys update`; at least one change is required. */
export function keyUpdateBody(values: Values): Json {
  const body: Json = {};
  const name = str(values, 'name');
  if (name !== undefined) {
    if (name.trim() === '') throw new UsageError('--name cannot be empty');
    body['name'] = name;
  }
  const team = str(values, 'team');
  if (team !== undefined) body['team'] = team === '' ? null : team;
  const limits = limitsFromValues(values);
  if (limits) body['limits'] = limits;
  const budget = budgetFromValues(values);
  if (budget !== undefined) body['budget'] = budget;
  const models = str(values, 'models');
  if (models !== undefined && flag(values, 'all-models'))
    throw new UsageError('use either --models or --all-models');
  if (models !== undefined) body['models'] = parseList(models);
  if (flag(values, 'all-models')) body['models'] = null;
  const expires = str(values, 'expires-at');
  if (expires !== undefined) {
    body['expiresAt'] = NEVER.has(expires.trim().toLowerCase())
      ? null
      : parseTimestamp('expires-at', expires);
  }
  if (flag(values, 'disable') && flag(values, 'enable'))
    throw new UsageError('use either --disable or --enable');
  if (flag(values, 'disable')) body['disabled'] = true;
  if (flag(values, 'enable')) body['disabled'] = false;
  const metadata = str(values, 'metadata');
  if (metadata !== undefined) body['metadata'] = parseJsonObject('metadata', metadata);
  if (Object.keys(body).length === 0)
    throw new UsageError('nothing to update: give at least one option (see --help)');
  return body;
}

/** The POST /admin/keys/{id}/rotate body. */
export function keyRotateBody(values: Values): Json {
  const grace = str(values, 'grace-seconds');
  return grace === undefined ? {} : { graceSeconds: parseNonNegativeInt('grace-seconds', grace) };
}

/** The GET /admin/keys query for `keys list`. */
export function keyListQuery(values: Values): Record<string, string | number | undefined> {
  const limit = str(values, 'limit');
  return {
    team: str(values, 'team'),
    limit: limit === undefined ? undefined : parsePositiveInt('limit', limit),
    cursor: str(values, 'cursor'),
  };
}

// ---------------------------------------------------------------------------------------------
// Display

const limitText = (v: unknown): string =>
  v === undefined ? 'default' : v === null ? 'unlimited' : String(v);

export function budgetText(v: unknown): string {
  if (v === null || v === undefined || typeof v !== 'object') return '-';
  const b = v as { usd?: unknown; period?: unknown };
  return `$${String(b.usd)}/${String(b.period)}`;
}

const modelsText = (v: unknown): string =>
  v === null || v === undefined ? 'all' : Array.isArray(v) ? (v.length ? v.join(',') : 'none') : String(v);

const limitOf = (row: Json, field: string): unknown => {
  const limits = row['limits'];
  return limits !== null && typeof limits === 'object' ? (limits as Json)[field] : undefined;
};

export function keyStatus(row: Json, now: Date): string {
  if (row['disabled'] === true) return 'disabled';
  const exp = row['expiresAt'];
  if (typeof exp === 'string' && Date.parse(exp) <= now.getTime()) return 'expired';
  return 'active';
}

/** Columns of `keys list`: a compact table, and every contract field in CSV. */
export function keyColumns(now: Date): Column<Json>[] {
  return [
    { key: 'id', header: 'ID', get: (r) => r['id'] },
    { key: 'name', header: 'NAME', get: (r) => r['name'] },
    { key: 'team', header: 'TEAM', get: (r) => r['team'] },
    { key: 'role', header: 'ROLE', get: (r) => r['role'] },
    { key: 'prefix', header: 'PREFIX', get: (r) => r['prefix'] },
    ...LIMIT_FLAGS.map(
      ([, field]): Column<Json> => ({
        key: field,
        header: field === 'maxConcurrent' ? 'CONC' : field.toUpperCase(),
        get: (r) => (limitOf(r, field) === null ? 'unlimited' : limitOf(r, field)),
        show: (_v, r) => limitText(limitOf(r, field)),
        align: 'right',
      }),
    ),
    { key: 'budget', header: 'BUDGET', get: (r) => r['budget'], show: budgetText, only: 'table' },
    { key: 'budgetUsd', header: '', get: (r) => (r['budget'] as { usd?: unknown } | null)?.usd, only: 'csv' },
    {
      key: 'budgetPeriod',
      header: '',
      get: (r) => (r['budget'] as { period?: unknown } | null)?.period,
      only: 'csv',
    },
    {
      key: 'models',
      header: 'MODELS',
      get: (r) => (r['models'] === null || r['models'] === undefined ? 'all' : r['models']),
      show: (_v, r) => modelsText(r['models']),
    },
    {
      key: 'expiresAt',
      header: 'EXPIRES',
      get: (r) => r['expiresAt'],
      show: (v) => (v ? String(v) : 'never'),
    },
    { key: 'status', header: 'STATUS', get: (r) => keyStatus(r, now), only: 'table' },
    { key: 'disabled', header: '', get: (r) => r['disabled'], only: 'csv' },
    { key: 'createdAt', header: '', get: (r) => r['createdAt'], only: 'csv' },
    { key: 'metadata', header: '', get: (r) => r['metadata'], only: 'csv' },
  ];
}

/** The secret on a line of its own, with the reminder that it is shown only this once. */
export function secretBlock(label: string, secret: unknown): string {
  return [
    '',
    `${label} (shown once):`,
    '',
    `  ${String(secret)}`,
    '',
    'Store it now: it cannot be retrieved later.',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Commands

const JSON_OPTION: OptionSpec = { type: 'boolean', description: 'print the API response as JSON' };
const adminEnv = ADMIN_ENV;

const create: Command = {
  path: ['keys', 'create'],
  args: '--name NAME [options]',
  summary: 'Create a team API key (POST /admin/keys); its secret is shown once',
  options: {
    name: { type: 'string', arg: 'NAME', description: 'key name, unique within its team (required)' },
    team: { type: 'string', arg: 'TEAM', description: 'team the key belongs to' },
    role: { type: 'string', arg: 'ROLE', description: 'member (default) or team-admin (needs --team)' },
    ...LIMIT_OPTIONS,
    models: {
      type: 'string',
      arg: 'IDS',
      description: "comma-separated model ids the key may use (default: all; '' for none)",
    },
    'expires-at': {
      type: 'string',
      arg: 'TIME',
      description: 'expiry as ISO-8601 (e.g. 2026-12-31 or 2026-12-31T12:00:00Z)',
    },
    metadata: { type: 'string', arg: 'JSON', description: 'free-form JSON object stored with the key' },
    json: JSON_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 0, max: 0, names: [] },
  description: 'Limits not given take the gateway defaults (limits.defaults).',
  env: adminEnv,
  examples: [
    'tollgate keys create --name ci-bot --team platform --rpm 60 --budget-usd 25 --budget-period month',
    'tollgate keys create --name platform-admin --team platform --role team-admin',
  ],
  async run({ values, io }) {
    const body = keyCreateBody(values);
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('POST', '/admin/keys', { body });
    if (flag(values, 'json')) {
      io.out(formatJson(res));
      return 0;
    }
    const team = res['team'] ? `team ${String(res['team'])}` : 'no team';
    io.out(
      `Created key '${String(res['name'] ?? body['name'])}' (${team}, role ${String(res['role'] ?? 'member')})`,
    );
    io.out(`id:     ${String(res['id'])}`);
    io.out(`prefix: ${String(res['prefix'] ?? '')}`);
    io.out(secretBlock('Secret', res['key']));
    return 0;
  },
};

const list: Command = {
  path: ['keys', 'list'],
  args: '[options]',
  summary: 'List keys (GET /admin/keys); never shows secrets',
  options: {
    team: { type: 'string', arg: 'TEAM', description: "only this team's keys" },
    limit: { type: 'string', arg: 'N', description: 'page size' },
    cursor: {
      type: 'string',
      arg: 'CURSOR',
      description: 'start at this page (nextCursor of a previous listing)',
    },
    all: { type: 'boolean', description: 'follow nextCursor and list every key' },
    format: FORMAT_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 0, max: 0, names: [] },
  env: adminEnv,
  examples: ['tollgate keys list --team platform', 'tollgate keys list --all --format csv > keys.csv'],
  async run({ values, io }) {
    const format = parseFormat(str(values, 'format'));
    const query = keyListQuery(values);
    const client = adminClient(io.env, values, io.fetch);
    const page = flag(values, 'all')
      ? await fetchAllPages<Json>(client, '/admin/keys', query)
      : await client.json<{ data?: Json[]; nextCursor?: string | null }>('GET', '/admin/keys', { query });
    if (format === 'json') {
      io.out(formatJson(page));
      return 0;
    }
    const rows = page?.data ?? [];
    if (format === 'csv') {
      io.out(renderRows(rows, keyColumns(io.now()), 'csv').replace(/\n$/, ''));
    } else if (rows.length === 0) {
      io.out('no keys');
    } else {
      io.out(renderRows(rows, keyColumns(io.now()), 'table'));
    }
    if (page?.nextCursor) io.err(`more keys: use --cursor ${page.nextCursor} for the next page, or --all`);
    return 0;
  },
};

const show: Command = {
  path: ['keys', 'show'],
  args: '<id> [options]',
  summary: 'Show a key with its current-period spend and remaining limits (GET /admin/keys/{id})',
  options: { json: JSON_OPTION, ...ADMIN_OPTIONS },
  positionals: { min: 1, max: 1, names: ['<id>'] },
  env: adminEnv,
  async run({ values, positionals, io }) {
    const id = positionals[0]!;
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('GET', `/admin/keys/${encodeURIComponent(id)}`);
    io.out(flag(values, 'json') ? formatJson(res) : formatRecord(res ?? {}));
    return 0;
  },
};

const update: Command = {
  path: ['keys', 'update'],
  args: '<id> [options]',
  summary: 'Change a key (PATCH /admin/keys/{id}); limits merge field by field',
  options: {
    name: { type: 'string', arg: 'NAME', description: 'new name' },
    team: { type: 'string', arg: 'TEAM', description: "move to this team ('' for no team)" },
    ...LIMIT_OPTIONS,
    models: {
      type: 'string',
      arg: 'IDS',
      description: "comma-separated model ids the key may use ('' for none)",
    },
    'all-models': { type: 'boolean', description: 'allow every model again' },
    'expires-at': { type: 'string', arg: 'TIME', description: "expiry as ISO-8601, or 'never'" },
    disable: { type: 'boolean', description: 'disable the key (requests answer 401 until enabled)' },
    enable: { type: 'boolean', description: 'enable a disabled key' },
    metadata: { type: 'string', arg: 'JSON', description: 'replace the metadata with this JSON object' },
    json: JSON_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 1, max: 1, names: ['<id>'] },
  env: adminEnv,
  examples: [
    'tollgate keys update key_abc --rpm 120 --tpm unlimited',
    'tollgate keys update key_abc --disable',
  ],
  async run({ values, positionals, io }) {
    const id = positionals[0]!;
    const body = keyUpdateBody(values);
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('PATCH', `/admin/keys/${encodeURIComponent(id)}`, { body });
    return printChange(io, values, res, `key ${id}`);
  },
};

const rotate: Command = {
  path: ['keys', 'rotate'],
  args: '<id> [options]',
  summary: 'Issue a new secret for a key (POST /admin/keys/{id}/rotate); shown once',
  options: {
    'grace-seconds': {
      type: 'string',
      arg: 'N',
      description: 'seconds the old secret keeps working (default 0: it stops now)',
    },
    json: JSON_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 1, max: 1, names: ['<id>'] },
  env: adminEnv,
  examples: ['tollgate keys rotate key_abc --grace-seconds 3600'],
  async run({ values, positionals, io }) {
    const id = positionals[0]!;
    const body = keyRotateBody(values);
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('POST', `/admin/keys/${encodeURIComponent(id)}/rotate`, { body });
    if (flag(values, 'json')) {
      io.out(formatJson(res));
      return 0;
    }
    const grace = (body['graceSeconds'] as number | undefined) ?? 0;
    io.out(`Rotated key ${String(res['id'] ?? id)}`);
    io.out(secretBlock('New secret', res['key']));
    io.out(grace > 0 ? `The old secret keeps working for ${grace}s.` : 'The old secret no longer works.');
    return 0;
  },
};

const revoke: Command = {
  path: ['keys', 'revoke'],
  args: '<id> [options]',
  summary: 'Revoke a key for good (DELETE /admin/keys/{id})',
  options: { ...ADMIN_OPTIONS },
  positionals: { min: 1, max: 1, names: ['<id>'] },
  env: adminEnv,
  async run({ values, positionals, io }) {
    const id = positionals[0]!;
    const client = adminClient(io.env, values, io.fetch);
    await client.request('DELETE', `/admin/keys/${encodeURIComponent(id)}`);
    io.out(`Revoked key ${id}`);
    return 0;
  },
};

async function readSecret(arg: string, io: Parameters<Command['run']>[0]['io']): Promise<string> {
  if (arg !== '-') return arg;
  const text = (await io.readStdin()).replace(/\r?\n$/, '');
  if (text === '') throw new UsageError('no secret on standard input');
  return text;
}

const MALFORMED_WARNING =
  'warning: this is not a well-formed tollgate key (sk-tg- + 38 base62 characters with a valid checksum); the gateway will refuse it';

const hash: Command = {
  path: ['keys', 'hash'],
  args: '<secret>',
  summary: 'Print the SHA-256 of a secret, for the keys: section of the config file (offline)',
  description: "Pass '-' to read the secret from standard input (keeps it out of shell history).",
  options: {},
  positionals: { min: 1, max: 1, names: ['<secret>'] },
  examples: ['tollgate keys hash sk-tg-...', 'printf %s "$SECRET" | tollgate keys hash -'],
  async run({ positionals, io }) {
    const secret = await readSecret(positionals[0]!, io);
    if (!isWellFormedKey(secret)) io.err(MALFORMED_WARNING);
    io.out(hashKey(secret));
    return 0;
  },
};

const generate: Command = {
  path: ['keys', 'generate'],
  args: '[options]',
  summary: 'Generate a new secret and its SHA-256 for the keys: section of the config file (offline)',
  options: {
    name: { type: 'string', arg: 'NAME', description: 'key name for the printed config snippet' },
    team: { type: 'string', arg: 'TEAM', description: 'team for the printed config snippet' },
    json: { type: 'boolean', description: 'print {key, sha256} as JSON' },
  },
  positionals: { min: 0, max: 0, names: [] },
  examples: ['tollgate keys generate --name ci-bot --team platform'],
  async run({ values, io }) {
    const secret = generateKey();
    const sha256 = hashKey(secret);
    if (flag(values, 'json')) {
      io.out(formatJson({ key: secret, sha256 }));
      return 0;
    }
    const name = str(values, 'name') ?? 'my-key';
    const team = str(values, 'team');
    io.out(`secret: ${secret}`);
    io.out(`sha256: ${sha256}`);
    io.out('');
    io.out('Config snippet (keys: section; only the hash goes into the file):');
    io.out(
      `  - { name: ${JSON.stringify(name)}${team ? `, team: ${JSON.stringify(team)}` : ''}, sha256: "${sha256}" }`,
    );
    io.out('');
    io.out('The secret is not stored anywhere: hand it to its user now.');
    return 0;
  },
};

export const keysGroup: CommandGroup = {
  name: 'keys',
  summary: 'Manage team API keys through the admin API (hash and generate work offline)',
  commands: [create, list, show, update, rotate, revoke, hash, generate],
};
