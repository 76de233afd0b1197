import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';

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
  return overhead + (bytes > EXACT_LIMIT_BYTES ? bytes : countTokens(joined));
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

/** Loads the encoder's tables now, so the first request does not stall the event loop doing it. */
export function warmUpTokenizer(): void {
  countTokens('warm up');
}
