-- Report gone the users whose grace period is over, and the users of nodes that died without
-- cleaning up. Any node serving the room may run it; being atomic, each entry is reported
-- once. Cheap when nothing is due: a few range reads.
-- KEYS: meta, presence entries, presence conns, presence users, presence nodes
-- ARGV: channel, sharded, dead node...
-- Returns {users reported gone, nodes with members in the room}.
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
-- Dead nodes: named by the caller (they stopped saying they are alive, see alive.lua), or so
-- stale here that they cannot be alive (no touch.lua for three touch periods: the fallback for
-- nodes dead so long that alive.lua forgot them). Their users go, once.
local dead, is_dead = redis.call('ZRANGEBYSCORE', pnodes, '-inf', '(' .. now), {}
if #ARGV > 2 then
  local named = {}
  for i = 3, #ARGV do
    named[ARGV[i]] = true
  end
  for _, node in ipairs(redis.call('ZRANGE', pnodes, 0, -1)) do
    if named[node] then
      dead[#dead + 1] = node
    end
  end
end
if #dead > 0 then
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
return {n, redis.call('ZCARD', pnodes)}
