import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { O200K_TOKEN_SPLIT_REGEX } from 'gpt-tokenizer/encodingParams/constants';
import { describe, expect, it, vi } from 'vitest';
import { countO200k, loadO200k, O200K_SPLIT } from '../../src/metering/o200k.js';
import { countPromptTokens, warmUpTokenizer } from '../../src/metering/tokens.js';
import { ROOT } from '../support/process.js';

// gpt-tokenizer is the oracle: the hand-written counter must agree with its countTokens on
// every input, text that spells a special token counted as ordinary text.
const ordinary = { disallowedSpecial: new Set<string>() };
const oracle = (s: string): number | string => {
  try {
    return countTokens(s, ordinary);
  } catch (err) {
    return `throws: ${(err as Error).message}`;
  }
};
const ours = (s: string): number | string => {
  try {
    return countO200k(s);
  } catch (err) {
    return `throws: ${(err as Error).message}`;
  }
};

const CORPUS: string[] = [
  '',
  ' ',
  'a',
  'hello world',
  'The quick brown fox jumps over the lazy dog. It was 12:45 on 2024-03-01, and $1,234.56 was due.',
  "I'm sure they'LL say we'VE done it; DON'T you think? She's here. 'quoted' O'Neil's",
  'function add(a: number, b: number): number {\n  return a + b; // sum\n}\n\nconst x = [1, 2, 3].map((n) => n * 2);\n',
  'def f(x):\n\tif x > 0:\n\t\treturn x ** 2\n\treturn None\n',
  '{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Hi!"}],"temperature":0.2,"n":1}',
  '<html><body><div class="a b">Hi &amp; bye</div></body></html>',
  '1 12 123 1234 12345 123456789012345678901234567890 3.14159 -42 1e10 0x1F ١٢٣٤٥ ½ ²',
  '   leading and trailing   ',
  ' '.repeat(40),
  '\n'.repeat(12),
  'a\r\nb\r\n\r\nc\n \n  \n\t\n',
  'x    y\t\t\tz\u00a0\u00a0w\u3000v',
  'path/to/file.ts // comment /* block */ https://example.com/a/b?c=d&e=f#g',
  '😊😀😁😂🤣😃 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🇫🇷🇯🇵 ❤️‍🔥 1️⃣',
  '中文字符测试：你今天遇到什么有趣的事情了吗？日本語のテキストです。한국어 텍스트입니다.',
  'مرحبا بالعالم، كيف حالك اليوم؟ هذا نص عربي للاختبار.',
  'नमस्ते दुनिया, आप कैसे हैं? यह हिंदी में एक परीक्षण है।',
  'Mixed: Hello мир 世界 عالم दुनिया κόσμος 🌍 — “quotes” ‘single’ … «guillemets»',
  'ǅungla ǈubljana ʰello ǲ Σίσυφος ΣΊΣΥΦΟΣ ﬁ ﬀ e\u0301 a\u0308\u0323',
  'a'.repeat(300),
  'ab'.repeat(200),
  'Supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis',
  '中'.repeat(200),
  '😊'.repeat(100),
  '!'.repeat(257),
  '\uD800',
  '\uDC00 lone low',
  'lone high \uD83D at end \uD83D',
  '\uD800\uD800abc\uDFFF\uDBFF',
  'a\uD800b\uDC00c',
  '\uFFFD replacement \uFFFD\uFFFD',
  // A byte order mark: gpt-tokenizer's TextDecoder drops it while merging, so it counts 2.
  '\uFEFF',
  '\uFEFFusing System;\n\uFEFFnamespace Foo\n\uFEFF//x\n\uFEFF#\n\uFEFF\uFEFF',
  'a\uFEFFb \uFEFF\n\n',
  '\u0000\u0001\u007f\u0085\u2028\u2029\u200b\u200d\ufe0f',
  // Special tokens, spelled in text: counted as ordinary text.
  '<|endoftext|>',
  'before <|endoftext|> after',
  'x<|endofprompt|>y<|im_start|>',
  '<|fim_prefix|><|fim_middle|><|fim_suffix|><|im_end|><|im_sep|>',
  '<|not_special|> <| endoftext |> <|endoftext| <endoftext|>',
];

describe('countO200k: exactly gpt-tokenizer', () => {
  it('uses the same pre-tokenizer pattern', () => {
    expect(O200K_SPLIT.source).toBe(O200K_TOKEN_SPLIT_REGEX.source);
    expect(O200K_SPLIT.flags).toBe(O200K_TOKEN_SPLIT_REGEX.flags);
  });

  it("gpt-tokenizer's o200k test plans", () => {
    const plans = readFileSync(join(gptTokenizerRoot(), 'data', 'TestPlans.txt'), 'utf8')
      .split('\n\n')
      .map((plan) => plan.split('\n'))
      .filter(([name]) => name === 'EncodingName: o200k_base')
      .map(([, sample, encoded]) => ({
        sample: sample!.split(': ').slice(1).join(': '),
        encoded: JSON.parse(encoded!.split(': ')[1]!) as number[],
      }));
    expect(plans.length).toBeGreaterThan(50);
    for (const { sample, encoded } of plans) {
      expect(countO200k(sample), sample).toBe(encoded.length);
      expect(countO200k(sample), sample).toBe(countTokens(sample));
    }
  });

  it('a fixed corpus, whole and line by line', () => {
    const cases = [...CORPUS, ...CORPUS.flatMap((s) => s.split('\n')), CORPUS.join(' '), CORPUS.join('\n')];
    for (const s of cases) expect(ours(s), JSON.stringify(s)).toBe(oracle(s));
    // Spelled in a prompt, a special token is text: several tokens, not one, and no error.
    expect(ours('<|endoftext|>')).toBe(oracle('<|endoftext|>'));
    expect(ours('<|endoftext|>')).toBeGreaterThan(1);
  });

  it('arbitrary strings', () => {
    const same = (s: string): void => {
      expect(ours(s), JSON.stringify(s)).toBe(oracle(s));
    };
    fc.assert(fc.property(fc.string({ unit: 'grapheme', maxLength: 60 }), same), { numRuns: 2000 });
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 60 }), same), { numRuns: 2000 });
    // UTF-16 code units, so lone surrogates too.
    const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    fc.assert(fc.property(fc.string({ unit: codeUnit, maxLength: 60 }), same), { numRuns: 2000 });
    // Fragments that meet at the pre-tokenizer's and the merge's edge cases.
    const fragment = fc.constantFrom(
      ' ',
      '  ',
      '\n',
      '\r\n',
      '\t',
      '\u00a0',
      '\uFEFF',
      'a',
      'The',
      'THE',
      "'s",
      "'LL",
      "'",
      '/',
      '.',
      '!',
      '7',
      '1234',
      'é',
      'ß',
      'я',
      '中文',
      'こ',
      'ا',
      'न्द',
      '😊',
      '👨‍👩‍👧',
      '🇫🇷',
      '\u200d',
      '\u0301',
      '\uD800',
      '\uDC00',
      '\uFFFD',
      '<|',
      '|>',
      'endoftext',
      'using',
      'namespace',
    );
    fc.assert(fc.property(fc.string({ unit: fragment, maxLength: 40 }), same), { numRuns: 3000 });
  });
});

describe('countPromptTokens', () => {
  const chats: unknown[][] = [
    [{ role: 'user', content: 'Hello!' }],
    [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', name: 'alice', content: 'What is 2 + 2? 🤔' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'c1', type: 'function', function: { name: 'add' } }],
      },
      { role: 'tool', content: [{ type: 'text', text: '4' }, { type: 'image_url' }] },
    ],
    [{ role: 'user', content: 'Résumé: 中文 العربية हिन्दी\n\n  indented\tcode();' }],
  ];

  it('is 3 per message, +1 per name, +3, plus the tokens of the text', () => {
    for (const messages of chats) {
      const named = messages.filter((m) => typeof (m as { name?: unknown }).name === 'string').length;
      const text = messages.flatMap((m) => {
        const msg = m as { name?: string; content?: unknown; tool_calls?: unknown };
        const parts: string[] = [];
        if (msg.name) parts.push(msg.name);
        if (typeof msg.content === 'string') parts.push(msg.content);
        if (Array.isArray(msg.content)) for (const p of msg.content) if (p.text) parts.push(p.text);
        if (msg.tool_calls) parts.push(JSON.stringify(msg.tool_calls));
        return parts;
      });
      expect(countPromptTokens(messages)).toBe(
        3 + 3 * messages.length + named + countTokens(text.join('\n'), ordinary),
      );
    }
  });

  it('gives what it gave on gpt-tokenizer, long text (cut in pieces) included', async () => {
    vi.resetModules();
    const counted = vi.fn((s: string) => countTokens(s, ordinary));
    vi.doMock('../../src/metering/o200k.js', () => ({ countO200k: counted, loadO200k: () => {} }));
    const before = (await import('../../src/metering/tokens.js')).countPromptTokens;
    vi.doUnmock('../../src/metering/o200k.js');
    const long = [
      ...chats,
      [{ role: 'user', content: CORPUS.join(' ') }],
      [{ role: 'user', content: `${'a'.repeat(1000)} ${' '.repeat(600)}x ${'😊'.repeat(300)}` }],
      [{ role: 'user', content: 'word, '.repeat(20_000) }], // over 64 KB: the byte length stands in
    ];
    for (const messages of long) expect(countPromptTokens(messages)).toBe(before(messages));
    expect(counted).toHaveBeenCalled();
  });

  it('counts a special token in a message as text (it used to throw, failing the request)', () => {
    const content = 'a <|endoftext|> b <|im_start|>';
    expect(countPromptTokens([{ role: 'user', content }])).toBe(3 + 3 + countTokens(content, ordinary));
  });

  it('warmUpTokenizer loads the table', () => {
    warmUpTokenizer();
    loadO200k();
    expect(countO200k('warm up')).toBe(2);
  });
});

describe('memory', () => {
  // Growth of heap + external memory (typed arrays) from importing a counter and counting once,
  // measured after gc in a fresh process.
  function growth(module: string, fn: string): { heapExternalMB: number; rssMB: number } {
    const script = `
      const mb = (n) => Math.round((n / 2 ** 20) * 10) / 10;
      gc();
      const a = process.memoryUsage();
      const m = await import(${JSON.stringify(module)});
      m[${JSON.stringify(fn)}]('Hello, world! How are you today?');
      gc();
      gc();
      const b = process.memoryUsage();
      console.log(JSON.stringify({
        heapExternalMB: mb(b.heapUsed + b.external - a.heapUsed - a.external),
        rssMB: mb(b.rss - a.rss),
      }));`;
    const out = execFileSync(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } },
    );
    return JSON.parse(out.trim().split('\n').at(-1)!);
  }

  it('the table costs a few MB, where gpt-tokenizer costs tens', () => {
    const mine = growth(pathToFileURL(join(ROOT, 'src/metering/o200k.ts')).href, 'countO200k');
    const theirs = growth('gpt-tokenizer/encoding/o200k_base', 'countTokens');
    console.log(
      `memory growth (heap + external, MB): o200k.ts ${mine.heapExternalMB}, gpt-tokenizer ${theirs.heapExternalMB}`,
    );
    expect(mine.heapExternalMB).toBeLessThan(12);
    // The bound can fail: gpt-tokenizer's encoder, measured the same way, is far over it.
    expect(theirs.heapExternalMB).toBeGreaterThan(12);
  });
});

function gptTokenizerRoot(): string {
  const main = createRequire(import.meta.url).resolve('gpt-tokenizer');
  return join(main, '..', '..');
}
