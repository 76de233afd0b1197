// Shared pieces of the reliability suite (issue 9): bounded HTTP calls that never throw,
// the error-envelope check, SSE parsing, usage totals and metric reads.

import type { Registry } from 'prom-client';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import { USAGE_NUMBERS, type UsageRow } from '../../src/metering/usage-query.js';

export interface Answer {
  /** HTTP status, or 0 when the call failed without an answer (see `error`). */
  status: number;
  headers: Headers;
  text: string;
  /** Milliseconds from sending to the end of the body (or the failure). */
  ms: number;
  /** The failure (`cause.code` when there is one, else the message) when no answer came. */
  error?: string;
}

export interface CallInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** Abort the call (and count it as a hang) after this long; default 10 s. */
  timeoutMs?: number;
  /** A connection pool of the caller's own (undici's fetch is used then). */
  dispatcher?: Dispatcher;
}

/** One HTTP call that always resolves: status 0 and `error` when no answer came in time. */
export async function call(url: string, init: CallInit = {}): Promise<Answer> {
  const started = performance.now();
  try {
    const options = {
      method: init.method ?? 'GET',
      headers: init.headers ?? {},
      ...(init.body !== undefined && { body: init.body }),
      signal: AbortSignal.timeout(init.timeoutMs ?? 10_000),
    };
    const res = init.dispatcher
      ? await undiciFetch(url, { ...options, dispatcher: init.dispatcher })
      : await fetch(url, options);
    const text = await res.text();
    return { status: res.status, headers: res.headers as Headers, text, ms: performance.now() - started };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    return {
      status: 0,
      headers: new Headers(),
      text: '',
      ms: performance.now() - started,
      error: e.name === 'TimeoutError' ? 'timeout' : (e.cause?.code ?? e.cause?.message ?? e.message),
    };
  }
}

export const chatBody = (content: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content }], ...extra });

/** POST /v1/chat/completions with a client key. */
export function chat(
  url: string,
  key: string,
  content: string,
  extra: Record<string, unknown> = {},
  opts: { timeoutMs?: number; headers?: Record<string, string>; dispatcher?: Dispatcher } = {},
): Promise<Answer> {
  return call(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...opts.headers },
    body: chatBody(content, extra),
    ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }),
    ...(opts.dispatcher !== undefined && { dispatcher: opts.dispatcher }),
  });
}

/**
 * What is wrong with an error answer, or null when it is OpenAI's envelope with all four keys
 * (message a non-empty string, type a string, param and code string or null) and x-request-id.
 */
export function envelopeProblem(a: Pick<Answer, 'status' | 'headers' | 'text'>): string | null {
  if (!a.headers.get('x-request-id')) return `${a.status}: no x-request-id`;
  if (!/application\/json/.test(a.headers.get('content-type') ?? ''))
    return `${a.status}: content-type ${a.headers.get('content-type')}`;
  let json: any;
  try {
    json = JSON.parse(a.text);
  } catch {
    return `${a.status}: body is not JSON: ${a.text.slice(0, 200)}`;
  }
  return errorObjectProblem(json, a.status);
}

/** The same check for a parsed `{"error":{…}}` object (also used for SSE error events). */
export function errorObjectProblem(json: any, status: number | string = ''): string | null {
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    return `${status}: not an object: ${JSON.stringify(json)}`;
  if (Object.keys(json).join() !== 'error') return `${status}: keys ${Object.keys(json).join()}`;
  const e = json.error;
  if (e === null || typeof e !== 'object') return `${status}: error is not an object`;
  if (Object.keys(e).sort().join() !== 'code,message,param,type')
    return `${status}: error keys ${Object.keys(e).sort().join()}`;
  if (typeof e.message !== 'string' || e.message === '') return `${status}: bad message`;
  if (typeof e.type !== 'string') return `${status}: bad type`;
  if (e.param !== null && typeof e.param !== 'string') return `${status}: bad param`;
  if (e.code !== null && typeof e.code !== 'string') return `${status}: bad code`;
  return null;
}

/** The SSE events of a finished stream body, without the trailing blank lines. */
export function sseEvents(text: string): string[] {
  return text
    .split('\n\n')
    .map((e) => e.trim())
    .filter((e) => e.length > 0 && !e.startsWith(':'));
}

/**
 * How a stream answer ended: 'done' ([DONE] after content, no error), 'error' (an error event in
 * the envelope, then [DONE]) or a description of what is wrong with it.
 */
export function streamOutcome(text: string): 'done' | 'error' | string {
  const events = sseEvents(text);
  if (events.at(-1) !== 'data: [DONE]') return `does not end with [DONE]: ${JSON.stringify(events.at(-1))}`;
  const errors = events.filter((e) => e.startsWith('data: {"error"'));
  if (errors.length === 0) return 'done';
  if (errors.length > 1) return 'more than one error event';
  if (events.at(-2) !== errors[0]) return 'the error event is not the last before [DONE]';
  const problem = errorObjectProblem(JSON.parse(errors[0]!.slice('data: '.length)), 'event');
  return problem ?? 'error';
}

// The summed fields the tests compare: all but savedUsd.
const TOTAL_FIELDS = USAGE_NUMBERS.filter((f) => f !== 'savedUsd') as Exclude<
  (typeof USAGE_NUMBERS)[number],
  'savedUsd'
>[];

/** The sums of usage rows the tests compare (fields of the usage API's own row type). */
export type UsageTotals = Pick<UsageRow, (typeof TOTAL_FIELDS)[number]>;

/** Usage rows summed; the cost rounded to nano-USD, the unit it is kept in. */
export function sumUsage(rows: UsageTotals[]): UsageTotals {
  const t = Object.fromEntries(TOTAL_FIELDS.map((f) => [f, 0])) as UsageTotals;
  for (const r of rows) for (const f of TOTAL_FIELDS) t[f] += r[f];
  t.costUsd = Math.round(t.costUsd * 1e9) / 1e9;
  return t;
}

export const utcDay = (t = Date.now()): string => new Date(t).toISOString().slice(0, 10);

/** GET /admin/usage over `fromMs`..now, summed over its rows. */
export async function usageTotals(
  url: string,
  adminKey: string,
  fromMs: number,
  query = '',
): Promise<UsageTotals & { rows: any[] }> {
  const a = await call(`${url}/admin/usage?from=${utcDay(fromMs)}&to=${utcDay()}${query}`, {
    headers: { authorization: `Bearer ${adminKey}` },
  });
  if (a.status !== 200) throw new Error(`usage query failed: ${a.status} ${a.error ?? a.text}`);
  const rows = (JSON.parse(a.text) as { data: any[] }).data;
  return { ...sumUsage(rows), rows };
}

/** Sum of a metric's samples whose labels include `labels` (0 when there is none). */
export async function metricSum(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  let sum = 0;
  for (const v of values) {
    const l = v.labels as Record<string, string | number | undefined>;
    if (Object.entries(labels).every(([k, want]) => String(l[k]) === want)) sum += v.value;
  }
  return sum;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Counts of each value, for messages: { '200': 31, '503': 4 }. */
export function tally<T>(xs: T[], f: (x: T) => string | number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) {
    const k = String(f(x));
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/**
 * Appends one line to the reliability report when RELIABILITY_REPORT names a file (the figures
 * quoted in the README come from it); a no-op otherwise.
 */
export async function report(file: string, figures: Record<string, unknown>): Promise<void> {
  const out = process.env['RELIABILITY_REPORT'];
  if (!out) return;
  const { appendFileSync } = await import('node:fs');
  appendFileSync(out, `${JSON.stringify({ file, ...figures })}\n`);
}
