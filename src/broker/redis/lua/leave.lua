-- A member of this node left. Clean: the user is gone at once when it was their last
-- connection anywhere. Unclean: their entry stays until the grace period ends (sweep.lua).
-- The empty user (anonymous members) is never announced.
-- KEYS: meta, presence entries, presence conns, presence users, presence nodes
-- ARGV: channel, node, user, clean (0|1), grace (ms), sharded, last (0|1: the node's last member
--       of the room, so it leaves the room's nodes)
local meta, pres, pconns, pusers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[5], ARGV[2])
end
local user = ARGV[3]
local e = user .. '\31' .. ARGV[2]
if redis.call('HEXISTS', meta, 'members') == 1 and redis.call('HINCRBY', meta, 'members', -1) < 0 then
  redis.call('HSET', meta, 'members', 0)
end
if redis.call('HINCRBY', pconns, e, -1) > 0 then
  return 0
end
redis.call('HDEL', pconns, e)
if not redis.call('ZSCORE', pres, e) then
  return 0
end
if ARGV[4] == '1' then
  redis.call('ZREM', pres, e)
  if redis.call('HINCRBY', pusers, user, -1) <= 0 then
    redis.call('HDEL', pusers, user)
    if user == '' then
      return 1
    end
    local pub = ARGV[6] == '1' and 'SPUBLISH' or 'PUBLISH'
    redis.call(pub, ARGV[1], 'P\n-\n' .. user)
  end
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', pres, 'XX', now + tonumber(ARGV[5]), e)
end
return 1
