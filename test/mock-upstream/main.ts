// CLI: `tsx test/mock-upstream/main.ts [--port 0] [--host 127.0.0.1] [--api-key sk-...] [--delay ms]`
// Starts the mock upstream and prints one JSON line `{"url":"http://127.0.0.1:PORT"}` on stdout.
// Stops on SIGTERM/SIGINT (and when stdin closes with --exit-on-stdin-close, for parent-death safety).

import { parseArgs } from 'node:util';
import { startMockUpstream } from './index.js';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'api-key': { type: 'string' },
    delay: { type: 'string' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
  },
  strict: true,
});

const mock = await startMockUpstream({
  port: Number(values.port),
  host: values.host,
  ...(values['api-key'] !== undefined ? { apiKey: values['api-key'] } : {}),
  ...(values.delay !== undefined ? { defaultDelayMs: Number(values.delay) } : {}),
});
process.stdout.write(`${JSON.stringify({ url: mock.url })}\n`);

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  const t = setTimeout(() => process.exit(0), 2000);
  t.unref();
  void mock.close().then(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (values['exit-on-stdin-close']) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
}
