import { randomBytes } from 'node:crypto';
import type { UsageRecord } from './record.js';
import type { UsageSink } from './usage-sink.js';
import type { UsageStore } from './usage-store.js';

export interface UsageWriterOptions {
  /** Records held in memory at most; beyond it new records are dropped and counted. */
  bufferSize: number;
  flushIntervalMs: number;
  batchSize?: number;
  onDropped?: (n: number) => void;
  onError?: (err: Error) => void;
}

/**
 * Takes usage records off the response path: `record` only appends to a bounded buffer; a timer
 * writes batches to the store. A batch gets an id of its own when it is taken from the buffer,
 * and a failed one is retried as the very same batch until it is written (the store counts a
 * batch id once, so a retry never counts twice).
 *
 * The timer runs only while records wait: an idle gateway runs no JavaScript at all, which is
 * what lets V8 see it idle and give back the memory a burst of traffic made it take (its memory
 * reducer stays away from an isolate that keeps being called, even by a timer with nothing to do).
 */
export class UsageWriter implements UsageSink {
  private buffer: UsageRecord[] = [];
  /** The batch being written, or failed and waiting to be retried. */
  private head: { id: string; records: UsageRecord[] } | null = null;
  private readonly idPrefix = randomBytes(6).toString('hex');
  private batches = 0;
  private writing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private failures = 0;
  private pausedUntil = 0;
  dropped = 0;

  constructor(
    private readonly store: UsageStore,
    private readonly opts: UsageWriterOptions,
  ) {}

  /** Runs a tick after the flush interval, unless one is already due. */
  private schedule(): void {
    if (this.timer !== null || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.tick();
    }, this.opts.flushIntervalMs);
    this.timer.unref();
  }

  get pending(): number {
    return this.buffer.length + (this.head?.records.length ?? 0);
  }

  record(r: UsageRecord): void {
    if (this.pending >= this.opts.bufferSize) {
      this.dropped++;
      this.opts.onDropped?.(1);
      return;
    }
    this.buffer.push(r);
    this.schedule();
  }

  /**
   * Writes everything buffered, a batch at a time: one batch per tick would fall behind any
   * request rate above batchSize per interval (2,000/s by default), and the backlog would grow.
   */
  private async tick(): Promise<void> {
    if (!this.writing) {
      try {
        while (this.pending > 0 && Date.now() >= this.pausedUntil) await this.writeOnce();
      } catch {
        // Counted by onError; the batch stays at the head for the next tick.
      }
    }
    if (this.pending > 0) this.schedule();
  }

  /** Writes one batch: the failed one again, else the next from the buffer. */
  private writeOnce(): Promise<void> {
    if (this.writing) return this.writing;
    if (this.head === null) {
      const records = this.buffer.splice(0, this.opts.batchSize ?? 500);
      this.head = { id: `${this.idPrefix}-${++this.batches}`, records };
    }
    const batch = this.head;
    this.writing = this.store
      .write(batch.records, batch.id)
      .then(
        () => {
          this.head = null;
          this.failures = 0;
        },
        (err: Error) => {
          this.failures++;
          // Back off while the store is down: 100 ms doubling up to 5 s.
          this.pausedUntil = Date.now() + Math.min(5000, 100 * 2 ** Math.min(this.failures, 6));
          this.opts.onError?.(err);
          throw err;
        },
      )
      .finally(() => {
        this.writing = null;
      });
    return this.writing;
  }

  /** Writes everything buffered; rejects if the store stays unreachable for `timeoutMs`. */
  async flush(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending > 0 || this.writing) {
      try {
        await (this.writing ?? this.writeOnce());
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}
