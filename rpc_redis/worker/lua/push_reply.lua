-- Push a reply onto its reply key and set the key's expiry, in one step.
-- KEYS[1]: the reply key. ARGV[1]: the reply; ARGV[2]: the expiry in milliseconds.
-- Writes only to a list or a missing key, so a reply key that names someone else's
-- string or hash is left exactly as it was; returns 'ok', or the key's type.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'list' then return kind end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'ok'
