-- Push a reply onto its reply key and set the key's expiry, in one step.
-- KEYS[1]: the reply key. ARGV[1]: the reply; ARGV[2]: the expiry in milliseconds;
-- ARGV[3]: '1' if the key may already hold replies (it is under <prefix>:reply:).
-- A worker never changes a key that holds data it did not write: it creates the key,
-- or, under <prefix>:reply: only, appends to the list there. Returns 'ok', or the type
-- of the key it found, which it left exactly as it was (value and expiry).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and (kind ~= 'list' or ARGV[3] ~= '1') then return kind end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'ok'
