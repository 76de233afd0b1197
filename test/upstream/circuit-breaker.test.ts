import { describe, expect, it } from 'vitest';
import { CircuitBreaker, CircuitState, type CircuitStateValue } from '../../src/upstream/circuit-breaker.js';

// The breaker on a fake clock: threshold 3, cooldown 1 s.

function setup(threshold = 3, cooldownMs = 1000) {
  const clock = { now: 1_000_000 };
  const changes: CircuitStateValue[] = [];
  const breaker = new CircuitBreaker(
    threshold,
    cooldownMs,
    (s) => changes.push(s),
    () => clock.now,
  );
  return { breaker, clock, changes };
}

/** Opens the breaker with `n` failed plain requests. */
function fail(breaker: CircuitBreaker, n: number): void {
  for (let i = 0; i < n; i++) breaker.failure(breaker.tryAcquire()!);
}

describe('CircuitBreaker', () => {
  it('opens after threshold consecutive failures, not before', () => {
    const { breaker, changes } = setup();
    fail(breaker, 2);
    expect(breaker.state).toBe(CircuitState.closed);
    expect(breaker.available()).toBe(true);
    fail(breaker, 1);
    expect(breaker.state).toBe(CircuitState.open);
    expect(breaker.available()).toBe(false);
    expect(breaker.tryAcquire()).toBeNull();
    expect(changes).toEqual([CircuitState.open]);
  });

  it('counts consecutive failures only: a success in between starts again', () => {
    const { breaker } = setup();
    fail(breaker, 2);
    breaker.success(breaker.tryAcquire()!);
    fail(breaker, 2);
    expect(breaker.state).toBe(CircuitState.closed);
    fail(breaker, 1);
    expect(breaker.state).toBe(CircuitState.open);
  });

  it('lets exactly one probe through after the cooldown; its success closes the circuit', () => {
    const { breaker, clock, changes } = setup();
    fail(breaker, 3);
    clock.now += 999;
    expect(breaker.tryAcquire()).toBeNull();
    clock.now += 1;
    expect(breaker.available()).toBe(true);
    const probe = breaker.tryAcquire();
    expect(probe?.probe).toBe(true);
    expect(breaker.state).toBe(CircuitState.halfOpen);
    // Everyone else waits for the probe's verdict.
    for (let i = 0; i < 10; i++) expect(breaker.tryAcquire()).toBeNull();
    expect(breaker.available()).toBe(false);
    breaker.success(probe!);
    expect(breaker.state).toBe(CircuitState.closed);
    expect(breaker.tryAcquire()?.probe).toBe(false);
    expect(changes).toEqual([CircuitState.open, CircuitState.halfOpen, CircuitState.closed]);
  });

  it('re-opens for another cooldown when the probe fails', () => {
    const { breaker, clock, changes } = setup();
    fail(breaker, 3);
    clock.now += 1000;
    breaker.failure(breaker.tryAcquire()!);
    expect(breaker.state).toBe(CircuitState.open);
    clock.now += 999;
    expect(breaker.tryAcquire()).toBeNull();
    clock.now += 1;
    const probe = breaker.tryAcquire()!;
    expect(probe.probe).toBe(true);
    breaker.success(probe);
    expect(changes).toEqual([
      CircuitState.open,
      CircuitState.halfOpen,
      CircuitState.open,
      CircuitState.halfOpen,
      CircuitState.closed,
    ]);
  });

  it('frees the probe slot when the probe ends without a verdict', () => {
    const { breaker, clock } = setup();
    fail(breaker, 3);
    clock.now += 1000;
    const probe = breaker.tryAcquire()!;
    breaker.release(probe);
    expect(breaker.state).toBe(CircuitState.halfOpen);
    const next = breaker.tryAcquire();
    expect(next?.probe).toBe(true);
  });

  it('ignores requests that were already running when it opened: only the probe decides', () => {
    const { breaker, clock, changes } = setup();
    // Five requests go out while the circuit is closed.
    const old = Array.from({ length: 5 }, () => breaker.tryAcquire()!);
    for (const p of old.slice(0, 3)) breaker.failure(p);
    expect(breaker.state).toBe(CircuitState.open);
    clock.now += 1000;
    const probe = breaker.tryAcquire()!;
    expect(probe.probe).toBe(true);
    // A stale release must not free the probe slot (that would let a second probe through),
    // a stale failure must not re-open it, a stale success must not close it.
    breaker.release(old[3]!);
    expect(breaker.tryAcquire()).toBeNull();
    breaker.failure(old[3]!);
    breaker.success(old[4]!);
    expect(breaker.state).toBe(CircuitState.halfOpen);
    expect(breaker.tryAcquire()).toBeNull();
    breaker.success(probe);
    expect(breaker.state).toBe(CircuitState.closed);
    expect(changes).toEqual([CircuitState.open, CircuitState.halfOpen, CircuitState.closed]);
  });

  it('does not extend the cooldown with failures of requests already running', () => {
    const { breaker, clock } = setup();
    const old = Array.from({ length: 4 }, () => breaker.tryAcquire()!);
    for (const p of old.slice(0, 3)) breaker.failure(p);
    clock.now += 900;
    breaker.failure(old[3]!);
    clock.now += 100;
    expect(breaker.tryAcquire()?.probe).toBe(true);
  });

  it('lets a new probe through when the last one never reported (a lost verdict cannot block it for good)', () => {
    const { breaker, clock } = setup(3, 1000);
    fail(breaker, 3);
    clock.now += 1000;
    const lost = breaker.tryAcquire()!;
    clock.now += 59_999;
    expect(breaker.tryAcquire()).toBeNull();
    clock.now += 1;
    const probe = breaker.tryAcquire()!;
    expect(probe.probe).toBe(true);
    // The lost probe's late verdict no longer counts.
    breaker.failure(lost);
    expect(breaker.state).toBe(CircuitState.halfOpen);
    breaker.success(probe);
    expect(breaker.state).toBe(CircuitState.closed);
  });
});
