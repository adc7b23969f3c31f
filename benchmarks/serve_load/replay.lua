-- wrk script for benchmarks.serve_load: replays pre-built HTTP requests in turn and prints the
-- run's figures as one JSON line, so nothing has to be scraped from wrk's human summary.
--
--   wrk -t2 -c32 -d10s -s replay.lua http://127.0.0.1:PORT -- request-0.http request-1.http ...
--
-- Each file named after `--` holds one whole HTTP/1.1 request (head and body), read once.

local pool = {}
local position = 1
local thread_count = 0

function setup(thread)
  -- Runs in the main Lua state before each thread's init: start threads at different requests.
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  for _, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    pool[#pool + 1] = file:read("*a")
    file:close()
  end
  assert(#pool > 0, "replay.lua: name at least one request file after --")
  position = (thread_index or 0) * 7 % #pool + 1
end

function request()
  local bytes = pool[position]
  position = position % #pool + 1
  return bytes
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'serve_load-wrk {"duration_us": %d, "requests": %d, "bytes": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
