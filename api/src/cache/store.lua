-- Stores a user's entry unless the cache already holds something at least as new.
-- KEYS[1] the entry, KEYS[2] the generation, KEYS[3] (optional) the email's key.
-- ARGV[1] the generation the caller saw before its database read or commit (the stamp),
-- ARGV[2] the version, ARGV[3] the user's JSON, ARGV[4] the TTL in seconds, ARGV[5] the id.
-- Returns 1 when the entry was written, 0 when it was kept.
-- TOMBSTONE: a deleted user's entry, defined by the service above this script (entry.rs).
local current = redis.call('GET', KEYS[1])
if current == TOMBSTONE then
  -- A tombstone: the user is deleted, whatever a racing read saw.
  return 0
end
local write = true
if current then
  local generation, version = string.match(current, '^(%d+) (%d+) ')
  if version then
    version = tonumber(version)
    local incoming = tonumber(ARGV[2])
    -- Never lower a version, even one stamped with an older generation: it stays a floor.
    if version > incoming then
      write = false
    elseif version == incoming and generation == redis.call('GET', KEYS[2]) then
      write = false
    end
  end
end
if write then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3], 'EX', ARGV[4])
end
if KEYS[3] then
  -- The email's pointer; a reader checks the entry's email, so a stale pointer only misses.
  redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4])
end
if write then return 1 end
return 0
