import { createHash, hash, randomBytes, timingSafeEqual } from 'node:crypto';

// Keys look like `sk-tg-` + 32 base62 characters + a 6-character base62 checksum of those 32.
// The checksum lets a mistyped or made-up key be refused without touching any store.

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const PREFIX = 'sk-tg-';
const BODY_LEN = 32;
const CHECK_LEN = 6;
export const KEY_LENGTH = PREFIX.length + BODY_LEN + CHECK_LEN;
const SHAPE = /^sk-tg-[0-9A-Za-z]{38}$/;

function checksum(body: string): string {
  const digest = hash('sha256', body, 'buffer');
  let n = digest.readUIntBE(0, 6);
  let out = '';
  for (let i = 0; i < CHECK_LEN; i++) {
    out += ALPHABET[n % 62];
    n = Math.floor(n / 62);
  }
  return out;
}

/** A new random secret in the tollgate key format. */
export function generateKey(): string {
  // Rejection sampling keeps every character uniformly distributed over the 62 symbols.
  let body = '';
  while (body.length < BODY_LEN) {
    for (const b of randomBytes(48)) {
      if (b < 248 && body.length < BODY_LEN) body += ALPHABET[b % 62];
    }
  }
  return PREFIX + body + checksum(body);
}

/** True when the string has the key shape and a valid checksum. */
export function isWellFormedKey(key: string): boolean {
  return hasKeyShape(key) && hasValidChecksum(key);
}

/** The key's length and alphabet, without the checksum. */
export function hasKeyShape(key: string): boolean {
  return key.length === KEY_LENGTH && SHAPE.test(key);
}

/** Whether a string of the key's shape carries the checksum of its body. */
export function hasValidChecksum(key: string): boolean {
  const body = key.slice(PREFIX.length, PREFIX.length + BODY_LEN);
  return checksum(body) === key.slice(PREFIX.length + BODY_LEN);
}

/** The only form in which a key is stored: lowercase hex SHA-256 of the whole secret. */
export function hashKey(key: string): string {
  return hash('sha256', key, 'hex');
}

/** The first 12 characters, shown in listings so people can tell keys apart. */
export const keyPrefix = (key: string): string => key.slice(0, 12);

/** Constant-time comparison of two secrets (lengths may differ). */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}
