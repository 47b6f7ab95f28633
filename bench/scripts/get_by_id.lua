-- GET by id of random users whose ids the bench wrote to {{IDS}}, one per line.
local ids = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end

function init(args)
  math.randomseed(os.time() * 100 + (index or 0))
  for line in io.lines("{{IDS}}") do
    ids[#ids + 1] = line
  end
end

function request()
  return wrk.format("GET", "/api/v1/users/" .. ids[math.random(#ids)])
end
