// One error type for everything the gateway refuses or fails at, and one envelope (OpenAI's).
// Handlers throw a GatewayError; `onError` (server/app.ts) is the only place that writes it.

export type ErrorCode =
  | 'invalid_request_error'
  | 'invalid_api_key'
  | 'model_not_allowed'
  | 'forbidden'
  | 'model_not_found'
  | 'not_found'
  | 'method_not_allowed'
  | 'conflict'
  | 'request_too_large'
  | 'rate_limit_exceeded'
  | 'insufficient_quota'
  | 'upstream_error'
  | 'service_unavailable'
  | 'upstream_timeout'
  | 'internal_error';

const STATUS: Record<ErrorCode, number> = {
  invalid_request_error: 400,
  invalid_api_key: 401,
  model_not_allowed: 403,
  forbidden: 403,
  model_not_found: 404,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  request_too_large: 413,
  rate_limit_exceeded: 429,
  insufficient_quota: 429,
  upstream_error: 502,
  service_unavailable: 503,
  upstream_timeout: 504,
  internal_error: 500,
};

const TYPE: Record<ErrorCode, string> = {
  invalid_request_error: 'invalid_request_error',
  invalid_api_key: 'invalid_request_error',
  model_not_allowed: 'permission_error',
  forbidden: 'permission_error',
  model_not_found: 'invalid_request_error',
  not_found: 'invalid_request_error',
  method_not_allowed: 'invalid_request_error',
  conflict: 'invalid_request_error',
  request_too_large: 'invalid_request_error',
  rate_limit_exceeded: 'requests',
  insufficient_quota: 'insufficient_quota',
  upstream_error: 'server_error',
  service_unavailable: 'server_error',
  upstream_timeout: 'server_error',
  internal_error: 'server_error',
};

export interface GatewayErrorOptions {
  param?: string | null;
  /** Overrides the type derived from the code (rate limits: requests, tokens, concurrency). */
  type?: string;
  headers?: Record<string, string>;
  /** For upstream errors passed through: their own status and code. */
  status?: number;
  wireCode?: string | null;
}

export class GatewayError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly headers: Record<string, string>;
  private readonly wireCode: string | null;

  constructor(
    readonly code: ErrorCode,
    message: string,
    options: GatewayErrorOptions = {},
  ) {
    super(message);
    this.name = 'GatewayError';
    this.status = options.status ?? STATUS[code];
    this.wireCode = options.wireCode === undefined ? code : options.wireCode;
    this.type = options.type ?? TYPE[code];
    this.param = options.param ?? null;
    this.headers = options.headers ?? {};
  }

  /** The OpenAI error envelope: all four keys, always. */
  toJSON(): ErrorEnvelope {
    return envelope(this.message, this.type, this.param, this.wireCode);
  }
}

export interface ErrorEnvelope {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function envelope(
  message: string,
  type: string,
  param: string | null,
  code: string | null,
): ErrorEnvelope {
  return { error: { message, type, param, code } };
}

export const invalidRequest = (message: string, param: string | null = null): GatewayError =>
  new GatewayError('invalid_request_error', message, { param });

export const notFound = (message = 'Not found.'): GatewayError => new GatewayError('not_found', message);
