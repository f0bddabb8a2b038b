-- wrk script: POST /v1/batch with OPS reservations (one unit each) per request.
--
--   wrk -t2 -c16 -d20s --latency -s benches/wrk/batch.lua http://127.0.0.1:PORT -- 1000 1000
--
-- Arguments: ops per request (default 1000), SKUs `S0`..`S<N-1>` cycled through
-- (default 1000). The token comes from SURGE_BENCH_TOKEN (storefront). `done` prints
-- one `RESULT` line; `failed_batches` counts responses that carried a problem for an op,
-- `failed_ops` the ops refused (every op of a non-200 answer).

local token = os.getenv("SURGE_BENCH_TOKEN") or ""
local body
local ops = 1000
local threads = {}
failed = 0
failed_ops = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ops = tonumber(args[1] or "1000")
  local skus = tonumber(args[2] or "1000")
  local parts = {}
  for i = 0, ops - 1 do
    parts[#parts + 1] = '{"op":"reserve","lines":[{"sku":"S' .. (i % skus) .. '","qty":1}]}'
  end
  body = '{"ops":[' .. table.concat(parts, ",") .. ']}'
  wrk.method = "POST"
  wrk.path = "/v1/batch"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

-- A refused op answers with a problem, which carries one `"code":`; a made op's body
-- has none. A non-200 answer refused every op.
function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    failed_ops = failed_ops + ops
    return
  end
  local refused, at = 0, 1
  while true do
    local found = string.find(body, '"code":', at, true)
    if not found then break end
    refused = refused + 1
    at = found + 7
  end
  if refused > 0 then
    failed = failed + 1
    failed_ops = failed_ops + refused
  end
end

function done(summary, latency, requests)
  local failed_total, failed_ops_total = 0, 0
  for _, t in ipairs(threads) do
    failed_total = failed_total + (t:get("failed") or 0)
    failed_ops_total = failed_ops_total + (t:get("failed_ops") or 0)
  end
  local seconds = summary.duration / 1000000
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d non2xx=%d socket_errors=%d failed_batches=%d failed_ops=%d ops=%d\n",
    summary.requests, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    failed_total, failed_ops_total, ops))
end
