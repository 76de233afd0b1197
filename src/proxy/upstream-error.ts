import { GatewayError } from '../errors/gateway-error.js';

const MAX_ERROR_BODY = 64 * 1024;

/**
 * An upstream client error (400, 422, ...) relayed with its status and message, normalised to
 * OpenAI's envelope: Azure leaves `type` null and uses string codes like "content_filter".
 */
export async function upstreamClientError(
  status: number,
  body: AsyncIterable<Buffer>,
): Promise<GatewayError> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size <= MAX_ERROR_BODY) chunks.push(chunk);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    parsed = null;
  }
  const err = (parsed as { error?: Record<string, unknown> } | null)?.error;
  const str = (v: unknown): string | null =>
    typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null;
  const message = str(err?.['message']) ?? `The upstream rejected the request (HTTP ${status}).`;
  return new GatewayError('invalid_request_error', message, {
    status,
    type: str(err?.['type']) ?? 'invalid_request_error',
    param: str(err?.['param']),
    wireCode: str(err?.['code']),
  });
}
