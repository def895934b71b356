-- Take one token from a token bucket, refilled continuously; Redis's own clock, so every process agrees.
-- KEYS[1] the bucket (hash: n = tokens left, t = when counted, ms)
-- ARGV[1] capacity (the burst)   ARGV[2] tokens added per millisecond
-- Returns 0 when a token was taken, else the milliseconds until one will be there (nothing is written then:
-- the count of a refused request is the same as before it, so a client hammering a full bucket costs a read).
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'n', 't')
local n = tonumber(state[1])
if n == nil then
  n = cap
else
  n = math.min(cap, n + math.max(0, now - tonumber(state[2])) * rate)
end
if n < 1 then
  return math.ceil((1 - n) / rate)
end
n = n - 1
redis.call('HSET', KEYS[1], 'n', n, 't', now)
-- gone once full again: a full bucket and no bucket are the same
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - n) / rate) + 1)
return 0
