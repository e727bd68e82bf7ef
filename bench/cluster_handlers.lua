-- Handlers in cluster mode (run by scripts/bench-cluster.sh):
--   lua5.4 bench/cluster_handlers.lua NODES N SPIN
-- NODES 0: one tide node without a cluster, a local stream and a consumer
-- with a Lua handler.  NODES 1..3: three routed nats-servers with
-- JetStream, an R3 stream kept there, NODES tide nodes sharing the
-- consumer.  The handler spins SPIN iterations (the work of a handler)
-- and publishes "handled.<node>" with the event's send time.
--
-- Two measures, on one fresh cluster (or node):
--   latency     max(50, N/20) events one at a time (the next once the last
--               is handled): from the publish to the watcher receiving its
--               "handled", p50/p99 ms
--   throughput  N events sent at once: events/s from the send to the
--               watcher receiving the last "handled"
-- Prints "RESULT rate=... p50_ms=... p99_ms=...".  Loopback only; every
-- process started is stopped.
package.path = (os.getenv("TIDE_ROOT") or ".") .. "/tests/?.lua;" .. package.path
local h = require "helpers"
local cs = require "cluster_support"
local json = require "dkjson"
local socket = require "socket"

local nodes, N, SPIN = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
assert(nodes and N and SPIN and nodes >= 0 and nodes <= 3, "usage: cluster_handlers.lua NODES N SPIN")
local LAT_N = math.max(50, N // 20)

local started = {}
local function keep(s) started[#started + 1] = s return s end
local function stop_all()
  for i = #started, 1, -1 do
    local s = started[i]
    if s:alive() then s:stop(s.stop_signal) end
    if s.dir then h.remove_tmpdir(s.dir) end
  end
  started = {}
end

local HANDLER = [[
on("orders.paid", { consumer = "billing" }, function(e, ctx, meta)
  for i = 1, %d do end
  ctx.publish("handled.NAME", { t = e.data.t })
end)
]]

local function rules(name, cluster_ports)
  local text
  if cluster_ports then
    text = cs.cluster_block(name, cluster_ports) ..
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n'
  else
    text = 'stream "orders" { subjects = { "orders.>" } }\n'
  end
  return text .. 'consumer "billing" { stream = "orders", filter = "orders.paid", ack_wait = "30s", ' ..
    'max_ack_pending = 20000 }\n' .. (HANDLER:format(SPIN):gsub("NAME", name))
end

local function event(n)
  return json.encode { specversion = "1.0", id = "b" .. n, source = "bench", type = "orders.paid",
                       data = { n = n, t = socket.gettime() } }
end

-- Starts the node (without a cluster when nodes == 0) or the cluster and
-- its nodes; returns the port to publish on, the port to watch on, and the
-- node list.
local function start_setup(dir)
  local list = {}
  if nodes == 0 then
    local srv = keep(h.start_scripted(rules("solo"), { args = { "--data", dir .. "/data" } }))
    return srv.port, srv.port, { srv }
  end
  local ns = cs.start_cluster(dir, "bench", keep)
  for i = 1, nodes do
    local text = rules("n" .. i, { ns[i].port })
    local srv = keep(h.start_scripted(text, { args = { "--data", dir .. "/data" .. i } }))
    list[#list + 1] = srv
  end
  local ready = h.wait_until(function()
    for _, s in ipairs(list) do
      local log = s:log()
      if not log:find("stream 'orders' [cb][ro][eu][an][td]", 1) then return false end
      if not log:find("consumer 'billing' on stream 'orders' ready", 1, true) then return false end
    end
    return true
  end, 60)
  assert(ready, "the nodes did not get ready:\n" .. list[1]:log())
  return list[1].port, ns[2].port, list
end

local function run()
  local dir = h.make_tmpdir("bench-cluster")
  local pub_port, watch_port, list = start_setup(dir, true)
  local w = cs.watcher(watch_port, pub_port)
  local pub = cs.client(pub_port)
  pub:sub("_INBOX.b.*", "9")
  assert(pub:ping())
  -- latency first: one at a time
  local lat = {}
  for i = 1, LAT_N do
    local b = event(-i)
    local t0 = socket.gettime()
    assert(pub:send(("PUB orders.paid _INBOX.b.0 %d\r\n%s\r\n"):format(#b, b)))
    while true do
      local f = assert(w:frame(30), "no handled event:\n" .. list[1]:log())
      if f.op == "MSG" or f.op == "HMSG" then
        lat[#lat + 1] = (socket.gettime() - t0) * 1000
        break
      end
    end
  end
  table.sort(lat)
  -- throughput: N events as fast as the PubAcks come, counted as handled
  local t_last, handled, sent = nil, 0, 0
  local parts = {}
  for i = 1, N do
    local b = event(i)
    parts[#parts + 1] = ("PUB orders.paid _INBOX.b.%d %d\r\n%s\r\n"):format(i, #b, b)
  end
  local t0 = socket.gettime()
  assert(pub:send(table.concat(parts)))
  sent = N
  while handled < sent do
    local f = assert(w:frame(60), ("only %d of %d handled"):format(handled, sent))
    if f.op == "MSG" or f.op == "HMSG" then
      handled = handled + 1
      t_last = socket.gettime()
    end
  end
  local rate = handled / (t_last - t0)
  pub:close()
  w:close()
  stop_all()
  h.remove_tmpdir(dir)
  local function pct(p) return lat[math.max(1, math.ceil(#lat * p))] end
  print(("RESULT rate=%.0f p50_ms=%.3f p99_ms=%.3f nodes=%d n=%d spin=%d"):format(rate, pct(0.5), pct(0.99),
    #list, N, SPIN))
end

local ok, err = pcall(run)
stop_all()
if not ok then
  io.stderr:write("cluster_handlers: ", tostring(err), "\n")
  os.exit(1)
end
