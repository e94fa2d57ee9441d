-- This node is alive and has members in the room: extend its users' presence entries and keep
-- the room's numbering alive while anyone is in it.
-- KEYS: meta, presence zset, presence conns, presence users
-- ARGV: ttl (ms), grace (ms), node, user...
local meta, pres = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #ARGV do
  redis.call('ZADD', pres, 'XX', now + tonumber(ARGV[2]), ARGV[i] .. '\31' .. ARGV[3])
end
for _, k in ipairs(KEYS) do
  redis.call('PEXPIRE', k, ARGV[1])
end
return 1
