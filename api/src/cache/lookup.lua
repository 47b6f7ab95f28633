-- The generation and the entry of the user an email points to, in one round trip.
-- KEYS[1] the generation, KEYS[2] the email's key; ARGV[1] the prefix of entry keys.
local generation = redis.call('GET', KEYS[1])
local id = redis.call('GET', KEYS[2])
local entry = false
if id then
  entry = redis.call('GET', ARGV[1] .. id)
end
return {generation, entry}
