import type { ModelConfig } from '../config/schema.js';
import { invalidRequest } from '../errors/gateway-error.js';
import { checkJsonDepth } from '../server/json-depth.js';

/** A chat completion request as the client sent it; fields we do not know pass through untouched. */
export interface ChatRequest {
  model?: unknown;
  messages: unknown[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean; [k: string]: unknown } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  n?: number | null;
  [field: string]: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function optionalPositiveInt(body: Record<string, unknown>, field: string): void {
  const v = body[field];
  if (v === undefined || v === null) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
    throw invalidRequest(`Invalid value for '${field}': expected an integer of at least 1.`, field);
  }
}

/**
 * Checks the fields the gateway itself relies on; everything else is the upstream's business.
 * Only the top level is inspected, so big prompts cost one JSON.parse and nothing more.
 */
export function parseChatRequest(raw: Buffer | string, contentType: string | undefined): ChatRequest {
  if (contentType !== undefined && !/^application\/(?:[\w.+-]+\+)?json\b/i.test(contentType)) {
    throw invalidRequest(`Unsupported content type '${contentType.slice(0, 100)}': send application/json.`);
  }
  let body: unknown;
  try {
    body = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch {
    throw invalidRequest(
      'We could not parse the JSON body of your request. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.',
    );
  }
  if (!isObject(body)) throw invalidRequest('The request body must be a JSON object.');
  checkJsonDepth(body);
  if (body['model'] !== undefined && typeof body['model'] !== 'string') {
    throw invalidRequest("Invalid type for 'model': expected a string.", 'model');
  }
  const messages = body['messages'];
  if (messages === undefined) throw invalidRequest("Missing required parameter: 'messages'.", 'messages');
  if (!Array.isArray(messages))
    throw invalidRequest("Invalid type for 'messages': expected an array.", 'messages');
  if (messages.length === 0)
    throw invalidRequest("Invalid 'messages': empty array. Expected at least one message.", 'messages');
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (!isObject(m) || typeof m['role'] !== 'string') {
      throw invalidRequest(
        `Invalid 'messages[${i}]': expected an object with a string 'role'.`,
        `messages[${i}]`,
      );
    }
  }
  if (body['stream'] !== undefined && body['stream'] !== null && typeof body['stream'] !== 'boolean') {
    throw invalidRequest("Invalid type for 'stream': expected a boolean.", 'stream');
  }
  const so = body['stream_options'];
  if (so !== undefined && so !== null) {
    if (!isObject(so))
      throw invalidRequest("Invalid type for 'stream_options': expected an object.", 'stream_options');
    if (body['stream'] !== true) {
      throw invalidRequest(
        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        'stream_options',
      );
    }
  }
  optionalPositiveInt(body, 'max_tokens');
  optionalPositiveInt(body, 'max_completion_tokens');
  optionalPositiveInt(body, 'n');
  return body as ChatRequest;
}

/** Rejects a requested output length above what the model can produce. */
export function checkOutputLimit(req: ChatRequest, model: ModelConfig): void {
  for (const field of ['max_completion_tokens', 'max_tokens'] as const) {
    const v = req[field];
    if (typeof v === 'number' && v > model.maxOutputTokens) {
      throw invalidRequest(
        `${field} is too large: ${v}. This model supports at most ${model.maxOutputTokens} completion tokens, whereas you provided ${v}.`,
        field,
      );
    }
  }
}

/** The requested output token bound, or null when the client left it open. */
export function requestedOutput(req: ChatRequest): number | null {
  const v = req.max_completion_tokens ?? req.max_tokens;
  return typeof v === 'number' ? v : null;
}
