import { USAGE_NUMBERS } from '../metering/usage-query.js';
import { type CliIO, flag, UsageError, type Values } from './command.js';

// Output formatting: aligned text tables, RFC 4180 CSV and JSON. Pure functions only.

export const FORMATS = ['table', 'json', 'csv'] as const;
export type Format = (typeof FORMATS)[number];

export function parseFormat(value: string | undefined): Format {
  if (value === undefined) return 'table';
  if ((FORMATS as readonly string[]).includes(value)) return value as Format;
  throw new UsageError(`--format must be one of ${FORMATS.join(', ')}, got '${value}'`);
}

export type Align = 'left' | 'right';

/** Aligned columns separated by two spaces, header first, no trailing blanks. */
export function formatTable(headers: string[], rows: string[][], align: Align[] = []): string {
  const clean = (s: string): string => s.replace(/[\r\n\t]+/g, ' ');
  const all = [headers, ...rows].map((r) => headers.map((_, i) => clean(r[i] ?? '')));
  const widths = headers.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  return all
    .map((r) =>
      r
        .map((c, i) => {
          const fill = ' '.repeat(widths[i]! - c.length);
          return align[i] === 'right' ? fill + c : c + fill;
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** One CSV field: null/undefined empty, objects as JSON, quoted when it holds `,` `"` or a line break. */
export function csvField(value: unknown): string {
  let s: string;
  if (value === null || value === undefined) s = '';
  else if (typeof value === 'object') s = JSON.stringify(value);
  else s = String(value);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** CSV with a header line; lines end in `\n`, and so does the output. */
export function formatCsv(headers: string[], rows: unknown[][]): string {
  return `${[headers, ...rows].map((r) => r.map(csvField).join(',')).join('\n')}\n`;
}

export const formatJson = (value: unknown): string => JSON.stringify(value, null, 2);

/** A column of a listing: `key` heads the CSV, `header` the table. */
export interface Column<T> {
  key: string;
  header: string;
  get(row: T): unknown;
  /** Table text; defaults to `displayValue`. */
  show?(value: unknown, row: T): string;
  align?: Align;
  /** Limit the column to one output form. */
  only?: 'table' | 'csv';
}

/** Table rendering of a scalar: null and undefined as '-', arrays joined, objects as JSON. */
export function displayValue(value: unknown): string {
  if (value === null || value === undefined) return '-';
  if (Array.isArray(value))
    return value.every((v) => typeof v !== 'object') ? value.join(',') : JSON.stringify(value);
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Renders rows as a table or CSV through column definitions. */
export function renderRows<T>(rows: T[], allColumns: Column<T>[], format: 'table' | 'csv'): string {
  const columns = allColumns.filter((c) => c.only === undefined || c.only === format);
  if (format === 'csv') {
    return formatCsv(
      columns.map((c) => c.key),
      rows.map((r) => columns.map((c) => c.get(r))),
    );
  }
  return formatTable(
    columns.map((c) => c.header),
    rows.map((r) =>
      columns.map((c) => {
        const v = c.get(r);
        return c.show ? c.show(v, r) : displayValue(v);
      }),
    ),
    columns.map((c) => c.align ?? 'left'),
  );
}

// ---------------------------------------------------------------------------------------------
// Records (`keys show`, `teams show`): one `field  value` line per leaf, nested objects dotted.

const NULL_TEXT: [RegExp, string][] = [
  [/^(limits|remaining)\./, 'unlimited'],
  [/^models$/, 'all'],
  [/^expiresAt$/, 'never'],
  [/^budget$/, 'none'],
  [/^team$/, '(none)'],
];

/** Leaves of a record as `[path, text]`; `metadata` and arrays of objects stay JSON. */
export function flattenRecord(obj: Record<string, unknown>, prefix = ''): [string, string][] {
  const out: [string, string][] = [];
  for (const [k, v] of Object.entries(obj)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && k !== 'metadata' && k !== 'details') {
      const inner = flattenRecord(v as Record<string, unknown>, path);
      out.push(...(inner.length ? inner : [[path, '{}'] as [string, string]]));
    } else if (v === null || v === undefined) {
      out.push([path, NULL_TEXT.find(([re]) => re.test(path))?.[1] ?? '-']);
    } else if (Array.isArray(v)) {
      out.push([path, v.length === 0 ? '(none)' : displayValue(v).replace(/,/g, ', ')]);
    } else {
      out.push([path, displayValue(v)]);
    }
  }
  return out;
}

export function formatRecord(obj: Record<string, unknown>): string {
  const rows = flattenRecord(obj);
  const width = Math.max(0, ...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => `${k}${' '.repeat(width - k.length)}${v}`.trimEnd()).join('\n');
}

// ---------------------------------------------------------------------------------------------
// Usage report

const USAGE_DIMENSIONS = ['day', 'keyId', 'keyName', 'team', 'model'];
const USAGE_METRICS: readonly string[] = USAGE_NUMBERS;

const isUsd = (column: string): boolean => /usd$/i.test(column);

/** Usage columns present in the rows: dimensions first, then metrics, then anything unknown. */
export function usageColumns(rows: Record<string, unknown>[]): string[] {
  const present = new Set<string>();
  for (const r of rows) for (const k of Object.keys(r)) present.add(k);
  const known = [...USAGE_DIMENSIONS, ...USAGE_METRICS];
  return [...known.filter((c) => present.has(c)), ...[...present].filter((c) => !known.includes(c))];
}

function usageCell(column: string, value: unknown): string {
  if (typeof value === 'number') return isUsd(column) ? value.toFixed(6) : String(value);
  if (value === null || value === undefined) return '';
  return displayValue(value);
}

/**
 * The usage table: numeric columns right-aligned, USD columns with 6 decimals, and a TOTAL row
 * summing every numeric column.
 */
export function formatUsageTable(rows: Record<string, unknown>[]): string {
  let columns = usageColumns(rows);
  const numeric = new Set(
    columns.filter(
      (c) =>
        rows.some((r) => typeof r[c] === 'number') &&
        rows.every((r) => r[c] == null || typeof r[c] === 'number'),
    ),
  );
  // The TOTAL label needs a text column in front.
  const labelled = columns.length > 0 && !numeric.has(columns[0]!);
  if (!labelled) columns = ['', ...columns];
  const body = rows.map((r) => columns.map((c) => (c === '' ? '' : usageCell(c, r[c]))));
  const total = columns.map((c, i) => {
    if (i === 0) return 'TOTAL';
    if (!numeric.has(c)) return '';
    const sum = rows.reduce((acc, r) => acc + (typeof r[c] === 'number' ? (r[c] as number) : 0), 0);
    return usageCell(c, sum);
  });
  return formatTable(
    columns,
    [...body, total],
    columns.map((c) => (numeric.has(c) ? 'right' : 'left')),
  );
}

/** Prints the answer to a change: the JSON with `--json`, else a line and the changed record. */
export function printChange(io: CliIO, values: Values, res: unknown, what: string): number {
  if (flag(values, 'json')) {
    io.out(formatJson(res));
    return 0;
  }
  io.out(`Updated ${what}`);
  if (res && typeof res === 'object') io.out(formatRecord(res as Record<string, unknown>));
  return 0;
}
