import { extractUsage, type TokenUsage } from './usage.js';

const EVENT_END = Buffer.from('\n\n');
const DATA = Buffer.from('data:');
const DONE = Buffer.from('data: [DONE]');
const ERROR = Buffer.from('{"error"');
const USAGE = Buffer.from('"usage"');

/**
 * Watches an upstream SSE byte stream as it is relayed: whole events are forwarded as soon as
 * they are complete (an upstream chunk normally holds whole events, so nothing waits), the
 * usage chunk is read and, when the client did not ask for it, removed. Bytes are only
 * searched, never re-serialised.
 */
export class SseRelay {
  usage: TokenUsage | null = null;
  /** Data events relayed, excluding the usage chunk and [DONE]. */
  events = 0;
  done = false;
  errorEvent = false;
  /** A data event that is neither JSON-shaped nor [DONE]: the stream cannot be trusted. */
  malformed = false;
  /** Sees every complete part before the usage chunk is removed (the cache assembles from it). */
  onEvents: ((part: Buffer) => void) | null = null;
  private pending: Buffer | null = null;

  constructor(private readonly keepUsageChunk: boolean) {}

  /** Returns the bytes to send to the client now (possibly empty). */
  push(chunk: Buffer): Buffer {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    const last = buf.lastIndexOf(EVENT_END);
    if (last === -1) {
      this.pending = buf;
      return EMPTY;
    }
    const cut = last + EVENT_END.length;
    this.pending = cut < buf.length ? buf.subarray(cut) : null;
    const complete = cut < buf.length ? buf.subarray(0, cut) : buf;
    return this.scan(complete);
  }

  /**
   * Whatever is left when the upstream ends (an unterminated last event), terminated here so
   * that anything written after it (an error event) starts an event of its own.
   */
  flush(): Buffer {
    const rest = this.pending;
    this.pending = null;
    return rest ? this.scan(Buffer.concat([rest, EVENT_END])) : EMPTY;
  }

  private scan(part: Buffer): Buffer {
    this.onEvents?.(part);
    if (!wellFormed(part)) {
      this.malformed = true;
      return EMPTY;
    }
    if (part.indexOf(DONE) !== -1) this.done = true;
    if (part.indexOf(ERROR) !== -1) this.errorEvent = true;
    let n = 0;
    for (let i = part.indexOf(DATA); i !== -1; i = part.indexOf(DATA, i + DATA.length)) {
      if (i === 0 || part[i - 1] === LF) n++;
    }
    if (this.done) n--;
    const usageAt = part.indexOf(USAGE);
    if (usageAt === -1) {
      this.events += n;
      return part;
    }
    // Only the usage chunk has a non-null usage; find its event and read it.
    let start = 0;
    let out: Buffer[] | null = null;
    while (start < part.length) {
      let end = part.indexOf(EVENT_END, start);
      end = end === -1 ? part.length : end + EVENT_END.length;
      const event = part.subarray(start, end);
      const usage = event.indexOf(USAGE) !== -1 ? extractUsage(event) : null;
      if (usage) {
        this.usage = usage;
        n--;
        if (!this.keepUsageChunk) {
          out ??= [part.subarray(0, start)];
          start = end;
          continue;
        }
      }
      out?.push(event);
      start = end;
    }
    this.events += n;
    return out ? Buffer.concat(out) : part;
  }
}

const EMPTY = Buffer.alloc(0);
const LF = 0x0a;
const OPEN = 0x7b;
const CLOSE = 0x7d;

/**
 * A cheap shape check of every line without parsing it: each data line is a JSON object or
 * [DONE]; any other non-empty line is a comment or another SSE field (event, id, retry). Catches
 * garbage (a JSON body where a stream was expected, say) and truncated events; a perfectly
 * balanced but invalid object would slip through.
 */
function wellFormed(part: Buffer): boolean {
  for (let i = 0; i < part.length; ) {
    let next = part.indexOf(LF, i);
    if (next === -1) next = part.length;
    let end = next;
    if (end > i && part[end - 1] === 0x0d) end--;
    if (end > i && part[i] !== COLON) {
      if (part.compare(DATA, 0, DATA.length, i, Math.min(end, i + DATA.length)) === 0) {
        let start = i + DATA.length;
        if (part[start] === 0x20) start++;
        if (part[start] === OPEN) {
          if (part[end - 1] !== CLOSE) return false;
        } else if (part.toString('latin1', start, end) !== '[DONE]') {
          return false;
        }
      } else if (!OTHER_FIELD.test(part.toString('latin1', i, Math.min(end, i + 7)))) {
        return false;
      }
    }
    i = next + 1;
  }
  return true;
}

const COLON = 0x3a;
const OTHER_FIELD = /^(?:event|id|retry|data)(?::|$)/;
