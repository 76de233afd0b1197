// `npm run demo`: the offline first run (SPEC section 1).
//
// Starts the mock upstream (test/mock-upstream) and the gateway in memory mode in this process,
// issues a client key through the admin API and prints a ready-to-paste curl (JSON and stream),
// an `openai` SDK snippet and the admin key. Stays up until Ctrl-C (or SIGTERM), then drains and
// exits 0.
//
// Environment: PORT (default 8080; a free port when 8080 is taken, or with PORT=0), HOST
// (default 127.0.0.1), LOG_LEVEL (default warn; `info` logs one JSON line per request to stderr).

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { validateConfig } from '../src/config/load.js';
import { type RunningGateway, startGateway } from '../src/server/gateway.js';
import { createLogger } from '../src/server/logger.js';
import { onStopSignals } from '../src/server/signals.js';
import { type MockUpstream, startMockUpstream } from '../test/mock-upstream/index.js';

const MOCK_KEY = 'sk-mock-upstream';
const MODEL = 'gpt-4.1-mini';

/** True when `port` can be bound on `host` right now. */
function portFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

async function choosePort(host: string): Promise<number> {
  const wanted = process.env['PORT'] ? Number(process.env['PORT']) : 8080;
  if (!Number.isInteger(wanted) || wanted < 0 || wanted > 65535) {
    throw new Error(`PORT must be a port number, not '${process.env['PORT']}'`);
  }
  if (wanted === 0 || (await portFree(wanted, host))) return wanted;
  process.stderr.write(`port ${wanted} is taken: using a free port instead\n`);
  return 0;
}

async function issueKey(url: string, adminKey: string): Promise<string> {
  const res = await fetch(`${url}/admin/keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'demo-key', team: 'demo', metadata: { createdBy: 'npm run demo' } }),
  });
  const body = (await res.json()) as { key?: string };
  if (res.status !== 201 || typeof body.key !== 'string') {
    throw new Error(`could not issue a key: ${res.status} ${JSON.stringify(body)}`);
  }
  return body.key;
}

function instructions(url: string, key: string, adminKey: string): string {
  const json = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hello, tollgate!' }] });
  const stream = JSON.stringify({
    model: MODEL,
    stream: true,
    messages: [{ role: 'user', content: 'Stream me a hello' }],
  });
  const curl = (flags: string, body: string): string =>
    [
      `curl ${flags} ${url}/v1/chat/completions \\`,
      `  -H 'Authorization: Bearer ${key}' \\`,
      `  -H 'Content-Type: application/json' \\`,
      `  -d '${body}'`,
    ].join('\n');
  return `
tollgate demo: a mock upstream and the gateway (memory mode: nothing persists)

  gateway     ${url}
  client key  ${key}   (name demo-key, team demo)
  admin key   ${adminKey}

# Chat completion (JSON)
${curl('-sS', json)}

# Streamed (SSE)
${curl('-sSN', stream)}

# Node, with the official SDK (npm install openai), as an ES module (demo.mjs)
import OpenAI from 'openai';
const client = new OpenAI({ baseURL: '${url}/v1', apiKey: '${key}' });
const res = await client.chat.completions.create({
  model: '${MODEL}',
  messages: [{ role: 'user', content: 'Hello, tollgate!' }],
});
console.log(res.choices[0].message.content, res.usage);

# Admin API and CLI (ADMIN_API_KEY)
curl -sS '${url}/admin/usage?groupBy=key' -H 'Authorization: Bearer ${adminKey}'
TOLLGATE_URL=${url} ADMIN_API_KEY=${adminKey} npx tollgate keys list

# Metrics
curl -sS ${url}/metrics

Ready. Press Ctrl-C to stop.
`;
}

async function main(): Promise<void> {
  const host = process.env['HOST'] || '127.0.0.1';
  const adminKey = `admin-${randomBytes(16).toString('hex')}`;
  const logger = createLogger(process.env['LOG_LEVEL'] || 'warn', process.stderr);
  const mock: MockUpstream = await startMockUpstream({ apiKey: MOCK_KEY });
  const { config } = validateConfig({
    server: { host, port: await choosePort(host), drainDelaySeconds: 0, shutdownGraceSeconds: 10 },
    admin: { apiKey: adminKey },
    upstreams: [{ name: 'mock', type: 'openai', baseURL: `${mock.url}/v1`, apiKey: MOCK_KEY }],
    models: [
      {
        id: MODEL,
        aliases: ['gpt-4.1-mini-2025-04-14'],
        pricing: { inputPerMTok: 0.4, cachedInputPerMTok: 0.1, outputPerMTok: 1.6 },
        routes: [{ upstream: 'mock' }],
      },
    ],
  });
  let gateway: RunningGateway;
  try {
    gateway = await startGateway(config, logger);
  } catch (err) {
    // The port was taken between the check and the bind: any free port will do.
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    gateway = await startGateway({ ...config, server: { ...config.server, port: 0 } }, logger);
  }
  onStopSignals(
    (signal) => {
      process.stderr.write(`${signal}: draining and stopping…\n`);
      gateway
        .shutdown()
        .then(() => mock.close())
        .then(
          () => process.exit(0),
          (err: unknown) => {
            process.stderr.write(`shutdown failed: ${err instanceof Error ? err.message : String(err)}\n`);
            process.exit(1);
          },
        );
    },
    (signal) => {
      process.stderr.write(`${signal} again: exiting now\n`);
      process.exit(1);
    },
  );
  const key = await issueKey(gateway.url, adminKey);
  process.stdout.write(instructions(gateway.url, key, adminKey));
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
