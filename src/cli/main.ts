#!/usr/bin/env node
import { run } from './run.js';

// The `tollgate` executable (package `bin`). The exit code is set, not forced, so `serve` keeps
// running and piped output is flushed.

process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  // `tollgate keys list | head`: the reader went away, which is not a failure.
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

process.exitCode = await run(process.argv.slice(2));
