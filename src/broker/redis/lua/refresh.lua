-- This node is alive and has members in the room: one entry per node, not per member (a room
-- of 100,000 members on a node costs the same), and the room's data kept alive.
-- KEYS: meta, presence entries, presence conns, presence users, presence nodes
-- ARGV: ttl (ms), node, node ttl (ms)
-- Returns the number of live nodes with members in the room (this one included: at least 1); 0
-- when this node had been given up for dead (its users were swept: it announces them again);
-- -1 when the room's data is gone.
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
if known then
  return redis.call('ZCOUNT', pnodes, now, '+inf')
end
return 0
