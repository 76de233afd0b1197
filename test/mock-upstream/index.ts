// A mock upstream that answers like OpenAI and Azure OpenAI Chat Completions, on plain node:http.
//
// Used by the tests (in-process), the demo and the benchmark (as its own process, see main.ts).
// Answers are deterministic: the content is `echo: <first 40 chars of the last user message>`,
// usage is a pure function of the request, so JSON and streamed answers report identical usage.
//
// Behaviour per request = { ...default, ...next queued, ...directive }, where the directive is
// `[[mock:key=value,key2=value2]]` inside the last user message (see parseDirective).

import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface MockUpstreamOptions {
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** The credential the mock expects (Bearer for OpenAI paths, `api-key` for Azure). Default 'sk-mock-upstream'. */
  apiKey?: string;
  /** Delay before the response headers for every request (unless a behaviour sets delayMs). */
  defaultDelayMs?: number;
  /** Azure deployments that exist; any other name answers 404 DeploymentNotFound. Default: every name. */
  deployments?: string[];
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: Record<string, string | string[] | undefined>;
  /** Parsed JSON body, or null (no body, not JSON, or the client left before sending it). */
  body: any;
}

export interface MockStats {
  /** Requests that arrived. */
  requests: number;
  /** Responses written to the end. */
  completed: number;
  /** Requests whose client went away before the response was finished. */
  aborts: number;
  /** Requests arrived and not yet finished/aborted/dropped. */
  inflight: number;
  /** Responses the mock cut on purpose (drop, reset, malformed-with-drop): neither completed nor aborted. */
  dropped: number;
}

export interface MockBehaviour {
  /** HTTP status; >= 400 sends an error body (OpenAI or Azure shape by path) unless `body` is given. */
  status?: number;
  /** Body to send (JSON) with `status` (default 200), replacing the generated answer. */
  body?: unknown;
  /** Extra response headers (override the generated ones). */
  headers?: Record<string, string>;
  /** Delay before the response headers. */
  delayMs?: number;
  /** Delay between stream chunks (0: separate writes, one event-loop turn apart). */
  chunkDelayMs?: number;
  /** Stream: destroy the socket after N content chunks (no [DONE]). JSON: send half the body, then destroy. */
  dropAfterChunks?: number;
  /** Never answer (an abort is counted when the client leaves). */
  hang?: boolean;
  /** Destroy the socket (TCP reset) without any response. */
  reset?: boolean;
  /** 200 with a broken body: `{"id": ` (json) or `data: {not json` then `[DONE]` (sse). */
  malformed?: 'json' | 'sse';
  /** Number of content chunks (default 3). */
  chunks?: number;
  /** Literal content instead of the echo. */
  content?: string;
  /** `usage.prompt_tokens_details.cached_tokens` (capped at prompt_tokens). */
  cachedTokens?: number;
  /** Error `code` for error statuses (e.g. context_length_exceeded, insufficient_quota, content_filter). */
  errorCode?: string;
  /** 429/503: the wait announced in retry-after-ms (and retry-after, rounded up to seconds). Default 1000. */
  retryAfterMs?: number;
}

export interface MockUpstream {
  /** http://127.0.0.1:PORT */
  url: string;
  port: number;
  stats: MockStats;
  /** The last (at most) 1000 requests, oldest first. */
  requests: RecordedRequest[];
  /** Applies to the next request only, FIFO. */
  enqueue(b: MockBehaviour): void;
  setDefault(b: MockBehaviour | null): void;
  /** Clears stats, requests, queue, default and usage totals; requests already running are not counted any more. */
  reset(): void;
  close(): Promise<void>;
  /** Total usage the mock reported in completed responses (JSON, or streams that sent their usage chunk to the end). */
  usageTotals: { prompt: number; cached: number; completion: number };
}

type Dialect = 'openai' | 'azure';
type Json = Record<string, unknown>;

const MAX_RECORDED = 1000;
export const AZURE_MODEL = 'gpt-4.1-mini-2025-04-14';
const FINGERPRINT = 'fp_mock0001';
const DIRECTIVE = /\[\[mock:([^\]]*)\]\]/;
const SSE_HEADERS_BASE = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };

const FILTER_OK = {
  hate: { filtered: false, severity: 'safe' },
  self_harm: { filtered: false, severity: 'safe' },
  sexual: { filtered: false, severity: 'safe' },
  violence: { filtered: false, severity: 'safe' },
};
const PROMPT_FILTER_RESULTS = [
  {
    prompt_index: 0,
    content_filter_results: { ...FILTER_OK, jailbreak: { filtered: false, detected: false } },
  },
];
const CHOICE_FILTER_RESULTS = {
  ...FILTER_OK,
  protected_material_code: { filtered: false, detected: false },
  protected_material_text: { filtered: false, detected: false },
};

/** Parses `[[mock:k=v,k2=v2]]` (values may be URL-encoded) into a behaviour. */
export function parseDirective(text: string): { behaviour: MockBehaviour; rest: string } | null {
  const m = DIRECTIVE.exec(text);
  if (!m) return null;
  const b: MockBehaviour = {};
  for (const part of (m[1] ?? '').split(',')) {
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
    let value = eq < 0 ? '1' : part.slice(eq + 1).trim();
    try {
      value = decodeURIComponent(value);
    } catch {
      // keep it raw
    }
    const num = Number(value);
    const flag = value === '1' || value === 'true';
    switch (key) {
      case 'status':
        b.status = num;
        break;
      case 'delay':
        b.delayMs = num;
        break;
      case 'chunkdelay':
        b.chunkDelayMs = num;
        break;
      case 'drop':
        b.dropAfterChunks = num;
        break;
      case 'hang':
        b.hang = flag;
        break;
      case 'reset':
        b.reset = flag;
        break;
      case 'malformed':
        if (value === 'json' || value === 'sse') b.malformed = value;
        break;
      case 'chunks':
        b.chunks = num;
        break;
      case 'content':
        b.content = value;
        break;
      case 'cached':
        b.cachedTokens = num;
        break;
      case 'code':
        b.errorCode = value;
        break;
      case 'retryms':
        b.retryAfterMs = num;
        break;
      default:
        break;
    }
  }
  return { behaviour: b, rest: text.replace(DIRECTIVE, '').trim() };
}

function messageText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    let out = '';
    for (const part of content) {
      if (part && typeof part === 'object' && typeof (part as Json)['text'] === 'string') {
        out += (out ? ' ' : '') + ((part as Json)['text'] as string);
      }
    }
    return out;
  }
  return '';
}

/** Splits `s` into exactly `n` pieces (by code point; some may be empty) whose join is `s`. */
export function splitInto(s: string, n: number): string[] {
  const cps = Array.from(s);
  const out: string[] = [];
  const base = Math.floor(cps.length / n);
  let extra = cps.length % n;
  let at = 0;
  for (let i = 0; i < n; i++) {
    const len = base + (extra > 0 ? 1 : 0);
    if (extra > 0) extra--;
    out.push(cps.slice(at, at + len).join(''));
    at += len;
  }
  return out;
}

function randomId(len: number): string {
  let s = randomUUID().replaceAll('-', '');
  while (s.length < len) s += randomUUID().replaceAll('-', '');
  return s.slice(0, len);
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number; audio_tokens: number };
  completion_tokens_details: {
    reasoning_tokens: number;
    audio_tokens: number;
    accepted_prediction_tokens: number;
    rejected_prediction_tokens: number;
  };
}

/** What the mock will answer for a (valid) request body. Exported so tests can predict answers. */
export interface PlannedAnswer {
  content: string;
  pieces: string[];
  tool: { name: string; arguments: string } | null;
  n: number;
  usage: Usage;
}

export function planAnswer(body: Json, b: MockBehaviour = {}): PlannedAnswer {
  const messages = Array.isArray(body['messages']) ? (body['messages'] as unknown[]) : [];
  let chars = 0;
  let lastUser = '';
  for (const msg of messages) {
    if (!msg || typeof msg !== 'object') continue;
    const text = messageText((msg as Json)['content']);
    chars += text.length;
    if ((msg as Json)['role'] === 'user') lastUser = text;
  }
  const stripped = lastUser.replace(DIRECTIVE, '').trim();
  let content = b.content ?? `echo: ${Array.from(stripped).slice(0, 40).join('')}`;
  const rf = body['response_format'] as Json | undefined;
  if (b.content === undefined && rf && (rf['type'] === 'json_schema' || rf['type'] === 'json_object')) {
    content = JSON.stringify({ answer: content });
  }
  let tool: PlannedAnswer['tool'] = null;
  const tools = body['tools'];
  const choice = body['tool_choice'];
  if (Array.isArray(tools) && tools.length > 0 && choice !== 'none') {
    let name: string | undefined;
    if (choice && typeof choice === 'object') {
      const fn = (choice as Json)['function'] as Json | undefined;
      if (fn && typeof fn['name'] === 'string') name = fn['name'];
    }
    if (name === undefined) {
      const first = tools[0] as Json | undefined;
      const fn = first?.['function'] as Json | undefined;
      name = typeof fn?.['name'] === 'string' ? (fn['name'] as string) : 'tool';
    }
    tool = { name, arguments: JSON.stringify({ echo: content }) };
  }
  const chunks = Math.max(1, Math.floor(b.chunks ?? 3));
  const n = Math.min(128, Math.max(1, Math.floor(Number(body['n'] ?? 1)) || 1));
  const prompt = Math.ceil(chars / 4) + 3 * messages.length + 3;
  // One token per content chunk, as with real streams: an abandoned stream can be checked chunk for chunk.
  const completion = chunks * n;
  const cached = Math.min(prompt, Math.max(0, Math.floor(b.cachedTokens ?? 0)));
  return {
    content,
    pieces: splitInto(tool ? tool.arguments : content, chunks),
    tool,
    n,
    usage: {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: cached, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 0,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    },
  };
}

interface Ctx {
  gen: number;
  req: IncomingMessage;
  res: ServerResponse;
  start: number;
  done: boolean;
  timer: NodeJS.Timeout | null;
  immediate: NodeJS.Immediate | null;
  usage: Usage | null;
}

function clearTimers(ctx: Ctx): void {
  if (ctx.timer) clearTimeout(ctx.timer);
  if (ctx.immediate) clearImmediate(ctx.immediate);
  ctx.timer = null;
  ctx.immediate = null;
}

function maskKey(k: string): string {
  if (k.length <= 8) return '***';
  return `${k.slice(0, 3)}${'*'.repeat(Math.min(20, k.length - 7))}${k.slice(-4)}`;
}

function openaiError(message: string, type: string | null, param: string | null, code: string | null): Json {
  return { error: { message, type, param, code } };
}

/** Default error bodies (OpenAI's and Azure's real shapes) for a status. */
export function errorBody(
  dialect: Dialect,
  status: number,
  opts: { code?: string; model?: string; retryAfterMs?: number; apiVersion?: string } = {},
): Json {
  const model = opts.model ?? 'gpt-4.1-mini';
  const waitS = Math.max(1, Math.ceil((opts.retryAfterMs ?? 1000) / 1000));
  if (dialect === 'azure') {
    if (status === 400 && (opts.code === undefined || opts.code === 'content_filter')) {
      return {
        error: {
          message:
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
          type: null,
          param: 'prompt',
          code: 'content_filter',
          status: 400,
          innererror: {
            code: 'ResponsibleAIPolicyViolation',
            content_filter_result: {
              hate: { filtered: true, severity: 'high' },
              jailbreak: { filtered: false, detected: false },
              self_harm: { filtered: false, severity: 'safe' },
              sexual: { filtered: false, severity: 'safe' },
              violence: { filtered: false, severity: 'safe' },
            },
          },
        },
      };
    }
    if (status === 400 && opts.code === 'context_length_exceeded') {
      return openaiError(
        "This model's maximum context length is 1047576 tokens. However, your messages resulted in 1100000 tokens. Please reduce the length of the messages.",
        'invalid_request_error',
        'messages',
        'context_length_exceeded',
      );
    }
    if (status === 401) {
      return {
        error: {
          code: '401',
          message:
            'Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.',
        },
      };
    }
    if (status === 404 && opts.code === 'DeploymentNotFound') {
      return {
        error: {
          code: 'DeploymentNotFound',
          message:
            'The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.',
        },
      };
    }
    if (status === 429) {
      return {
        error: {
          code: '429',
          message: `Requests to the ChatCompletions_Create Operation under Azure OpenAI API version ${opts.apiVersion ?? '2024-10-21'} have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after ${waitS} second${waitS === 1 ? '' : 's'}. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.`,
        },
      };
    }
    if (status >= 500) {
      return {
        error: {
          code: 'InternalServerError',
          message: 'The service is temporarily unable to process your request. Please try again later.',
        },
      };
    }
    return {
      error: { code: opts.code ?? String(status), message: status === 404 ? 'Resource not found' : 'Error' },
    };
  }
  switch (status) {
    case 400:
      if (opts.code === 'context_length_exceeded') {
        return openaiError(
          "This model's maximum context length is 1047576 tokens. However, your messages resulted in 1100000 tokens. Please reduce the length of the messages.",
          'invalid_request_error',
          'messages',
          'context_length_exceeded',
        );
      }
      return openaiError(
        'Invalid request (mock upstream).',
        'invalid_request_error',
        null,
        opts.code ?? null,
      );
    case 401:
      return openaiError(
        'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.',
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
    case 403:
      return openaiError(
        'You are not allowed to sample from this model',
        'invalid_request_error',
        null,
        opts.code ?? null,
      );
    case 404:
      return openaiError(
        `The model \`${model}\` does not exist or you do not have access to it.`,
        'invalid_request_error',
        null,
        opts.code ?? 'model_not_found',
      );
    case 429:
      if (opts.code === 'insufficient_quota') {
        return openaiError(
          'You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.',
          'insufficient_quota',
          null,
          'insufficient_quota',
        );
      }
      return openaiError(
        `Rate limit reached for ${model} in organization org-mock on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in ${((opts.retryAfterMs ?? 1000) / 1000).toFixed(3)}s. Visit https://platform.openai.com/account/rate-limits to learn more.`,
        'requests',
        null,
        'rate_limit_exceeded',
      );
    case 500:
      return openaiError(
        'The server had an error while processing your request. Sorry about that!',
        'server_error',
        null,
        null,
      );
    case 502:
      return openaiError('Bad gateway.', 'server_error', null, null);
    case 503:
      return openaiError(
        'The engine is currently overloaded, please try again later.',
        'server_error',
        null,
        null,
      );
    case 504:
      return openaiError('Gateway timeout.', 'server_error', null, null);
    default:
      return openaiError(
        `Mock error ${status}.`,
        status >= 500 ? 'server_error' : 'invalid_request_error',
        null,
        opts.code ?? null,
      );
  }
}

function parseQuery(qs: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!qs) return out;
  for (const [k, v] of new URLSearchParams(qs)) out[k] = v;
  return out;
}

export function startMockUpstream(opts: MockUpstreamOptions = {}): Promise<MockUpstream> {
  const host = opts.host ?? '127.0.0.1';
  const apiKey = opts.apiKey ?? 'sk-mock-upstream';
  const defaultDelayMs = opts.defaultDelayMs ?? 0;
  const deployments = opts.deployments ? new Set(opts.deployments) : null;

  const stats: MockStats = { requests: 0, completed: 0, aborts: 0, inflight: 0, dropped: 0 };
  const usageTotals = { prompt: 0, cached: 0, completion: 0 };
  const requests: RecordedRequest[] = [];
  const queue: MockBehaviour[] = [];
  let defaultBehaviour: MockBehaviour | null = null;
  let gen = 0;
  const live = new Set<Ctx>();
  const sockets = new Set<Socket>();

  const finish = (ctx: Ctx, how: 'completed' | 'aborted' | 'dropped') => {
    if (ctx.done) return;
    ctx.done = true;
    live.delete(ctx);
    clearTimers(ctx);
    if (ctx.gen !== gen) return;
    stats.inflight--;
    if (how === 'completed') {
      stats.completed++;
      if (ctx.usage) {
        usageTotals.prompt += ctx.usage.prompt_tokens;
        usageTotals.cached += ctx.usage.prompt_tokens_details.cached_tokens;
        usageTotals.completion += ctx.usage.completion_tokens;
      }
    } else if (how === 'aborted') stats.aborts++;
    else stats.dropped++;
  };

  /** Ends the response and counts it as completed (counted before the bytes leave, so a client never sees stale stats). */
  const endWith = (ctx: Ctx, chunk?: string) => {
    if (ctx.done) return;
    finish(ctx, 'completed');
    ctx.res.end(chunk);
  };

  const kill = (ctx: Ctx, rst: boolean) => {
    finish(ctx, 'dropped');
    const sock = ctx.req.socket;
    if (rst && typeof sock.resetAndDestroy === 'function') sock.resetAndDestroy();
    else sock.destroy();
  };

  const later = (ctx: Ctx, ms: number, fn: () => void) => {
    if (ctx.done) return;
    const run = () => {
      ctx.timer = null;
      ctx.immediate = null;
      if (!ctx.done) fn();
    };
    if (ms > 0) ctx.timer = setTimeout(run, ms);
    else ctx.immediate = setImmediate(run);
  };

  const baseHeaders = (dialect: Dialect, ctx: Ctx): Record<string, string> => {
    if (dialect === 'azure') {
      const id = randomUUID();
      return {
        'apim-request-id': id,
        'x-request-id': randomUUID(),
        'x-ms-region': 'eastus',
        'x-ratelimit-remaining-requests': '249',
        'x-ratelimit-remaining-tokens': '249000',
        'x-ms-client-request-id': id,
        'azureml-model-session': 'mock-session',
        'x-content-type-options': 'nosniff',
        'strict-transport-security': 'max-age=31536000; includeSubDomains; preload',
      };
    }
    return {
      'x-request-id': `req_${randomId(32)}`,
      'openai-organization': 'org-mock',
      'openai-processing-ms': String(Date.now() - ctx.start),
      'openai-version': '2020-10-01',
      'x-ratelimit-limit-requests': '30000',
      'x-ratelimit-limit-tokens': '150000000',
      'x-ratelimit-remaining-requests': '29999',
      'x-ratelimit-remaining-tokens': '149999000',
      'x-ratelimit-reset-requests': '2ms',
      'x-ratelimit-reset-tokens': '0s',
      'access-control-expose-headers': 'X-Request-ID',
    };
  };

  const sendJson = (
    ctx: Ctx,
    dialect: Dialect,
    status: number,
    body: unknown,
    b: MockBehaviour,
    extra?: Record<string, string>,
  ) => {
    const text = JSON.stringify(body);
    const headers: Record<string, string> = {
      ...baseHeaders(dialect, ctx),
      ...extra,
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(text)),
      ...b.headers,
    };
    ctx.res.writeHead(status, headers);
    if (status < 400 && b.dropAfterChunks !== undefined) {
      ctx.res.write(text.slice(0, Math.floor(text.length / 2)));
      later(ctx, 0, () => kill(ctx, false));
      return;
    }
    endWith(ctx, text);
  };

  const sendError = (
    ctx: Ctx,
    dialect: Dialect,
    status: number,
    b: MockBehaviour,
    model?: string,
    apiVersion?: string,
  ) => {
    const extra: Record<string, string> = {};
    if (status === 429 || status === 503) {
      const ms = b.retryAfterMs ?? 1000;
      extra['retry-after'] = String(Math.max(1, Math.ceil(ms / 1000)));
      if (dialect === 'azure' || b.retryAfterMs !== undefined) extra['retry-after-ms'] = String(ms);
    }
    if (status === 429 && b.errorCode === 'insufficient_quota') {
      delete extra['retry-after'];
      delete extra['retry-after-ms'];
    }
    const body =
      b.body ??
      errorBody(dialect, status, {
        ...(b.errorCode !== undefined ? { code: b.errorCode } : {}),
        ...(model !== undefined ? { model } : {}),
        ...(b.retryAfterMs !== undefined ? { retryAfterMs: b.retryAfterMs } : {}),
        ...(apiVersion !== undefined ? { apiVersion } : {}),
      });
    sendJson(ctx, dialect, status, body, {}, { ...extra, ...b.headers });
  };

  const answer = (ctx: Ctx, dialect: Dialect, body: Json, b: MockBehaviour, apiVersion?: string) => {
    const model = typeof body['model'] === 'string' ? (body['model'] as string) : 'gpt-4.1-mini';
    if (b.reset) return kill(ctx, true);
    if (b.hang) return;
    if (b.status !== undefined && b.status >= 400)
      return sendError(ctx, dialect, b.status, b, model, apiVersion);
    if (b.body !== undefined) return sendJson(ctx, dialect, b.status ?? 200, b.body, b);
    const stream = body['stream'] === true;
    if (b.malformed === 'json') {
      ctx.res.writeHead(200, {
        ...baseHeaders(dialect, ctx),
        'content-type': 'application/json',
        ...b.headers,
      });
      return endWith(ctx, '{"id": ');
    }
    if (b.malformed === 'sse') {
      ctx.res.writeHead(200, { ...baseHeaders(dialect, ctx), ...SSE_HEADERS_BASE, ...b.headers });
      ctx.res.write('data: {not json\n\n');
      return later(ctx, b.chunkDelayMs ?? 0, () => endWith(ctx, 'data: [DONE]\n\n'));
    }
    const so = body['stream_options'];
    if (!stream && so !== undefined && so !== null) {
      return sendJson(
        ctx,
        dialect,
        400,
        openaiError(
          "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
          'invalid_request_error',
          'stream_options',
          null,
        ),
        {},
        b.headers,
      );
    }
    const plan = planAnswer(body, b);
    const id = `chatcmpl-${randomId(29)}`;
    const created = Math.floor(Date.now() / 1000);
    const respModel = dialect === 'azure' ? AZURE_MODEL : model;
    const finishReason = plan.tool ? 'tool_calls' : 'stop';
    const toolId = plan.tool ? `call_${randomId(24)}` : '';

    if (!stream) {
      const choices: Json[] = [];
      for (let i = 0; i < plan.n; i++) {
        const message: Json = plan.tool
          ? {
              role: 'assistant',
              content: null,
              tool_calls: [
                {
                  id: plan.n === 1 ? toolId : `${toolId}${i}`,
                  type: 'function',
                  function: { name: plan.tool.name, arguments: plan.tool.arguments },
                },
              ],
              refusal: null,
              annotations: [],
            }
          : { role: 'assistant', content: plan.content, refusal: null, annotations: [] };
        const choice: Json = { index: i, message, logprobs: null, finish_reason: finishReason };
        if (dialect === 'azure') choice['content_filter_results'] = plan.tool ? {} : CHOICE_FILTER_RESULTS;
        choices.push(choice);
      }
      const resp: Json = {
        id,
        object: 'chat.completion',
        created,
        model: respModel,
        choices,
        usage: plan.usage,
        service_tier: 'default',
        system_fingerprint: FINGERPRINT,
      };
      if (dialect === 'azure') resp['prompt_filter_results'] = PROMPT_FILTER_RESULTS;
      ctx.usage = b.dropAfterChunks === undefined ? plan.usage : null;
      return sendJson(ctx, dialect, 200, resp, b);
    }

    // Streaming: prebuild every event, then write them one by one.
    const includeUsage = !!(so && typeof so === 'object' && (so as Json)['include_usage'] === true);
    const events: { data: string; content: boolean }[] = [];
    const chunk = (choices: Json[], extra?: Json): string => {
      const c: Json = {
        id,
        object: 'chat.completion.chunk',
        created,
        model: respModel,
        service_tier: 'default',
        system_fingerprint: FINGERPRINT,
        choices,
      };
      if (includeUsage) c['usage'] = null;
      if (extra) Object.assign(c, extra);
      return `data: ${JSON.stringify(c)}\n\n`;
    };
    const withFilter = (choice: Json, filter: Json): Json => {
      if (dialect === 'azure') choice['content_filter_results'] = filter;
      return choice;
    };
    if (dialect === 'azure') {
      events.push({
        data: `data: ${JSON.stringify({
          choices: [],
          created: 0,
          id: '',
          model: '',
          object: '',
          prompt_filter_results: PROMPT_FILTER_RESULTS,
        })}\n\n`,
        content: false,
      });
    }
    for (let i = 0; i < plan.n; i++) {
      const delta: Json = plan.tool
        ? {
            role: 'assistant',
            content: null,
            tool_calls: [
              {
                index: 0,
                id: plan.n === 1 ? toolId : `${toolId}${i}`,
                type: 'function',
                function: { name: plan.tool.name, arguments: '' },
              },
            ],
            refusal: null,
          }
        : { role: 'assistant', content: '', refusal: null };
      events.push({
        data: chunk([withFilter({ index: i, delta, logprobs: null, finish_reason: null }, {})]),
        content: false,
      });
    }
    for (const piece of plan.pieces) {
      for (let i = 0; i < plan.n; i++) {
        const delta: Json = plan.tool
          ? { tool_calls: [{ index: 0, function: { arguments: piece } }] }
          : { content: piece };
        events.push({
          data: chunk([
            withFilter(
              { index: i, delta, logprobs: null, finish_reason: null },
              plan.tool ? {} : CHOICE_FILTER_RESULTS,
            ),
          ]),
          content: true,
        });
      }
    }
    for (let i = 0; i < plan.n; i++) {
      events.push({
        data: chunk([withFilter({ index: i, delta: {}, logprobs: null, finish_reason: finishReason }, {})]),
        content: false,
      });
    }
    if (includeUsage) events.push({ data: chunk([], { usage: plan.usage }), content: false });
    ctx.usage = includeUsage ? plan.usage : null;

    ctx.res.writeHead(200, { ...baseHeaders(dialect, ctx), ...SSE_HEADERS_BASE, ...b.headers });
    const drop = b.dropAfterChunks;
    const gap = b.chunkDelayMs ?? 0;
    let at = 0;
    let sent = 0;
    const step = () => {
      const ev = events[at++];
      if (ev === undefined) return endWith(ctx, 'data: [DONE]\n\n');
      ctx.res.write(ev.data);
      if (ev.content) sent++;
      if (drop !== undefined && sent >= drop) return later(ctx, 0, () => kill(ctx, false));
      later(ctx, gap, step);
    };
    if (drop !== undefined && drop <= 0) return kill(ctx, false);
    step();
  };

  const handle = (ctx: Ctx, rec: RecordedRequest, b: MockBehaviour) => {
    const { req } = ctx;
    const path = rec.path;
    let dialect: Dialect = 'openai';
    let deployment: string | undefined;
    let kind: 'chat' | 'models' | 'none' = 'none';
    if (path === '/v1/chat/completions') kind = 'chat';
    else if (path === '/v1/models' && req.method === 'GET') kind = 'models';
    else if (path === '/openai/v1/chat/completions') {
      dialect = 'azure';
      kind = 'chat';
    } else if (path.startsWith('/openai/deployments/') && path.endsWith('/chat/completions')) {
      dialect = 'azure';
      kind = 'chat';
      deployment = decodeURIComponent(path.slice('/openai/deployments/'.length, -'/chat/completions'.length));
    } else if (path.startsWith('/openai/')) dialect = 'azure';

    const reject = (status: number, body: Json) => sendJson(ctx, dialect, status, body, {}, b.headers);

    if (kind === 'none' || (kind === 'chat' && req.method !== 'POST')) {
      return reject(
        404,
        dialect === 'azure'
          ? { error: { code: '404', message: 'Resource not found' } }
          : openaiError(`Invalid URL (${req.method} ${path})`, 'invalid_request_error', null, null),
      );
    }
    // Credentials.
    if (dialect === 'azure') {
      if (req.headers['api-key'] !== apiKey) return reject(401, errorBody('azure', 401));
    } else {
      const auth = req.headers.authorization;
      if (auth !== `Bearer ${apiKey}`) {
        const body = errorBody('openai', 401);
        if (!auth) {
          (body['error'] as Json)['message'] =
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
          (body['error'] as Json)['code'] = null;
        } else {
          (body['error'] as Json)['message'] =
            `Incorrect API key provided: ${maskKey(auth.replace(/^Bearer\s+/i, ''))}. You can find your API key at https://platform.openai.com/account/api-keys.`;
        }
        return reject(401, body);
      }
    }
    if (kind === 'models') {
      return sendJson(
        ctx,
        dialect,
        200,
        {
          object: 'list',
          data: [{ id: 'gpt-4.1-mini', object: 'model', created: 1744316542, owned_by: 'system' }],
        },
        b,
      );
    }
    const apiVersion = rec.query['api-version'];
    if (deployment !== undefined) {
      if (!apiVersion) return reject(404, { error: { code: '404', message: 'Resource not found' } });
      if (deployments && !deployments.has(deployment)) {
        return reject(404, errorBody('azure', 404, { code: 'DeploymentNotFound' }));
      }
    }
    const body = rec.body as Json | null;
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      return reject(
        400,
        openaiError(
          "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
          'invalid_request_error',
          null,
          null,
        ),
      );
    }
    if (deployment === undefined && typeof body['model'] !== 'string') {
      return reject(
        400,
        openaiError('you must provide a model parameter', 'invalid_request_error', null, null),
      );
    }
    if (!Array.isArray(body['messages']) || body['messages'].length === 0) {
      return reject(
        400,
        openaiError(
          "Invalid 'messages': empty array. Expected an array with minimum length 1.",
          'invalid_request_error',
          'messages',
          'empty_array',
        ),
      );
    }
    // The directive in the last user message overrides the queued/default behaviour.
    const messages = body['messages'] as unknown[];
    for (let i = messages.length - 1; i >= 0; i--) {
      const m = messages[i] as Json | undefined;
      if (m && m['role'] === 'user') {
        const d = parseDirective(messageText(m['content']));
        if (d) b = { ...b, ...d.behaviour };
        break;
      }
    }
    const delay = b.delayMs ?? defaultDelayMs;
    if (delay > 0 && !b.reset) later(ctx, delay, () => answer(ctx, dialect, body, b, apiVersion));
    else answer(ctx, dialect, body, b, apiVersion);
  };

  const server: Server = createServer((req, res) => {
    const ctx: Ctx = {
      gen,
      req,
      res,
      start: Date.now(),
      done: false,
      timer: null,
      immediate: null,
      usage: null,
    };
    stats.requests++;
    stats.inflight++;
    live.add(ctx);
    const queued = queue.shift();
    const b: MockBehaviour = { ...defaultBehaviour, ...queued };
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const rec: RecordedRequest = {
      method: req.method ?? 'GET',
      path: q < 0 ? url : url.slice(0, q),
      query: parseQuery(q < 0 ? '' : url.slice(q + 1)),
      headers: req.headers,
      body: null,
    };
    if (ctx.gen === gen) {
      requests.push(rec);
      if (requests.length > MAX_RECORDED) requests.shift();
    }
    res.on('close', () => {
      if (!ctx.done) finish(ctx, res.writableFinished ? 'completed' : 'aborted');
    });
    res.on('error', () => {});
    req.on('error', () => {});
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      if (ctx.done) return;
      if (parts.length > 0) {
        try {
          rec.body = JSON.parse(Buffer.concat(parts).toString('utf8'));
        } catch {
          rec.body = null;
        }
      }
      try {
        handle(ctx, rec, b);
      } catch (err) {
        if (!res.headersSent) {
          sendJson(
            ctx,
            'openai',
            500,
            openaiError(`mock upstream bug: ${String(err)}`, 'server_error', null, null),
            {},
          );
        } else kill(ctx, false);
      }
    });
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => {
    socket.destroy();
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      const port = (server.address() as AddressInfo).port;
      const urlHost = host.includes(':') ? `[${host}]` : host;
      const mock: MockUpstream = {
        url: `http://${urlHost}:${port}`,
        port,
        stats,
        requests,
        usageTotals,
        enqueue(b) {
          queue.push(b);
        },
        setDefault(b) {
          defaultBehaviour = b;
        },
        reset() {
          gen++;
          stats.requests = 0;
          stats.completed = 0;
          stats.aborts = 0;
          stats.inflight = 0;
          stats.dropped = 0;
          usageTotals.prompt = 0;
          usageTotals.cached = 0;
          usageTotals.completion = 0;
          requests.length = 0;
          queue.length = 0;
          defaultBehaviour = null;
        },
        close() {
          return new Promise<void>((done) => {
            for (const ctx of live) clearTimers(ctx);
            server.close(() => done());
            server.closeAllConnections();
            for (const s of sockets) s.destroy();
          });
        },
      };
      resolve(mock);
    });
  });
}
