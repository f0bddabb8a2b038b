-- The usual Redis reserve script: check the stock key, DECRBY it, store the hold
-- with a TTL. KEYS[1] = stock key, KEYS[2] = hold key; ARGV[1] = qty, ARGV[2] = TTL ms.
-- Returns 1 when held, 0 when short.
local available = tonumber(redis.call('GET', KEYS[1]) or '0')
local qty = tonumber(ARGV[1])
if available < qty then
  return 0
end
redis.call('DECRBY', KEYS[1], qty)
redis.call('SET', KEYS[2], qty, 'PX', ARGV[2])
return 1
