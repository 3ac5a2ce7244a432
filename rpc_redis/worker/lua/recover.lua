-- Recover the in-progress list of a worker whose heartbeat is gone: requests whose
-- deadline has not passed go back to the head of their queue, expired ones are dropped,
-- and one delivered max-deliveries times goes to the dead-letter list. Atomic, so each
-- request is recovered once, whoever runs it. Returns {requeued, expired, dead}, or
-- {-1, 0, 0} if the worker is alive after all.
-- KEYS: heartbeat, in-progress list, queue, deliveries hash, and the dead-letter list if
-- it shares their hash slot. Without it (a cluster, a queue named without the service's
-- hash tag), the dead-letter entries follow the counts, for the caller to push.
-- ARGV: now (epoch seconds), max deliveries, dead-letter limit, deliveries TTL (ms), queue
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1, 0, 0}
end
local now = tonumber(ARGV[1])
local max_deliveries = tonumber(ARGV[2])
local requeued, expired, dead = 0, 0, 0
local entries = {}
while true do
  -- Newest first, each pushed to the head: the queue keeps their original order.
  local raw = redis.call('RPOP', KEYS[2])
  if not raw then break end
  local ok, message = pcall(cjson.decode, raw)
  local deadline = nil
  if ok and type(message) == 'table' then deadline = tonumber(message['deadline']) end
  if deadline and deadline <= now then
    expired = expired + 1
  else
    local delivered = redis.call('HINCRBY', KEYS[4], redis.sha1hex(raw), 1)
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
    if delivered >= max_deliveries then
      local entry = cjson.encode({
        reason = 'delivered ' .. delivered .. ' times, and every worker died before replying',
        queue = ARGV[5], time = now, message = raw})
      if KEYS[5] then
        redis.call('RPUSH', KEYS[5], entry)
        redis.call('LTRIM', KEYS[5], -tonumber(ARGV[3]), -1)
      else
        entries[#entries + 1] = entry
      end
      dead = dead + 1
    else
      redis.call('LPUSH', KEYS[3], raw)
      requeued = requeued + 1
    end
  end
end
local counts = {requeued, expired, dead}
for _, entry in ipairs(entries) do counts[#counts + 1] = entry end
return counts
