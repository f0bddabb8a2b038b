-- wrk script: GET requests, for the HTTP ceiling and the stock read.
--
--   wrk -t1 -c64 -d15s --latency -s benches/wrk/get.lua http://127.0.0.1:PORT -- /healthz
--   wrk ... -s benches/wrk/get.lua http://127.0.0.1:PORT -- /v1/skus/S 1000
--
-- Arguments: a path, and optionally N. With N the requests cycle through `<path>0` ..
-- `<path><N-1>` (e.g. the SKUs `S0`..`S999`); without it every request asks for the path.
-- The requests are formatted once in `init`; `request` only hands out the next one, so
-- the ceiling (`/healthz`) and the stock read cost the load generator the same.
-- The token comes from the environment variable SURGE_BENCH_TOKEN and is sent as
-- `Authorization: Bearer ...` (`GET /v1/skus/{sku}` needs one; `/healthz` ignores it).
-- `done` prints one `RESULT` line like reserve.lua's: requests/s, p50/p99/p99.9 in
-- microseconds, non2xx (wrk counts responses with status >= 400) and socket errors.

local token = os.getenv("SURGE_BENCH_TOKEN") or ""
local reqs = {}
local next_index = 1

function init(args)
  local path = args[1] or "/healthz"
  local count = tonumber(args[2] or "0")
  local headers = {}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  if count > 0 then
    for i = 0, count - 1 do
      reqs[#reqs + 1] = wrk.format("GET", path .. i, headers)
    end
  else
    reqs[1] = wrk.format("GET", path, headers)
  end
  -- Each thread (and each wrk process) starts at its own place in the cycle.
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  next_index = math.random(1, #reqs)
end

function request()
  local r = reqs[next_index]
  next_index = next_index + 1
  if next_index > #reqs then
    next_index = 1
  end
  return r
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1000000
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
