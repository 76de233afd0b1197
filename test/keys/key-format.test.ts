import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  generateKey,
  hashKey,
  isWellFormedKey,
  KEY_LENGTH,
  keyPrefix,
  safeEqual,
} from '../../src/auth/key-format.js';

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

describe('key format', () => {
  it('generates sk-tg- + 38 base62 characters, all distinct', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const k = generateKey();
      expect(k).toMatch(/^sk-tg-[0-9A-Za-z]{38}$/);
      expect(k).toHaveLength(KEY_LENGTH);
      expect(isWellFormedKey(k)).toBe(true);
      seen.add(k);
    }
    expect(seen.size).toBe(500);
  });

  it('uses every base62 character in the random part', () => {
    const chars = new Set<string>();
    for (let i = 0; i < 300; i++) for (const ch of generateKey().slice(6, 38)) chars.add(ch);
    expect(chars.size).toBe(62);
  });

  it('refuses any one-character change, in the body or in the checksum', () => {
    const k = generateKey();
    for (let pos = 6; pos < k.length; pos++) {
      const orig = k[pos]!;
      const repl = ALPHABET[(ALPHABET.indexOf(orig) + 1 + pos) % 62]!;
      const changed = k.slice(0, pos) + repl + k.slice(pos + 1);
      expect(changed).not.toBe(k);
      expect(isWellFormedKey(changed), `change at ${pos}`).toBe(false);
    }
  });

  it('refuses wrong shapes', () => {
    const k = generateKey();
    expect(isWellFormedKey('')).toBe(false);
    expect(isWellFormedKey(k.slice(0, -1))).toBe(false);
    expect(isWellFormedKey(`${k}a`)).toBe(false);
    expect(isWellFormedKey(k.replace('sk-tg-', 'sk-xx-'))).toBe(false);
    expect(isWellFormedKey(`${k.slice(0, 10)}-${k.slice(11)}`)).toBe(false);
    expect(isWellFormedKey(`sk-tg-${'a'.repeat(38)}`)).toBe(false);
    expect(isWellFormedKey(` ${k.slice(1)}`)).toBe(false);
  });

  it('hashes with SHA-256 as lowercase hex', () => {
    const k = generateKey();
    const h = hashKey(k);
    expect(h).toMatch(/^[0-9a-f]{64}$/);
    expect(h).toBe(createHash('sha256').update(k).digest('hex'));
    expect(hashKey('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('shows the first 12 characters as the prefix', () => {
    const k = generateKey();
    expect(keyPrefix(k)).toBe(k.slice(0, 12));
    expect(keyPrefix(k)).toHaveLength(12);
  });

  it('compares secrets safely, whatever their lengths', () => {
    expect(safeEqual('secret', 'secret')).toBe(true);
    expect(safeEqual('secret', 'secreT')).toBe(false);
    expect(safeEqual('secret', 'secret-longer')).toBe(false);
    expect(safeEqual('', '')).toBe(true);
    expect(safeEqual('', 'x')).toBe(false);
  });
});
