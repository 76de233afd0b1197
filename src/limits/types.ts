/** One limited dimension of a request: the key, or its team. */
export interface Dimension {
  /** Stable id, e.g. `key:key_abc` or `team:platform`. */
  id: string;
  kind: 'key' | 'team';
  /** Name for messages and metrics: the key's name or the team's. */
  name: string;
  /** Hash tag shared by every dimension of one request, so one Redis Cluster slot holds them. */
  tag: string;
  rpm: number | null;
  tpm: number | null;
  maxConcurrent: number | null;
  /** Budget in nano-USD for `period`, or null. */
  budgetNano: number | null;
  period: 'day' | 'month' | 'total';
}

export type LimitName = 'rpm' | 'tpm' | 'concurrency' | 'budget';

export interface AdmitInput {
  dims: Dimension[];
  now: number;
  day: string;
  month: string;
  /** Unique per request; holds the concurrency slot and the reserved cost. */
  leaseId: string;
  leaseTtlMs: number;
  /** Tokens to reserve (0 for cache hits, which spend no tokens). */
  tokens: number;
  /** Upper bound of the request's cost in nano-USD, held against budgets while it runs. */
  costNano: number;
  /** Cache hits count one request but are not checked against tokens or budgets. */
  hit: boolean;
  /**
   * Whether the request holds a concurrency slot while it runs. An answer served at once (a hit
   * from the instance's memory) is still checked against the slots in use but takes none.
   */
  lease: boolean;
}

/** Bucket state of one dimension after admission, for the x-ratelimit-* headers. */
export interface BucketView {
  requests: { limit: number; remaining: number } | null;
  tokens: { limit: number; remaining: number } | null;
}

export type AdmitResult =
  | { ok: true; views: BucketView[]; lease: string }
  | {
      ok: false;
      dim: number;
      limit: LimitName | 'tpm_never';
      capacity: number;
      /** rpm/tpm: tokens left in the bucket; concurrency: slots in use; budget: nano-USD spent + in flight. */
      level: number;
    };

export interface SettleInput {
  dims: Dimension[];
  now: number;
  day: string;
  month: string;
  lease: string;
  /** Actual minus reserved tokens: positive charges more, negative refunds. */
  tokenDelta: number;
  costNano: number;
}

export interface SpendView {
  day: number;
  month: number;
  total: number;
}

/** The atomic part of limiting: all-or-nothing admission and settlement. Redis and in-memory. */
export interface LimitStore {
  admit(input: AdmitInput): Promise<AdmitResult>;
  settle(input: SettleInput): Promise<void>;
  /** Writes settlements still held back (at shutdown). */
  flush?(): Promise<void>;
  /** Extends the leases of requests still running. */
  renew(dims: Dimension[], lease: string, expiresAt: number): Promise<void>;
  spend(dim: Dimension, day: string, month: string): Promise<SpendView>;
  /** Bucket levels and slots in use right now, without taking anything. */
  peek(dim: Dimension, now: number): Promise<PeekView>;
}

export interface PeekView {
  requests: number | null;
  tokens: number | null;
  inUse: number;
}
