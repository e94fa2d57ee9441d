-- This node is alive: one entry per node for the whole deployment, refreshed once a period
-- however many rooms it serves (a per-room liveness entry cost nodes × rooms scripts a period:
-- 53 processes × 1,000 rooms saturated Redis). Also returns the nodes that stopped refreshing,
-- for the rooms' sweeps (sweep.lua) to remove their users.
-- KEYS: nodes (sorted set: node name → when it is given up for dead unless it refreshes)
-- ARGV: node, candidate name, node ttl (ms), forget dead nodes after (ms), fresh (0|1)
-- Returns {1, live, dead...} when `node` was alive (or fresh: its first call), or {0, live,
-- dead...} when it had been given up for dead (a stall): the candidate name is registered
-- instead, and the node announces its members again under it (the old name stays dead, so no
-- sweep made from an older list of the dead can remove them). `live`: the nodes alive now, what
-- a node expects to share a new room with (see Task::sweep).
local nodes = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, forget = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('ZSCORE', nodes, ARGV[1])
local ok = ARGV[5] == '1' or (s and tonumber(s) >= now)
redis.call('ZADD', nodes, now + ttl, ok and ARGV[1] or ARGV[2])
-- Dead so long that every room has dropped them by their own staleness (see touch.lua).
redis.call('ZREMRANGEBYSCORE', nodes, '-inf', '(' .. (now - forget))
redis.call('PEXPIRE', nodes, ttl + forget)
local out = {ok and 1 or 0, redis.call('ZCOUNT', nodes, now, '+inf')}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. now)) do
  out[#out + 1] = n
end
return out
