import { CliError, cliVersion, str, UsageError, type Values } from './command.js';

// The admin API client behind `tollgate keys|teams|usage|audit`: global fetch, bearer auth, and
// the OpenAI error envelope turned into an ApiError (exit code 1).

export const DEFAULT_URL = 'http://127.0.0.1:8080';
const DEFAULT_TIMEOUT_MS = 30_000;

export interface AdminTarget {
  baseUrl: string;
  adminKey: string;
}

/** `--url` / `TOLLGATE_URL` and `--admin-key` / `ADMIN_API_KEY`; missing or bad ones are usage errors. */
export function resolveAdminTarget(env: Record<string, string | undefined>, values: Values): AdminTarget {
  const baseUrl = str(values, 'url') || env['TOLLGATE_URL'] || DEFAULT_URL;
  let parsed: URL;
  try {
    parsed = new URL(baseUrl);
  } catch {
    throw new UsageError(
      `invalid gateway URL '${baseUrl}' (set TOLLGATE_URL or --url, e.g. http://127.0.0.1:8080)`,
    );
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new UsageError(`invalid gateway URL '${baseUrl}': only http:// and https:// are supported`);
  }
  const adminKey = str(values, 'admin-key') || env['ADMIN_API_KEY'];
  if (!adminKey) {
    throw new UsageError(
      "no admin API key: set ADMIN_API_KEY (or pass --admin-key) to the gateway's admin key or a team-admin key",
    );
  }
  return { baseUrl, adminKey };
}

export type Query = Record<string, string | number | boolean | null | undefined>;

/** Joins the base URL (which may carry a path prefix) with an API path and a query; empty values are left out. */
export function buildUrl(baseUrl: string, path: string, query: Query = {}): string {
  const url = new URL(baseUrl);
  url.pathname = `${url.pathname.replace(/\/+$/, '')}${path}`;
  url.search = '';
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  }
  return url.toString();
}

/** The gateway answered with an error; `message (code)` is what the user sees. */
export class ApiError extends CliError {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null,
    readonly type: string | null = null,
    readonly requestId: string | null = null,
  ) {
    super(`${message} (${code ?? type ?? `HTTP ${status}`})`, 1);
    this.name = 'ApiError';
  }
}

/** Builds the ApiError for a non-2xx answer: the error envelope when there is one, else the status. */
export function apiErrorFrom(
  status: number,
  statusText: string,
  body: string,
  requestId: string | null = null,
): ApiError {
  try {
    const parsed = JSON.parse(body) as { error?: { message?: unknown; code?: unknown; type?: unknown } };
    const e = parsed.error;
    if (e && typeof e.message === 'string') {
      const code = typeof e.code === 'string' ? e.code : null;
      const type = typeof e.type === 'string' ? e.type : null;
      return new ApiError(e.message, status, code, type, requestId);
    }
  } catch {
    // not JSON: fall through
  }
  const snippet = body.trim().replace(/\s+/g, ' ').slice(0, 200);
  const text = `the gateway answered ${status}${statusText ? ` ${statusText}` : ''}${snippet ? `: ${snippet}` : ''}`;
  return new ApiError(text, status, null, null, requestId);
}

export interface AdminResponse {
  status: number;
  headers: Headers;
  /** The raw body ('' for 204). */
  text: string;
}

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** `text/csv` for CSV downloads; JSON otherwise. */
  accept?: string;
}

export class AdminClient {
  private readonly fetchFn: typeof fetch;
  private readonly timeoutMs: number;

  constructor(
    readonly target: AdminTarget,
    opts: { fetch?: typeof fetch; timeoutMs?: number } = {},
  ) {
    this.fetchFn = opts.fetch ?? globalThis.fetch;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** One admin API call; any non-2xx answer throws an ApiError, a network failure a CliError. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<AdminResponse> {
    const url = buildUrl(this.target.baseUrl, path, opts.query);
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.target.adminKey}`,
      accept: opts.accept ?? 'application/json',
      'user-agent': `tollgate-cli/${cliVersion()}`,
    };
    let body: string | undefined;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    let res: Response;
    try {
      res = await this.fetchFn(url, {
        method,
        headers,
        ...(body !== undefined && { body }),
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw this.networkError(err);
    }
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      throw this.networkError(err);
    }
    if (res.status < 200 || res.status > 299) {
      throw apiErrorFrom(res.status, res.statusText, text, res.headers.get('x-request-id'));
    }
    return { status: res.status, headers: res.headers, text };
  }

  /** A JSON call; the parsed body (undefined for an empty one, e.g. 204). */
  async json<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(method, path, opts);
    if (res.text.trim() === '') return undefined as T;
    try {
      return JSON.parse(res.text) as T;
    } catch {
      throw new CliError(
        `the gateway sent a response that is not JSON (${method} ${path}, HTTP ${res.status})`,
      );
    }
  }

  private networkError(err: unknown): CliError {
    const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
    const where = this.target.baseUrl;
    if (e.name === 'TimeoutError' || e.name === 'AbortError') {
      return new CliError(
        `no answer from the gateway at ${where} within ${Math.round(this.timeoutMs / 1000)}s`,
      );
    }
    const reason = e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
    return new CliError(
      `cannot reach the gateway at ${where} (${reason}); is it running? (set TOLLGATE_URL or --url)`,
    );
  }
}

/** Builds the client for a command from its parsed options and the environment. */
export function adminClient(
  env: Record<string, string | undefined>,
  values: Values,
  fetchFn?: typeof fetch,
): AdminClient {
  return new AdminClient(resolveAdminTarget(env, values), fetchFn ? { fetch: fetchFn } : {});
}

/** Follows `nextCursor` until the listing ends (or a cursor repeats). */
export async function fetchAllPages<T>(
  client: AdminClient,
  path: string,
  query: Query,
): Promise<{ data: T[]; nextCursor: null }> {
  const data: T[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined = typeof query['cursor'] === 'string' ? query['cursor'] : undefined;
  for (;;) {
    const page = await client.json<{ data?: T[]; nextCursor?: string | null }>('GET', path, {
      query: { ...query, cursor },
    });
    data.push(...(page?.data ?? []));
    const next = page?.nextCursor;
    if (!next || seen.has(next)) return { data, nextCursor: null };
    seen.add(next);
    cursor = next;
  }
}
