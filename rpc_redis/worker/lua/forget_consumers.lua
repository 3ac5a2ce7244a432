-- Remove from a consumer group the consumers that hold no pending event and have been
-- idle for long (workers gone), or the one named (a worker stopping cleanly). Atomic:
-- a consumer is removed only while it holds nothing, so no event leaves the group's
-- pending list unacknowledged (a removed consumer that reads again is made anew).
-- KEYS[1]: the stream. ARGV[1]: the group; ARGV[2]: idle ms past which a consumer is
-- gone; ARGV[3]: a consumer to remove now if it holds nothing ('' for none).
-- Returns how many were removed.
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local idle_limit, removed = tonumber(ARGV[2]), 0
for _, fields in ipairs(consumers) do
  local consumer = {}
  for index = 1, #fields, 2 do consumer[fields[index]] = fields[index + 1] end
  if consumer['pending'] == 0 and (consumer['name'] == ARGV[3] or consumer['idle'] >= idle_limit) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    removed = removed + 1
  end
end
return removed
