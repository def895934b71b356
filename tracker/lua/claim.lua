-- Link a visitor to a contact and hand its anonymous history over to a stitch, in one atomic step
-- (DESIGN invariant 4): every event is either in the claimed history or, after this, in the linked stream.
-- KEYS[1] link   KEYS[2] anonymous log   KEYS[3] the claim of this contact
-- ARGV[1] contact id   ARGV[2] link TTL seconds   ARGV[3] claim TTL seconds
-- Returns the number of events waiting in the claim.
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('RENAME', KEYS[2], KEYS[3])
  else
    -- an earlier stitch crashed before finishing: add to its claim rather than overwrite it
    local n = redis.call('LLEN', KEYS[2])
    for start = 0, n - 1, 1000 do
      redis.call('RPUSH', KEYS[3], unpack(redis.call('LRANGE', KEYS[2], start, start + 999)))
    end
    redis.call('DEL', KEYS[2])
  end
end
-- a claim must outlive any crash until a retry or the sweeper (every few seconds) finishes it; the TTL
-- only reaps a claim whose events are already on the timeline (a crash just before its release)
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
return redis.call('LLEN', KEYS[3])
