import type { HttpBindings } from '@hono/node-server';
import type { Authenticated } from '../keys/key-service.js';
import type { RequestTrace } from '../metering/record.js';

/** Per-request variables; everything long-lived is passed to `createApp` instead. */
export interface AppEnv {
  Bindings: HttpBindings;
  Variables: {
    requestId: string;
    /** performance.now() when the request arrived. */
    startedAt: number;
    principal: Authenticated;
    /** What the proxy learned while serving; becomes the usage record. */
    trace: RequestTrace;
    /** Headers for the answer, success or error (rate limits, cache status). */
    responseHeaders: Record<string, string>;
  };
}
