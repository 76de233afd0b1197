import type { Readable } from 'node:stream';

/** What `readStream` rejects with when more than its limit has arrived. */
export class StreamTooLarge extends Error {
  constructor(readonly limit: number) {
    super(`more than ${limit} bytes`);
  }
}

/**
 * A stream's whole content, read in flowing mode (an async iterator would cost a promise and a
 * read() per chunk). Rejects as soon as more than `limit` bytes have arrived (StreamTooLarge; the
 * stream is paused and the rest left unread), with the stream's own error, or when it closes
 * before its end.
 */
export function readStream(stream: Readable, limit = Number.POSITIVE_INFINITY): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err: Error | null): void => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.off('close', onClose);
      if (err) reject(err);
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        stream.pause();
        done(new StreamTooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => done(null);
    const onError = (err: Error): void => done(err);
    const onClose = (): void => {
      if (!stream.readableEnded) done(new Error('the connection closed before the end of the body'));
    };
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.on('close', onClose);
  });
}
