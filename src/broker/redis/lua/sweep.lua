-- Report gone the users whose grace period is over, and the users of nodes that died without
-- cleaning up (their entries stopped being refreshed). Any node serving the room may run it;
-- being atomic, each entry is reported once.
-- KEYS: meta, presence zset, presence conns, presence users
-- ARGV: channel, sharded
local meta, pres, pconns, pusers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', pres, '-inf', now)
local pub = ARGV[2] == '1' and 'SPUBLISH' or 'PUBLISH'
for _, e in ipairs(gone) do
  redis.call('ZREM', pres, e)
  local c = tonumber(redis.call('HGET', pconns, e)) or 0
  redis.call('HDEL', pconns, e)
  if c > 0 and redis.call('HEXISTS', meta, 'members') == 1 and redis.call('HINCRBY', meta, 'members', -c) < 0 then
    redis.call('HSET', meta, 'members', 0)
  end
  local user = string.match(e, '^(.*)\31[^\31]*$')
  if user and redis.call('HINCRBY', pusers, user, -1) <= 0 then
    redis.call('HDEL', pusers, user)
    redis.call(pub, ARGV[1], 'P\n-\n' .. user)
  end
end
return #gone
