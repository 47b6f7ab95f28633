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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"http_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
