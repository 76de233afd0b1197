/**
 * A leader's stream as it arrives, for the waiters of the same miss in this instance: the SSE
 * parts so far (a late joiner replays them) and then each new part, until the end. Most misses
 * are never followed, so the subscriber set and the `started` promise are made on first use.
 */
export class LiveFeed {
  private readonly parts: Buffer[] = [];
  private subscribers: Set<(part: Buffer | null) => void> | null = null;
  private closed = false;
  private startedPromise: Promise<void> | null = null;
  private markStarted: (() => void) | null = null;

  /** Resolves when the leader relays its first stream part (never, for a JSON leader). */
  get started(): Promise<void> {
    if (this.startedPromise === null) {
      this.startedPromise =
        this.parts.length > 0
          ? Promise.resolve()
          : new Promise<void>((r) => {
              this.markStarted = r;
            });
    }
    return this.startedPromise;
  }

  push(part: Buffer): void {
    if (this.closed) return;
    if (this.parts.length === 0) this.markStarted?.();
    this.parts.push(part);
    if (this.subscribers) for (const s of this.subscribers) s(part);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.subscribers) for (const s of this.subscribers) s(null);
    this.subscribers = null;
  }

  /** Replays what has arrived, then follows live; `null` marks the end. Returns the unsubscribe. */
  follow(listener: (part: Buffer | null) => void): () => void {
    for (const p of this.parts) listener(p);
    if (this.closed) {
      listener(null);
      return () => {};
    }
    this.subscribers ??= new Set();
    const subscribers = this.subscribers;
    subscribers.add(listener);
    return () => subscribers.delete(listener);
  }
}
