import { adminClient } from './admin-client.js';
import {
  ADMIN_ENV,
  ADMIN_OPTIONS,
  type Command,
  FORMAT_OPTION,
  parseDay,
  parseList,
  str,
  UsageError,
  type Values,
} from './command.js';
import { type Format, formatJson, formatUsageTable, parseFormat } from './format.js';

// `tollgate usage`: the usage and spend report (GET /admin/usage).

export const GROUP_BY = ['day', 'key', 'team', 'model'] as const;

const today = (now: Date): string => now.toISOString().slice(0, 10);

/** The GET /admin/usage query; `from` and `to` default to today (UTC). */
export function usageQuery(
  values: Values,
  now: Date,
  format: Format = 'table',
): Record<string, string | undefined> {
  const from = parseDay('from', str(values, 'from') ?? today(now));
  const toArg = str(values, 'to');
  // Without --to: today, or the --from day itself when that lies ahead.
  const to = toArg !== undefined ? parseDay('to', toArg) : [from, today(now)].sort()[1]!;
  if (from > to) throw new UsageError(`--from (${from}) is after --to (${to})`);
  const groupByArg = str(values, 'group-by');
  let groupBy: string | undefined;
  if (groupByArg !== undefined) {
    const parts = parseList(groupByArg);
    const bad = parts.filter((p) => !(GROUP_BY as readonly string[]).includes(p));
    if (bad.length)
      throw new UsageError(
        `--group-by takes ${GROUP_BY.join(', ')} (comma-separated), got '${bad.join(',')}'`,
      );
    groupBy = [...new Set(parts)].join(',');
  }
  return {
    from,
    to,
    groupBy: groupBy || undefined,
    key: str(values, 'key'),
    team: str(values, 'team'),
    model: str(values, 'model'),
    format: format === 'csv' ? 'csv' : 'json',
  };
}

export const usageCommand: Command = {
  path: ['usage'],
  args: '[options]',
  summary: 'Report requests, tokens and spend (GET /admin/usage)',
  description: 'Days are UTC; --to is inclusive. Team-admin keys see their own team only.',
  options: {
    from: { type: 'string', arg: 'YYYY-MM-DD', description: 'first day (default: today, UTC)' },
    to: { type: 'string', arg: 'YYYY-MM-DD', description: 'last day, inclusive (default: today, UTC)' },
    'group-by': { type: 'string', arg: 'DIMS', description: 'comma-separated: day, key, team, model' },
    key: { type: 'string', arg: 'ID', description: 'only this key id' },
    team: { type: 'string', arg: 'TEAM', description: 'only this team' },
    model: { type: 'string', arg: 'MODEL', description: 'only this model id' },
    format: FORMAT_OPTION,
    ...ADMIN_OPTIONS,
  },
  positionals: { min: 0, max: 0, names: [] },
  env: ADMIN_ENV,
  examples: [
    'tollgate usage --from 2026-01-01 --to 2026-01-31 --group-by team,model',
    'tollgate usage --group-by day,key --format csv > usage.csv',
  ],
  async run({ values, io }) {
    const format = parseFormat(str(values, 'format'));
    const query = usageQuery(values, io.now(), format);
    const client = adminClient(io.env, values, io.fetch);
    if (format === 'csv') {
      const res = await client.request('GET', '/admin/usage', { query, accept: 'text/csv' });
      io.out(res.text.replace(/\r?\n$/, ''));
      return 0;
    }
    const res = await client.json<{ data?: Record<string, unknown>[] }>('GET', '/admin/usage', { query });
    if (format === 'json') {
      io.out(formatJson(res));
      return 0;
    }
    const rows = res?.data ?? [];
    io.out(rows.length ? formatUsageTable(rows) : `no usage from ${query['from']} to ${query['to']}`);
    return 0;
  },
};
