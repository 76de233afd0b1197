import { countO200k, loadO200k } from './o200k.js';

// Counting is exact up to this much text; beyond it, a pure-JS tokenizer would block the event
// loop for every other request, so the UTF-8 byte length stands in as an upper bound
// (no o200k token is shorter than one byte) and settlement against real usage corrects it.
const EXACT_LIMIT_BYTES = 64 * 1024;

/** Prompt tokens of a chat request: 3 per message + content (+1 per name) + 3 reply priming. */
export function countPromptTokens(messages: unknown[]): number {
  const text: string[] = [];
  let overhead = 3;
  for (const m of messages) {
    overhead += 3;
    const msg = m as { content?: unknown; name?: unknown; tool_calls?: unknown };
    if (typeof msg.name === 'string') {
      overhead += 1;
      text.push(msg.name);
    }
    collectText(msg.content, text);
    if (msg.tool_calls !== undefined) text.push(JSON.stringify(msg.tool_calls));
  }
  const joined = text.join('\n');
  const bytes = Buffer.byteLength(joined);
  return overhead + (bytes > EXACT_LIMIT_BYTES ? bytes : countInPieces(joined));
}

// BPE takes time quadratic in the length of a pre-tokenizer piece: 64 KB of one letter, of
// spaces or of CJK would block the event loop for seconds. Text is therefore counted in pieces
// of at most this many characters, cut just before a whitespace that follows a non-whitespace
// (where o200k splits anyway, so ordinary text counts exactly as a whole); only a run longer
// than a piece is cut inside, which may count a token or so more (settlement corrects it).
const PIECE = 256;

function countInPieces(text: string): number {
  if (text.length <= PIECE) return countO200k(text);
  let n = 0;
  for (let at = 0; at < text.length; ) {
    let end = Math.min(text.length, at + PIECE);
    if (end < text.length) {
      let cut = end;
      while (cut > at + 1 && !(isSpace(text.charCodeAt(cut)) && !isSpace(text.charCodeAt(cut - 1)))) cut--;
      if (cut > at + 1) end = cut;
      else if (isHighSurrogate(text.charCodeAt(end - 1))) end--;
    }
    n += countO200k(text.slice(at, end));
    at = end;
  }
  return n;
}

const isHighSurrogate = (c: number): boolean => c >= 0xd800 && c <= 0xdbff;

/** JavaScript's \s, without a regular expression per character. */
function isSpace(c: number): boolean {
  return (
    c === 0x20 ||
    (c >= 0x09 && c <= 0x0d) ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000 ||
    c === 0xfeff
  );
}

function collectText(content: unknown, into: string[]): void {
  if (typeof content === 'string') into.push(content);
  else if (Array.isArray(content)) {
    for (const part of content) {
      const p = part as { type?: unknown; text?: unknown };
      if (typeof p.text === 'string') into.push(p.text);
    }
  }
}

/** Loads the token table now, so the first request does not stall the event loop doing it. */
export function warmUpTokenizer(): void {
  loadO200k();
}
