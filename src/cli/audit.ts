import { adminClient, fetchAllPages } from './admin-client.js';
import {
  ADMIN_ENV,
  ADMIN_OPTIONS,
  type Command,
  FORMAT_OPTION,
  flag,
  parsePositiveInt,
  str,
  type Values,
} from './command.js';
import { type Column, formatJson, parseFormat, renderRows } from './format.js';

// `tollgate audit`: the admin change log (GET /admin/audit).

type Json = Record<string, unknown>;

/** The GET /admin/audit query. */
export function auditQuery(values: Values): Record<string, string | number | undefined> {
  const limit = str(values, 'limit');
  return {
    limit: limit === undefined ? undefined : parsePositiveInt('limit', limit),
    cursor: str(values, 'cursor'),
  };
}

export const AUDIT_COLUMNS: Column<Json>[] = [
  { key: 'time', header: 'TIME', get: (r) => r['time'] },
  { key: 'actor', header: 'ACTOR', get: (r) => r['actor'] },
  { key: 'action', header: 'ACTION', get: (r) => r['action'] },
  { key: 'target', header: 'TARGET', get: (r) => r['target'] },
  {
    key: 'details',
    header: 'DETAILS',
    get: (r) => r['details'],
    show: (v) => (v === undefined || v === null ? '' : JSON.stringify(v)),
  },
  { key: 'id', header: '', get: (r) => r['id'], only: 'csv' },
];

export const auditCommand: Command = {
  path: ['audit'],
  args: '[options]',
  summary: 'Show the admin change log: keys created, updated, rotated, revoked; teams changed',
  options: {
    limit: { type: 'string', arg: 'N', description: 'number of entries (page size with --all)' },
    cursor: {
      type: 'string',
      arg: 'CURSOR',
      description: 'start at this page (nextCursor of a previous listing)',
    },
    all: { type: 'boolean', description: 'follow nextCursor and print every entry' },
    format: FORMAT_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 0, max: 0, names: [] },
  env: ADMIN_ENV,
  examples: ['tollgate audit --limit 20', 'tollgate audit --all --format csv > audit.csv'],
  async run({ values, io }) {
    const format = parseFormat(str(values, 'format'));
    const query = auditQuery(values);
    const client = adminClient(io.env, values, io.fetch);
    const res = flag(values, 'all')
      ? await fetchAllPages<Json>(client, '/admin/audit', query)
      : await client.json<{ data?: Json[]; nextCursor?: string | null } | Json[]>('GET', '/admin/audit', {
          query,
        });
    if (format === 'json') {
      io.out(formatJson(res));
      return 0;
    }
    const rows = Array.isArray(res) ? res : (res?.data ?? []);
    if (format === 'csv') io.out(renderRows(rows, AUDIT_COLUMNS, 'csv').replace(/\n$/, ''));
    else io.out(rows.length ? renderRows(rows, AUDIT_COLUMNS, 'table') : 'no audit entries');
    const next = Array.isArray(res) ? null : res?.nextCursor;
    if (next && !flag(values, 'all'))
      io.err(`more entries: use --cursor ${next} for the next page, or --all`);
    return 0;
  },
};
