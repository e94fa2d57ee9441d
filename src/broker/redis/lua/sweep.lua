-- Report gone the users whose grace period is over, and the users of nodes that died without
-- cleaning up (they stopped refreshing). Any node serving the room may run it; being atomic,
-- each entry is reported once. Cheap when nothing is due: two range reads.
-- KEYS: meta, presence entries, presence conns, presence users, presence nodes
-- ARGV: channel, sharded
local meta, pres, pconns, pusers, pnodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pub = ARGV[2] == '1' and 'SPUBLISH' or 'PUBLISH'
local function gone(e)
  redis.call('ZREM', pres, e)
  local c = tonumber(redis.call('HGET', pconns, e)) or 0
  redis.call('HDEL', pconns, e)
  if c > 0 and redis.call('HEXISTS', meta, 'members') == 1 and redis.call('HINCRBY', meta, 'members', -c) < 0 then
    redis.call('HSET', meta, 'members', 0)
  end
  local user = string.match(e, '^(.*)\31[^\31]*$')
  if user and redis.call('HINCRBY', pusers, user, -1) <= 0 then
    redis.call('HDEL', pusers, user)
    if user ~= '' then
      redis.call(pub, ARGV[1], 'P\n-\n' .. user)
    end
  end
end
-- Grace periods over (score 0 is "held by a live node").
local n = 0
for _, e in ipairs(redis.call('ZRANGEBYSCORE', pres, '(0', now)) do
  gone(e)
  n = n + 1
end
-- Nodes that stopped refreshing: their users go (once; this scan is rare).
local dead = redis.call('ZRANGEBYSCORE', pnodes, '-inf', now)
if #dead > 0 then
  local is_dead = {}
  for _, node in ipairs(dead) do
    is_dead[node] = true
  end
  redis.call('ZREM', pnodes, unpack(dead))
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', pres, 0, 0)) do
    local node = string.match(e, '\31([^\31]*)$')
    if node and is_dead[node] then
      gone(e)
      n = n + 1
    end
  end
end
return n
