import type { UsageRecord } from './record.js';

/** Where usage records go. `record` never blocks the response: writes are buffered and batched. */
export interface UsageSink {
  record(r: UsageRecord): void;
  /** Writes everything buffered so far (shutdown, tests). */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export const noUsageSink: UsageSink = {
  record() {},
  async flush() {},
  async close() {},
};
