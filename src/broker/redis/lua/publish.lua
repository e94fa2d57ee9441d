-- Number, store and publish one room message, atomically (so every subscriber sees one order).
-- KEYS: meta, stream
-- ARGV: channel, candidate epoch, from, ts, binary (0|1), data, history size, history ttl (ms),
--       meta ttl (ms), rate mode (0 off, 1 fixed, 2 auto), rate value, origin, sharded (0|1)
-- Returns {epoch, seq, rate}; seq is -1 when the room's rate limit refused the message.
local meta, stream = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'epoch', 'tok', 'tok_at', 'members')
local epoch = m[1]
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
local mode, val = tonumber(ARGV[10]), tonumber(ARGV[11])
local rate = 0
if mode == 1 then
  rate = val
elseif mode == 2 then
  local members = tonumber(m[4]) or 0
  if members < 1 then members = 1 end
  rate = math.floor(val / members)
  if rate < 10 then rate = 10 end
  if rate > val then rate = val end
end
if rate > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local tok = tonumber(m[2]) or rate
  local at = tonumber(m[3]) or now
  tok = math.min(rate, tok + (now - at) * rate / 1000)
  if tok < 1 then
    redis.call('HSET', meta, 'tok', tostring(tok), 'tok_at', now)
    return {epoch, -1, rate}
  end
  redis.call('HSET', meta, 'tok', tostring(tok - 1), 'tok_at', now)
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
if tonumber(ARGV[7]) > 0 then
  redis.call('XADD', stream, 'MAXLEN', ARGV[7], seq .. '-0', 'f', ARGV[3], 't', ARGV[4], 'b', ARGV[5], 'd', ARGV[6])
  redis.call('PEXPIRE', stream, ARGV[8])
end
redis.call('PEXPIRE', meta, ARGV[9])
local payload = 'M\n' .. epoch .. '\n' .. seq .. '\n' .. ARGV[3] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[12] .. '\n' .. ARGV[6]
if ARGV[13] == '1' then
  redis.call('SPUBLISH', ARGV[1], payload)
else
  redis.call('PUBLISH', ARGV[1], payload)
end
return {epoch, seq, rate}
