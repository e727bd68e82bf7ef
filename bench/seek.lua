-- Seeks in a big stream, against one NATS server (run by scripts/bench-seek.sh):
--   lua5.4 bench/seek.lua get  PORT STREAM SEQ    $JS.API.STREAM.MSG.GET of SEQ
--   lua5.4 bench/seek.lua tide PORT STREAM TIME   $TIDE.ADMIN.STREAM.EVENTS since TIME, one event
--   lua5.4 bench/seek.lua nats PORT STREAM TIME   a consumer created by_start_time TIME
--                                                 ($JS.API.CONSUMER.CREATE), until its first message
-- Prints "RESULT ms=... seq=... time=...": the time from the request to the
-- answer (to the first message for a consumer), the sequence found and its
-- time.  Loopback only; every read waits at most 120 s.
local socket = require "socket"

local mode, port, stream, arg4 = arg[1], tonumber(arg[2]), arg[3], arg[4]
assert((mode == "get" or mode == "tide" or mode == "nats") and port and stream and arg4,
       "usage: seek.lua get|tide|nats PORT STREAM SEQ|TIME")

local c = assert(socket.tcp())
c:settimeout(tonumber(os.getenv("SEEK_TIMEOUT") or 120))
assert(c:connect("127.0.0.1", port))
c:setoption("tcp-nodelay", true)
assert(c:receive("*l"):match("^INFO "))
-- A deliver subject of this run's own: an earlier run's consumer may still
-- be delivering to its own for a while.
math.randomseed(os.time(), math.floor(socket.gettime() * 1e6) % 1000000)
local DELIVER = ("_seek.d%06d"):format(math.random(0, 999999))
assert(c:send(('CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\nSUB _seek.r 1\r\nSUB %s 2\r\nPING\r\n')
              :format(DELIVER)))

-- The next message (subject, payload, reply), answering the server's PINGs.
local function next_msg()
  while true do
    local line = assert(c:receive("*l"))
    local w = {}
    for x in line:gmatch("%S+") do w[#w + 1] = x end
    if w[1] == "MSG" then
      local p = assert(c:receive(tonumber(w[#w]) + 2))
      return w[2], p:sub(1, -3), #w == 5 and w[4] or nil
    elseif w[1] == "HMSG" then
      local hn = tonumber(w[#w - 1])
      local p = assert(c:receive(tonumber(w[#w]) + 2))
      return w[2], p:sub(hn + 1, -3), #w == 6 and w[4] or nil
    elseif line == "PING" then
      assert(c:send("PONG\r\n"))
    else
      assert(line == "PONG" or line == "+OK", line)
    end
  end
end

local function request(subject, payload)
  assert(c:send(("PUB %s _seek.r %d\r\n%s\r\n"):format(subject, #payload, payload)))
  while true do
    local s, p = next_msg()
    if s == "_seek.r" then return p end
  end
end

local t0, seq, time = socket.gettime(), nil, nil
if mode == "get" then
  local r = request("$JS.API.STREAM.MSG.GET." .. stream, ('{"seq":%s}'):format(arg4))
  seq, time = r:match('"seq":(%d+)'), r:match('"time":"([^"]+)"')
elseif mode == "tide" then
  local r = request("$TIDE.ADMIN.STREAM.EVENTS", ('{"stream":"%s","since":"%s","limit":1}'):format(stream, arg4))
  seq, time = r:match('"seq":(%d+)'), r:match('"time":"([^"]+)"')
else
  local cfg = ('{"stream_name":"%s","config":{"deliver_policy":"by_start_time","opt_start_time":"%s",' ..
               '"ack_policy":"none","deliver_subject":"%s"}}'):format(stream, arg4, DELIVER)
  assert(c:send(("PUB $JS.API.CONSUMER.CREATE.%s _seek.r %d\r\n%s\r\n"):format(stream, #cfg, cfg)))
  while true do
    local s, p, reply = next_msg()
    if s == "_seek.r" then
      assert(not p:match('"error"'), p)
    elseif reply and reply:match("^%$JS%.ACK%.") then -- (a delivery keeps its own subject)
      -- $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time ns>.<pending>
      local sseq, ns = assert(reply, "a delivery without its ack subject"):match("%.%d+%.(%d+)%.%d+%.(%d+)%.%d+$")
      seq, time = sseq, ns .. "ns"
      break
    end
  end
end
local ms = (socket.gettime() - t0) * 1000
print(("RESULT ms=%.2f seq=%s time=%s"):format(ms, tostring(seq), tostring(time)))
c:close()
