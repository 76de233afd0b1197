import type { Context } from 'hono';
import type { z } from 'zod';
import { GatewayError, invalidRequest } from '../errors/gateway-error.js';
import { checkJsonDepth } from '../server/json-depth.js';
import { readBody } from '../server/read-body.js';

const ADMIN_BODY_LIMIT = 1024 * 1024;

/** Parses and validates a JSON admin body; every problem is named in the 400 message. */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  const raw = await readBody(c, ADMIN_BODY_LIMIT);
  let value: unknown = {};
  if (raw.length > 0) {
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch {
      throw invalidRequest('The request body is not valid JSON.');
    }
    checkJsonDepth(value);
  }
  return parse(schema, value);
}

export function parse<T extends z.ZodType>(schema: T, value: unknown): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`);
  const first = r.error.issues[0]?.path.join('.');
  throw new GatewayError('invalid_request_error', `Invalid request: ${issues.join('; ')}`, {
    param: first || null,
  });
}
