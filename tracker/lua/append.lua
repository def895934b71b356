-- Append one beacon's events to a visitor, atomically with respect to the stitch script.
-- KEYS[1] anonymous log (list)   KEYS[2] stored event ids (set)
-- KEYS[3] link (contact id)       KEYS[4] the partition's linked stream
-- ARGV[1] anonymous TTL seconds   ARGV[2] history cap   ARGV[3] link TTL seconds   ARGV[4] visitor id
-- ARGV[5..] pairs of (event id, event JSON)
-- Returns {stored, duplicates, id over the cap, ...}.
local ttl, cap, link_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local contact = redis.call('GET', KEYS[3])
local stored, dupes, over = 0, 0, {}
if contact then
  -- Linked: new events go to the contact through the stream. The id set spans the visitor's whole life,
  -- anonymous and linked, so a retry is dropped here whoever owns the browser now (a shared browser
  -- re-linked between the first send and the retry must not put one event on two timelines).
  for i = 5, #ARGV, 2 do
    if redis.call('SADD', KEYS[2], ARGV[i]) == 0 then
      dupes = dupes + 1
    else
      redis.call('XADD', KEYS[4], '*', 'c', contact, 'v', ARGV[4], 'e', ARGV[i + 1])
      stored = stored + 1
    end
  end
  redis.call('EXPIRE', KEYS[3], link_ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  local room = cap - redis.call('LLEN', KEYS[1])
  for i = 5, #ARGV, 2 do
    if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
      dupes = dupes + 1
    elseif room <= 0 then
      over[#over + 1] = ARGV[i]
    else
      redis.call('SADD', KEYS[2], ARGV[i])
      redis.call('RPUSH', KEYS[1], ARGV[i + 1])
      stored = stored + 1
      room = room - 1
    end
  end
  -- any beacon is activity, even one of duplicates or past the cap
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
local result = {stored, dupes}
for _, id in ipairs(over) do result[#result + 1] = id end
return result
