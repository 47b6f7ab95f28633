-- Orphans every entry: readers trust only entries stamped with the current generation.
-- KEYS[1] the generation; ARGV[1] a random start, for a generation that was flushed away.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCR', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
