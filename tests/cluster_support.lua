-- What a cluster-mode spec or benchmark needs around the tide nodes: three
-- routed nats-servers with JetStream, the cluster { } block that joins a
-- node to them, a NATS client that speaks headers, and a watcher whose
-- interest has reached the whole cluster.  Loopback only; the caller stops
-- every server it is given.
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

return M
