import type { ServerResponse } from 'node:http';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import type { Context } from 'hono';

/**
 * Where a proxied answer is written. On @hono/node-server it is the Node response itself, so
 * upstream bytes go straight to the socket (no web-stream conversion); under `app.request()`
 * (route tests) the writes are collected into a web Response.
 */
export interface Sink {
  readonly headersSent: boolean;
  /** True once the client has gone away before the answer was complete. */
  readonly clientGone: boolean;
  writeHead(status: number, headers: Record<string, string | string[]>): void;
  write(chunk: Buffer | string): void;
  end(chunk?: Buffer | string): void;
  /** Called once if the client disconnects before `end`. */
  onClientGone(listener: () => void): void;
  /** What the Hono handler returns once it is done writing. */
  response(): Response;
}

export function sinkFor(c: Context): Sink {
  const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  return outgoing ? new NodeSink(outgoing) : new BufferedSink();
}

class NodeSink implements Sink {
  private gone = false;
  private readonly listeners: (() => void)[] = [];

  constructor(private readonly res: ServerResponse) {
    res.on('close', () => {
      if (res.writableFinished) return;
      this.gone = true;
      for (const l of this.listeners) l();
    });
  }

  get headersSent(): boolean {
    return this.res.headersSent;
  }

  get clientGone(): boolean {
    return this.gone;
  }

  writeHead(status: number, headers: Record<string, string | string[]>): void {
    this.res.writeHead(status, headers);
    // A stream's client should see the headers before the first token; a JSON answer's headers
    // go out with its body in one write.
    if (headers['content-length'] === undefined) this.res.flushHeaders();
  }

  write(chunk: Buffer | string): void {
    if (!this.gone && chunk.length > 0) this.res.write(chunk);
  }

  end(chunk?: Buffer | string): void {
    if (!this.gone) this.res.end(chunk);
  }

  onClientGone(listener: () => void): void {
    if (this.gone) listener();
    else this.listeners.push(listener);
  }

  response(): Response {
    return RESPONSE_ALREADY_SENT;
  }
}

class BufferedSink implements Sink {
  headersSent = false;
  readonly clientGone = false;
  private status = 200;
  private headers: Record<string, string | string[]> = {};
  private readonly chunks: Buffer[] = [];

  writeHead(status: number, headers: Record<string, string | string[]>): void {
    this.status = status;
    this.headers = headers;
    this.headersSent = true;
  }

  write(chunk: Buffer | string): void {
    this.chunks.push(Buffer.from(chunk));
  }

  end(chunk?: Buffer | string): void {
    if (chunk !== undefined) this.write(chunk);
  }

  onClientGone(): void {}

  response(): Response {
    const h = new Headers();
    for (const [k, v] of Object.entries(this.headers)) {
      if (k === 'content-length') continue;
      for (const one of Array.isArray(v) ? v : [v]) h.append(k, one);
    }
    return new Response(Buffer.concat(this.chunks), { status: this.status, headers: h });
  }
}
