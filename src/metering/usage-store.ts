import type { UsageRecord } from './record.js';

/** Aggregate counters of one (day, key, team, model) cell; cost in nano-USD so sums are exact. */
export interface UsageCell {
  day: string;
  keyId: string;
  keyName: string;
  team: string;
  model: string;
  requests: number;
  cacheHits: number;
  errors: number;
  estimated: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  costNanoUsd: number;
  savedNanoUsd: number;
}

export const METRICS = [
  'requests',
  'cacheHits',
  'errors',
  'estimated',
  'promptTokens',
  'cachedTokens',
  'completionTokens',
  'costNanoUsd',
  'savedNanoUsd',
] as const;
export type Metric = (typeof METRICS)[number];

/**
 * Persistent usage: the record log and the per-day aggregates. A write is idempotent by its batch
 * id: the writer retries a failed batch as the very same batch, and a batch written twice (the
 * first attempt did land, its answer did not) counts once. Not by request id: a client may send
 * its own x-request-id, and one repeated would have made later requests vanish from the usage.
 */
export interface UsageStore {
  write(records: UsageRecord[], batchId: string): Promise<void>;
  /** Every aggregate cell of the given UTC days. */
  cells(days: string[]): Promise<UsageCell[]>;
}

export const dayOf = (ts: number): string => new Date(ts).toISOString().slice(0, 10);
export const nano = (usd: number): number => Math.round(usd * 1e9);

/** The increments one record adds to its cell. */
export function increments(r: UsageRecord): Record<Metric, number> {
  return {
    requests: 1,
    cacheHits: r.cacheHit ? 1 : 0,
    errors: r.status >= 400 ? 1 : 0,
    estimated: r.estimated ? 1 : 0,
    promptTokens: r.promptTokens,
    cachedTokens: r.cachedTokens,
    completionTokens: r.completionTokens,
    costNanoUsd: nano(r.costUsd),
    savedNanoUsd: nano(r.savedUsd),
  };
}

/** Cell identity: key id, key name, team and model (tab-separated; none of them contains a tab). */
export const cellId = (r: Pick<UsageRecord, 'keyId' | 'keyName' | 'team' | 'model'>): string =>
  [r.keyId, r.keyName.replaceAll('\t', ' '), r.team ?? '', r.model].join('\t');

/** Batch ids a memory store remembers (it cannot fail, so the writer never retries it anyway). */
const RECENT_BATCHES = 1024;

/** Single-instance usage store: same answers as Redis, nothing persists, only the aggregates are kept. */
export class MemoryUsageStore implements UsageStore {
  private readonly recent = new Set<string>();
  private readonly days = new Map<string, Map<string, UsageCell>>();

  async write(records: UsageRecord[], batchId: string): Promise<void> {
    if (this.recent.has(batchId)) return;
    this.recent.add(batchId);
    if (this.recent.size > RECENT_BATCHES) {
      const oldest = this.recent.values().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
    for (const r of records) {
      const day = dayOf(r.ts);
      let cells = this.days.get(day);
      if (!cells) {
        cells = new Map();
        this.days.set(day, cells);
      }
      const id = cellId(r);
      let cell = cells.get(id);
      if (!cell) {
        cell = emptyCell(day, id);
        cells.set(id, cell);
      }
      const inc = increments(r);
      for (const m of METRICS) cell[m] += inc[m];
    }
  }

  async cells(days: string[]): Promise<UsageCell[]> {
    return days.flatMap((d) => [...(this.days.get(d)?.values() ?? [])].map((c) => ({ ...c })));
  }
}

export function emptyCell(day: string, id: string): UsageCell {
  const [keyId = '', keyName = '', team = '', model = ''] = id.split('\t');
  return {
    day,
    keyId,
    keyName,
    team,
    model,
    requests: 0,
    cacheHits: 0,
    errors: 0,
    estimated: 0,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    costNanoUsd: 0,
    savedNanoUsd: 0,
  };
}
