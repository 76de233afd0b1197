import type { RedisClient } from '../store/redis.js';
import type { UsageRecord } from './record.js';
import {
  cellId,
  dayOf,
  emptyCell,
  increments,
  METRICS,
  type Metric,
  type UsageCell,
  type UsageStore,
} from './usage-store.js';

const STREAM_MAXLEN = 1_000_000;
const AGG_TTL_SECONDS = 400 * 86400;
/** How long a written batch is remembered: far longer than any retry of it takes. */
const BATCH_TTL_SECONDS = 86400;

// One call per day of records of a batch: unless this batch's day has been written before (a
// marker key per batch and day, set NX), append each record to the export stream and add its
// increments to its cell's sums; the sums go into the day's aggregate hash once per cell and
// metric, not once per record. Every key shares the hash tag of the stream's name, so the call
// stays in one Redis Cluster slot.
// ARGV: the number of cells, the cell ids, then per record its JSON and its increments as
// "cell,v1,…,vN" (cell: 1-based index into the cell ids; values in METRICS order).
const WRITE_DAY = `
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ${BATCH_TTL_SECONDS}) then return 0 end
local metrics = {${METRICS.map((m) => `'${m}'`).join(', ')}}
local ncell = tonumber(ARGV[1])
local sums = {}
local n = 0
for i = ncell + 2, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ${STREAM_MAXLEN}, '*', 'record', ARGV[i])
  local cell, m = nil, 0
  for v in string.gmatch(ARGV[i + 1], '[^,]+') do
    if cell == nil then
      cell = tonumber(v)
      sums[cell] = sums[cell] or {}
    else
      m = m + 1
      sums[cell][m] = (sums[cell][m] or 0) + tonumber(v)
    end
  end
  n = n + 1
end
for cell, s in pairs(sums) do
  for m, v in pairs(s) do
    if v ~= 0 then redis.call('HINCRBY', KEYS[2], ARGV[cell + 1] .. '\\t' .. metrics[m], v) end
  end
end
redis.call('EXPIRE', KEYS[2], ${AGG_TTL_SECONDS})
return n
`;

type WithUsage = RedisClient & {
  tollgateUsageWrite(stream: string, agg: string, batch: string, ...args: string[]): Promise<number>;
};

/** Usage in Redis: `<prefix>usage` stream for export, per-day aggregate hashes behind the usage API. */
export class RedisUsageStore implements UsageStore {
  private readonly redis: WithUsage;
  private readonly stream: string;
  private readonly tag: string;

  constructor(redis: RedisClient, prefix: string) {
    redis.defineCommand('tollgateUsageWrite', { numberOfKeys: 3, lua: WRITE_DAY });
    this.redis = redis as WithUsage;
    this.stream = `${prefix}usage`;
    this.tag = `{${this.stream}}`;
  }

  private aggKey(day: string): string {
    return `${this.tag}:agg:${day}`;
  }

  async write(records: UsageRecord[], batchId: string): Promise<void> {
    const byDay = new Map<string, UsageRecord[]>();
    for (const r of records) {
      const d = dayOf(r.ts);
      const rs = byDay.get(d);
      if (rs) rs.push(r);
      else byDay.set(d, [r]);
    }
    await Promise.all(
      [...byDay].map(([day, rs]) => {
        const cells = new Map<string, number>();
        const recordArgs: string[] = [];
        for (const r of rs) {
          const id = cellId(r);
          let cell = cells.get(id);
          if (cell === undefined) {
            cell = cells.size + 1;
            cells.set(id, cell);
          }
          const inc = increments(r);
          let incs = String(cell);
          for (const m of METRICS) incs += `,${inc[m]}`;
          recordArgs.push(JSON.stringify(r), incs);
        }
        return this.redis.tollgateUsageWrite(
          this.stream,
          this.aggKey(day),
          `${this.tag}:batch:${batchId}:${day}`,
          String(cells.size),
          ...cells.keys(),
          ...recordArgs,
        );
      }),
    );
  }

  async cells(days: string[]): Promise<UsageCell[]> {
    const hashes = await Promise.all(days.map((d) => this.redis.hgetall(this.aggKey(d))));
    const out: UsageCell[] = [];
    days.forEach((day, i) => {
      const cells = new Map<string, UsageCell>();
      for (const [field, value] of Object.entries(hashes[i] ?? {})) {
        const cut = field.lastIndexOf('\t');
        const id = field.slice(0, cut);
        const metric = field.slice(cut + 1) as Metric;
        let cell = cells.get(id);
        if (!cell) {
          cell = emptyCell(day, id);
          cells.set(id, cell);
        }
        if ((METRICS as readonly string[]).includes(metric)) cell[metric] = Number(value);
      }
      out.push(...cells.values());
    });
    return out;
  }
}
