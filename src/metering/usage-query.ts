import { z } from 'zod';
import type { UsageCell, UsageStore } from './usage-store.js';

const day = z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'expected YYYY-MM-DD');
export const GROUPS = ['day', 'key', 'team', 'model'] as const;
export type Group = (typeof GROUPS)[number];
const MAX_DAYS = 400;

export const usageQuerySchema = z
  .object({
    from: day.optional(),
    to: day.optional(),
    groupBy: z
      .string()
      .optional()
      .transform((s, ctx) => {
        const parts = (s ?? '')
          .split(',')
          .map((p) => p.trim())
          .filter(Boolean);
        for (const p of parts) {
          if (!(GROUPS as readonly string[]).includes(p)) {
            ctx.addIssue({ code: 'custom', message: `unknown group '${p}' (use ${GROUPS.join(', ')})` });
          }
        }
        return [...new Set(parts)] as Group[];
      }),
    key: z.string().optional(),
    team: z.string().optional(),
    model: z.string().optional(),
    format: z.enum(['json', 'csv']).default('json'),
  })
  .strict();

export type UsageQuery = z.output<typeof usageQuerySchema>;

/** The summed fields of a usage row, in report order. */
export const USAGE_NUMBERS = [
  'requests',
  'cacheHits',
  'errors',
  'promptTokens',
  'cachedTokens',
  'completionTokens',
  'costUsd',
  'savedUsd',
] as const;

export interface UsageRow {
  day?: string;
  keyId?: string;
  keyName?: string;
  team?: string | null;
  model?: string;
  requests: number;
  cacheHits: number;
  errors: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  costUsd: number;
  savedUsd: number;
}

/** The UTC days from..to inclusive, or an error message. */
export function daysBetween(from: string, to: string): string[] | string {
  const start = Date.parse(`${from}T00:00:00Z`);
  const end = Date.parse(`${to}T00:00:00Z`);
  if (Number.isNaN(start) || Number.isNaN(end)) return 'from/to must be valid dates';
  if (end < start) return "'to' is before 'from'";
  const n = (end - start) / 86400000 + 1;
  if (n > MAX_DAYS) return `at most ${MAX_DAYS} days per query`;
  return Array.from({ length: n }, (_, i) => new Date(start + i * 86400000).toISOString().slice(0, 10));
}

/** Sums cells into rows grouped by the requested dimensions (none: one grand-total row). */
export async function queryUsage(store: UsageStore, days: string[], q: UsageQuery): Promise<UsageRow[]> {
  const cells = (await store.cells(days)).filter(
    (c) =>
      (q.key === undefined || c.keyId === q.key) &&
      (q.team === undefined || c.team === q.team) &&
      (q.model === undefined || c.model === q.model),
  );
  const groups = new Map<string, { row: UsageRow; cost: number; saved: number }>();
  for (const c of cells) {
    const id = q.groupBy.map((g) => groupValue(c, g)).join('\t');
    let g = groups.get(id);
    if (!g) {
      g = { row: baseRow(c, q.groupBy), cost: 0, saved: 0 };
      groups.set(id, g);
    }
    const r = g.row;
    r.requests += c.requests;
    r.cacheHits += c.cacheHits;
    r.errors += c.errors;
    r.promptTokens += c.promptTokens;
    r.cachedTokens += c.cachedTokens;
    r.completionTokens += c.completionTokens;
    g.cost += c.costNanoUsd;
    g.saved += c.savedNanoUsd;
  }
  if (groups.size === 0 && q.groupBy.length === 0)
    groups.set('', { row: baseRow(null, []), cost: 0, saved: 0 });
  const rows = [...groups.values()].map((g) => ({
    ...g.row,
    costUsd: g.cost / 1e9,
    savedUsd: g.saved / 1e9,
  }));
  return rows.sort((a, b) => sortKey(a).localeCompare(sortKey(b)));
}

const groupValue = (c: UsageCell, g: Group): string =>
  g === 'day' ? c.day : g === 'key' ? c.keyId : g === 'team' ? c.team : c.model;

function baseRow(c: UsageCell | null, groupBy: Group[]): UsageRow {
  const row = Object.fromEntries(USAGE_NUMBERS.map((f) => [f, 0])) as unknown as UsageRow;
  if (!c) return row;
  const head: Partial<UsageRow> = {};
  if (groupBy.includes('day')) head.day = c.day;
  if (groupBy.includes('key')) {
    head.keyId = c.keyId;
    head.keyName = c.keyName;
  }
  if (groupBy.includes('team')) head.team = c.team === '' ? null : c.team;
  if (groupBy.includes('model')) head.model = c.model;
  return { ...head, ...row };
}

const sortKey = (r: UsageRow): string =>
  [r.day ?? '', r.team ?? '', r.keyName ?? '', r.model ?? ''].join('\t');

const CSV_COLUMNS: (keyof UsageRow)[] = ['day', 'keyId', 'keyName', 'team', 'model', ...USAGE_NUMBERS];

/** RFC 4180 CSV with the grouped columns first. */
export function toCsv(rows: UsageRow[], groupBy: Group[]): string {
  const cols = CSV_COLUMNS.filter((c) => {
    if (c === 'day') return groupBy.includes('day');
    if (c === 'keyId' || c === 'keyName') return groupBy.includes('key');
    if (c === 'team') return groupBy.includes('team');
    if (c === 'model') return groupBy.includes('model');
    return true;
  });
  const cell = (v: unknown): string => {
    const s = v === undefined || v === null ? '' : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  const lines = [cols.join(','), ...rows.map((r) => cols.map((c) => cell(r[c])).join(','))];
  return `${lines.join('\r\n')}\r\n`;
}
