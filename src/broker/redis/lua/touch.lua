-- This node still has members in the room: keep the room's data alive, and its entry in the
-- room's nodes (one per node, not per member). Run once every third of the history TTL, not
-- every liveness period: liveness is alive.lua's, once per node.
-- KEYS: meta, presence entries, presence conns, presence users, presence nodes
-- ARGV: ttl (ms), node, stale after (ms)
-- Returns 1; 0 when this node's entry was gone (it was given up for dead here: it announces its
-- users again); -1 when the room's data is gone.
local meta, pnodes = KEYS[1], KEYS[5]
if redis.call('EXISTS', meta) == 0 then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = redis.call('ZSCORE', pnodes, ARGV[2])
redis.call('ZADD', pnodes, now + tonumber(ARGV[3]), ARGV[2])
for _, k in ipairs(KEYS) do
  redis.call('PEXPIRE', k, ARGV[1])
end
return known and 1 or 0
