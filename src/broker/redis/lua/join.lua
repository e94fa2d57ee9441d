-- Join members (one per user listed) of this node to a room: create its epoch if it has none,
-- count them in presence (publishing presence_join for users newly present anywhere), keep the
-- room's data alive, and return its top and the history after a position.
-- KEYS: meta, stream, presence zset, presence conns, presence users
-- ARGV: channel, candidate epoch, ttl (ms), grace (ms), after seq (-1: none), node, sharded,
--       user...
-- Returns {epoch, seq, entries after the position}.
local meta, stream, pres, pconns, pusers = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', stream, pres, pconns, pusers)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pub = ARGV[7] == '1' and 'SPUBLISH' or 'PUBLISH'
for i = 8, #ARGV do
  local user = ARGV[i]
  local e = user .. '\31' .. ARGV[6]
  if not redis.call('ZSCORE', pres, e) then
    if redis.call('HINCRBY', pusers, user, 1) == 1 then
      redis.call(pub, ARGV[1], 'P\n+\n' .. user)
    end
  end
  redis.call('ZADD', pres, now + tonumber(ARGV[4]), e)
  redis.call('HINCRBY', pconns, e, 1)
  redis.call('HINCRBY', meta, 'members', 1)
end
for _, k in ipairs({meta, pres, pconns, pusers}) do
  redis.call('PEXPIRE', k, ARGV[3])
end
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local x = tonumber(ARGV[5])
local entries = {}
if x >= 0 and x < seq then
  entries = redis.call('XRANGE', stream, (x + 1) .. '-0', '+')
end
return {epoch, seq, entries}
