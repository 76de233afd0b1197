/** Token counts of one completion, as the upstream reported them. */
export interface TokenUsage {
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
}

interface WireUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

const USAGE = Buffer.from('"usage"');

export function fromWire(u: WireUsage | null | undefined): TokenUsage | null {
  if (!u || typeof u.prompt_tokens !== 'number') return null;
  return {
    promptTokens: u.prompt_tokens,
    cachedTokens: u.prompt_tokens_details?.cached_tokens ?? 0,
    completionTokens: u.completion_tokens ?? 0,
  };
}

/**
 * Finds the last non-null `"usage": {...}` object in a JSON text and parses only that object,
 * so a response is never parsed whole just to read its token counts.
 */
export function extractUsage(buf: Buffer): TokenUsage | null {
  let at = buf.lastIndexOf(USAGE);
  while (at !== -1) {
    const start = objectStart(buf, at + USAGE.length);
    if (start !== -1) {
      const end = matchingBrace(buf, start);
      if (end !== -1) {
        try {
          return fromWire(JSON.parse(buf.toString('utf8', start, end + 1)) as WireUsage);
        } catch {
          return null;
        }
      }
    }
    at = at === 0 ? -1 : buf.lastIndexOf(USAGE, at - 1);
  }
  return null;
}

/** Index of the `{` that follows `: ` after position `i`, or -1 (e.g. for `null`). */
function objectStart(buf: Buffer, i: number): number {
  let seenColon = false;
  for (; i < buf.length; i++) {
    const ch = buf[i];
    if (ch === 0x20 || ch === 0x0a || ch === 0x0d || ch === 0x09) continue;
    if (ch === 0x3a && !seenColon) {
      seenColon = true;
      continue;
    }
    return seenColon && ch === 0x7b ? i : -1;
  }
  return -1;
}

function matchingBrace(buf: Buffer, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < buf.length; i++) {
    const ch = buf[i];
    if (inString) {
      if (ch === 0x5c) i++;
      else if (ch === 0x22) inString = false;
    } else if (ch === 0x22) inString = true;
    else if (ch === 0x7b) depth++;
    else if (ch === 0x7d && --depth === 0) return i;
  }
  return -1;
}
