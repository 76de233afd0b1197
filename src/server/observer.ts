import type { KeyRecord } from '../keys/types.js';
import { costOf, type RequestTrace, type UsageRecord } from '../metering/record.js';
import type { UsageSink } from '../metering/usage-sink.js';
import type { Metrics } from '../metrics/metrics.js';
import type { TokenUsage } from '../proxy/usage.js';
import type { Logger } from './logger.js';

/**
 * The end of every client request: one log line, the metrics, and one usage record.
 * All of it is synchronous bookkeeping; the usage sink writes to its store later, in batches.
 */
export class Observer {
  constructor(
    private readonly logger: Logger,
    private readonly metrics: Metrics | null,
    private readonly usage: UsageSink,
  ) {}

  begin(route: string): void {
    this.metrics?.inflightOf.get(route).inc();
  }

  finish(
    trace: RequestTrace,
    key: KeyRecord | null,
    requestId: string,
    retryCount: string | undefined,
  ): void {
    const latencyMs = performance.now() - trace.startedAt;
    const model = trace.model;
    const { usage, estimated } = settledUsage(trace);
    const cost = model && usage && !trace.cacheHit ? costOf(usage, model.pricing) : 0;
    trace.admission?.settle(usage && !trace.cacheHit ? usage.promptTokens + usage.completionTokens : 0, cost);
    const team = key?.team ?? '';
    const m = this.metrics;
    if (m) {
      const keyLabel = key ? m.keyLabel(key.name) : '';
      const modelId = model?.id ?? '';
      const cache = trace.cacheHit ? 'hit' : 'miss';
      m.inflightOf.get(trace.route).dec();
      m.requestsOf.get(trace.route, modelId, String(trace.status), cache, team, keyLabel).inc();
      m.durationOf.get(trace.route, modelId, String(trace.stream), cache).observe(latencyMs / 1000);
      if (trace.overheadMs !== null) m.overheadOf.get(trace.route).observe(trace.overheadMs / 1000);
      if (trace.stream && trace.ttftMs !== null && trace.upstream) {
        m.ttft.observe({ model: modelId, upstream: trace.upstream }, trace.ttftMs / 1000);
      }
      if (usage && !trace.cacheHit) {
        m.tokensOf.get(modelId, team, keyLabel, 'prompt').inc(usage.promptTokens);
        m.tokensOf.get(modelId, team, keyLabel, 'cached').inc(usage.cachedTokens);
        m.tokensOf.get(modelId, team, keyLabel, 'completion').inc(usage.completionTokens);
        m.costOf.get(modelId, team, keyLabel).inc(cost);
      }
    }
    if (this.logger.isLevelEnabled('info')) {
      this.logger.info(
        {
          requestId,
          keyId: key?.id,
          keyName: key?.name,
          team: key?.team,
          model: model?.id,
          upstream: trace.upstream,
          status: trace.status,
          stream: trace.stream,
          cache: trace.cacheHit ? 'hit' : 'miss',
          tokens: usage
            ? { prompt: usage.promptTokens, cached: usage.cachedTokens, completion: usage.completionTokens }
            : undefined,
          estimated: estimated || undefined,
          latencyMs: round(latencyMs),
          ttftMs: trace.ttftMs === null ? undefined : round(trace.ttftMs),
          retryCount,
        },
        'request',
      );
    }
    if (!key) return;
    const record: UsageRecord = {
      requestId,
      ts: Date.now(),
      keyId: key.id,
      keyName: key.name,
      team: key.team,
      model: model?.id ?? '',
      upstream: trace.upstream,
      stream: trace.stream,
      status: trace.status,
      cacheHit: trace.cacheHit,
      promptTokens: trace.cacheHit ? 0 : (usage?.promptTokens ?? 0),
      cachedTokens: trace.cacheHit ? 0 : (usage?.cachedTokens ?? 0),
      completionTokens: trace.cacheHit ? 0 : (usage?.completionTokens ?? 0),
      costUsd: cost,
      savedUsd: trace.cacheHit && usage && model ? costOf(usage, model.pricing) : 0,
      latencyMs: round(latencyMs),
      ttftMs: trace.ttftMs === null ? null : round(trace.ttftMs),
      estimated,
    };
    this.usage.record(record);
  }
}

/** The upstream's usage, or for a stream cut short an estimate: local prompt count + chunks relayed. */
function settledUsage(trace: RequestTrace): { usage: TokenUsage | null; estimated: boolean } {
  if (trace.usage) return { usage: trace.usage, estimated: false };
  if (trace.stream && trace.relayedEvents > 0 && trace.promptEstimate) {
    return {
      usage: { promptTokens: trace.promptEstimate(), cachedTokens: 0, completionTokens: trace.relayedEvents },
      estimated: true,
    };
  }
  return { usage: null, estimated: false };
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;
