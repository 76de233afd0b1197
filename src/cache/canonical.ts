import { hash } from 'node:crypto';
import type { ChatRequest } from '../proxy/chat-request.js';

// Fields that cannot change the model's output, so they are not part of the cache key.
const IGNORED = new Set(['model', 'stream', 'stream_options', 'user', 'metadata', 'store']);

/**
 * The cache key of a request: SHA-256 of the resolved model plus every output-relevant field,
 * serialised with object keys sorted, so key order and the ignored fields never matter.
 */
export function cacheKeyOf(modelId: string, req: ChatRequest): string {
  let text = `${modelId}\n`;
  for (const k of sortedKeys(req)) {
    if (!IGNORED.has(k) && req[k] !== undefined) text += `${JSON.stringify(k)}:${canonical(req[k])},`;
  }
  return hash('sha256', text, 'base64url');
}

// Built by appending to one string: no arrays of parts per object or array.
function canonical(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  let out: string;
  if (Array.isArray(v)) {
    out = '[';
    for (let i = 0; i < v.length; i++) out += (i > 0 ? ',' : '') + canonical(v[i]);
    return `${out}]`;
  }
  const o = v as Record<string, unknown>;
  out = '{';
  for (const k of sortedKeys(o)) {
    if (o[k] === undefined) continue;
    out += `${out.length > 1 ? ',' : ''}${JSON.stringify(k)}:${canonical(o[k])}`;
  }
  return `${out}}`;
}

/**
 * An object's keys in sorted order. Objects in a request have a handful of keys, so an insertion
 * sort in place (nothing to do when they are already in order) beats Array.prototype.sort, which
 * allocates its own work space on every call.
 */
function sortedKeys(o: object): string[] {
  const keys = Object.keys(o);
  if (keys.length > 16) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const k = keys[i]!;
    let j = i - 1;
    while (j >= 0 && keys[j]! > k) {
      keys[j + 1] = keys[j]!;
      j--;
    }
    keys[j + 1] = k;
  }
  return keys;
}
