import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';

/*
 * Counts o200k_base tokens exactly as gpt-tokenizer's `countTokens` does (special tokens as
 * ordinary text), in ~4 MB instead of
 * its ~60 MB: the 200k token byte strings sit in one Uint8Array, found through an
 * open-addressing hash table over their bytes, so lookups compare bytes and allocate nothing.
 * The table is read from gpt-tokenizer's own copy of o200k_base.tiktoken.
 */

/** The pre-tokenizer: gpt-tokenizer's O200K_TOKEN_SPLIT_REGEX, character for character (a test compares them). */
export const O200K_SPLIT =
  /[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'(?:[sS]|[dD]|[mM]|[tT]|[lL][lL]|[vV][eE]|[rR][eE]))?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'(?:[sS]|[dD]|[mM]|[tT]|[lL][lL]|[vV][eE]|[rR][eE]))?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;

const NONE = 0x7fffffff;
const SLOTS = 1 << 19; // 200k tokens at 38 % load: short probe runs
const MASK = SLOTS - 1;

let bytes: Uint8Array;
let offsets: Uint32Array; // token `rank` is bytes[offsets[rank] .. offsets[rank + 1])
let slots: Int32Array; // rank, or -1 for an empty slot
let loaded = false;

// Scratch space, reused: the UTF-8 of the current piece and its BPE partition.
let utf8 = new Uint8Array(1024);
let starts = new Int32Array(1025);
let ranks = new Int32Array(1025);

/** Reads the token table now (synchronously, once); counting does so itself when needed. */
export function loadO200k(): void {
  if (loaded) return;
  const file = tablePath();
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (err) {
    throw new Error(`o200k token table unreadable at ${file}: ${(err as Error).message}`);
  }
  parse(data, file);
  loaded = true;
}

/**
 * Tokens of `text` under o200k_base. Text that spells a special token (`<|endoftext|>`) is
 * counted as the ordinary text it is in a chat message (tiktoken's encode_ordinary).
 */
export function countO200k(text: string): number {
  if (!loaded) loadO200k();
  let n = 0;
  let at = 0;
  STICKY.lastIndex = 0;
  while (at < text.length) {
    // Every character belongs to some alternative of the pattern, so pieces follow each other;
    // were one skipped, the search goes on from there as the global pattern's would.
    if (!STICKY.test(text)) return n + countFrom(text, at);
    n += countPiece(text, at, STICKY.lastIndex);
    at = STICKY.lastIndex;
  }
  return n;
}

// The split pattern anchored where the last piece ended: `test` finds the next piece without
// building a match array or a substring.
const STICKY = new RegExp(O200K_SPLIT.source, 'uy');

function countFrom(text: string, at: number): number {
  let n = 0;
  O200K_SPLIT.lastIndex = at;
  for (let m = O200K_SPLIT.exec(text); m !== null; m = O200K_SPLIT.exec(text)) {
    n += countPiece(text, m.index, m.index + m[0].length);
  }
  return n;
}

/** Tokens of the piece text[from .. to). */
function countPiece(text: string, from: number, to: number): number {
  const len = encodeUtf8(text, from, to);
  if (len < 0) return mergeCount(-len); // lone surrogates: no whole-piece shortcut, see below
  if (len === 1) return 1;
  // gpt-tokenizer looks the whole piece up by its string, which never finds a token that
  // starts with a byte order mark (those are stored as bytes).
  if (!startsWithBom(0, len) && lookup(0, len) >= 0) return 1;
  return mergeCount(len);
}

/**
 * The byte-pair merge of utf8[0 .. len): repeatedly merges the adjacent pair of lowest rank
 * (leftmost on a tie), as tiktoken and gpt-tokenizer do; returns the number of parts left.
 */
function mergeCount(len: number): number {
  if (starts.length <= len) {
    starts = new Int32Array(len * 2 + 1);
    ranks = new Int32Array(len * 2 + 1);
  }
  for (let i = 0; i <= len; i++) {
    starts[i] = i;
    ranks[i] = i + 2 <= len ? rankOf(i, i + 2) : NONE;
  }
  let count = len + 1;
  while (count > 1) {
    let min = NONE;
    let at = -1;
    for (let i = 0; i < count - 1; i++) {
      if (ranks[i]! < min) {
        min = ranks[i]!;
        at = i;
      }
    }
    if (at < 0) break;
    count--;
    for (let i = at + 1; i < count; i++) starts[i] = starts[i + 1]!;
    for (let i = at; i < count; i++) ranks[i] = ranks[i + 1]!;
    ranks[at] = at + 2 < count ? rankOf(starts[at]!, starts[at + 2]!) : NONE;
    if (at > 0) ranks[at - 1] = rankOf(starts[at - 1]!, starts[at + 1]!);
  }
  return count - 1;
}

/**
 * The rank gpt-tokenizer finds for utf8[from .. to) while merging. It turns valid UTF-8 into a
 * string with a TextDecoder, which drops a leading byte order mark: such a range gets the rank
 * of the rest (if the rest is a token stored as a string), never that of the BOM token itself.
 */
function rankOf(from: number, to: number): number {
  if (startsWithBom(from, to) && isValidUtf8(from, to)) {
    const rest = from + 3;
    if (rest === to || startsWithBom(rest, to)) return NONE;
    const r = lookup(rest, to);
    return r < 0 ? NONE : r;
  }
  const r = lookup(from, to);
  return r < 0 ? NONE : r;
}

function startsWithBom(from: number, to: number): boolean {
  return to - from >= 3 && utf8[from] === 0xef && utf8[from + 1] === 0xbb && utf8[from + 2] === 0xbf;
}

/** Rank of the token whose bytes are utf8[from .. to), or -1. */
function lookup(from: number, to: number): number {
  const len = to - from;
  for (let s = hash(utf8, from, to) & MASK; ; s = (s + 1) & MASK) {
    const rank = slots[s]!;
    if (rank < 0) return -1;
    const at = offsets[rank]!;
    if (offsets[rank + 1]! - at !== len) continue;
    let i = 0;
    while (i < len && bytes[at + i] === utf8[from + i]) i++;
    if (i === len) return rank;
  }
}

/** FNV-1a with a final avalanche, so the low bits used as the slot index are well mixed. */
function hash(buf: Uint8Array, from: number, to: number): number {
  let h = 0x811c9dc5;
  for (let i = from; i < to; i++) h = Math.imul(h ^ buf[i]!, 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h >>> 0;
}

/**
 * Writes `s` as UTF-8 into `utf8` and returns its length, negated if `s` holds a lone
 * surrogate (written as U+FFFD, as TextEncoder does). Such a piece never matches a token by
 * its string in gpt-tokenizer, so it is always merged.
 */
function encodeUtf8(s: string, from: number, to: number): number {
  if (utf8.length < (to - from) * 3) utf8 = new Uint8Array((to - from) * 6);
  const out = utf8;
  let n = 0;
  let lone = false;
  for (let i = from; i < to; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out[n++] = c;
      continue;
    }
    if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 0x3f);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < to ? s.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
        out[n++] = 0xf0 | (cp >> 18);
        out[n++] = 0x80 | ((cp >> 12) & 0x3f);
        out[n++] = 0x80 | ((cp >> 6) & 0x3f);
        out[n++] = 0x80 | (cp & 0x3f);
        continue;
      }
      lone = true;
      c = 0xfffd;
    }
    out[n++] = 0xe0 | (c >> 12);
    out[n++] = 0x80 | ((c >> 6) & 0x3f);
    out[n++] = 0x80 | (c & 0x3f);
  }
  return lone ? -n : n;
}

/** gpt-tokenizer's isValidUTF8, which decides whether it looks a range up as a string. */
function isValidUtf8(from: number, to: number): boolean {
  let i = from;
  while (i < to) {
    const b = utf8[i]!;
    let size: number;
    let cp: number;
    if (b <= 0x7f) {
      i++;
      continue;
    } else if ((b & 0xe0) === 0xc0) {
      if (b <= 0xc1) return false;
      size = 2;
      cp = b & 0x1f;
    } else if ((b & 0xf0) === 0xe0) {
      size = 3;
      cp = b & 0x0f;
    } else if ((b & 0xf8) === 0xf0) {
      if (b > 0xf4) return false;
      size = 4;
      cp = b & 0x07;
    } else return false;
    if (i + size > to) return false;
    for (let j = 1; j < size; j++) {
      const cont = utf8[i + j]!;
      if ((cont & 0xc0) !== 0x80) return false;
      cp = (cp << 6) | (cont & 0x3f);
    }
    if (cp < (size === 2 ? 0x80 : size === 3 ? 0x800 : 0x10000)) return false;
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return false;
    i += size;
  }
  return true;
}

/** gpt-tokenizer's data/o200k_base.tiktoken, found from wherever the package is installed. */
function tablePath(): string {
  let main: string;
  try {
    main = createRequire(import.meta.url).resolve('gpt-tokenizer');
  } catch (err) {
    throw new Error(`o200k token table: package gpt-tokenizer not found (${(err as Error).message})`);
  }
  // main is <root>/cjs/main.js, and cjs/ has a package.json of the same name: the root is the
  // nearest directory up that holds the data.
  let dir = dirname(main);
  while (basename(dir) !== 'node_modules' && dir !== dirname(dir)) {
    const file = join(dir, 'data', 'o200k_base.tiktoken');
    if (existsSync(file)) return file;
    dir = dirname(dir);
  }
  throw new Error(`o200k token table: no data/o200k_base.tiktoken in the gpt-tokenizer package (${main})`);
}

const B64 = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) {
  B64['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(i)] = i;
}

/**
 * Parses lines `<base64 bytes> <rank>` in three passes over the file's bytes (highest rank,
 * sizes, then base64 decoded straight into the one buffer), so no string is made per line.
 */
function parse(data: Buffer, file: string): void {
  const bad = (at: number): Error => new Error(`o200k token table ${file}: malformed at byte ${at}`);
  let maxRank = -1;
  for (let at = 0; at < data.length; ) {
    const line = parseLine(data, at, bad);
    if (line.rank > maxRank) maxRank = line.rank;
    at = line.next;
  }
  if (maxRank < 0) throw new Error(`o200k token table ${file}: empty`);
  const ends = new Uint32Array(maxRank + 2); // first each token's length at rank + 1, then ends
  for (let at = 0; at < data.length; ) {
    const line = parseLine(data, at, bad);
    if (ends[line.rank + 1] !== 0) throw new Error(`o200k token table ${file}: rank ${line.rank} twice`);
    ends[line.rank + 1] = decodedLength(data, line.start, line.end);
    at = line.next;
  }
  for (let r = 1; r < ends.length; r++) ends[r]! += ends[r - 1]!;
  offsets = ends;
  bytes = new Uint8Array(ends[maxRank + 1]!);
  slots = new Int32Array(SLOTS).fill(-1);
  for (let at = 0; at < data.length; ) {
    const line = parseLine(data, at, bad);
    decodeBase64(data, line.start, line.end, offsets[line.rank]!, bad);
    const from = offsets[line.rank]!;
    let s = hash(bytes, from, offsets[line.rank + 1]!) & MASK;
    while (slots[s]! >= 0) s = (s + 1) & MASK;
    slots[s] = line.rank;
    at = line.next;
  }
}

const cursor = { start: 0, end: 0, rank: 0, next: 0 };

/** The line at `at`: where its base64 starts and ends, its rank, where the next line starts. */
function parseLine(data: Buffer, at: number, bad: (at: number) => Error): typeof cursor {
  let i = at;
  while (i < data.length && data[i] !== 0x20) i++;
  if (i === at || i === data.length) throw bad(at);
  cursor.start = at;
  cursor.end = i;
  const from = ++i;
  let rank = 0;
  for (; i < data.length && data[i] !== 0x0a && data[i] !== 0x0d; i++) {
    const d = data[i]! - 0x30;
    if (d < 0 || d > 9) throw bad(i);
    rank = rank * 10 + d;
  }
  if (i === from) throw bad(i);
  if (data[i] === 0x0d) i++;
  cursor.rank = rank;
  cursor.next = i + 1;
  return cursor;
}

function decodedLength(data: Buffer, start: number, end: number): number {
  let pad = 0;
  while (pad < 2 && end - pad > start && data[end - pad - 1] === 0x3d) pad++;
  return (((end - start) * 3) >> 2) - pad;
}

function decodeBase64(
  data: Buffer,
  start: number,
  end: number,
  to: number,
  bad: (at: number) => Error,
): void {
  let acc = 0;
  let bits = 0;
  for (let i = start; i < end; i++) {
    const c = data[i]!;
    if (c === 0x3d) break;
    const v = c < 128 ? B64[c]! : -1;
    if (v < 0) throw bad(i);
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes[to++] = (acc >> bits) & 0xff;
    }
  }
}
