-- Cluster mode (docs/cluster.md): tide nodes joined to a real NATS cluster
-- of three nats-server processes with routes between them, all on
-- loopback.  The pipeline runs where an event enters; the cluster does the
-- delivery, queue groups included.
local h = require "helpers"
local json = require "dkjson"
local http = require "socket.http"

local cs = require("cluster_support").new() -- every process a test starts, stopped in teardown by pid
local started = cs.started

local function keep(srv) return cs:keep(srv) end
local function start_nats(n) return cs:start_nats(n) end
local stop, get, client = cs.stop, cs.get, cs.client
local function start_node(name, upstream, extra, settings) return cs:start_node(name, upstream, extra, settings) end

-- Publishes probes on `pub` until `sub` (subscribed to subject, which
-- matches "probe.<n>" subjects via prefix) receives one: the upstream
-- subscription behind sub has reached the whole cluster.  Drains the rest.
local function wait_route(pub, sub, prefix)
  local n = 0
  local ok = h.wait_until(function()
    n = n + 1
    pub:pub(prefix .. ".probe", tostring(n))
    local f = sub:frame(0.2)
    return f and (f.op == "MSG" or f.op == "HMSG")
  end, 10, 0)
  assert(ok, "the subscription never reached the publisher's node through the cluster")
  while sub:frame(0.3) do end
end

-- Reads frames until none comes for `quiet` seconds; returns the messages
-- as sorted lines "op subject sid payload headers" (the order between two
-- publishers is the cluster's to choose).
local function settle_lines(c, quiet)
  local lines = {}
  while true do
    local f = c:frame(quiet)
    if not f then break end
    if f.op == "MSG" or f.op == "HMSG" then
      local _, hd = h.parse_headers(f.headers)
      local keys = {}
      for k, v in pairs(hd) do keys[#keys + 1] = k .. "=" .. tostring(v) end
      table.sort(keys)
      lines[#lines + 1] = table.concat({ f.op, f.subject, f.sid, f.payload, table.concat(keys, ",") }, " ")
    end
  end
  table.sort(lines)
  return lines
end

-- The echo:false steps: a publisher P ("echo":false) and W on port `here`,
-- R on port `there`, a plain subscriber S on port `plain`.  P subscribes to
-- echo.> and, with W, to the queue group g on echo.q; P publishes, W
-- publishes once.  Returns what P, W, R and S received.
local function echo_steps(here, there, plain)
  local p = h.connect(here, { connect = '{"verbose":false,"headers":true,"echo":false}' })
  local w, r, s = client(here), client(there), client(plain)
  p:sub("echo.>", "1")
  p:sub("echo.q", "2", "g")
  w:sub("echo.q", "1", "g")
  w:sub("echo.>", "2")
  r:sub("echo.>", "1")
  s:sub("echo.>", "1")
  for _, c in ipairs({ p, w, r, s }) do assert(c:ping()) end
  -- every subscription has reached the whole cluster once W's probes reach them all
  local n, seen = 0, {}
  assert(h.wait_until(function()
    n = n + 1
    w:pub("echo.probe", tostring(n))
    for i, c in ipairs({ p, r, s }) do
      local f = c:frame(0.2)
      seen[i] = seen[i] or (f and f.op:match("MSG") ~= nil)
    end
    return seen[1] and seen[2] and seen[3]
  end, 10, 0), "the subscriptions never reached the cluster")
  for _, c in ipairs({ p, w, r, s }) do settle_lines(c, 0.5) end
  p:pub("echo.a", "plain")
  p:hpub("echo.h", { { "X-K", "v" } }, "with headers")
  for i = 1, 10 do p:pub("echo.q", "q" .. i) end
  w:pub("echo.b", "from w")
  local got = {}
  for i, c in ipairs({ p, w, r, s }) do
    got[i] = settle_lines(c, 1)
    c:close()
  end
  return got
end

describe("cluster mode", function()
  local ns, a, b, dir = {}, nil, nil, nil

  setup(function()
    dir = h.make_tmpdir("cluster")
    local nodes = {}
    for i = 1, 3 do nodes[i] = { port = h.free_port(), cport = h.free_port(), name = "n" .. i } end
    local routes = {}
    for i = 1, 3 do routes[i] = "nats://127.0.0.1:" .. nodes[i].cport end
    for i = 1, 3 do
      nodes[i].routes = table.concat(routes, ",")
      nodes[i].dir = dir .. "/n" .. i
      os.execute("mkdir -p '" .. nodes[i].dir .. "'")
      ns[i] = start_nats(nodes[i])
    end
    a = start_node("a", { ns[1].port, ns[2].port }, [[
filter("secret.>", function(e) return false end)
on("jobs.>", function(e, ctx) ctx.publish("done." .. e.subject, { from = "a" }) end)
]])
    -- b's rules would drop twice.> and answer jobs.> too, were they run on a's events
    b = start_node("b", { ns[3].port }, [[
filter("twice.>", function(e) return false end)
on("jobs.>", function(e, ctx) ctx.publish("done." .. e.subject, { from = "b" }) end)
]])
    assert(h.wait_until(function() return get(a.hport, "/readyz") == 200 and get(b.hport, "/readyz") == 200 end, 10),
      "the nodes did not get ready:\n" .. a:log() .. b:log())
  end)

  teardown(function()
    for i = #started, 1, -1 do stop(started[i]) end
    for _, s in ipairs(started) do if s.dir then h.remove_tmpdir(s.dir) end end
    h.remove_tmpdir(dir)
  end)

  it("delivers what a client publishes on node A to a subscriber on node B, headers and all", function()
    local pub, sub = client(a.port), client(b.port)
    sub:sub("orders.>", "1")
    wait_route(pub, sub, "orders")
    pub:hpub("orders.paid", { { "Order", "42" } }, '{"amount":7}', "reply.here")
    local m = assert(sub:msg(5))
    assert.equal("orders.paid", m.subject)
    assert.equal("reply.here", m.reply)
    assert.equal('{"amount":7}', m.payload)
    local _, hd = h.parse_headers(m.headers)
    assert.equal("42", hd.Order)
    pub:close()
    sub:close()
  end)

  it("gives each event to one member of a queue group spread over both nodes, exactly once", function()
    local N = 10000
    local pub = client(a.port)
    local qa, qb = client(a.port), client(b.port)
    qa:sub("work.>", "1", "workers")
    qb:sub("work.>", "1", "workers")
    -- Both members are known cluster-wide once each has received a probe.
    local seen_a, seen_b = false, false
    assert(h.wait_until(function()
      pub:pub("work.probe", "p")
      seen_a = seen_a or qa:frame(0.05) ~= nil
      seen_b = seen_b or qb:frame(0.05) ~= nil
      return seen_a and seen_b
    end, 10, 0), "the queue members never both received a probe")
    while qa:frame(0.3) do end
    while qb:frame(0.3) do end
    local parts = {}
    for i = 1, N do parts[#parts + 1] = ("PUB work.item 0 %d\r\n%d\r\n"):format(#tostring(i), i) end
    assert(pub:send(table.concat(parts)))
    assert(pub:ping(10))
    local got, count = {}, { 0, 0 }
    local deadline = h.proc.now() + 30
    while count[1] + count[2] < N and h.proc.now() < deadline do
      for k, c in ipairs({ qa, qb }) do
        local f = c:frame(0.05)
        while f do
          if f.op == "MSG" then
            got[f.payload] = (got[f.payload] or 0) + 1
            count[k] = count[k] + 1
          end
          f = c:frame(0.001)
        end
      end
    end
    -- Anything more would be a duplicate: give it a moment to show.
    for k, c in ipairs({ qa, qb }) do
      for _, f in ipairs(c:collect(1, 0.5)) do
        got[f.payload] = (got[f.payload] or 0) + 1
        count[k] = count[k] + 1
      end
    end
    assert.equal(N, count[1] + count[2])
    for i = 1, N do assert.equal(1, got[tostring(i)], "event " .. i) end
    assert.is_true(count[1] > 0 and count[2] > 0, ("A got %d, B got %d"):format(count[1], count[2]))
    pub:close()
    qa:close()
    qb:close()
  end)

  it("drops on A what A's filter drops, before any subscriber anywhere sees it", function()
    local pub = client(a.port)
    local on_a, on_b = client(a.port), client(b.port)
    local direct = client(ns[2].port) -- a plain NATS client of the cluster itself
    for _, c in ipairs({ on_a, on_b, direct }) do c:sub(">", "1") end
    wait_route(pub, on_b, "any")
    wait_route(pub, direct, "any")
    for _, c in ipairs({ on_a, on_b, direct }) do
      while c:frame(0.3) do end
    end
    pub:pub("secret.plans", "no one may see this")
    pub:pub("public.news", "everyone sees this")
    for name, c in pairs({ a = on_a, b = on_b, upstream = direct }) do
      local m = assert(c:msg(5), name .. " got nothing")
      assert.equal("public.news", m.subject, name .. " saw the filtered event")
    end
    for _, c in ipairs({ pub, on_a, on_b, direct }) do c:close() end
  end)

  it("runs an event's pipeline once, on the node it entered: not again where it is delivered", function()
    local pub_a, pub_b, sub = client(a.port), client(b.port), client(b.port)
    sub:sub("twice.>", "1")
    sub:sub("done.>", "2")
    wait_route(pub_a, sub, "twice")
    pub_b:pub("twice.x", "dropped by b's filter")
    pub_a:pub("twice.x", "not b's to filter")
    local got = sub:collect(2, 1.5)
    assert.equal(1, #got)
    assert.equal("not b's to filter", got[1].payload)
    -- a's handler answers a job published on a, once; b's does not run
    pub_a:pub("jobs.1", "{}")
    local done = sub:collect(2, 2)
    assert.equal(1, #done)
    assert.equal("done.jobs.1", done[1].subject)
    assert.equal("a", json.decode(done[1].payload).data.from)
    for _, c in ipairs({ pub_a, pub_b, sub }) do c:close() end
  end)

  it("does not give an echo:false client its own messages, as nats-server does not", function()
    -- The same steps against the cluster's nats-servers, then tide nodes.
    local want = echo_steps(ns[1].port, ns[2].port, ns[3].port)
    local got = echo_steps(a.port, b.port, ns[3].port)
    assert.same({ "MSG echo.b 1 from w " }, want[1])
    assert.same(want[1], got[1])
    assert.same(want[2], got[2])
    assert.same(want[3], got[3])
    -- A subscriber of the cluster itself sees the origin marker on what
    -- an echo:false client published on a node, and nothing added to the
    -- rest (W's message has no header at all).
    local marked, plain = {}, {}
    for _, line in ipairs(got[4]) do
      local subject = line:match("^HMSG (%S+) .*Tide%-Origin=")
      if subject then marked[#marked + 1] = subject else plain[#plain + 1] = line end
    end
    local q = { "echo.a", "echo.h" }
    for _ = 1, 10 do q[#q + 1] = "echo.q" end
    assert.same(q, marked)
    assert.same({ "MSG echo.b 1 from w " }, plain)
  end)

  it("gives a queue group each message of an echo:false member once, with no other member on its node", function()
    -- The cluster prefers the member on the server where p's node
    -- publishes, p's own; with no other member on a, p keeps what it is
    -- given (docs/cluster.md): the group loses nothing and gets nothing twice.
    local p = h.connect(a.port, { connect = '{"verbose":false,"headers":true,"echo":false}' })
    local w = client(b.port)
    p:sub("echoq.x", "1", "g")
    w:sub("echoq.x", "1", "g")
    -- w's interest has reached a's server once a subscriber on b made
    -- after it gets what p publishes
    local probe = client(b.port)
    probe:sub("echoq.probe", "9")
    wait_route(p, probe, "echoq")
    for i = 1, 20 do p:pub("echoq.x", "m" .. i) end
    local seen, total = {}, 0
    for _, c in ipairs({ p, w }) do
      for _, m in ipairs(settle_lines(c, 1)) do
        local body = m:match("^MSG echoq%.x 1 (m%d+) $")
        assert.truthy(body, m)
        assert.is_nil(seen[body], "twice: " .. body)
        seen[body] = true
        total = total + 1
      end
    end
    assert.equal(20, total)
    for _, c in ipairs({ p, w, probe }) do c:close() end
  end)

  it("keeps $TIDE. subjects on their node", function()
    local pub, here, there = client(a.port), client(a.port), client(b.port)
    here:sub("$TIDE.EVENTS.x", "1")
    there:sub("$TIDE.EVENTS.x", "1")
    assert(here:ping())
    assert(there:ping())
    pub:pub("$TIDE.EVENTS.x", "local")
    local m = assert(here:msg(5))
    assert.equal("local", m.payload)
    assert.is_nil((there:msg(1)))
    for _, c in ipairs({ pub, here, there }) do c:close() end
  end)

  it("tide cluster status lists every node, asked through a tide node or a server of the cluster", function()
    for _, port in ipairs({ a.port, ns[2].port }) do
      local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json --timeout 1"):format(h.bin, port))
      assert.equal(0, rc, out)
      local nodes = assert(json.decode(out), out)
      assert.equal(2, #nodes, out)
      for i, want in ipairs({ { "a", a }, { "b", b } }) do
        local n = nodes[i]
        assert.equal(want[1], n.name)
        assert.equal("127.0.0.1:" .. want[2].port, n.address)
        assert.is_true(n.connected)
        assert.truthy(n.upstream:match("^nats://127%.0%.0%.1:%d+$"), n.upstream)
        assert.equal(1, n.rules.revision)
        assert.equal("ok", n.rules.state)
        assert.is_number(n.connections)
        assert.is_number(n.events_per_s)
        assert.equal("", n.last_error)
      end
    end
    local rc, out = h.sh(("'%s' cluster status -s nats://127.0.0.1:%d"):format(h.bin, b.port))
    assert.equal(0, rc, out)
    assert.truthy(out:find("\na +127%.0%.0%.1:" .. a.port), out)
    assert.truthy(out:find("\nb +127%.0%.0%.1:" .. b.port), out)
  end)

  local function deliver_again(prefix)
    local pub, sub = client(a.port), client(b.port)
    sub:sub(prefix .. ".>", "1")
    wait_route(pub, sub, prefix)
    pub:pub(prefix .. ".x", "delivered")
    local m = assert(sub:msg(5))
    assert.equal("delivered", m.payload)
    pub:close()
    sub:close()
  end

  it("moves to another server of the cluster when its own stops", function()
    -- b lists only ns[3]; the cluster told it of the others.
    local before = select(2, b:log():gsub("cluster: reconnected to the upstream", ""))
    ns[3]:stop("INT")
    assert(h.wait_until(function()
      return select(2, b:log():gsub("cluster: reconnected to the upstream", "")) > before
    end, 15), "b did not reconnect:\n" .. b:log())
    deliver_again("moved")
    ns[3] = start_nats(ns[3].spec)
  end)

  it("while the whole cluster is down: /healthz 200, /readyz 503; after a restart it reconnects and delivers", function()
    for i = 1, 3 do ns[i]:stop("INT") end
    assert(h.wait_until(function() return get(b.hport, "/readyz") == 503 end, 10), "readyz stayed 200")
    local code, body = get(b.hport, "/readyz")
    assert.equal(503, code)
    assert.truthy(body:find("cluster upstream not connected", 1, true), body)
    assert.equal(200, (get(b.hport, "/healthz")))
    for i = 1, 3 do ns[i] = start_nats(ns[i].spec) end
    assert(h.wait_until(function() return get(a.hport, "/readyz") == 200 and get(b.hport, "/readyz") == 200 end, 15),
      "the nodes did not reconnect:\n" .. a:log() .. b:log())
    deliver_again("again")
  end)
end)

-- Three routed nats-servers (with JetStream when js); returns them.
local function start_cluster(dir, name, js) return cs:start_cluster(dir, name, js) end

-- A request on a fresh plain connection to port; the answer's payload decoded.
local function js_request(port, subject, body)
  local m = assert(h.request(port, subject, body or ""))
  return assert(json.decode(m.payload), m.payload)
end

describe("cluster mode, streams with backend = \"jetstream\"", function()
  local ns, node, dir

  setup(function()
    dir = h.make_tmpdir("cluster-js")
    ns = start_cluster(dir, "js", true)
    node = start_node("js-a", { ns[1].port },
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n')
  end)

  teardown(function()
    stop(node)
    for i = 1, 3 do stop(ns[i]) end
    h.remove_tmpdir(node.dir)
    h.remove_tmpdir(dir)
  end)

  it("makes the stream in the cluster's JetStream with 3 replicas, and /readyz waits for it", function()
    assert(h.wait_until(function() return get(node.hport, "/readyz") == 200 end, 30),
      "the stream was not made:\n" .. node:log())
    assert.truthy(node:log():find("stream 'orders' created in the cluster's JetStream (3 replicas)", 1, true))
    local info = js_request(ns[2].port, "$JS.API.STREAM.INFO.orders")
    assert.is_nil(info.error)
    assert.equal(3, info.config.num_replicas)
    assert.same({ "orders.>" }, info.config.subjects)
    assert.equal(2, #info.cluster.replicas)
    local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, ns[3].port))
    assert.equal(0, rc, out)
    local st = assert(json.decode(out), out)[1]
    assert.same({ { name = "orders", replicas = 3, state = "bound", error = "" } }, st.streams)
  end)

  it("passes JetStream's PubAck through to the client that published on the node", function()
    local c = client(node.port)
    c:sub("_INBOX.acks.*", "1")
    assert(c:ping())
    c:pub("orders.paid", '{"n":1}', "_INBOX.acks.1")
    local m = assert(c:msg(10))
    local ack = assert(json.decode(m.payload), m.payload)
    assert.equal("orders", ack.stream)
    assert.is_number(ack.seq)
    local info = js_request(ns[3].port, "$JS.API.STREAM.INFO.orders")
    assert.equal(ack.seq, info.state.last_seq)
    c:close()
  end)

  it("binds the stream when the node starts again, and reports one declared with replicas the cluster refuses", function()
    local again = start_node("js-b", { ns[2].port },
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n')
    local other = start_node("js-c", { ns[3].port },
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 5 }\n')
    local ok, err = pcall(function()
      assert(h.wait_until(function() return get(again.hport, "/readyz") == 200 end, 15), again:log())
      assert.truthy(again:log():find("stream 'orders' bound in the cluster's JetStream", 1, true))
      assert(h.wait_until(function() return other:log():find("the cluster refused to update it", 1, true) end, 15),
        other:log())
      local code, body = get(other.hport, "/readyz")
      assert.equal(503, code)
      assert.truthy(body:find("jetstream stream 'orders' is not bound", 1, true), body)
      assert.equal(3, js_request(ns[1].port, "$JS.API.STREAM.INFO.orders").config.num_replicas)
    end)
    for _, s in ipairs({ again, other }) do
      stop(s)
      h.remove_tmpdir(s.dir)
    end
    assert(ok, err)
  end)

  it("gives no PubAck while the upstream is unreachable", function()
    local c = client(node.port)
    c:sub("_INBOX.down.*", "1")
    assert(c:ping())
    for i = 1, 3 do stop(ns[i]) end
    assert(h.wait_until(function() return get(node.hport, "/readyz") == 503 end, 10))
    c:pub("orders.late", "x", "_INBOX.down.1")
    assert.is_nil((c:msg(1.5)))
    c:close()
  end)
end)

describe("cluster mode with the upstream unreachable", function()
  it("starts, serves /healthz, answers /readyz 503, refuses publishes once the buffer is full, then connects", function()
    local port, cport = h.free_port(), h.free_port()
    local dir = h.make_tmpdir("cluster-late")
    local node = start_node("late", { port })
    local ok, err = pcall(function()
      assert.equal(200, (get(node.hport, "/healthz")))
      local code, body = get(node.hport, "/readyz")
      assert.equal(503, code)
      assert.truthy(body:find("cluster upstream not connected", 1, true), body)
      -- libnats keeps 8 MB for the reconnect; past that, each publish is refused.
      local c = client(node.port)
      local big = ("x"):rep(60000)
      local parts = {}
      for _ = 1, 200 do parts[#parts + 1] = ("PUB fill.x %d\r\n%s\r\n"):format(#big, big) end
      assert(c:send(table.concat(parts)))
      local refused = 0
      for _ = 1, 200 do
        local f = c:frame(1)
        if not f then break end
        if f.op == "-ERR" and f.text:find("reconnect buffer is full", 1, true) then refused = refused + 1 end
      end
      assert.is_true(refused >= 40 and refused <= 80, "refused " .. refused .. " of 200")
      c:close()
      -- a subscription made while the upstream is away is there once it connects
      local sub = client(node.port)
      sub:sub("late.>", "1")
      assert(sub:ping())
      -- The upstream appears: the node connects on its own.
      local srv = start_nats { port = port, cport = cport, name = "late", routes = "nats://127.0.0.1:" .. cport,
        dir = dir }
      assert(h.wait_until(function() return get(node.hport, "/readyz") == 200 end, 15),
        "the node did not connect:\n" .. node:log())
      local direct = client(port)
      wait_route(direct, sub, "late")
      direct:pub("late.x", "from the cluster")
      local m = assert(sub:msg(5))
      assert.equal("from the cluster", m.payload)
      sub:close()
      direct:close()
      stop(srv)
    end)
    stop(node)
    h.remove_tmpdir(node.dir)
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

describe("cluster mode with credentials", function()
  it("logs in with user and password; with a wrong password it is never ready, and says why", function()
    local port = h.free_port()
    local ns = keep(h.start_server { bin = h.nats_server_bin(), port = port,
      cmd = { "-a", "127.0.0.1", "-p", tostring(port), "--user", "tide", "--pass", "s3cret" } })
    ns.stop_signal = "INT"
    local good = start_node("good", { port }, "", 'user = "tide", password = "s3cret"')
    local bad
    local ok, err = pcall(function()
      assert(h.wait_until(function() return get(good.hport, "/readyz") == 200 end, 10), good:log())
      local hport = h.free_port()
      bad = h.start_scripted(('cluster { upstream = { "127.0.0.1:%d" }, user = "tide", password = "wrong" }\n')
        :format(port), { args = { "--http", "127.0.0.1:" .. hport }, wait = false })
      keep(bad)
      -- libnats gives up on refused credentials: the node either stops at
      -- start with the reason, or stays up, not ready, with the reason.
      local why = h.wait_until(function()
        if not bad:alive() then
          return bad:log():match("the upstream closed the connection[^\n]*")
        end
        local code, body = get(hport, "/readyz")
        return code == 503 and body and body:match("closed for good[^\"]*")
      end, 10)
      assert(why, bad:log())
    end)
    stop(good)
    stop(bad)
    stop(ns)
    h.remove_tmpdir(good.dir)
    if bad then h.remove_tmpdir(bad.dir) end
    assert(ok, err)
  end)
end)

describe("cluster mode, a reload with other credentials", function()
  -- what a test could not stop itself (a node that did not start)
  teardown(function() for i = #started, 1, -1 do stop(started[i]) end end)

  -- One nats-server with JetStream, two users and its monitoring port; a
  -- node logged in as the first is reloaded with the second's password.
  it("connects again as the new user, keeping its subscriptions and its handlers; refused ones keep the old", function()
    local dir = h.make_tmpdir("cluster-login")
    local port, mport = h.free_port(), h.free_port()
    h.write_file(dir .. "/nats.conf", ([[
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream { store_dir: "%s/js" }
authorization { users = [ { user: tide, password: s3cret }, { user: tide2, password: other } ] }
]]):format(port, mport, dir))
    local ns = keep(h.start_server { bin = h.nats_server_bin(), port = port, cmd = { "-c", dir .. "/nats.conf" } })
    ns.stop_signal = "INT"
    local rules = [[
stream "rl" { subjects = { "rl.>" }, backend = "jetstream" }
consumer "rlc" { stream = "rl" }
on("rl.>", { consumer = "rlc" }, function(e, ctx) ctx.publish("handled." .. e.subject, {}) end)
on("kv.inc", function(e) tide.kv.bucket("rk"):update("n", function(v) return (v or 0) + 1 end) end)
on("kv.read", function(e, ctx) ctx.publish("handled.kv", { n = tide.kv.bucket("rk"):get("n") or 0 }) end)
]]
    local function config(name, login)
      return ('cluster { upstream = { "nats://127.0.0.1:%d" }, name = %q, %s }\n%s'):format(port, name, login, rules)
    end
    local hport = h.free_port()
    local node = keep(h.start_scripted(config("r1", 'user = "tide", password = "s3cret"'),
      { args = { "--http", "127.0.0.1:" .. hport } }))
    local sub, direct
    -- the node's connections as the server sees them: {name = user}
    local function logins()
      local body, code = http.request(("http://127.0.0.1:%d/connz?auth=true"):format(mport))
      local t = {}
      if code ~= 200 then return t end
      for _, conn in ipairs(json.decode(body).connections or {}) do
        if (conn.name or ""):match("^tide ") then t[conn.name] = conn.authorized_user or "?" end
      end
      return t
    end
    -- a message from the server's own client reaches the subscriber on the
    -- node, one from the node reaches the server's client, and the handler
    -- on the node runs on an event stored in JetStream
    local function routes(tag)
      direct:pub("news." .. tag, "to the node")
      local m = assert(sub:msg(5), "nothing from the cluster after " .. tag)
      assert.equal("news." .. tag, m.subject)
      sub:pub("back." .. tag, "from the node")
      m = assert(direct:msg(5), "nothing from the node after " .. tag)
      assert.equal("back." .. tag, m.subject)
      direct:pub("rl." .. tag, "{}")
      m = assert(direct:msg(10), "the handler did not run after " .. tag)
      assert.equal("handled.rl." .. tag, m.subject)
    end
    -- the bucket rk, written by the rules on the node (update: through
    -- JetStream) and read back from the node's copy (its watch), reaches n
    local function counts(n, tag)
      for _ = 1, 2 do sub:pub("kv.inc", "{}") end
      local got
      assert(h.wait_until(function()
        sub:pub("kv.read", "{}")
        local m = direct:msg(0.5)
        while m and m.subject ~= "handled.kv" do m = direct:msg(0.2) end
        got = m and json.decode(m.payload).data.n
        return got == n
      end, 15, 0), ("the bucket's counter is %s, not %d, %s:\n%s"):format(tostring(got), n, tag, node:log()))
      while direct:frame(0.3) do end
    end
    local ok, err = pcall(function()
      assert(h.wait_until(function() return get(hport, "/readyz") == 200 end, 10), node:log())
      sub = client(node.port)
      sub:sub("news.>", "1")
      assert(sub:ping())
      direct = h.connect(port, { connect = '{"verbose":false,"headers":true,"user":"tide","pass":"s3cret"}' })
      direct:sub("back.>", "1")
      direct:sub("handled.>", "2")
      assert(direct:ping())
      local n = 0
      assert(h.wait_until(function()
        n = n + 1
        direct:pub("news.probe", tostring(n))
        local f = sub:frame(0.2)
        return f and f.op == "MSG"
      end, 10, 0), "the node's subscription never reached the server")
      while sub:frame(0.3) do end
      routes("before")
      counts(2, "before the reload")
      assert.same({ ["tide r1"] = "tide" }, logins())

      h.write_file(node.config, config("r2", 'user = "tide2", password = "other"'))
      -- the old connection drains and goes; the new one is the new user's, under the new name
      assert(h.wait_until(function()
        local t = logins()
        return t["tide r2"] == "tide2" and t["tide r1"] == nil
      end, 10), json.encode(logins()) .. "\n" .. node:log())
      routes("after")
      counts(4, "after the reload (the bucket's writes and its watch moved to the new connection)")
      -- the deployed rules moved too: a deploy through the node is stored
      -- (its request subscription), watched and run (the watch)
      local src = h.make_tmpdir("deploy-bundle")
      h.write_file(src .. "/tide.lua", 'on("dep.x", function(e, ctx) ctx.publish("handled.dep", {}) end)\n')
      local rc, out = h.sh(("timeout 30 '%s' deploy '%s' -s 127.0.0.1:%d"):format(h.bin, src, node.port))
      h.remove_tmpdir(src)
      assert.equal(0, rc, out)
      local m
      assert(h.wait_until(function()
        sub:pub("dep.x", "{}") -- enters the node's pipeline
        m = direct:msg(0.5)
        return m and m.subject == "handled.dep"
      end, 15, 0), "the deployed rule never ran:\n" .. node:log())
      while direct:frame(0.5) do end

      -- credentials the server refuses: the node keeps the connection it has
      h.write_file(node.config, config("r3", 'user = "tide2", password = "wrong"'))
      assert(h.wait_until(function() return node:log():match("do not connect") end, 10), node:log())
      assert.same({ ["tide r2"] = "tide2" }, logins())
      routes("refused")
      assert.equal(200, (get(hport, "/readyz")))
    end)
    if sub then sub:close() end
    if direct then direct:close() end
    stop(node)
    stop(ns)
    h.remove_tmpdir(node.dir)
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

describe("cluster mode, a reload with another tls", function()
  -- what a test could not stop itself (a node that did not start)
  teardown(function() for i = #started, 1, -1 do stop(started[i]) end end)

  -- A nats-server that speaks TLS only and wants a client certificate
  -- signed by its CA; the node's certificate changes with each reload.
  it("connects again with a reloaded client certificate; one the server refuses keeps the old connection", function()
    local ts = require "tls_support"
    local certs = h.make_tmpdir("cluster-tls")
    ts.make_certs(certs)
    local port, mport = h.free_port(), h.free_port()
    h.write_file(certs .. "/nats.conf", ([[
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
tls { cert_file: "%s/server.pem", key_file: "%s/server-key.pem", ca_file: "%s/ca.pem", verify: true }
]]):format(port, mport, certs, certs, certs))
    local ns = keep(h.start_server { bin = h.nats_server_bin(), port = port, cmd = { "-c", certs .. "/nats.conf" } })
    ns.stop_signal = "INT"
    local function config(name, cert)
      return ('cluster { upstream = { "tls://127.0.0.1:%d" }, name = %q, tls = { ca = "%s/ca.pem", '
        .. 'cert = "%s/%s.pem", key = "%s/%s-key.pem" } }\n'):format(port, name, certs, certs, cert, certs, cert)
    end
    local hport = h.free_port()
    local node = keep(h.start_scripted(config("t1", "client"), { args = { "--http", "127.0.0.1:" .. hport } }))
    -- the node's connections the server sees: {name = tls version}
    local function tls_conns()
      local body, code = http.request(("http://127.0.0.1:%d/connz"):format(mport))
      local t = {}
      if code ~= 200 then return t end
      for _, conn in ipairs(json.decode(body).connections or {}) do
        if (conn.name or ""):match("^tide ") then t[conn.name] = conn.tls_version or "none" end
      end
      return t
    end
    local ok, err = pcall(function()
      assert(h.wait_until(function() return get(hport, "/readyz") == 200 end, 10), node:log())
      assert.truthy(tls_conns()["tide t1"])
      -- a certificate of another CA: refused by the server, the node stays as it is
      h.write_file(node.config, config("t2", "intruder"))
      assert(h.wait_until(function() return node:log():match("do not connect") end, 10), node:log())
      local t = tls_conns()
      assert.truthy(t["tide t1"], json.encode(t))
      assert.is_nil(t["tide t2"])
      -- another certificate of its CA: the node connects again with it
      h.write_file(node.config, config("t3", "stranger"))
      assert(h.wait_until(function()
        t = tls_conns()
        return t["tide t3"] and not t["tide t1"]
      end, 10), json.encode(t) .. "\n" .. node:log())
      assert.are_not.equal("none", t["tide t3"])
      assert.equal(200, (get(hport, "/readyz")))
    end)
    stop(node)
    stop(ns)
    h.remove_tmpdir(node.dir)
    h.remove_tmpdir(certs)
    assert(ok, err)
  end)
end)

describe("cluster mode, stopped while reconnecting", function()
  -- libnats hands messages to the node from its own threads; a node told
  -- to stop while the upstream is gone and messages are still on their way
  -- gives every one back to libnats before libnats shuts down (a message
  -- freed after that crashed the node or, under ASan, leaked libnats'
  -- end markers of the closed subscriptions).
  it("exits 0 with a clean log, again and again, when SIGTERM comes while it reconnects under a flood", function()
    for round, delay in ipairs({ 0, 0.02, 0.1, 0.3, 0, 0.05 }) do
      local port = h.free_port()
      local upstream = keep(h.start_server { bin = h.nats_server_bin(), port = port,
                                             cmd = { "-a", "127.0.0.1", "-p", tostring(port) } })
      local node = start_node("r" .. round, { port })
      assert(h.wait_until(function() return node:log():find("connected to the upstream", 1, true) end, 10),
        "the node did not connect:\n" .. node:log())
      local subs = {}
      for k = 1, 4 do
        local c = client(node.port)
        c:sub("x." .. k, tostring(k))
        c:sub("y.>", tostring(10 + k))
        assert(c:ping())
        subs[k] = c
      end
      local pub = h.connect(port)
      pub:send('CONNECT {"verbose":false}\r\n')
      wait_route(pub, subs[1], "y")
      local batch = {}
      for k = 1, 200 do batch[#batch + 1] = ("PUB x.%d 10\r\n0123456789\r\nPUB y.a 5\r\nhello\r\n"):format(k % 4 + 1) end
      batch = table.concat(batch)
      for _ = 1, 500 do pub:send(batch) end
      h.proc.sleep(0.3) -- the node is still taking in the flood when its upstream goes
      upstream:kill()
      h.proc.sleep(delay)
      local st, code = node:stop("TERM")
      local log = node:log()
      for _, c in ipairs(subs) do c:close() end
      pub:close()
      assert.is_nil(log:find("Sanitizer", 1, true), log)
      assert.are.equal("exited", st, log)
      assert.are.equal(0, code, log)
    end
  end)
end)

describe("cluster { } settings", function()
  local function check(text)
    local dir = h.make_tmpdir("cluster-check")
    h.write_file(dir .. "/tide.lua", text)
    local rc, out = h.sh(("'%s' check '%s/tide.lua'"):format(h.bin, dir))
    h.remove_tmpdir(dir)
    return rc, out
  end

  it("accepts the documented shape", function()
    local rc, out = check('cluster { upstream = { "nats://10.0.0.1:4222", "10.0.0.2:4222" }, name = "edge-1",'
      .. ' user = "tide", password = "pw" }')
    assert.equal(0, rc, out)
  end)

  for _, case in ipairs({
    { "cluster { name = 'x' }", "upstream = { \"nats://host:port\", ... } is required" },
    { "cluster { upstream = {} }", "upstream must list 1 to 16 servers" },
    { "cluster { upstream = { 'nats://h' } }", "host:port expected" },
    { "cluster { upstream = { 'http://h:1' } }", "the scheme must be nats:// or tls://" },
    { "cluster { upstream = { 'h:1' }, user = 'u' }", "user needs password" },
    { "cluster { upstream = { 'h:1' }, password = 'p' }", "password needs user" },
    { "cluster { upstream = { 'h:1' }, user = 'u', password = 'p', token = 't' }", "say one of user/password, token or nkey" },
    { "cluster { upstream = { 'h:1' }, name = 'a.b' }", "must be one subject token" },
    { "cluster { upstream = { 'h:1' }, nkey = 'missing.nk' }", "cluster: nkey: cannot read" },
    { "cluster { upstream = { 'h:1' }, tls = { cert = 'missing.pem' } }", "cluster.tls: cert: cannot read" },
    { "cluster { upstream = { 'h:1' }, port = 1 }", "cluster: unknown setting 'port'" },
    { "cluster { upstream = { 'h:1' } }\ncluster { upstream = { 'h:1' } }", "cluster: declared twice" },
    { "stream 's' { subjects = { 'a.>' }, backend = 'jetstream' }", "backend = \"jetstream\" needs cluster {" },
    { "stream 's' { subjects = { 'a.>' }, backend = 'disk' }", "backend must be \"local\" or \"jetstream\"" },
    { "stream 's' { subjects = { 'a.>' }, replicas = 3 }", "replicas needs backend = \"jetstream\"" },
    { "stream 's' { subjects = { 'a.>' }, backend = 'jetstream', replicas = 7 }", "replicas must be 1 to 5" },
    { "stream 's' { subjects = { 'a.>' }, backend = 'jetstream', fsync = 'never' }", "unknown setting 'fsync'" },
    { "stream 's' { subjects = { '$JS.x' }, backend = 'jetstream' }", "not a subject pattern that travels" },
    { "stream 's' { subjects = { 'a.>' } }\nstream 's' { subjects = { 'b.>' }, backend = 'jetstream' }",
      "stream 's' is declared twice" },
    { "cluster { upstream = { 'h:1' } }\nstream 's' { subjects = { 'a.>' }, backend = 'jetstream' }\n" ..
      "consumer 'c' { stream = 's', deliver = 'out' }", "its consumers take Lua handlers only" },
    { "cluster { upstream = { 'h:1' } }\nconsumer 'c' { stream = 's', ordered_by = 'subject' }\n" ..
      "stream 's' { subjects = { 'a.>' }, backend = 'jetstream' }", "its consumers take Lua handlers only" },
    { "cluster { upstream = { 'h:1' } }\nstream 's' { subjects = { 'a.>' }, backend = 'jetstream' }\n" ..
      "consumer 'c' { stream = 's' }\nconsumer 'c' { stream = 's' }", "consumer 'c' is declared twice" },
  }) do
    it("refuses " .. case[1]:gsub("\n", " "), function()
      local rc, out = check(case[1])
      assert.are_not.equal(0, rc)
      assert.truthy(out:find(case[2], 1, true), out)
    end)
  end
end)
