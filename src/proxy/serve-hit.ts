import { completionToSse } from '../cache/assemble.js';
import type { CacheEntry } from '../cache/cache-store.js';
import { type Exchange, jsonHeaders, sseHeaders } from './relay.js';

/** Answers from a cache entry in the form the client asked for, with `age`. */
export function serveHit(x: Exchange, entry: CacheEntry): Response {
  const { sink, trace, req } = x;
  x.c.get('responseHeaders')['age'] = String(Math.max(0, Math.floor((Date.now() - entry.createdAt) / 1000)));
  trace.status = 200;
  trace.ttftMs = performance.now() - trace.startedAt;
  if (trace.stream) {
    sink.writeHead(200, sseHeaders(x, null));
    sink.end(completionToSse(entry.body.toString('utf8'), req.stream_options?.include_usage === true));
  } else {
    const body = entry.body;
    sink.writeHead(200, jsonHeaders(x, null, body.length));
    sink.end(body);
  }
  return sink.response();
}
