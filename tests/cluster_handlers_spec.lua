-- Cluster mode (docs/cluster.md): Lua handlers on consumers of a stream
-- kept in the cluster's JetStream.  Each consumer is a durable pull
-- consumer there, shared by the tide nodes: an event is handled by one
-- node at a time, acked after its handler returns, handed to another node
-- after ack_wait when a node dies, dead-lettered after max_deliver.  Three
-- routed nats-servers with JetStream and two tide nodes, all on loopback.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"
local cs = require "cluster_support"
local stop, get, client, watcher, client_kv = cs.stop, cs.get, cs.client, cs.watcher, cs.client_kv

local started = {} -- every process a test starts, stopped in teardown

local function keep(srv)
  started[#started + 1] = srv
  return srv
end

-- Sends a signal by name (STOP, CONT) to a process a test started.
local function signal(srv, name)
  assert(h.proc.kill(srv.pid, name))
end

local function proc_cont(srv)
  h.proc.kill(srv.pid, "CONT")
end

-- The rules every node loads: NAME is the node's name.  A handler that
-- spins `spin` iterations per event (so that work is in flight when a node
-- dies), refuses events with data.fail, and reports each event it handled.
-- An event with data.fx = TAG has an effect: its n under the key TAG.<id>
-- of bucket fx, written only when the key has no value yet (the event's
-- id as idempotency key), and a naive count of the runs under TAG in
-- bucket runs.  An event with data.flaky returns false (nak) on its first
-- delivery after its effect: a run whose effect is stored and whose event
-- comes back all the same, on purpose, whatever the faults do.
local RULES = [[
stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }
stream "dead" { subjects = { "dead.>" }, backend = "jetstream", replicas = 3 }
consumer "billing" { stream = "orders", filter = "orders.paid", ack_wait = "2s", max_deliver = 3, max_ack_pending = 64,
                     dead_letter = "dead.billing" }
local fx, runs = tide.kv.bucket("fx"), tide.kv.bucket("runs")
on("orders.paid", { consumer = "billing" }, function(e, ctx, meta)
  if e.data.fail then error("refused on purpose") end
  for i = 1, (e.data.spin or 0) do end
  local tag, n = e.data.fx, e.data.n
  if tag then
    fx:update(tag .. "." .. e.id, function(v) return v or n end)
    runs:update(tag, function(v) return (v or 0) + 1 end)
  end
  ctx.publish("handled.NAME", { n = n, seq = meta.seq, deliveries = meta.deliveries, flaky = e.data.flaky })
  if e.data.flaky and meta.deliveries == 1 then return false end
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

-- 1 when every node of nodes has loaded its replica of the buckets fx
-- and runs (their writes go to JetStream and their updates can run).
local function replicas_loaded(nodes)
  for _, n in ipairs(nodes) do
    local log = n:log()
    if not (log:find("bucket fx: replica loaded", 1, true) and log:find("bucket runs: replica loaded", 1, true)) then
      return false
    end
  end
  return true
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
        if d.deliveries and d.deliveries > 1 and not d.flaky and not into.first_redelivery then
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

-- Waits until consumer billing, asked through the server at port, has
-- no event left to hand out nor in flight: every event acked (a handler's
-- ack waits for its bucket writes) or given up.
local function wait_drained(port, timeout)
  local info
  local ok = h.wait_until(function()
    local m = h.request(port, "$JS.API.CONSUMER.INFO.orders.billing", "")
    info = m and json.decode(m.payload)
    return info and info.num_ack_pending == 0 and info.num_pending == 0
  end, timeout or 60)
  assert(ok, "events stayed pending in the consumer: " .. json.encode(info))
end

-- What the handlers report once the consumer is drained: what sub still
-- holds, read until a second brings no report.
local function collect_rest(sub, into)
  local function total()
    local t = 0
    for _, c in pairs(into.nodes) do t = t + c end
    return t
  end
  local before
  repeat
    before = total()
    collect_handled(sub, into, function() return false end, 1)
  until total() == before
  return into
end

-- The effects of the events tagged tag (ids idp..n, n from first to last
-- sent), read through the cluster at port once the consumer is drained:
-- every acked event's key holds its n, no key belongs to an event not
-- sent, and the runs the handlers reported (got) and the naive count of
-- runs both exceed the keys, since some runs were repeated (the flaky
-- events at least).  Returns the numbers, for the failure messages.
-- Waits until every node that answers the cluster status through port
-- holds bucket fx as far as its stream's last sequence: a node's copy
-- follows the bucket after a fault (a watch that went quiet short of the
-- stream is started again), so its updates do not wait for it.  Raises
-- after timeout seconds with what each node holds.
local function copies_current(port, timeout)
  local js = require "js_support"
  local last, held, out = nil, {}, ""
  local ok = h.wait_until(function()
    local info = js.api(port, "$JS.API.STREAM.INFO.KV_fx", nil, 5)
    last = info and info.state and info.state.last_seq
    local rc
    rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, port))
    if not last or rc ~= 0 then return false end
    held = {}
    local all = true
    for _, node in ipairs(json.decode(out) or {}) do
      for _, bk in ipairs(node.buckets or {}) do
        if bk.name == "fx" then
          held[#held + 1] = ("%s at %d"):format(node.name, bk.last_seq)
          all = all and bk.last_seq >= last
        end
      end
    end
    return all and #held > 0
  end, timeout, 0.5)
  assert(ok, ("the nodes' copies of fx did not reach the stream's %s: %s\n%s"):format(tostring(last),
    table.concat(held, ", "), out))
end

local function check_effects(port, tag, idp, first, last, acks, got, sub)
  wait_drained(port)
  collect_rest(sub, got)
  local t_drained = socket.gettime()
  copies_current(port, 20)
  local caught_up = socket.gettime() - t_drained
  -- An event given up after max_deliver is out of the consumer while the
  -- write of a node that handled it may still be queued there, and a
  -- JetStream API request may time out while leaders are elected: read
  -- again until every acked event's key is there, or 90 s have passed.
  local keys, nkeys, stray, lost, t0 = nil, 0, {}, {}, socket.gettime()
  h.wait_until(function()
    local ok, seen = pcall(client_kv, port, "fx", "dump", tag)
    if not ok then return false end
    keys, nkeys, stray, lost = seen, 0, {}, {}
    for k, v in pairs(keys) do
      nkeys = nkeys + 1
      local n = tonumber(k:match("^" .. tag .. "%." .. idp .. "(%-?%d+)$"))
      if not n or n < first or n > last or tonumber(v) ~= n then stray[#stray + 1] = k .. "=" .. v end
    end
    for n in pairs(acks) do
      if not keys[("%s.%s%d"):format(tag, idp, n)] then lost[#lost + 1] = n end
    end
    return #lost == 0
  end, 90, 1)
  assert(keys, "the bucket fx could not be read through the cluster")
  local waited = socket.gettime() - t0
  local nacked, runs, again, flaky = 0, 0, 0, 0
  for _ in pairs(acks) do nacked = nacked + 1 end
  for n = first, last do flaky = flaky + (n % 50 == 0 and 1 or 0) end
  for n, nodes in pairs(got.by) do
    if n >= first and n <= last then
      runs = runs + #nodes
      again = again + (#nodes > 1 and 1 or 0)
    end
  end
  local seen = assert(h.wait_until(function()
    local ok, v = pcall(client_kv, port, "runs", "read", tag)
    return ok and v
  end, 30, 1), "the bucket runs could not be read through the cluster")
  local count = tonumber(seen[tag] and seen[tag].value) or 0
  local report = ("%s: %d keys, %d acked, %d handler runs seen (%d events run more than once, %d of them flaky), "
    .. "naive count %d; copies current after %.1fs, keys read after %.1fs"):format(tag, nkeys, nacked, runs, again,
    flaky, count, caught_up, waited)
  print("\n  " .. report)
  table.sort(lost)
  assert.same({}, lost, "acked events without their effect; " .. report)
  assert.same({}, stray, "keys of events not sent, or with another value; " .. report)
  assert.truthy(again > 0 and runs > nkeys, "no run was repeated; " .. report)
  assert.truthy(count > nkeys, "the naive count did not count the repeated runs; " .. report)
  return report
end

describe("cluster mode, handlers on a consumer of a jetstream-backed stream", function()
  local ns, a, b, dir, watch

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-handlers")
    ns = cs.start_cluster(dir, "tidehandlers", keep)
    a = start_node("ha", { ns[1].port })
    b = start_node("hb", { ns[3].port })
    assert(h.wait_until(function() return get(a.hport, "/readyz") == 200 and get(b.hport, "/readyz") == 200 end, 30),
      "the nodes did not get ready:\n" .. a:log() .. b:log())
    assert(h.wait_until(function()
      return a:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
        and b:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
    end, 20), "the consumer was not made:\n" .. a:log() .. b:log())
    assert(h.wait_until(function() return replicas_loaded { a, b } end, 30),
      "the buckets were not made and watched:\n" .. a:log() .. b:log())
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
    for i = 1, N do events[i] = { n = i, spin = 2000000 } end
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
    for i = 1, N do events[i] = { n = 1000 + i, spin = 1000000, fx = "kill", flaky = i % 50 == 0 or nil } end
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
    -- Bounded by the work, not by ack_wait: on a loaded machine (the suite
    -- runs specs side by side) one node's share of 1,000 spins takes a while.
    collect_handled(watch, got, covers(acks), 90)
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
    -- the effects through the cluster: one key per event, though runs were repeated
    check_effects(ns[1].port, "kill", "e", 1001, 1000 + N, acks, got, watch)
    pub:close()
  end)
end)

-- Publishes rounds of `per` events (n from first on) on pub, one round
-- every `every` seconds for `secs` seconds, calling during(elapsed) between
-- rounds; then waits up to `drain` seconds for late PubAcks.  Returns the
-- set of the n JetStream acked and how many were sent.  The events have
-- the effect tagged tag (every 50th flaky).
local function publish_during(pub, first, per, every, secs, during, drain, spin, tag)
  pub:sub("_INBOX.fault.*", "98")
  assert(pub:ping())
  local acks, sent, t0 = {}, 0, socket.gettime()
  local function read(until_t)
    while socket.gettime() < until_t do
      local f = pub:frame(math.max(0.01, until_t - socket.gettime()))
      if f and (f.op == "MSG" or f.op == "HMSG") and f.subject:match("^_INBOX%.fault%.") then
        local a = json.decode(f.payload)
        if a and a.seq and not a.error then acks[tonumber(f.subject:match("(%d+)$"))] = true end
      end
    end
  end
  while socket.gettime() - t0 < secs do
    local parts = {}
    for _ = 1, per do
      local n = first + sent
      sent = sent + 1
      local body = json.encode { specversion = "1.0", id = "f" .. n, source = "spec", type = "orders.paid",
                                 data = { n = n, spin = spin or 100000, fx = tag, flaky = tag and n % 50 == 0 or nil } }
      parts[#parts + 1] = ("PUB orders.paid _INBOX.fault.%d %d\r\n%s\r\n"):format(n, #body, body)
    end
    assert(pub:send(table.concat(parts)))
    read(socket.gettime() + every)
    if during then during(socket.gettime() - t0) end
  end
  read(socket.gettime() + drain)
  return acks, sent
end

local function status_of(port)
  local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, port))
  assert.equal(0, rc, out)
  local by = {}
  for _, node in ipairs(assert(json.decode(out), out)) do by[node.name] = node end
  return by, out
end

describe("cluster mode, handlers while servers of the cluster fail", function()
  local ns, fa, fb, dir

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-faults")
    ns = cs.start_cluster(dir, "tidehandlers", keep)
    fa = start_node("fa", { ns[1].port, ns[2].port })
    fb = start_node("fb", { ns[3].port })
    assert(h.wait_until(function()
      return fa:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
        and fb:log():find("consumer 'billing' on stream 'orders' ready", 1, true)
    end, 30), "the consumer was not made:\n" .. fa:log() .. fb:log())
    assert(h.wait_until(function() return replicas_loaded { fa, fb } end, 30),
      "the buckets were not made and watched:\n" .. fa:log() .. fb:log())
  end)

  teardown(function()
    for _, s in ipairs(ns or {}) do if s:alive() then proc_cont(s) end end
    for i = #started, 1, -1 do stop(started[i]) end
    for _, s in ipairs(started) do if s.dir then h.remove_tmpdir(s.dir) end end
    h.remove_tmpdir(dir)
  end)

  it("a node's server paused (SIGSTOP) 10 s: its handlers pause and resume, no acked event is lost", function()
    local w = watcher(ns[2].port, ns[1].port)
    local pub = client(ns[2].port)
    local stopped, resumed = false, false
    local acks, sent = publish_during(pub, 1, 20, 0.25, 14, function(t)
      if t >= 1 and not stopped then
        stopped = true
        signal(ns[3], "STOP")
      elseif t >= 11 and not resumed then
        resumed = true
        signal(ns[3], "CONT")
      end
    end, 5, nil, "stop")
    assert.truthy(stopped and resumed)
    local got = collect_handled(w, { by = {}, nodes = {} }, covers(acks), 40)
    local missing = {}
    for n in pairs(acks) do if not got.by[n] then missing[#missing + 1] = n end end
    assert.same({}, missing)
    check_effects(ns[1].port, "stop", "f", 1, sent, acks, got, w)
    local log = fb:log()
    assert.truthy(log:find("disconnected from the upstream", 1, true), log)
    assert.truthy(log:find("handlers on jetstream consumers paused", 1, true), log)
    assert(h.wait_until(function() return fb:log():find("handlers on jetstream consumers resume", 1, true) end, 15),
      fb:log())
    local st, out = status_of(ns[1].port)
    assert.truthy(st.fb and st.fb.disconnects >= 1 and st.fb.reconnects >= 1 and st.fb.handler_pauses >= 1, out)
    assert.is_false(st.fb.handlers_paused)
    -- fb takes work again
    local before = 0
    for _, c in ipairs(st.fb.consumers) do before = before + c.handled end
    -- (batches of slow events until it has one, with fa stopped: fa,
    -- pulling too, could otherwise take every batch on a loaded machine;
    -- what fa's open pulls hold comes to fb after ack_wait)
    signal(fa, "STOP")
    local pub2, k = client(fb.port), 0
    local took = h.wait_until(function()
      local more = {}
      for i = 1, 50 do more[i] = { n = 5000 + k + i, spin = 1000000 } end
      k = k + 50
      publish_acked(pub2, more)
      local s = status_of(ns[1].port)
      return s.fb and s.fb.consumers[1].handled > before
    end, 60, 0.5) -- its acks wait for its bucket writes, whose watch may restart more than once after the pause
    proc_cont(fa)
    assert(took, "fb handled nothing after it resumed:\n" .. fb:log())
    pub:close()
    pub2:close()
    w:close()
  end)

  it("a server killed (-9) while publishers and handlers run: every acked event is handled", function()
    local st = status_of(ns[3].port)
    local victim
    for i = 1, 2 do
      if st.fa.upstream == ("nats://127.0.0.1:%d"):format(ns[i].port) then victim = ns[i] end
    end
    assert.truthy(victim, "fa's upstream is none of its servers: " .. tostring(st.fa.upstream))
    local w = watcher(ns[3].port, victim == ns[1] and ns[2].port or ns[1].port)
    local pub = client(ns[3].port)
    local killed = false
    -- JetStream elects new leaders for what the dead server led (seconds):
    -- publishes meanwhile get no PubAck; publishing goes on past that.
    local acks, sent = publish_during(pub, 10001, 20, 0.25, 15, function(t)
      if t >= 1 and not killed then
        killed = true
        victim:kill()
      end
    end, 5, nil, "srvkill")
    assert.truthy(killed)
    local late = 0
    for n in pairs(acks) do if n > 10001 + sent * 0.75 then late = late + 1 end end
    assert.truthy(late > 0, "JetStream acked nothing in the last quarter:\n" .. fa:log())
    local got = collect_handled(w, { by = {}, nodes = {} }, covers(acks), 40)
    local missing = {}
    for n in pairs(acks) do if not got.by[n] then missing[#missing + 1] = n end end
    assert.same({}, missing)
    check_effects(ns[3].port, "srvkill", "f", 10001, 10000 + sent, acks, got, w)
    assert(h.wait_until(function() return fa:log():find("reconnected to the upstream", 1, true) end, 10), fa:log())
    local after = status_of(ns[3].port)
    assert.truthy(after.fa.reconnects >= 1)
    pub:close()
    w:close()
  end)
end)
