-- Cluster mode (docs/cluster.md): Lua handlers on consumers of a stream
-- kept in the cluster's JetStream.  Each consumer is a durable pull
-- consumer there, shared by the tide nodes: an event is handled by one
-- node at a time, acked after its handler returns, handed to another node
-- after ack_wait when a node dies, dead-lettered after max_deliver.  Three
-- routed nats-servers with JetStream and two tide nodes, all on loopback.
local h = require "helpers"
local json = require "dkjson"
local http = require "socket.http"
local socket = require "socket"

local started = {} -- every process a test starts, stopped in teardown

local function keep(srv)
  started[#started + 1] = srv
  return srv
end

local function stop(srv)
  if srv and srv:alive() then srv:stop(srv.stop_signal) end
end

local function get(port, path)
  local body, code = http.request(("http://127.0.0.1:%d%s"):format(port, path))
  return code, body
end

-- Three routed nats-servers with JetStream.
local function start_cluster(dir)
  local nodes, routes, ns = {}, {}, {}
  for i = 1, 3 do
    nodes[i] = { port = h.free_port(), cport = h.free_port(), name = "h" .. i, dir = dir .. "/h" .. i }
    routes[i] = "nats://127.0.0.1:" .. nodes[i].cport
    os.execute("mkdir -p '" .. nodes[i].dir .. "'")
  end
  for i = 1, 3 do
    local n = nodes[i]
    local srv = h.start_server { bin = h.nats_server_bin(), port = n.port, cmd = {
      "-a", "127.0.0.1", "-p", tostring(n.port), "-n", n.name, "--cluster_name", "tidehandlers",
      "-cluster", "nats://127.0.0.1:" .. n.cport, "-routes", table.concat(routes, ","), "-P", n.dir .. "/pid",
      "-js", "-sd", n.dir .. "/js" } }
    srv.stop_signal = "INT"
    ns[i] = keep(srv)
  end
  return ns
end

-- The rules every node loads: NAME is the node's name.  A handler that
-- spins `spin` iterations per event (so that work is in flight when a node
-- dies), refuses events with data.fail, and reports each event it handled.
local RULES = [[
stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }
stream "dead" { subjects = { "dead.>" }, backend = "jetstream", replicas = 3 }
consumer "billing" { stream = "orders", filter = "orders.paid", ack_wait = "2s", max_deliver = 3,
                     dead_letter = "dead.billing" }
on("orders.paid", { consumer = "billing" }, function(e, ctx, meta)
  if e.data.fail then error("refused on purpose") end
  for i = 1, (e.data.spin or 0) do end
  ctx.publish("handled.NAME", { n = e.data.n, seq = meta.seq, deliveries = meta.deliveries })
end)
]]

local function start_node(name, upstream)
  local urls = {}
  for _, p in ipairs(upstream) do urls[#urls + 1] = ('"nats://127.0.0.1:%d"'):format(p) end
  local hport = h.free_port()
  local srv = h.start_scripted(("cluster { upstream = { %s }, name = %q }\n%s"):format(
    table.concat(urls, ", "), name, (RULES:gsub("NAME", name))), { args = { "--http", "127.0.0.1:" .. hport } })
  srv.hport = hport
  return keep(srv)
end

local function client(port)
  local c = h.connect(port)
  c:send('CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
  assert(c:ping())
  return c
end

-- The payload's data: ctx.publish wraps it in an envelope.
local function data_of(m)
  local o = json.decode(m.payload)
  return o and (o.data or o)
end

-- Publishes events with replies on pub and returns the set of the n of
-- those JetStream acked: acks[n] = true.  events: list of payload tables.
local function publish_acked(pub, events, timeout)
  pub:sub("_INBOX.acks.*", "99")
  assert(pub:ping())
  local parts = {}
  for i, e in ipairs(events) do
    local body = json.encode { specversion = "1.0", id = "e" .. e.n, source = "spec", type = "orders.paid", data = e }
    parts[#parts + 1] = ("PUB orders.paid _INBOX.acks.%d %d\r\n%s\r\n"):format(i, #body, body)
  end
  assert(pub:send(table.concat(parts)))
  local acks, got = {}, 0
  h.wait_until(function()
    local f = pub:frame(0.5)
    if f and (f.op == "MSG" or f.op == "HMSG") and f.subject:match("^_INBOX%.acks%.") then
      local i = tonumber(f.subject:match("(%d+)$"))
      local a = json.decode(f.payload)
      if a and a.seq and not a.error then
        acks[events[i].n] = true
        got = got + 1
      end
    end
    return got == #events
  end, timeout or 30, 0)
  return acks, got
end

-- Reads what the handlers reported on sub: by[n] = { node names }, counts per node.
local function collect_handled(sub, into, want, timeout)
  h.wait_until(function()
    local f = sub:frame(0.3)
    if f and (f.op == "MSG" or f.op == "HMSG") then
      local d = data_of(f)
      local node = f.subject:match("^handled%.(.+)$")
      if d and node and d.n then
        if d.deliveries and d.deliveries > 1 and not into.first_redelivery then
          into.first_redelivery = socket.gettime()
        end
        into.by[d.n] = into.by[d.n] or {}
        table.insert(into.by[d.n], node)
        into.nodes[node] = (into.nodes[node] or 0) + 1
      end
    end
    return want(into)
  end, timeout, 0)
  return into
end

local function covers(acks)
  return function(got)
    for n in pairs(acks) do if not got.by[n] then return false end end
    return true
  end
end

describe("cluster mode, handlers on a consumer of a jetstream-backed stream", function()
  local ns, a, b, dir, watch

  setup(function()
    dir = h.make_tmpdir("cluster-handlers")
    ns = start_cluster(dir)
    a = start_node("ha", { ns[1].port })
    b = start_node("hb", { ns[3].port })
    assert(h.wait_until(function() return get(a.hport, "/readyz") == 200 and get(b.hport, "/readyz") == 200 end, 30),
      "the nodes did not get ready:\n" .. a:log() .. b:log())
    assert(h.wait_until(function()
      return a:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
        and b:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
    end, 20), "the consumer was not made:\n" .. a:log() .. b:log())
    -- What the handlers report, watched on a server neither node uses; a
    -- probe from a node's server shows the interest has spread.
    watch = client(ns[2].port)
    watch:sub("handled.>", "1")
    watch:sub("dead.>", "2")
    local probe = client(ns[1].port)
    assert(h.wait_until(function()
      probe:pub("handled.probe", "{}")
      local f = watch:frame(0.2)
      return f and f.op == "MSG"
    end, 10, 0), "the watcher's interest never reached the cluster")
    probe:close()
    while watch:frame(0.3) do end
  end)

  teardown(function()
    if watch then watch:close() end
    for i = #started, 1, -1 do stop(started[i]) end
    for _, s in ipairs(started) do if s.dir then h.remove_tmpdir(s.dir) end end
    h.remove_tmpdir(dir)
  end)

  it("splits the handlers' work between the nodes and handles every acked event", function()
    local N = 600
    local events = {}
    for i = 1, N do events[i] = { n = i, spin = 1000000 } end
    local pub = client(a.port)
    local acks, nacked = publish_acked(pub, events)
    assert.equal(N, nacked)
    local got = collect_handled(watch, { by = {}, nodes = {} }, covers(acks), 30)
    for n = 1, N do assert.truthy(got.by[n], "event " .. n .. " was never handled") end
    assert.truthy((got.nodes.ha or 0) > 0 and (got.nodes.hb or 0) > 0,
      ("one node did all the work: ha %d, hb %d"):format(got.nodes.ha or 0, got.nodes.hb or 0) .. b:log())
    pub:close()
    -- acked in JetStream: nothing left for the consumer
    assert(h.wait_until(function()
      local m = h.request(ns[2].port, "$JS.API.CONSUMER.INFO.orders.billing", "")
      local info = m and json.decode(m.payload)
      return info and info.num_ack_pending == 0 and info.num_pending == 0
    end, 10), "events stayed pending in the consumer")
  end)

  it("dead-letters an event to a jetstream stream after max_deliver, with the handler's error", function()
    local pub = client(a.port)
    local acks = publish_acked(pub, { { n = -1, fail = true } })
    assert.truthy(acks[-1])
    local f = assert(h.wait_until(function()
      local m = watch:frame(0.3)
      if m and m.subject == "dead.billing" then return m end
    end, 20), "no dead letter")
    local _, hd = h.parse_headers(f.headers)
    assert.equal("max_deliver", hd["Tide-Reason"])
    assert.equal("3", hd["Tide-Deliveries"])
    assert.equal("billing", hd["Tide-Consumer"])
    assert.equal("orders.paid", hd["Tide-Original-Subject"])
    assert.truthy(hd["Tide-Error"]:find("refused on purpose", 1, true), hd["Tide-Error"])
    -- stored by JetStream, and the event is no longer offered
    assert(h.wait_until(function()
      local m = h.request(ns[2].port, "$JS.API.STREAM.INFO.dead", "")
      local info = m and json.decode(m.payload)
      return info and info.state and info.state.messages == 1
    end, 10), "the dead letter is not in the dead stream")
    assert(h.wait_until(function()
      local m = h.request(ns[2].port, "$JS.API.CONSUMER.INFO.orders.billing", "")
      local info = m and json.decode(m.payload)
      return info and info.num_ack_pending == 0
    end, 10), "the given-up event is still in flight")
    local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, ns[2].port))
    assert.equal(0, rc, out)
    local dead = 0
    for _, node in ipairs(assert(json.decode(out), out)) do
      for _, c in ipairs(node.consumers or {}) do dead = dead + c.dead_lettered end
    end
    assert.equal(1, dead)
    pub:close()
  end)

  it("when a node is killed (-9) mid-work, the other handles every acked event within ack_wait", function()
    local N = 1000
    local events = {}
    for i = 1, N do events[i] = { n = 1000 + i, spin = 2000000 } end
    local pub = client(a.port)
    local got = { by = {}, nodes = {} }
    local acks, nacked = publish_acked(pub, events)
    assert.equal(N, nacked)
    -- let both nodes take work, then kill b in the middle of it
    collect_handled(watch, got, function(g) return (g.nodes.hb or 0) >= 20 end, 20)
    assert.truthy((got.nodes.hb or 0) >= 20, "b never took work:\n" .. b:log())
    b:kill()
    local killed = socket.gettime()
    got.first_redelivery = nil
    collect_handled(watch, got, covers(acks), 30)
    for n in pairs(acks) do assert.truthy(got.by[n], "acked event " .. n .. " was never handled") end
    -- b had events in flight: a got them again once ack_wait (2s) was over
    assert.truthy(got.first_redelivery, "no event was redelivered after the kill")
    local after = got.first_redelivery - killed
    assert.truthy(after < 2 + 3, ("the first redelivery came %.1fs after the kill"):format(after))
    local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, ns[1].port))
    assert.equal(0, rc, out)
    local st = assert(json.decode(out), out)
    assert.equal(1, #st, "the killed node still answers")
    assert.truthy(st[1].consumers[1].redelivered > 0, out)
    pub:close()
  end)
end)
