-- Join members (one per user listed) of this node to a room: create its epoch if it has none,
-- count them in presence (publishing presence_join for users newly present anywhere), enter
-- this node in the room's nodes (see touch.lua), keep the room's data alive, and return its top
-- and the history after a position.
-- Also used to announce a node's members again after its presence was swept. The empty user
-- stands for this node's anonymous members: counted like any, never announced or listed.
-- KEYS: meta, stream, presence entries, presence conns, presence users, presence nodes
-- ARGV: channel, candidate epoch, ttl (ms), after seq (-1: none), node, sharded, stale after (ms),
--       user...
-- Returns {epoch, seq, entries after the position, nodes with members in the room}.
local meta, stream, pres, pconns, pusers, pnodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', stream, pres, pconns, pusers, pnodes)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[5]
redis.call('ZADD', pnodes, now + tonumber(ARGV[7]), node)
local pub = ARGV[6] == '1' and 'SPUBLISH' or 'PUBLISH'
for i = 8, #ARGV do
  local user = ARGV[i]
  local e = user .. '\31' .. node
  if not redis.call('ZSCORE', pres, e) then
    if redis.call('HINCRBY', pusers, user, 1) == 1 and user ~= '' then
      redis.call(pub, ARGV[1], 'P\n+\n' .. user)
    end
  end
  -- Score 0: held by a live node (a grace deadline, if any, is cancelled).
  redis.call('ZADD', pres, 0, e)
  redis.call('HINCRBY', pconns, e, 1)
  redis.call('HINCRBY', meta, 'members', 1)
end
for _, k in ipairs({meta, pres, pconns, pusers, pnodes}) do
  redis.call('PEXPIRE', k, ARGV[3])
end
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local x = tonumber(ARGV[4])
local entries = {}
if x >= 0 and x < seq then
  entries = redis.call('XRANGE', stream, (x + 1) .. '-0', '+')
end
return {epoch, seq, entries, redis.call('ZCARD', pnodes)}
