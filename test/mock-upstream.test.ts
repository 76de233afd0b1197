import OpenAI, { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type MockUpstream, parseDirective, planAnswer, startMockUpstream } from './mock-upstream/index.js';

const KEY = 'sk-mock-upstream';
let mock: MockUpstream;
let openai: OpenAI;
let azure: AzureOpenAI;

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

beforeAll(async () => {
  mock = await startMockUpstream();
  openai = new OpenAI({ apiKey: KEY, baseURL: `${mock.url}/v1`, maxRetries: 0 });
  azure = new AzureOpenAI({
    endpoint: mock.url,
    apiKey: KEY,
    apiVersion: '2024-10-21',
    deployment: 'gpt-4.1-mini',
    maxRetries: 0,
  });
});

afterAll(async () => {
  await mock.close();
});

beforeEach(() => {
  mock.reset();
});

describe('mock upstream: OpenAI dialect', () => {
  it('answers JSON deterministically with usage and OpenAI headers', async () => {
    const { data, response } = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'Hello there' }] })
      .withResponse();
    expect(data.object).toBe('chat.completion');
    expect(data.id).toMatch(/^chatcmpl-/);
    expect(data.model).toBe('gpt-4.1-mini');
    expect(data.system_fingerprint).toBeTruthy();
    expect(data.choices[0]?.message.content).toBe('echo: Hello there');
    expect(data.choices[0]?.finish_reason).toBe('stop');
    expect(data.usage?.prompt_tokens).toBeGreaterThan(0);
    expect(data.usage?.completion_tokens).toBe(3);
    expect(data.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    expect(data.usage?.completion_tokens_details).toBeDefined();
    expect(response.headers.get('x-request-id')).toMatch(/^req_/);
    expect(response.headers.get('x-ratelimit-remaining-requests')).toBeTruthy();
    expect(response.headers.get('openai-processing-ms')).toBeTruthy();

    expect(mock.stats).toMatchObject({ requests: 1, completed: 1, aborts: 0, inflight: 0 });
    const rec = mock.requests[0]!;
    expect(rec.method).toBe('POST');
    expect(rec.path).toBe('/v1/chat/completions');
    expect(rec.headers['authorization']).toBe(`Bearer ${KEY}`);
    expect(rec.body.model).toBe('gpt-4.1-mini');
    expect(mock.usageTotals.completion).toBe(3);
    expect(mock.usageTotals.prompt).toBe(data.usage?.prompt_tokens);
  });

  it('streams chunks whose join equals the JSON answer, with the same usage', async () => {
    const messages = [
      { role: 'system' as const, content: 'You are terse.' },
      { role: 'user' as const, content: 'A fairly long question that exceeds the forty char echo limit' },
    ];
    const json = await openai.chat.completions.create({ model: 'gpt-4.1-mini', messages });
    const stream = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    for (const c of chunks) text += c.choices[0]?.delta.content ?? '';
    expect(text).toBe(json.choices[0]?.message.content);
    expect(text).toBe(
      `echo: ${'A fairly long question that exceeds the forty char echo limit'.slice(0, 40)}`,
    );
    expect(chunks[0]?.choices[0]?.delta).toMatchObject({ role: 'assistant', content: '' });
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(json.usage);
    for (const c of chunks.slice(0, -1)) expect(c.usage).toBeNull();
    // 1 role chunk + 3 content chunks + 1 finish chunk + 1 usage chunk
    expect(chunks).toHaveLength(6);
    expect(mock.stats.completed).toBe(2);
    expect(mock.usageTotals.completion).toBe(6);
  });

  it('sends no usage in a stream without include_usage', async () => {
    const stream = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'hi [[mock:chunks=5]]' }],
      stream: true,
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks).toHaveLength(7);
    for (const c of chunks) expect('usage' in c).toBe(false);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('echo: hi');
    expect(mock.stats.completed).toBe(1);
    expect(mock.usageTotals.prompt).toBe(0);
  });

  it('answers tools with a tool call, in JSON and in stream deltas', async () => {
    const tools = [
      { type: 'function' as const, function: { name: 'lookup', parameters: { type: 'object' } } },
    ];
    const messages = [{ role: 'user' as const, content: 'weather?' }];
    const json = await openai.chat.completions.create({ model: 'gpt-4.1-mini', messages, tools });
    const msg = json.choices[0]?.message;
    expect(msg?.content).toBeNull();
    expect(json.choices[0]?.finish_reason).toBe('tool_calls');
    const call = msg?.tool_calls?.[0];
    expect(call?.type).toBe('function');
    if (call?.type !== 'function') throw new Error('no function call');
    expect(call.function.name).toBe('lookup');
    expect(JSON.parse(call.function.arguments)).toEqual({ echo: 'echo: weather?' });

    const stream = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages,
      tools,
      stream: true,
    });
    let args = '';
    let name = '';
    let finish: string | null | undefined = null;
    let fragments = 0;
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta;
      for (const tc of d?.tool_calls ?? []) {
        expect(tc.index).toBe(0);
        fragments++;
        if (tc.function?.name) name = tc.function.name;
        args += tc.function?.arguments ?? '';
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(fragments).toBe(4);
    expect(name).toBe('lookup');
    expect(args).toBe(call.function.arguments);
    expect(finish).toBe('tool_calls');

    const none = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages,
      tools,
      tool_choice: 'none',
    });
    expect(none.choices[0]?.message.content).toBe('echo: weather?');
  });

  it('answers json_schema with a JSON object and honours n', async () => {
    const res = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'q' }],
      n: 2,
      response_format: { type: 'json_schema', json_schema: { name: 'a', schema: { type: 'object' } } },
    });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(JSON.parse(res.choices[1]?.message.content ?? '')).toEqual({ answer: 'echo: q' });
  });

  it('reports cached tokens and literal content from the directive', async () => {
    const res = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: '[[mock:cached=4,content=hello%2C%20world,chunks=1]]' }],
    });
    expect(res.choices[0]?.message.content).toBe('hello, world');
    expect(res.usage?.prompt_tokens_details?.cached_tokens).toBe(4);
    expect(res.usage?.completion_tokens).toBe(1);
    expect(mock.usageTotals.cached).toBe(4);
  });

  it('returns OpenAI-shaped errors for statuses, queued behaviour and bad credentials', async () => {
    mock.enqueue({ status: 429 });
    const err = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }] })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    const rl = err as InstanceType<typeof OpenAI.RateLimitError>;
    expect(rl.code).toBe('rate_limit_exceeded');
    expect(rl.type).toBe('requests');
    expect(rl.headers?.get('retry-after')).toBe('1');
    expect(rl.requestID).toMatch(/^req_/);

    const e500 = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x [[mock:status=500]]' }] })
      .catch((e: unknown) => e);
    expect(e500).toBeInstanceOf(OpenAI.InternalServerError);

    const e400 = await openai.chat.completions
      .create({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'x [[mock:status=400,code=context_length_exceeded]]' }],
      })
      .catch((e: unknown) => e);
    expect(e400).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e400 as InstanceType<typeof OpenAI.BadRequestError>).code).toBe('context_length_exceeded');

    const bad = new OpenAI({ apiKey: 'sk-wrong-key-123456', baseURL: `${mock.url}/v1`, maxRetries: 0 });
    const e401 = await bad.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }] })
      .catch((e: unknown) => e);
    expect(e401).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e401 as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('invalid_api_key');
    expect((e401 as Error).message).not.toContain('sk-wrong-key-123456');

    // setDefault applies to every request; the queue and the directive override it
    mock.setDefault({ status: 503 });
    mock.enqueue({ status: 200 });
    const ok = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'a' }],
    });
    expect(ok.choices[0]?.message.content).toBe('echo: a');
    const e503 = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'b' }] })
      .catch((e: unknown) => e);
    expect(e503).toBeInstanceOf(OpenAI.InternalServerError);
    const ok2 = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'c [[mock:status=200]]' }],
    });
    expect(ok2.choices[0]?.message.content).toBe('echo: c');
  });

  it('drops a stream mid-way without [DONE]', async () => {
    const stream = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'hello [[mock:drop=1,chunks=4]]' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const err = await (async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(text).toBe('ech'); // 'echo: hello' in 4 pieces: 3+3+3+2
    expect(mock.stats).toMatchObject({ completed: 0, aborts: 0, dropped: 1, inflight: 0 });
    expect(mock.usageTotals.prompt).toBe(0);
  });

  it('counts client aborts: hanging request and mid-stream', async () => {
    const ac = new AbortController();
    const p = openai.chat.completions
      .create(
        { model: 'gpt-4.1-mini', messages: [{ role: 'user', content: '[[mock:hang=1]]' }] },
        { signal: ac.signal },
      )
      .catch((e: unknown) => e);
    await waitFor(() => mock.stats.inflight === 1);
    ac.abort();
    expect(await p).toBeInstanceOf(Error);
    await waitFor(() => mock.stats.aborts === 1);
    expect(mock.stats.inflight).toBe(0);

    const ac2 = new AbortController();
    const stream = await openai.chat.completions.create(
      {
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'slow [[mock:chunkdelay=50,chunks=20]]' }],
        stream: true,
      },
      { signal: ac2.signal },
    );
    let n = 0;
    await (async () => {
      for await (const _ of stream) {
        if (++n === 3) ac2.abort();
      }
    })().catch(() => {});
    await waitFor(() => mock.stats.aborts === 2);
    expect(mock.stats).toMatchObject({ completed: 0, inflight: 0 });
  });

  it('delays, resets and sends malformed bodies on request', async () => {
    const t0 = Date.now();
    await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: '[[mock:delay=120]]' }],
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(110);

    const reset = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: '[[mock:reset=1]]' }] })
      .catch((e: unknown) => e);
    expect(reset).toBeInstanceOf(OpenAI.APIConnectionError);

    const badJson = await openai.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: '[[mock:malformed=json]]' }] })
      .catch((e: unknown) => e);
    expect(badJson).toBeInstanceOf(Error);

    const badSse = await (async () => {
      const s = await openai.chat.completions.create({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: '[[mock:malformed=sse]]' }],
        stream: true,
      });
      for await (const _ of s) {
        // consume
      }
    })().catch((e: unknown) => e);
    expect(badSse).toBeInstanceOf(Error);
  });

  it('rejects stream_options without stream, like OpenAI', async () => {
    const res = await fetch(`${mock.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: 'x' }],
        stream_options: { include_usage: true },
      }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: Record<string, unknown> };
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  });
});

describe('mock upstream: Azure dialect', () => {
  it('answers JSON with filter results, the real model name and Azure headers', async () => {
    const { data, response } = await azure.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'Hello Azure' }] })
      .withResponse();
    expect(data.model).toBe('gpt-4.1-mini-2025-04-14');
    expect(data.choices[0]?.message.content).toBe('echo: Hello Azure');
    const raw = data as unknown as Record<string, unknown>;
    expect(Array.isArray(raw['prompt_filter_results'])).toBe(true);
    expect((data.choices[0] as unknown as Record<string, unknown>)['content_filter_results']).toBeDefined();
    expect(response.headers.get('apim-request-id')).toBeTruthy();
    expect(response.headers.get('x-ms-region')).toBe('eastus');
    const rec = mock.requests[0]!;
    expect(rec.path).toBe('/openai/deployments/gpt-4.1-mini/chat/completions');
    expect(rec.query['api-version']).toBe('2024-10-21');
    expect(rec.headers['api-key']).toBe(KEY);
  });

  it('begins a stream with an empty-choices chunk carrying prompt_filter_results', async () => {
    const stream = await azure.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'Hello Azure' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const first = chunks[0] as unknown as Record<string, unknown>;
    expect(first['choices']).toEqual([]);
    expect(first['id']).toBe('');
    expect(first['model']).toBe('');
    expect(Array.isArray(first['prompt_filter_results'])).toBe(true);
    expect(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('')).toBe('echo: Hello Azure');
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(3);
    expect(mock.usageTotals.completion).toBe(3);
  });

  it('returns Azure-shaped errors: 429 with retry-after-ms, 400 content filter, 401', async () => {
    const e429 = await azure.chat.completions
      .create({
        model: 'gpt-4.1-mini',
        messages: [{ role: 'user', content: '[[mock:status=429,retryms=1500]]' }],
      })
      .catch((e: unknown) => e);
    expect(e429).toBeInstanceOf(OpenAI.RateLimitError);
    const rl = e429 as InstanceType<typeof OpenAI.RateLimitError>;
    expect(rl.code).toBe('429');
    expect(rl.headers?.get('retry-after-ms')).toBe('1500');
    expect(rl.headers?.get('retry-after')).toBe('2');

    const e400 = await azure.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: '[[mock:status=400]]' }] })
      .catch((e: unknown) => e);
    expect(e400).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e400 as InstanceType<typeof OpenAI.BadRequestError>).code).toBe('content_filter');
    expect((e400 as InstanceType<typeof OpenAI.BadRequestError>).param).toBe('prompt');

    const bad = new AzureOpenAI({
      endpoint: mock.url,
      apiKey: 'nope',
      apiVersion: '2024-10-21',
      deployment: 'd',
      maxRetries: 0,
    });
    const e401 = await bad.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }] })
      .catch((e: unknown) => e);
    expect(e401).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e401 as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('401');
  });

  it('serves the v1 path with the api-key header and 404s a deployment call without api-version', async () => {
    const v1 = new OpenAI({
      apiKey: 'unused',
      baseURL: `${mock.url}/openai/v1`,
      defaultHeaders: { 'api-key': KEY },
      maxRetries: 0,
    });
    const res = await v1.chat.completions.create({
      model: 'my-deployment',
      messages: [{ role: 'user', content: 'v1' }],
    });
    expect(res.model).toBe('gpt-4.1-mini-2025-04-14');
    expect(mock.requests[0]?.path).toBe('/openai/v1/chat/completions');
    expect(mock.requests[0]?.body.model).toBe('my-deployment');

    const r = await fetch(`${mock.url}/openai/deployments/gpt-4.1-mini/chat/completions`, {
      method: 'POST',
      headers: { 'api-key': KEY, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(r.status).toBe(404);
  });
});

describe('mock upstream: helpers', () => {
  it('parses directives and plans identical usage for identical requests', () => {
    const d = parseDirective('hi [[mock:status=429,delay=5,drop=2,hang=1,malformed=sse]] there');
    expect(d?.behaviour).toEqual({
      status: 429,
      delayMs: 5,
      dropAfterChunks: 2,
      hang: true,
      malformed: 'sse',
    });
    expect(d?.rest).toBe('hi  there');
    const body = { model: 'm', messages: [{ role: 'user', content: 'hello' }] };
    expect(planAnswer(body)).toEqual(planAnswer(structuredClone(body)));
    expect(planAnswer(body).pieces.join('')).toBe('echo: hello');
  });

  it('keeps only the last 1000 requests and reset() clears everything', async () => {
    mock.enqueue({ status: 500 });
    mock.setDefault({ status: 503 });
    mock.reset();
    const res = await openai.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'z' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: z');
    expect(mock.stats.requests).toBe(1);

    for (let i = 0; i < 1010; i += 101) {
      await Promise.all(
        Array.from({ length: 101 }, () =>
          fetch(`${mock.url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } }).then((r) =>
            r.text(),
          ),
        ),
      );
    }
    expect(mock.stats.requests).toBe(1011);
    expect(mock.requests).toHaveLength(1000);
  });
});
