/** Circuit states as exported in `tollgate_circuit_state`. */
export const CircuitState = { closed: 0, halfOpen: 1, open: 2 } as const;
export type CircuitStateValue = (typeof CircuitState)[keyof typeof CircuitState];

/**
 * Per-upstream, per-instance breaker: `threshold` consecutive failures open it for `cooldownMs`;
 * after that exactly one probe request is let through, and its outcome closes or re-opens it.
 */
export class CircuitBreaker {
  private failures = 0;
  private openUntil = 0;
  private probing = false;

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly onChange: (state: CircuitStateValue) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  get state(): CircuitStateValue {
    if (this.openUntil === 0) return CircuitState.closed;
    return this.probing || this.now() >= this.openUntil ? CircuitState.halfOpen : CircuitState.open;
  }

  /** Whether a request may go to this upstream now; claims the probe slot when half-open. */
  tryAcquire(): boolean {
    if (this.openUntil === 0) return true;
    if (this.probing || this.now() < this.openUntil) return false;
    this.probing = true;
    this.onChange(CircuitState.halfOpen);
    return true;
  }

  /** Whether a request could go there, without claiming anything (for ordering). */
  available(): boolean {
    return this.openUntil === 0 || (!this.probing && this.now() >= this.openUntil);
  }

  success(): void {
    const wasOpen = this.openUntil !== 0;
    this.failures = 0;
    this.openUntil = 0;
    this.probing = false;
    if (wasOpen) this.onChange(CircuitState.closed);
  }

  failure(): void {
    this.failures++;
    if (this.probing || this.failures >= this.threshold) {
      this.probing = false;
      this.openUntil = this.now() + this.cooldownMs;
      this.onChange(CircuitState.open);
    }
  }

  /** A probe that ended without a verdict (e.g. the client left) frees the probe slot. */
  release(): void {
    this.probing = false;
  }
}
