-- The usual Redis reserve script: check the stock key, DECRBY it, keep the hold with
-- a TTL under an id of its own. KEYS[1] = stock key, KEYS[2] = the hold-id counter;
-- ARGV[1] = qty, ARGV[2] = TTL ms.
-- Every successful call stores one new key `hold:<id>` (value `<stock key> <qty>`, with
-- the TTL), the id coming from INCR on the counter, so every hold is kept, as surge
-- keeps every reservation. Returns the hold id when held, 0 when short.
-- (The hold key is built here rather than passed in KEYS: fine on a single Redis, which
-- is what the benchmark runs.)
local available = tonumber(redis.call('GET', KEYS[1]) or '0')
local qty = tonumber(ARGV[1])
if available < qty then
  return 0
end
redis.call('DECRBY', KEYS[1], qty)
local id = redis.call('INCR', KEYS[2])
redis.call('SET', 'hold:' .. id, KEYS[1] .. ' ' .. qty, 'PX', ARGV[2])
return id
