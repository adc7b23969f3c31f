-- wrk script for benchmarks.serve_load: replays pre-built HTTP requests in turn, counts the
-- replies that complete inside a time window, and prints the run's figures as one JSON line.
--
--   wrk -t2 -c32 -d12s -s replay.lua http://127.0.0.1:PORT -- START STOP request-0.http ...
--
-- START and STOP are CLOCK_MONOTONIC seconds (Python's time.monotonic()): the counted window,
-- after a warm-up on the same connections. Each file after them holds one whole HTTP/1.1
-- request (head and body), read once.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } serve_load_timespec;
int clock_gettime(int clock_id, serve_load_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("serve_load_timespec")

local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {}
local pool = {}
local position = 1
local window_start, window_stop
counted = 0 -- global, so that done() can read it from each thread with thread:get

function setup(thread)
  -- Runs in the main Lua state before each thread's init: start threads at different requests.
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  window_start = assert(tonumber(args[1]), "replay.lua: START first, after --")
  window_stop = assert(tonumber(args[2]), "replay.lua: then STOP")
  for index = 3, #args do
    local file = assert(io.open(args[index], "rb"))
    pool[#pool + 1] = file:read("*a")
    file:close()
  end
  assert(#pool > 0, "replay.lua: name at least one request file after START and STOP")
  position = thread_index * 7 % #pool + 1
end

-- wrk asks for the next request on a connection as soon as the previous reply is complete, so
-- the requests asked for inside the window are the replies completed inside it (a reading of
-- the steady state that needs no response() hook, which would make wrk parse every reply).
function request()
  local t = now()
  if t >= window_start and t < window_stop then
    counted = counted + 1
  end
  local bytes = pool[position]
  position = position % #pool + 1
  return bytes
end

function done(summary, latency, requests)
  local in_window = 0
  for _, thread in ipairs(threads) do
    in_window = in_window + thread:get("counted")
  end
  local errors = summary.errors
  io.write(string.format(
    'serve_load-wrk {"duration_us": %d, "requests": %d, "window_requests": %d, "bytes": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, in_window, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
