/**
 * A request's cancellation, in place of AbortController + AbortSignal: those are EventTargets,
 * whose creation and listener bookkeeping cost more per request than the rest of the upstream
 * call's set-up. undici takes any signal with `aborted`, `reason` and EventEmitter-style
 * `on`/`once`/`removeListener('abort', …)`, which is all this is.
 */
export class Cancel {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] | null = null;

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason ?? new DOMException('This operation was aborted', 'AbortError');
    const listeners = this.listeners;
    this.listeners = null;
    if (listeners) for (const l of listeners) l();
  }

  /** Calls `listener` once, when (if ever) this is aborted. */
  once(_event: 'abort', listener: () => void): void {
    if (this.listeners) this.listeners.push(listener);
    else this.listeners = [listener];
  }

  /** Abort happens at most once, so `on` is `once` (undici checks that `on` exists). */
  on(event: 'abort', listener: () => void): void {
    this.once(event, listener);
  }

  removeListener(_event: 'abort', listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i >= 0) this.listeners!.splice(i, 1);
  }
}
