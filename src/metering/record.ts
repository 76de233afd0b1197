import type { ModelConfig } from '../config/schema.js';
import type { Admission } from '../limits/limiter.js';
import type { TokenUsage } from '../proxy/usage.js';

/** One metered request (SPEC section 8). */
export interface UsageRecord {
  requestId: string;
  ts: number;
  keyId: string;
  keyName: string;
  team: string | null;
  model: string;
  upstream: string | null;
  stream: boolean;
  status: number;
  cacheHit: boolean;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  costUsd: number;
  savedUsd: number;
  latencyMs: number;
  ttftMs: number | null;
  estimated: boolean;
}

/** USD cost of a usage under a model's pricing; cached prompt tokens at the cached rate. */
export function costOf(u: TokenUsage, pricing: ModelConfig['pricing']): number {
  const uncached = Math.max(0, u.promptTokens - u.cachedTokens);
  return (
    (uncached * pricing.inputPerMTok +
      u.cachedTokens * pricing.cachedInputPerMTok +
      u.completionTokens * pricing.outputPerMTok) /
    1e6
  );
}

/** What the proxy learns about one request while serving it; turned into a UsageRecord at the end. */
export class RequestTrace {
  model: ModelConfig | null = null;
  upstream: string | null = null;
  stream = false;
  /** Set by handlers that write the response themselves; otherwise taken from the response. */
  status = 0;
  cacheHit = false;
  usage: TokenUsage | null = null;
  /** Prompt tokens counted locally, for streams that ended without a usage chunk. */
  promptEstimate: (() => number) | null = null;
  relayedEvents = 0;
  upstreamMs = 0;
  ttftMs: number | null = null;
  /** Gateway time up to the response headers, excluding the upstream. */
  overheadMs: number | null = null;
  /** The limiter's admission, settled by the observer once the outcome is known. */
  admission: Admission | null = null;

  constructor(
    readonly route: string,
    readonly startedAt: number,
  ) {}
}
