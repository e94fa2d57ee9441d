-- Everything a node missed of a room after seq (a gap on its channel, or a reconnect).
-- KEYS: meta, stream
-- ARGV: after seq
-- Returns {epoch or false, seq, entries after `after`}.
local m = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if not m[1] then
  return {false, 0, {}}
end
return {m[1], tonumber(m[2]) or 0, redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', '+')}
