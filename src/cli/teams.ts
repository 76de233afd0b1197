import { adminClient } from './admin-client.js';
import {
  ADMIN_ENV,
  ADMIN_OPTIONS,
  type Command,
  type CommandGroup,
  FORMAT_OPTION,
  flag,
  str,
  UsageError,
  type Values,
} from './command.js';
import { type Column, formatJson, formatRecord, parseFormat, printChange, renderRows } from './format.js';
import { budgetFromValues, budgetText, LIMIT_OPTIONS, limitsFromValues } from './keys.js';

// `tollgate teams ...`: team-wide limits and budgets (root admin only).

type Json = Record<string, unknown>;

/** The PUT /admin/teams/{team} body for `teams set`; at least one setting is required. */
export function teamSetBody(values: Values): Json {
  const body: Json = {};
  const limits = limitsFromValues(values);
  if (limits) body['limits'] = limits;
  const budget = budgetFromValues(values);
  if (budget !== undefined) body['budget'] = budget;
  if (Object.keys(body).length === 0)
    throw new UsageError('nothing to set: give at least one limit or budget option (see --help)');
  return body;
}

const teamLimit = (row: Json, field: string): unknown => {
  const limits = row['limits'];
  return limits !== null && typeof limits === 'object' ? (limits as Json)[field] : undefined;
};

/** Columns of `teams list`. A team limit that is not set means no team limit. */
export const TEAM_COLUMNS: Column<Json>[] = [
  { key: 'name', header: 'TEAM', get: (r) => r['name'] },
  ...(['rpm', 'tpm', 'maxConcurrent'] as const).map(
    (field): Column<Json> => ({
      key: field,
      header: field === 'maxConcurrent' ? 'CONC' : field.toUpperCase(),
      get: (r) => teamLimit(r, field),
      show: (v) => (v === null || v === undefined ? 'unlimited' : String(v)),
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
  { key: 'updatedAt', header: 'UPDATED', get: (r) => r['updatedAt'] },
];

const JSON_OPTION = { type: 'boolean', description: 'print the API response as JSON' } as const;

const set: Command = {
  path: ['teams', 'set'],
  args: '<team> [options]',
  summary: "Set a team's limits and budget (PUT /admin/teams/{team}); merges with what is set",
  description: "Team limits apply to all of the team's keys together, on top of each key's own limits.",
  options: { ...LIMIT_OPTIONS, json: JSON_OPTION, ...ADMIN_OPTIONS },
  positionals: { min: 1, max: 1, names: ['<team>'] },
  env: ADMIN_ENV,
  examples: [
    'tollgate teams set platform --rpm 1200 --tpm 2000000 --budget-usd 500 --budget-period month',
    'tollgate teams set platform --budget-usd none',
  ],
  async run({ values, positionals, io }) {
    const team = positionals[0]!;
    const body = teamSetBody(values);
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('PUT', `/admin/teams/${encodeURIComponent(team)}`, { body });
    return printChange(io, values, res, `team ${team}`);
  },
};

const list: Command = {
  path: ['teams', 'list'],
  args: '[options]',
  summary: 'List teams with settings (GET /admin/teams)',
  options: { format: FORMAT_OPTION, ...ADMIN_OPTIONS },
  positionals: { min: 0, max: 0, names: [] },
  env: ADMIN_ENV,
  async run({ values, io }) {
    const format = parseFormat(str(values, 'format'));
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<{ data?: Json[] } | Json[]>('GET', '/admin/teams');
    if (format === 'json') {
      io.out(formatJson(res));
      return 0;
    }
    const rows = Array.isArray(res) ? res : (res?.data ?? []);
    if (format === 'csv') io.out(renderRows(rows, TEAM_COLUMNS, 'csv').replace(/\n$/, ''));
    else io.out(rows.length ? renderRows(rows, TEAM_COLUMNS, 'table') : 'no teams');
    return 0;
  },
};

const show: Command = {
  path: ['teams', 'show'],
  args: '<team> [options]',
  summary: "Show a team's settings (GET /admin/teams/{team})",
  options: { json: JSON_OPTION, ...ADMIN_OPTIONS },
  positionals: { min: 1, max: 1, names: ['<team>'] },
  env: ADMIN_ENV,
  async run({ values, positionals, io }) {
    const team = positionals[0]!;
    const client = adminClient(io.env, values, io.fetch);
    const res = await client.json<Json>('GET', `/admin/teams/${encodeURIComponent(team)}`);
    io.out(flag(values, 'json') ? formatJson(res) : formatRecord(res ?? {}));
    return 0;
  },
};

export const teamsGroup: CommandGroup = {
  name: 'teams',
  summary: 'Manage team-wide limits and budgets through the admin API',
  commands: [set, list, show],
};
