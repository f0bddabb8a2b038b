-- wrk script: one reservation of one unit per request, POST /v1/reservations.
--
--   wrk -t2 -c64 -d20s --latency -s benches/wrk/reserve.lua http://127.0.0.1:PORT -- hot
--   wrk ... -s benches/wrk/reserve.lua http://127.0.0.1:PORT -- many 1000
--
--   wrk ... -s benches/wrk/reserve.lua http://127.0.0.1:PORT -- limited 1000 100000
--
-- `hot`: every request reserves the SKU `HOT`. `many N`: a random SKU of `S0`..`S<N-1>`.
-- `limited N C`: a random SKU of `L0`..`L<N-1>` (SKUs with a purchase limit) for a
-- random customer of `c0`..`c<C-1>`.
-- The token comes from the environment variable SURGE_BENCH_TOKEN (storefront).
-- `done` prints one `RESULT` line with requests/s, the mean and p50/p99/p99.9 in
-- microseconds.

local mode = "hot"
local skus = 1
local customers = 1
local token = os.getenv("SURGE_BENCH_TOKEN") or ""
local headers = { ["Content-Type"] = "application/json" }
local hot_request

function init(args)
  mode = args[1] or "hot"
  skus = tonumber(args[2] or "1000")
  customers = tonumber(args[3] or "100000")
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  hot_request = wrk.format("POST", "/v1/reservations", headers,
    '{"lines":[{"sku":"HOT","qty":1}]}')
end

function request()
  if mode == "hot" then
    return hot_request
  end
  if mode == "limited" then
    return wrk.format("POST", "/v1/reservations", headers,
      '{"lines":[{"sku":"L' .. math.random(0, skus - 1) .. '","qty":1}],"customer_id":"c'
        .. math.random(0, customers - 1) .. '"}')
  end
  local sku = "S" .. math.random(0, skus - 1)
  return wrk.format("POST", "/v1/reservations", headers,
    '{"lines":[{"sku":"' .. sku .. '","qty":1}]}')
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1000000
  io.write(string.format(
    "RESULT requests=%d rps=%.1f mean_us=%d p50_us=%d p99_us=%d p999_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.requests / seconds, latency.mean,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
