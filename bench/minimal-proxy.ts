// The benchmark's baseline: the least a Node reverse proxy can do. node:http in, an undici Pool out,
// bodies piped both ways, hop-by-hop headers dropped, client disconnects abort the upstream call.
// No auth, limits, cache, metering or metrics.
//
//   node minimal-proxy.js --upstream http://127.0.0.1:PORT [--port 0] [--host 127.0.0.1] [--connections 128]
//
// With --exit-on-stdin-close it also stops when its stdin closes (the parent died).
// Prints one JSON line `{"url":"http://127.0.0.1:PORT"}` on stdout once listening; stops on SIGTERM/SIGINT.

import { createServer, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

const { values } = parseArgs({
  options: {
    upstream: { type: 'string' },
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    connections: { type: 'string', default: '128' },
    'exit-on-stdin-close': { type: 'boolean', default: false },
  },
  strict: true,
});
if (!values.upstream) {
  process.stderr.write('minimal-proxy: --upstream <url> is required\n');
  process.exit(2);
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

const pool = new Pool(values.upstream, {
  connections: Number(values.connections),
  pipelining: 1,
  keepAliveTimeout: 60_000,
});

function requestHeaders(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in h) {
    const v = h[k];
    if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  }
  return out;
}

function responseHeaders(h: Record<string, string | string[] | undefined>): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const k in h) {
    const v = h[k];
    if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  }
  return out;
}

const server = createServer((req, res) => {
  const ac = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) ac.abort();
  });
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.request(
    {
      method: (req.method ?? 'GET') as 'GET',
      path: req.url ?? '/',
      headers: requestHeaders(req.headers),
      body: hasBody ? req : null,
      signal: ac.signal,
    },
    (err, up) => {
      if (err) {
        if (!res.headersSent && !res.destroyed) {
          const body = JSON.stringify({
            error: { message: 'upstream failed', type: 'server_error', param: null, code: 'upstream_error' },
          });
          res.writeHead(502, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
          });
          res.end(body);
        } else res.destroy();
        return;
      }
      res.writeHead(up.statusCode, responseHeaders(up.headers));
      if (String(up.headers['content-type'] ?? '').startsWith('text/event-stream')) res.flushHeaders();
      pipeline(up.body, res, () => {});
    },
  );
});
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;

server.listen(Number(values.port), values.host, () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ url: `http://${values.host}:${port}` })}\n`);
});

const stop = (): void => {
  server.close();
  server.closeAllConnections();
  void pool.close().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (values['exit-on-stdin-close']) {
  // The parent holds our stdin: if it dies without stopping us, stop anyway.
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
}
