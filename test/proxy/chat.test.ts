import OpenAI, { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type MockUpstream, startMockUpstream } from '../mock-upstream/index.js';
import { MOCK_KEY, startTestGateway, type TestGateway, twoUpstreams } from '../support/gateway.js';

let mock: MockUpstream;
let gw: TestGateway;
let key: string;
let client: OpenAI;

beforeAll(async () => {
  mock = await startMockUpstream();
  gw = await startTestGateway(twoUpstreams(mock.url));
  ({ key } = await gw.issueKey({ team: 'chat' }));
  client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
});
afterAll(async () => {
  await gw?.close();
  await mock?.close();
});
beforeEach(() => mock.reset());

const weather = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

// The same behaviour must hold whichever kind of upstream serves the model.
describe.each([
  { model: 'gpt-4.1-mini', upstream: 'openai', path: '/v1/chat/completions', sentModel: 'gpt-4.1-mini' },
  {
    model: 'via-azure',
    upstream: 'azure',
    path: '/openai/deployments/gpt-4.1-mini/chat/completions',
    sentModel: 'gpt-4.1-mini',
  },
  {
    model: 'via-azure-v1',
    upstream: 'azure-v1',
    path: '/openai/v1/chat/completions',
    sentModel: 'gpt-4.1-mini',
  },
])('through the $upstream upstream', ({ model, upstream, path, sentModel }) => {
  it('answers a plain completion and forwards the request untouched but for the model', async () => {
    const { data, response } = await client.chat.completions
      .create({
        model,
        messages: [{ role: 'user', content: 'hello plain' }],
        temperature: 0.2,
        seed: 7,
        // A field newer than this gateway: it must reach the upstream as sent.
        ...({ verbosity: 'low', prompt_cache_key: 'pck-1' } as object),
      })
      .withResponse();
    expect(data.choices[0]?.message.content).toBe('echo: hello plain');
    expect(data.usage?.prompt_tokens).toBeGreaterThan(0);
    expect(response.headers.get('x-tollgate-upstream')).toBe(upstream);
    expect(response.headers.get('x-request-id')).toMatch(/^req_/);
    expect(response.headers.get('server-timing')).toMatch(/^gateway;dur=[\d.]+, upstream;dur=[\d.]+$/);
    expect(response.headers.get('x-upstream-request-id')).toBeTruthy();
    expect(response.headers.get('apim-request-id')).toBeNull();
    expect(response.headers.get('x-ms-region')).toBeNull();
    const sent = mock.requests.at(-1)!;
    expect(sent.path).toBe(path);
    expect(sent.body).toMatchObject({
      model: sentModel,
      temperature: 0.2,
      seed: 7,
      verbosity: 'low',
      prompt_cache_key: 'pck-1',
    });
    // The client's credential never goes upstream; the upstream's is used instead.
    expect(JSON.stringify(sent.headers)).not.toContain(key);
    if (upstream === 'openai') expect(sent.headers['authorization']).toBe(`Bearer ${MOCK_KEY}`);
    else expect(sent.headers['api-key']).toBe(MOCK_KEY);
  });

  it('streams chunk by chunk, asks upstream for usage and hides the usage chunk unless asked', async () => {
    const stream = await client.chat.completions.create({
      model,
      stream: true,
      messages: [{ role: 'user', content: 'hello stream [[mock:chunks=4]]' }],
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe('echo: hello stream');
    expect(chunks.some((c) => c.usage)).toBe(false);
    expect(mock.requests.at(-1)!.body.stream_options).toEqual({ include_usage: true });
    if (upstream !== 'openai') {
      // Azure's first chunk has no choices and carries prompt_filter_results: passed on as is.
      expect(chunks[0]?.choices).toEqual([]);
      expect((chunks[0] as unknown as Record<string, unknown>)['prompt_filter_results']).toBeDefined();
    }
  });

  it('passes the usage chunk on when the client asked for it', async () => {
    const stream = await client.chat.completions.create({
      model,
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'usage please' }],
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage?.total_tokens).toBeGreaterThan(0);
    const json = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'usage please' }],
    });
    expect(last.usage).toEqual(json.usage);
  });

  it('relays tool calls, JSON and streamed', async () => {
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'weather in Oslo?' }],
      tools: [weather],
    });
    const call = res.choices[0]?.message.tool_calls?.[0];
    expect(res.choices[0]?.finish_reason).toBe('tool_calls');
    expect(call?.type === 'function' && call.function.name).toBe('get_weather');
    expect(mock.requests.at(-1)!.body.tools).toEqual([weather]);

    const stream = await client.chat.completions.create({
      model,
      stream: true,
      messages: [{ role: 'user', content: 'weather in Oslo?' }],
      tools: [weather],
    });
    let args = '';
    let name = '';
    for await (const chunk of stream) {
      for (const tc of chunk.choices[0]?.delta.tool_calls ?? []) {
        name += tc.function?.name ?? '';
        args += tc.function?.arguments ?? '';
      }
    }
    expect(name).toBe('get_weather');
    expect(JSON.parse(args)).toEqual(JSON.parse(call?.type === 'function' ? call.function.arguments : '{}'));
  });

  it('passes a json_schema response format through', async () => {
    const response_format = {
      type: 'json_schema' as const,
      json_schema: {
        name: 'answer',
        strict: true,
        schema: {
          type: 'object',
          properties: { answer: { type: 'string' } },
          required: ['answer'],
          additionalProperties: false,
        },
      },
    };
    const res = await client.chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'json' }],
      response_format,
    });
    expect(JSON.parse(res.choices[0]?.message.content ?? '')).toHaveProperty('answer');
    expect(mock.requests.at(-1)!.body.response_format).toEqual(response_format);
  });
});

describe('the inbound Azure dialect', () => {
  it('serves AzureOpenAI clients on the deployments path with api-version', async () => {
    const azure = new AzureOpenAI({
      endpoint: gw.url,
      apiKey: key,
      apiVersion: '2024-10-21',
      deployment: 'gpt-4.1-mini',
      maxRetries: 0,
    });
    const res = await azure.chat.completions.create({
      model: '',
      messages: [{ role: 'user', content: 'from azure sdk' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: from azure sdk');
    const stream = await azure.chat.completions.create({
      model: '',
      stream: true,
      messages: [{ role: 'user', content: 'azure stream' }],
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe('echo: azure stream');
  });

  it('resolves a deployment name like a model alias', async () => {
    const azure = new AzureOpenAI({
      endpoint: gw.url,
      apiKey: key,
      apiVersion: '2025-04-01-preview',
      deployment: 'gpt-4.1-mini-2025-04-14',
      maxRetries: 0,
    });
    const res = await azure.chat.completions.create({
      model: '',
      messages: [{ role: 'user', content: 'alias' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: alias');
    expect(mock.requests.at(-1)!.path).toBe('/v1/chat/completions');
  });

  it('serves the Azure v1 path with the api-key header', async () => {
    const v1 = new OpenAI({
      baseURL: `${gw.url}/openai/v1`,
      apiKey: 'unused',
      defaultHeaders: { 'api-key': key, authorization: null as unknown as string },
      maxRetries: 0,
    });
    const res = await v1.chat.completions.create({
      model: 'gpt-4.1-mini',
      messages: [{ role: 'user', content: 'v1 path' }],
    });
    expect(res.choices[0]?.message.content).toBe('echo: v1 path');
  });

  it('answers an unknown deployment with 404 model_not_found', async () => {
    const azure = new AzureOpenAI({
      endpoint: gw.url,
      apiKey: key,
      apiVersion: '2024-10-21',
      deployment: 'nope',
      maxRetries: 0,
    });
    const err = await azure.chat.completions
      .create({ model: '', messages: [{ role: 'user', content: 'x' }] })
      .catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err.code).toBe('model_not_found');
  });
});

describe('models', () => {
  it('lists the models and aliases the key may use', async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(expect.arrayContaining(['gpt-4.1-mini', 'gpt-4.1-mini-2025-04-14', 'via-azure']));
    const restricted = await gw.issueKey({ team: 'chat', models: ['via-azure'] });
    const rc = new OpenAI({ apiKey: restricted.key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    const only = [];
    for await (const m of rc.models.list()) only.push(m.id);
    expect(only).toEqual(['via-azure']);
    expect((await rc.models.retrieve('via-azure')).id).toBe('via-azure');
    await expect(rc.models.retrieve('gpt-4.1-mini')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const err = await rc.chat.completions
      .create({ model: 'gpt-4.1-mini', messages: [{ role: 'user', content: 'x' }] })
      .catch((e) => e);
    expect(err).toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(err.code).toBe('model_not_allowed');
  });

  it('accepts an alias and keeps the client request id', async () => {
    const { response } = await client.chat.completions
      .create(
        { model: 'gpt-4.1-mini-2025-04-14', messages: [{ role: 'user', content: 'a' }] },
        { headers: { 'x-request-id': 'my-trace-123' } },
      )
      .withResponse();
    expect(response.headers.get('x-request-id')).toBe('my-trace-123');
    expect(mock.requests.at(-1)!.body.model).toBe('gpt-4.1-mini');
  });
});
