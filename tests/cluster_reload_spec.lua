-- Cluster mode and reloads (docs/cluster.md): a reload that changes
-- `upstream` connects to the new servers; one that adds cluster { } to a
-- node started without it joins the cluster; one that removes it leaves
-- (its clients' messages delivered on the node alone, every PubAck it
-- passed on still answered, the others refused with 503); and
-- `tide cluster status --node NAME`.  Three routed nats-servers with
-- JetStream and three tide nodes, all on loopback.
local h = require "helpers"
local json = require "dkjson"

local cs = require("cluster_support").new() -- every process a test starts, stopped in teardown

-- `tide cluster status` through port with more arguments: exit code, output.
local function status(port, args)
  return h.sh(("'%s' cluster status -s 127.0.0.1:%d %s"):format(h.bin, port, args))
end

-- The JSON status of the node called name, asked through port; nil when
-- it does not answer.
local function node_status(port, name)
  local rc, out = status(port, "--json --timeout 1")
  if rc ~= 0 then return nil end
  for _, o in ipairs(json.decode(out) or {}) do
    if o.name == name then return o end
  end
end

-- A JetStream API request straight to a nats-server: the answer, decoded.
local function js_api(port, subject, body)
  local m = assert(h.request(port, subject, body or ""))
  return assert(json.decode(m.payload), m.payload)
end

-- Waits until sub (subscribed to `subject`.>) gets what `from` publishes
-- on subject.probe; raises after 15 s.
local function wait_route(from, sub, subject, what)
  assert(h.wait_until(function()
    from:pub(subject .. ".probe", "{}")
    local f = sub:frame(0.2)
    return f and f.op == "MSG"
  end, 15, 0), what)
  while sub:frame(0.3) do end
end

-- True when sub receives nothing within secs seconds.
local function quiet(sub, secs)
  local f = sub:frame(secs)
  return f == nil, f
end

describe("cluster mode, reloads that change upstream, join or leave the cluster", function()
  local ns, a, b, dir
  local A_RULES = 'stream "lv" { subjects = { "lv.>" }, backend = "jetstream", replicas = 3 }\n'
  -- a's rules out of the cluster: tide.kv is the node's own store again
  local KV_RULE = 'on("kvt.x", function(e, ctx) tide.kv.set("k", "own") ctx.publish("news.kv", { v = tide.kv.get("k") }) end)\n'

  setup(function()
    dir = h.make_tmpdir("cluster-reload")
    ns = cs:start_cluster(dir, "rl", true)
    a = cs:start_node("a", { ns[1].port }, A_RULES)
    b = cs:start_node("b", { ns[2].port }, "-- b\n")
    cs.wait_ready({ a, b }, 30)
  end)

  teardown(function()
    cs:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("tide cluster status --node shows that node alone, and exits 1 when no node of that name answers", function()
    local rc, out
    assert(h.wait_until(function()
      rc, out = status(ns[3].port, "--node b --timeout 3")
      return rc == 0
    end, 10), out)
    assert.truthy(out:match("^NAME%s+ADDRESS%s+UPSTREAM"), out)
    assert.truthy(out:match("\nb%s+127%.0%.0%.1:" .. b.port), out)
    assert.falsy(out:match("\na%s"), out)
    rc, out = status(ns[3].port, "--node a --json --timeout 3")
    assert.equal(0, rc, out)
    local t = json.decode(out)
    assert.equal(1, #t, out)
    assert.equal("a", t[1].name)
    -- every node, as before
    rc, out = status(ns[3].port, "--timeout 1")
    assert.equal(0, rc, out)
    assert.truthy(out:match("\na%s") and out:match("\nb%s"), out)
    rc, out = status(ns[3].port, "--node nosuch --timeout 1")
    assert.equal(1, rc, out)
    assert.truthy(out:find("no tide node called nosuch answered", 1, true), out)
  end)

  it("connects to the servers of a reloaded upstream and routes through them", function()
    local st = assert(node_status(ns[3].port, "b"))
    assert.equal("nats://127.0.0.1:" .. ns[2].port, st.upstream)
    h.write_file(b.config, cs.cluster_block("b", { ns[3].port }) .. "-- b, upstream moved\n")
    assert(h.wait_until(function()
      st = node_status(ns[1].port, "b")
      return st and st.upstream == "nats://127.0.0.1:" .. ns[3].port and st.connected
    end, 15), json.encode(st or {}) .. "\n" .. b:log())
    -- both ways between a and b, through the new server
    local sa, sb = cs.client(a.port), cs.client(b.port)
    sa:sub("mv.>", "1")
    sb:sub("mv.>", "1")
    assert(sa:ping() and sb:ping())
    wait_route(sa, sb, "mv", "a's publish never reached b after the upstream changed:\n" .. b:log())
    wait_route(sb, sa, "mv", "b's publish never reached a after the upstream changed:\n" .. b:log())
    sa:close()
    sb:close()
    assert.equal(200, (cs.get(b.hport, "/readyz")))
  end)

  it("joins the cluster when a reload adds cluster { } to a node started without it", function()
    local hport = h.free_port()
    local c = cs:keep(h.start_scripted("-- alone\n", { args = { "--http", "127.0.0.1:" .. hport } }))
    assert.equal(200, (cs.get(hport, "/readyz")))
    local sc, sb = cs.client(c.port), cs.client(b.port)
    sc:sub("jn.>", "1")
    sb:sub("jn.>", "1")
    assert(sc:ping() and sb:ping())
    h.write_file(c.config, cs.cluster_block("c", { ns[3].port }) .. "-- joined\n")
    assert(h.wait_until(function() return status(ns[1].port, "--node c --timeout 1") == 0 end, 15), c:log())
    -- the subscription made before the join is in the cluster too, both ways
    wait_route(sb, sc, "jn", "b's publish never reached the node that joined:\n" .. c:log())
    wait_route(sc, sb, "jn", "the joined node's publish never reached b:\n" .. c:log())
    assert(h.wait_until(function() return cs.get(hport, "/readyz") == 200 end, 10), c:log())
    sc:close()
    sb:close()
  end)

  it("leaves the cluster when a reload removes cluster { }: local delivery, every PubAck answered or refused", function()
    local sa, sb = cs.client(a.port), cs.client(b.port)
    sa:sub("news.>", "1")
    sb:sub("news.>", "1")
    assert(sa:ping() and sb:ping())
    wait_route(sa, sb, "news", "a's publish never reached b")
    wait_route(sb, sa, "news", "b's publish never reached a")
    -- rules deployed to the cluster run on a while it is a member
    local src = h.make_tmpdir("deploy-bundle")
    h.write_file(src .. "/tide.lua", 'on("dep.x", function(e, ctx) ctx.publish("news.deployed", {}) end)\n')
    local rc, out
    -- the rules bucket is made once JetStream answers the nodes, a few seconds after the start
    h.wait_until(function()
      rc, out = h.sh(("timeout 30 '%s' deploy '%s' -s 127.0.0.1:%d"):format(h.bin, src, ns[3].port))
      return rc == 0
    end, 30, 1)
    h.remove_tmpdir(src)
    assert.equal(0, rc, out)
    assert(h.wait_until(function()
      sa:pub("dep.x", "{}")
      local f = sa:frame(0.3)
      return f and f.subject == "news.deployed"
    end, 15, 0), "the deployed rule never ran on a:\n" .. a:log())
    while sa:frame(0.3) do end
    -- a publisher on a keeps 20 requests to the jetstream-backed stream in
    -- flight across the reload: each is answered by JetStream's PubAck or,
    -- once a stopped sending upstream, by a 503 (no responders here)
    local p = cs.client(a.port)
    p:sub("_INBOX.lv.*", "9")
    assert(p:ping())
    local pending, npending, acked, refused, n = {}, 0, {}, 0, 0
    local function send_one()
      n = n + 1
      pending["_INBOX.lv." .. n] = true
      npending = npending + 1
      p:hpub("lv." .. n, { { "Nats-Msg-Id", "m" .. n } }, "event " .. n, "_INBOX.lv." .. n)
    end
    -- the next answer: true when it answered a pending request
    local function take()
      local f = p:frame(5)
      assert(f, ("%d requests got no answer at all (of %d; %d acked, %d refused):\n%s"):format(npending, n, #acked,
        refused, a:log()))
      if not ((f.op == "MSG" or f.op == "HMSG") and pending[f.subject]) then return false end
      pending[f.subject] = nil
      npending = npending - 1
      if f.op == "HMSG" and f.headers:match("^NATS/1%.0 503") then
        refused = refused + 1
      else
        local ack = assert(json.decode(f.payload), f.payload)
        assert.is_nil(ack.error, f.payload)
        acked[#acked + 1] = ack.seq
      end
      return true
    end
    local function pump(done, secs, what)
      local deadline = h.proc.now() + secs
      while not done() do
        assert(h.proc.now() < deadline, what .. ":\n" .. a:log())
        if take() then send_one() end
      end
    end
    for _ = 1, 20 do send_one() end
    pump(function() return #acked >= 40 end, 15, "JetStream did not ack a's publishes")
    h.write_file(a.config, KV_RULE)
    pump(function() return refused >= 100 end, 20, "a's publishes still reach JetStream after the reload")
    while npending > 0 do take() end
    assert.is_true(#acked > 40, ("%d acked, %d refused"):format(#acked, refused))
    -- the node is out: it no longer answers the cluster's status
    assert(h.wait_until(function() return status(ns[3].port, "--node a --timeout 1") == 1 end, 15), a:log())
    assert(h.wait_until(function() return cs.get(a.hport, "/readyz") == 200 end, 10), a:log())
    assert.truthy(a:log():find("out of the cluster", 1, true), a:log())
    -- a's publish reaches its own subscriber and nobody on b; b's no longer reaches a
    while sa:frame(0.3) do end
    while sb:frame(0.3) do end
    sa:pub("news.after", "from a")
    local m = assert(sa:msg(5), "a's subscriber did not get a's publish after leaving")
    assert.equal("news.after", m.subject)
    assert(quiet(sb, 1.5), "b's subscriber got a's publish after a left")
    sb:pub("news.fromb", "from b")
    assert(quiet(sa, 1.5), "a's subscriber got b's publish after a left")
    -- a runs its own files alone, with its own store
    sa:pub("dep.x", "{}")
    assert(quiet(sa, 1), "a still runs the deployed rules after leaving")
    sa:pub("kvt.x", "{}")
    m = assert(sa:msg(5), "a's own rule did not run after leaving:\n" .. a:log())
    assert.equal("news.kv", m.subject)
    assert.equal("own", json.decode(m.payload).data.v, m.payload)
    -- nothing acked is lost: the stream holds exactly what was acked
    local info = js_api(ns[3].port, "$JS.API.STREAM.INFO.lv")
    assert.equal(#acked, info.state.messages, json.encode(info))
    for _, seq in ipairs(acked) do
      local got = js_api(ns[2].port, "$JS.API.STREAM.MSG.GET.lv", json.encode({ seq = seq }))
      assert.is_nil(got.error, json.encode(got))
    end
    sa:close()
    sb:close()
    p:close()
  end)

  it("joins again when a reload puts cluster { } back, and leaves again when it goes", function()
    h.write_file(a.config, cs.cluster_block("a", { ns[1].port }) .. "-- a, back in the cluster\n")
    assert(h.wait_until(function() return status(ns[3].port, "--node a --timeout 1") == 0 end, 15), a:log())
    local sa, sb = cs.client(a.port), cs.client(b.port)
    sa:sub("again.>", "1")
    sb:sub("again.>", "1")
    assert(sa:ping() and sb:ping())
    wait_route(sa, sb, "again", "a's publish never reached b after a joined again:\n" .. a:log())
    wait_route(sb, sa, "again", "b's publish never reached a after a joined again:\n" .. a:log())
    h.write_file(a.config, "-- a, out again\n")
    assert(h.wait_until(function() return status(ns[3].port, "--node a --timeout 1") == 1 end, 15), a:log())
    assert(h.wait_until(function() return cs.get(a.hport, "/readyz") == 200 end, 10), a:log())
    while sb:frame(0.3) do end
    sa:pub("again.after", "{}")
    assert(sa:msg(5), "a's subscriber did not get a's publish after leaving again")
    assert(quiet(sb, 1.5), "b's subscriber got a's publish after a left again")
    sa:close()
    sb:close()
  end)

  it("a node that left is ready on its own without the cluster's servers, while a member is not", function()
    for i = 1, 3 do cs.stop(ns[i]) end
    assert(h.wait_until(function() return cs.get(b.hport, "/readyz") == 503 end, 15), b:log())
    local code, body = cs.get(a.hport, "/readyz")
    assert.equal(200, code, body)
    -- and keeps delivering on its own
    local sa = cs.client(a.port)
    sa:sub("solo.>", "1")
    assert(sa:ping())
    sa:pub("solo.x", "{}")
    assert(sa:msg(5), "a's subscriber got nothing with the cluster's servers gone")
    sa:close()
  end)
end)
