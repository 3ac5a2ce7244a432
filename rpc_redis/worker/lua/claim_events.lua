-- Claim the events of a consumer group that have waited unacknowledged longer than the
-- visibility time (their worker died, or their handler failed), each with how often it
-- has now been delivered. Atomic, so each is claimed by one worker, whoever runs it.
-- KEYS[1]: the stream. ARGV[1]: the group; ARGV[2]: the claiming consumer; ARGV[3]: the
-- visibility time in ms; ARGV[4]: the most to claim.
-- Returns {claimed, lost}: claimed as {id, fields, deliveries} each; lost, the ids of
-- pending entries the stream no longer holds (trimmed by MAXLEN, deleted), acknowledged
-- here so that no worker looks for them again.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local claimed, lost = {}, {}
for _, entry in ipairs(pending) do
  local id, deliveries = entry[1], entry[4]
  local taken = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
  if taken[1] then
    claimed[#claimed + 1] = {id, taken[1][2], deliveries + 1}
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    lost[#lost + 1] = id
  end
end
return {claimed, lost}
