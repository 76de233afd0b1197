import fc from 'fast-check';
import { expect, it } from 'vitest';
import { cacheKeyOf } from '../../src/cache/canonical.js';
import type { ChatRequest } from '../../src/proxy/chat-request.js';

/** The same value with every object's keys in a shuffled order (seeded by `seed`). */
function shuffled(v: unknown, seed: number): unknown {
  if (Array.isArray(v)) return v.map((x, i) => shuffled(x, seed + i));
  if (v === null || typeof v !== 'object') return v;
  const entries = Object.entries(v);
  let s = seed;
  for (let i = entries.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const j = s % (i + 1);
    [entries[i], entries[j]] = [entries[j]!, entries[i]!];
  }
  return Object.fromEntries(entries.map(([k, x]) => [k, shuffled(x, s + k.length)]));
}

const request = fc.record({
  messages: fc.array(
    fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 24 }),
    {
      maxLength: 4,
    },
  ),
  temperature: fc.double({ noNaN: true, noDefaultInfinity: true }),
  extra: fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 24 }),
});

it('gives the same key whatever the order of keys, at every depth, small objects and large', () => {
  fc.assert(
    fc.property(request, fc.nat(), (req, seed) => {
      const a = cacheKeyOf('gpt-4.1-mini', req as unknown as ChatRequest);
      const b = cacheKeyOf('gpt-4.1-mini', shuffled(req, seed) as ChatRequest);
      expect(b).toBe(a);
    }),
    { numRuns: 500 },
  );
});

it('gives different keys to requests that differ in a value or a key', () => {
  const base = { messages: [{ role: 'user', content: 'hi', name: 'a' }], max_tokens: 5 };
  const key = (r: object) => cacheKeyOf('gpt-4.1-mini', r as ChatRequest);
  expect(key({ ...base, max_tokens: 6 })).not.toBe(key(base));
  expect(key({ ...base, messages: [{ role: 'user', content: 'hi', nam: 'a' }] })).not.toBe(key(base));
  expect(key({ ...base, messages: [{ content: 'hi', name: 'a', role: 'user' }] })).toBe(key(base));
  expect(cacheKeyOf('other-model', base as ChatRequest)).not.toBe(key(base));
});
