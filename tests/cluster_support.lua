-- What a cluster-mode spec or benchmark needs around the tide nodes: three
-- routed nats-servers with JetStream, the cluster { } block that joins a
-- node to them, a NATS client that speaks headers, and a watcher whose
-- interest has reached the whole cluster.  Loopback only; the caller stops
-- every server it is given.  M.new() makes a tracker that starts
-- nats-servers (with or without JetStream) and tide nodes and remembers
-- them, so that a spec's teardown stops them all (tracker:stop_all).
local h = require "helpers"

local M = {}

-- Three routed nats-servers with JetStream, the cluster called `name`,
-- server i called name..i with its pid file and store in dir/name..i.
-- Returns the three servers (helpers' server objects, stop_signal INT so
-- that JetStream shuts down cleanly), in order.  keep, when given, is
-- called with each server as soon as it runs (and returns it), so that the
-- caller can stop those already started when a later one fails.
function M.start_cluster(dir, name, keep)
  local nodes, routes, ns = {}, {}, {}
  for i = 1, 3 do
    nodes[i] = { port = h.free_port(), cport = h.free_port(), name = name .. i, dir = dir .. "/" .. name .. i }
    routes[i] = "nats://127.0.0.1:" .. nodes[i].cport
    os.execute("mkdir -p '" .. nodes[i].dir .. "'")
  end
  for i = 1, 3 do
    local n = nodes[i]
    local srv = h.start_server { bin = h.nats_server_bin(), port = n.port, cmd = {
      "-a", "127.0.0.1", "-p", tostring(n.port), "-n", n.name, "--cluster_name", name,
      "-cluster", "nats://127.0.0.1:" .. n.cport, "-routes", table.concat(routes, ","), "-P", n.dir .. "/pid",
      "-js", "-sd", n.dir .. "/js" } }
    srv.stop_signal = "INT"
    ns[i] = keep and keep(srv) or srv
  end
  return ns
end

-- The line of a node's configuration that joins it to the cluster through
-- the client ports in `ports`, as node `name`; settings, when given, is
-- more of the block's fields ("a = 1, b = 2").
function M.cluster_block(name, ports, settings)
  local urls = {}
  for _, p in ipairs(ports) do urls[#urls + 1] = ('"nats://127.0.0.1:%d"'):format(p) end
  return ("cluster { upstream = { %s }, name = %q%s }\n"):format(table.concat(urls, ", "), name,
    settings and (", " .. settings) or "")
end

-- A client on port that has sent CONNECT with headers and no_responders
-- and had its PONG.
function M.client(port)
  local c = h.connect(port)
  c:send('CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
  assert(c:ping())
  return c
end

-- A subscriber to handled.> on port, returned once a probe published
-- from probe_port reaches it (its interest has crossed the cluster), with
-- the probes drained.  Raises after 15 s without one.
function M.watcher(port, probe_port)
  local w = M.client(port)
  w:sub("handled.>", "1")
  local probe = M.client(probe_port)
  assert(h.wait_until(function()
    probe:pub("handled.probe", "{}")
    local f = w:frame(0.2)
    return f and f.op == "MSG"
  end, 15, 0), "the watcher's interest never reached the cluster")
  probe:close()
  while w:frame(0.3) do end
  return w
end

-- GET on a node's HTTP port: the status code and the body.
function M.get(port, path)
  local http = require "socket.http" -- here: the benchmarks never load it
  local body, code = http.request(("http://127.0.0.1:%d%s"):format(port, path))
  return code, body
end

-- Runs tests/interop/node/kv_lua.mjs against the server at port on bucket
-- with the words in ... (put KEY VALUE, get KEY, dump PREFIX, ...): a real
-- nats.js KV client.  Returns its last line, decoded; raises when it fails.
function M.client_kv(port, bucket, ...)
  local js, json = require "js_support", require "dkjson" -- here: the benchmarks never load them
  local args = {}
  for i, v in ipairs({ ... }) do args[i] = js.q(v) end
  local rc, out = h.sh(("cd %s && timeout -k 5 60 node kv_lua.mjs %d %s %s"):format(js.q(js.NODE_DIR), port, bucket,
    table.concat(args, " ")))
  local v = rc == 0 and json.decode(out:match("([^\n]+)\n?$") or "")
  assert(v ~= nil and v ~= false, ("kv_lua.mjs %s ended with %s:\n%s"):format(table.concat(args, " "), tostring(rc), out))
  return v
end

-- Stops srv (a helpers server object) when it still runs.
function M.stop(srv)
  if srv and srv:alive() then srv:stop(srv.stop_signal) end
end

-- Waits until every node in nodes answers /readyz with 200; raises with
-- their logs after timeout seconds (default 10).
function M.wait_ready(nodes, timeout)
  local ok = h.wait_until(function()
    for _, n in ipairs(nodes) do
      if M.get(n.hport, "/readyz") ~= 200 then return false end
    end
    return true
  end, timeout or 10)
  if not ok then
    local logs = {}
    for _, n in ipairs(nodes) do logs[#logs + 1] = n:log() end
    error("the nodes did not get ready:\n" .. table.concat(logs, "\n"))
  end
end

-- The tracker's methods; the module's functions (get, stop, client, ...)
-- are reached through it too.
local Tracker = setmetatable({}, { __index = M })
Tracker.__index = Tracker

-- A tracker: every process started through it is in tracker.started.
function M.new()
  return setmetatable({ started = {} }, Tracker)
end

-- Remembers srv for stop_all; returns it.
function Tracker:keep(srv)
  self.started[#self.started + 1] = srv
  return srv
end

-- Stops every process started here, newest first, and removes the
-- directories of the tide nodes' entry files.
function Tracker:stop_all()
  for i = #self.started, 1, -1 do M.stop(self.started[i]) end
  for _, s in ipairs(self.started) do if s.dir then h.remove_tmpdir(s.dir) end end
end

-- One nats-server of a cluster: n = { port, cport, name, routes, dir,
-- cluster (its name, default "tidetest"), js (JetStream on), monitor (its
-- HTTP monitoring port: /connz, /subsz; none when nil) }.
function Tracker:start_nats(n)
  local cmd = { "-a", "127.0.0.1", "-p", tostring(n.port), "-n", n.name, "--cluster_name", n.cluster or "tidetest",
                "-cluster", "nats://127.0.0.1:" .. n.cport, "-routes", n.routes, "-P", n.dir .. "/pid" }
  if n.js then
    for _, a in ipairs({ "-js", "-sd", n.dir .. "/js" }) do cmd[#cmd + 1] = a end
  end
  if n.monitor then
    for _, a in ipairs({ "-m", tostring(n.monitor) }) do cmd[#cmd + 1] = a end
  end
  local srv = h.start_server { bin = h.nats_server_bin(), port = n.port, cmd = cmd }
  srv.stop_signal = "INT"
  srv.spec = n
  return self:keep(srv)
end

-- Three routed nats-servers named name1..name3 under dir (with JetStream
-- when js, with a monitoring port each, srv.spec.monitor, when monitor),
-- the cluster called name; returns them.
function Tracker:start_cluster(dir, name, js, monitor)
  local nodes, routes, ns = {}, {}, {}
  for i = 1, 3 do
    nodes[i] = { port = h.free_port(), cport = h.free_port(), name = name .. i, cluster = name, js = js,
                 dir = dir .. "/" .. name .. i, monitor = monitor and h.free_port() or nil }
    routes[i] = "nats://127.0.0.1:" .. nodes[i].cport
    os.execute("mkdir -p '" .. nodes[i].dir .. "'")
  end
  for i = 1, 3 do
    nodes[i].routes = table.concat(routes, ",")
    ns[i] = self:start_nats(nodes[i])
  end
  return ns
end

-- A tide node joined to the cluster through the client ports upstream:
-- extra is Lua after cluster { }, settings more fields of the block, args
-- more arguments of tide serve.  srv.hport is its HTTP port.
function Tracker:start_node(name, upstream, extra, settings, args)
  local hport = h.free_port()
  local argv = { "--http", "127.0.0.1:" .. hport }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local srv = h.start_scripted(M.cluster_block(name, upstream, settings) .. (extra or ""), { args = argv })
  srv.hport = hport
  return self:keep(srv)
end

return M
