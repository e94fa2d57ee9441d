-- A room's history: after a position of the current epoch (oldest first), else the newest.
-- KEYS: meta, stream
-- ARGV: candidate epoch, ttl (ms), since epoch, since seq (-1: none), limit
-- Returns {epoch, entries}.
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
  redis.call('PEXPIRE', meta, ARGV[2])
end
local since, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[3] == epoch and since >= 0 then
  return {epoch, redis.call('XRANGE', stream, (since + 1) .. '-0', '+', 'COUNT', limit)}
end
local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
local entries = {}
for i = #newest, 1, -1 do
  entries[#entries + 1] = newest[i]
end
return {epoch, entries}
