/**
 * Calls `stop` on the first SIGTERM or SIGINT, and `force` on a second one. A repeat within a
 * second is the same request, not a second one: a single Ctrl-C under `npm start` or
 * `npm run demo` reaches the process twice, from the terminal (the whole process group) and
 * relayed by npm or tsx, and must not cut the drain short.
 */
export function onStopSignals(stop: (signal: string) => void, force: (signal: string) => void): void {
  let first = 0;
  const handle = (signal: string): void => {
    const now = Date.now();
    if (first === 0) {
      first = now;
      stop(signal);
    } else if (now - first >= REPEAT_MS) {
      force(signal);
    }
  };
  process.on('SIGTERM', () => handle('SIGTERM'));
  process.on('SIGINT', () => handle('SIGINT'));
}

const REPEAT_MS = 1000;
