/**
 * A leader's stream as it arrives, for the waiters of the same miss in this instance: the SSE
 * parts so far (a late joiner replays them) and then each new part, until the end.
 */
export class LiveFeed {
  private readonly parts: Buffer[] = [];
  private readonly subscribers = new Set<(part: Buffer | null) => void>();
  private closed = false;
  private markStarted!: () => void;
  /** Resolves when the leader relays its first stream part (never, for a JSON leader). */
  readonly started = new Promise<void>((r) => {
    this.markStarted = r;
  });

  push(part: Buffer): void {
    if (this.closed) return;
    if (this.parts.length === 0) this.markStarted();
    this.parts.push(part);
    for (const s of this.subscribers) s(part);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.subscribers) s(null);
    this.subscribers.clear();
  }

  /** Replays what has arrived, then follows live; `null` marks the end. Returns the unsubscribe. */
  follow(listener: (part: Buffer | null) => void): () => void {
    for (const p of this.parts) listener(p);
    if (this.closed) {
      listener(null);
      return () => {};
    }
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  }
}
