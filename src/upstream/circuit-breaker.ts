/** Circuit states as exported in `tollgate_circuit_state`. */
export const CircuitState = { closed: 0, halfOpen: 1, open: 2 } as const;
export type CircuitStateValue = (typeof CircuitState)[keyof typeof CircuitState];

/** What `tryAcquire` hands out: the outcome of that request is reported with it. */
export interface Permit {
  /** This request is the one probe of a half-open circuit: its outcome decides. */
  readonly probe: boolean;
}

const PLAIN: Permit = Object.freeze({ probe: false });

/**
 * Per-upstream, per-instance breaker: `threshold` consecutive failures open it for `cooldownMs`;
 * after that exactly one probe request is let through, and its outcome closes or re-opens it.
 * While the circuit is open or half-open only the probe decides: outcomes of requests that were
 * already running when it opened neither close it, re-open it nor free the probe slot.
 */
export class CircuitBreaker {
  private failures = 0;
  private openUntil = 0;
  private probe: Permit | null = null;
  private probeSince = 0;

  constructor(
    private readonly threshold: number,
    private readonly cooldownMs: number,
    private readonly onChange: (state: CircuitStateValue) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  get state(): CircuitStateValue {
    if (this.openUntil === 0) return CircuitState.closed;
    return this.probe || this.now() >= this.openUntil ? CircuitState.halfOpen : CircuitState.open;
  }

  /**
   * A permit when a request may go to this upstream now (claiming the probe slot when the
   * cooldown has passed), else null. Report its outcome with success/failure/release.
   */
  tryAcquire(): Permit | null {
    if (this.openUntil === 0) return PLAIN;
    if (!this.probeFree()) return null;
    this.probe = { probe: true };
    this.probeSince = this.now();
    this.onChange(CircuitState.halfOpen);
    return this.probe;
  }

  /** Whether a request could go there, without claiming anything (for ordering). */
  available(): boolean {
    return this.openUntil === 0 || this.probeFree();
  }

  success(permit: Permit = PLAIN): void {
    if (this.openUntil !== 0) {
      if (permit !== this.probe) return;
      this.probe = null;
      this.openUntil = 0;
      this.failures = 0;
      this.onChange(CircuitState.closed);
      return;
    }
    this.failures = 0;
  }

  failure(permit: Permit = PLAIN): void {
    if (this.openUntil !== 0) {
      if (permit !== this.probe) return;
      this.probe = null;
      this.open();
      return;
    }
    if (++this.failures >= this.threshold) this.open();
  }

  /** An attempt that ended without a verdict (the client left, a 429): frees the probe slot if it held it. */
  release(permit: Permit = PLAIN): void {
    if (permit === this.probe) this.probe = null;
  }

  private open(): void {
    this.openUntil = this.now() + this.cooldownMs;
    this.onChange(CircuitState.open);
  }

  /**
   * The cooldown has passed and no probe is running. A probe that never reported within a
   * further cooldown (a bug elsewhere) no longer blocks the upstream for good.
   */
  private probeFree(): boolean {
    const now = this.now();
    if (now < this.openUntil) return false;
    return this.probe === null || now - this.probeSince >= Math.max(this.cooldownMs, 60_000);
  }
}
