-- wrk script for bench/: POST a small chat request, report in one machine-readable line.
-- No response() hook: defining one makes wrk parse every response's headers in Lua,
-- which would slow the load generator down more than the proxies under test.
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
-- The API key bench/router.py configures, from the environment bench/wrk.py sets
-- (without it, the router's 401s count as errors).
local key = os.getenv("SLM_BENCH_API_KEY")
if key then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  -- errors.status counts responses with status >= 400 (wrk's "Non-2xx or 3xx").
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,' ..
    '"socket_errors":%d,"p50_us":%.1f,"p99_us":%.1f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.mean))
end
