-- wrk script for `npm run bench`: POSTs a small chat completion.
-- Environment:
--   BENCH_AUTH    value of the Authorization header (e.g. "Bearer sk-...")
--   BENCH_MODE    "miss" (default): every request differs (cache enabled and missing)
--                 "same": the identical body every time (cache hits after the first)
--   BENCH_RUN_ID  makes "miss" bodies unique across runs of one benchmark
-- Prints one line `BENCHJSON {...}` with exact percentiles (microseconds) when done.

local auth = os.getenv("BENCH_AUTH")
local mode = os.getenv("BENCH_MODE") or "miss"
local run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local function body_for(text)
  return '{"model":"gpt-4.1-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
    .. '{"role":"user","content":"' .. text .. '"}],"max_tokens":64,"temperature":0}'
end

local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

local counter = 0
if mode == "same" then
  wrk.body = body_for("Benchmark cache question " .. run_id .. ": what is the capital of France?")
  request = nil
else
  request = function()
    counter = counter + 1
    local text = "Benchmark question " .. run_id .. "-" .. tostring(tid or 0) .. "-" .. counter
      .. ": what is the capital of France?"
    return wrk.format(nil, nil, nil, body_for(text))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"max":%d,"mean":%.2f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)
  ))
end
