// The benchmark harness, shared by `npm run bench` (run.ts, variants.ts) and `npm run soak` (soak.ts):
//   harness/process.ts  child processes and their cleanup, free ports, environment, tables
//   harness/gateway.ts  mock upstream and minimal proxy, Redis, the gateway from a config object, keys
//   harness/measure.ts  /proc CPU time and RSS, wrk runs, streaming time to first token

export * from './harness/gateway.js';
export * from './harness/measure.js';
export * from './harness/process.js';
