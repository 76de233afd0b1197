import type { IncomingMessage } from 'node:http';
import type { Context } from 'hono';
import { GatewayError } from '../errors/gateway-error.js';

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
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err: Error | null): void => {
      incoming.off('data', onData);
      incoming.off('end', onEnd);
      incoming.off('error', onError);
      incoming.off('close', onClose);
      if (err) reject(err);
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        // Stop reading; the error answer is sent and the rest of the body is discarded.
        incoming.pause();
        done(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => done(null);
    const onError = (err: Error): void => done(invalidBody(err));
    const onClose = (): void => {
      if (!incoming.readableEnded) done(invalidBody(new Error('client closed the connection')));
    };
    incoming.on('data', onData);
    incoming.on('end', onEnd);
    incoming.on('error', onError);
    incoming.on('close', onClose);
  });
}

const invalidBody = (err: Error): GatewayError =>
  new GatewayError('invalid_request_error', `The request body could not be read: ${err.message}.`);
