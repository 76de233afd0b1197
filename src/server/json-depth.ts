import { invalidRequest } from '../errors/gateway-error.js';

/**
 * How deep a request body may nest arrays and objects. Far beyond any real request (a JSON
 * schema ten levels deep is some 30), and far below what the recursive code downstream
 * (JSON.stringify, the cache key) survives: a body nested thousands deep overflows the stack.
 */
export const MAX_JSON_DEPTH = 128;

/** Refuses a parsed body nested deeper than MAX_JSON_DEPTH (checked without recursion). */
export function checkJsonDepth(value: unknown): void {
  if (value === null || typeof value !== 'object') return;
  const stack: [object, number][] = [[value, 1]];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    const [node, depth] = top;
    for (const child of Array.isArray(node) ? node : Object.values(node)) {
      if (child === null || typeof child !== 'object') continue;
      if (depth >= MAX_JSON_DEPTH) {
        throw invalidRequest(
          `The JSON body is nested too deeply: at most ${MAX_JSON_DEPTH} levels are allowed.`,
        );
      }
      stack.push([child, depth + 1]);
    }
  }
}
