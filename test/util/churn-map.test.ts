import { describe, expect, it } from 'vitest';
import { ChurnMap } from '../../src/util/churn-map.js';

describe('ChurnMap', () => {
  it('stores, replaces, deletes and lists entries', () => {
    const m = new ChurnMap<string, number>();
    expect(m.get('a')).toBeUndefined();
    m.set('a', 1);
    m.set('b', 2);
    m.set('a', 3);
    expect(m.get('a')).toBe(3);
    expect(m.entries()).toEqual([
      ['a', 3],
      ['b', 2],
    ]);
    m.delete('a');
    m.delete('missing');
    expect(m.get('a')).toBeUndefined();
    expect(m.values()).toEqual([2]);
    m.set('a', 4);
    expect(m.entries()).toEqual([
      ['b', 2],
      ['a', 4],
    ]);
    m.clear();
    expect(m.values()).toEqual([]);
    expect(m.get('b')).toBeUndefined();
  });

  it('takes object keys, and an entry re-added after removal starts afresh', () => {
    const k1 = {};
    const k2 = {};
    const m = new ChurnMap<object, string>();
    m.set(k1, 'one');
    m.set(k2, 'two');
    m.delete(k1);
    expect(m.get(k1)).toBeUndefined();
    expect(m.get(k2)).toBe('two');
    m.set(k1, 'again');
    expect(m.get(k1)).toBe('again');
  });

  it('keeps up with entries that come and go by the thousand', () => {
    const m = new ChurnMap<string, { n: number }>();
    for (let i = 0; i < 50_000; i++) {
      m.set(`flight:${i}`, { n: i });
      if (i >= 3) m.delete(`flight:${i - 3}`);
    }
    expect(m.entries().map(([k, v]) => [k, v.n])).toEqual([
      ['flight:49997', 49997],
      ['flight:49998', 49998],
      ['flight:49999', 49999],
    ]);
  });
});
