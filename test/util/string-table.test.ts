import { describe, expect, it } from 'vitest';
import { StringTable } from '../../src/util/string-table.js';

describe('StringTable', () => {
  it('stores, replaces, deletes and lists entries by string key', () => {
    const t = new StringTable<number>();
    expect(t.get('a')).toBeUndefined();
    t.set('a', 1);
    t.set('b', 2);
    t.set('a', 3);
    expect(t.get('a')).toBe(3);
    expect(t.entries().sort()).toEqual([
      ['a', 3],
      ['b', 2],
    ]);
    t.delete('a');
    expect(t.get('a')).toBeUndefined();
    expect(t.values()).toEqual([2]);
    t.clear();
    expect(t.values()).toEqual([]);
  });

  it('treats keys that look special to objects as ordinary keys', () => {
    const t = new StringTable<string>();
    for (const k of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', '0', '42', '']) {
      expect(t.get(k)).toBeUndefined();
      t.set(k, `v${k}`);
      expect(t.get(k)).toBe(`v${k}`);
    }
    expect(t.entries()).toHaveLength(7);
    t.delete('__proto__');
    expect(t.get('__proto__')).toBeUndefined();
    expect(t.get('constructor')).toBe('vconstructor');
  });

  it('keeps up with entries that come and go by the thousand', () => {
    const t = new StringTable<{ n: number }>();
    for (let i = 0; i < 50_000; i++) {
      t.set(`flight:${i}`, { n: i });
      if (i >= 3) t.delete(`flight:${i - 3}`);
    }
    expect(t.entries().map(([k, v]) => [k, v.n])).toEqual([
      ['flight:49997', 49997],
      ['flight:49998', 49998],
      ['flight:49999', 49999],
    ]);
  });
});
