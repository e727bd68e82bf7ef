-- Subscription scale against one NATS server (run by scripts/bench-scale.sh):
--   lua5.4 bench/scale.lua SCENARIO PORT N
-- SCENARIO:
--   many  a client publishes on 4,000 subjects (so the server's subject
--         cache is full), then makes N subscriptions on N subjects; a second
--         client PINGs while the first closes.
--   one   the same with N subscriptions on one subject.
--         Both print "RESULT subs_ms=... stall_ms=...": the time from the
--         first SUB to the PONG after the last, and the longest PING round
--         trip of the second client from the first one's close until
--         STALL_WINDOW (0.3 s) after it.
--   hold  N subscriptions on N subjects, then "READY" and a pause of
--         HOLD_PAUSE (2 s: the runner reads the server's RSS meanwhile),
--         then PUBS (arg 4, default 2000000) 16-byte publishes on a subject
--         none of them matches, in chunks, up to a PONG; then "DONE" and
--         half that pause before it closes (the runner reads the server's
--         CPU time at READY + 1 s and at DONE).  Prints
--         "RESULT subs_ms=... pub_rate=..." (publishes per second).
--   ping  PINGS (arg 3) PING round trips one after the other on a fresh
--         connection.  Prints "RESULT p50_ms=... p99_ms=...".
-- Loopback only; every wait is bounded (60 s per read).
local socket = require "socket"

local scenario, port, n = arg[1], tonumber(arg[2]), tonumber(arg[3])
assert((scenario == "many" or scenario == "one" or scenario == "hold" or scenario == "ping")
       and port and n, "usage: scale.lua many|one|hold|ping PORT N [PUBS]")
local TRAFFIC = 4000
local STALL_WINDOW = 0.3
local HOLD_PAUSE = 2

local function connect()
  local c = assert(socket.tcp())
  c:settimeout(60)
  assert(c:connect("127.0.0.1", port))
  c:setoption("tcp-nodelay", true)
  assert(c:receive("*l"):match("^INFO "))
  assert(c:send('CONNECT {"verbose":false,"pedantic":false}\r\n'))
  return c
end

-- Sends PING and reads up to the PONG (answering the server's own PINGs).
local function ping(c)
  assert(c:send("PING\r\n"))
  while true do
    local line = assert(c:receive("*l"))
    if line == "PONG" then return end
    if line == "PING" then assert(c:send("PONG\r\n")) end
    assert(not line:match("^%-ERR"), line)
  end
end

-- Sends the lines made by fn(i) for i = 1..count, in chunks.
local function send_lines(c, count, fn)
  local chunk = {}
  for i = 1, count do
    chunk[#chunk + 1] = fn(i)
    if #chunk == 1000 or i == count then
      assert(c:send(table.concat(chunk)))
      chunk = {}
    end
  end
end

if scenario == "ping" then
  local c = connect()
  ping(c)
  local rtt = {}
  for i = 1, n do
    local p0 = socket.gettime()
    ping(c)
    rtt[i] = (socket.gettime() - p0) * 1000
  end
  c:close()
  table.sort(rtt)
  print(("RESULT p50_ms=%.3f p99_ms=%.3f"):format(rtt[math.ceil(n * 0.5)], rtt[math.ceil(n * 0.99)]))
  os.exit(0)
end

if scenario == "hold" then
  local pubs = tonumber(arg[4]) or 2000000
  local c = connect()
  local t0 = socket.gettime()
  send_lines(c, n, function(i) return ("SUB scale.sub.%d %d\r\n"):format(i, i) end)
  ping(c)
  local subs_ms = (socket.gettime() - t0) * 1000
  io.stdout:write("READY\n"); io.stdout:flush()
  socket.sleep(HOLD_PAUSE)
  local t1 = socket.gettime()
  send_lines(c, pubs, function() return "PUB scale.nobody 16\r\n0123456789abcdef\r\n" end)
  ping(c)
  local secs = socket.gettime() - t1
  io.stdout:write("DONE\n"); io.stdout:flush()
  socket.sleep(HOLD_PAUSE / 2)
  c:close()
  print(("RESULT subs_ms=%.1f pub_rate=%.0f"):format(subs_ms, pubs / secs))
  os.exit(0)
end

local a = connect()
send_lines(a, TRAFFIC, function(i) return ("PUB scale.traffic.%d 2\r\nhi\r\n"):format(i) end)
ping(a)
local t0 = socket.gettime()
if scenario == "many" then
  send_lines(a, n, function(i) return ("SUB scale.sub.%d %d\r\n"):format(i, i) end)
else
  send_lines(a, n, function(i) return ("SUB scale.one %d\r\n"):format(i) end)
end
ping(a)
local subs_ms = (socket.gettime() - t0) * 1000

local b = connect()
ping(b)
a:close()
local closed = socket.gettime()
local worst = 0
repeat
  local p0 = socket.gettime()
  ping(b)
  local p1 = socket.gettime()
  worst = math.max(worst, (p1 - p0) * 1000)
until p1 - closed > STALL_WINDOW
b:close()
print(("RESULT subs_ms=%.1f stall_ms=%.1f"):format(subs_ms, worst))
