import type { IncomingMessage } from 'node:http';
import type { Context } from 'hono';
import { GatewayError } from '../errors/gateway-error.js';
import { readStream, StreamTooLarge } from '../util/read-stream.js';

const tooLarge = (limit: number): GatewayError =>
  new GatewayError('request_too_large', `The request body is larger than the limit of ${limit} bytes.`);

/**
 * Reads the whole request body, refusing it as soon as more than `limit` bytes have arrived,
 * whatever the Content-Length said (chunked bodies included). Reads the Node stream directly
 * when running on @hono/node-server, avoiding the web-stream conversion.
 */
export async function readBody(c: Context, limit: number): Promise<Buffer> {
  const declared = Number(c.req.header('content-length'));
  if (declared > limit) throw tooLarge(limit);
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (!incoming) {
    const buf = Buffer.from(await c.req.arrayBuffer());
    if (buf.length > limit) throw tooLarge(limit);
    return buf;
  }
  // Once too large, the error answer is sent and the rest of the body is left unread.
  return readStream(incoming, limit).catch((err: Error) => {
    throw err instanceof StreamTooLarge ? tooLarge(limit) : invalidBody(err);
  });
}

const invalidBody = (err: Error): GatewayError =>
  new GatewayError('invalid_request_error', `The request body could not be read: ${err.message}.`);
