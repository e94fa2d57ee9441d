-- The users present in a room (those in their grace period too), with their connections.
-- KEYS: presence entries, presence conns
-- Returns {user, conns, user, conns, ...}.
local pres, pconns = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts, order = {}, {}
local function add(e)
  local user = string.match(e, '^(.*)\31[^\31]*$')
  if user and user ~= '' then
    if not counts[user] then
      counts[user] = 0
      order[#order + 1] = user
    end
    counts[user] = counts[user] + (tonumber(redis.call('HGET', pconns, e)) or 0)
  end
end
-- Held by a live node (score 0), or in a grace period that has not ended.
for _, e in ipairs(redis.call('ZRANGEBYSCORE', pres, 0, 0)) do
  add(e)
end
for _, e in ipairs(redis.call('ZRANGEBYSCORE', pres, '(' .. now, '+inf')) do
  add(e)
end
local out = {}
for _, u in ipairs(order) do
  out[#out + 1] = u
  out[#out + 1] = counts[u]
end
return out
