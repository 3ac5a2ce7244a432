-- Push a stream's messages onto its reply key, as many as its window has room for, and
-- set the key's expiry, in one step.
-- KEYS[1]: the reply key. ARGV[1]: the window; ARGV[2]: the expiry in milliseconds;
-- ARGV[3]: '1' for the stream's first push; ARGV[4...]: the messages, in order.
-- Returns {pushed, length}: how many went in, and the list's length after. {-1, 0}: the
-- key holds something else than a list (the caller cancelled the stream: SET key
-- cancelled); {-2, 0}: at the first push, the key exists (a stream writes only to a
-- key of its own, so it never fills someone else's list).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' then
  if kind ~= 'list' then return {-1, 0} end
  if ARGV[3] == '1' then return {-2, 0} end
end
local length = redis.call('LLEN', KEYS[1])
local count = math.min(tonumber(ARGV[1]) - length, #ARGV - 3)
if count <= 0 then return {0, length} end
length = redis.call('RPUSH', KEYS[1], unpack(ARGV, 4, 3 + count))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {count, length}
