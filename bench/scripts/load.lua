-- wrk script of the user-service benchmark. The bench tool fills in the {{...}} values and
-- picks the scenario; users are named by number (see bench/src/data.rs).
local USERS = {{USERS}}
local BASE = {{BASE_MS}}
local STEP = {{STEP_MS}}
local TAG = "{{TAG}}"
local THREADS = {{THREADS}}
local PREFIXES = { {{PREFIXES}} }
local DEEP_CURSOR = "{{DEEP_CURSOR}}"
local UPDATE_FILE = "{{UPDATE_FILE}}"
-- Pause per connection between requests (soak runs at a set rate); 0 for a closed loop.
local DELAY_MS = {{DELAY_MS}}

local threads = {}
function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

local function user_id(n)
  local ms = BASE + n * STEP
  return string.format("%08x-%04x-7000-8000-%012x", math.floor(ms / 65536), ms % 65536, n)
end

local update_ids, update_versions, update_next, counter = {}, {}, 1, 0

function init(args)
  math.randomseed(os.time() * 100 + (index or 0))
  local file = io.open(UPDATE_FILE, "r")
  if file then
    local line_number = 0
    for line in file:lines() do
      local n, version = line:match("(%d+) (%d+)")
      if line_number % THREADS == index then
        table.insert(update_ids, tonumber(n))
        update_versions[#update_ids] = tonumber(version)
      end
      line_number = line_number + 1
    end
    file:close()
  end
end

local JSON = { ["Content-Type"] = "application/json" }
local CASES = {
  string.lower,
  string.upper,
  function(s) return s:sub(1, 1):upper() .. s:sub(2) end,
}

local function get_by_id()
  return wrk.format("GET", "/api/v1/users/" .. user_id(math.random(1, USERS)))
end

local function lookup_by_email()
  local email = CASES[math.random(1, 3)]("user" .. math.random(1, USERS) .. "%40example.com")
  return wrk.format("GET", "/api/v1/users/lookup?email=" .. email)
end

local function list_first_page()
  return wrk.format("GET", "/api/v1/users?limit=50")
end

local function list_deep_page()
  return wrk.format("GET", "/api/v1/users?limit=50&cursor=" .. DEEP_CURSOR)
end

local function name_prefix()
  return wrk.format("GET", "/api/v1/users?limit=50&name_prefix=" .. PREFIXES[math.random(1, #PREFIXES)])
end

-- New users get names like the seeded ones, so name searches see the same distribution.
local FIRST = { {{FIRST_NAMES}} }
local LAST = { {{LAST_NAMES}} }

-- With `keyed`, each request carries its own Idempotency-Key (what a careful client sends).
local keys = 0
local function with_key(headers, keyed)
  if keyed then
    keys = keys + 1
    headers["Idempotency-Key"] = string.format("%s-%d-%d", TAG, index, keys)
  end
  return headers
end

local function create(keyed)
  counter = counter + 1
  local name = FIRST[math.random(1, #FIRST)] .. " " .. LAST[math.random(1, #LAST)]
  local body = string.format('{"email":"bench-%s-%d-%d@example.com","name":"%s"}', TAG, index, counter, name)
  return wrk.format("POST", "/api/v1/users", with_key({ ["Content-Type"] = "application/json" }, keyed), body)
end

-- Each thread updates its own users in turn, so the version it sends in If-Match is current.
local function update(keyed)
  local i = update_next
  update_next = update_next % #update_ids + 1
  local version = update_versions[i]
  update_versions[i] = version + 1
  local headers = { ["Content-Type"] = "application/json", ["If-Match"] = '"' .. version .. '"' }
  return wrk.format("PATCH", "/api/v1/users/" .. user_id(update_ids[i]), with_key(headers, keyed), '{"name":"Bench Renamed"}')
end

local function create_keyed() return create(true) end
local function update_keyed() return update(true) end

-- Skewed reads: user n with a probability about proportional to 1/n (Zipf, exponent 1), the
-- continuous inverse of its CDF: n = (USERS + 1)^u. Hot users are few, as in real traffic.
local function zipf_get_by_id()
  local n = math.floor((USERS + 1) ^ math.random())
  if n > USERS then n = USERS end
  return wrk.format("GET", "/api/v1/users/" .. user_id(n))
end

-- Every user once by id and once by email, each thread its share in turn: fills a cache.
local warm_count = 0
local function warm()
  local n = math.floor(warm_count / 2) * THREADS + index + 1
  local by_email = warm_count % 2 == 1
  warm_count = warm_count + 1
  n = (n - 1) % USERS + 1
  if by_email then
    return wrk.format("GET", "/api/v1/users/lookup?email=user" .. n .. "%40example.com")
  end
  return wrk.format("GET", "/api/v1/users/" .. user_id(n))
end

-- 80% reads, 20% writes.
local function mix()
  local r = math.random(100)
  if r <= 50 then return get_by_id()
  elseif r <= 65 then return lookup_by_email()
  elseif r <= 75 then return list_first_page()
  elseif r <= 80 then return name_prefix()
  elseif r <= 95 then return update()
  else return create() end
end

request = {{SCENARIO}}

-- The warm-up ends when every thread has walked its share of the users.
if request == warm then
  function response()
    if warm_count >= 2 * math.ceil(USERS / THREADS) then
      wrk.thread:stop()
    end
  end
end

if DELAY_MS > 0 then
  function delay()
    return DELAY_MS
  end
end
