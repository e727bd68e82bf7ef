-- Cluster mode (docs/cluster.md): a batch handler (on(..., { consumer =
-- "c", batch = N, wait = "T" }, function(events, ctx, metas))) on a
-- consumer of a jetstream-backed stream gets its events in batches, as on
-- a single node: up to N events, or what arrived within T of the batch's
-- first event.  Its answer goes to JetStream for each event of the batch;
-- each keeps its own delivery count.  Three routed nats-servers with
-- JetStream and one tide node, all on loopback.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"
local cs = require "cluster_support"

-- The node's rules.  Consumer bulk: batches of 50 within 500 ms; a batch
-- holding an event with data.boom on its first delivery fails.  Consumer
-- slow: batches wait 3 s, longer than its ack_wait of 2 s.  Consumer held
-- (only with HELD): batches wait 20 s, so that a reload finds one filling.
-- Every call reports its events' n, delivery counts and sequences on
-- handled.calls.  A local stream with the same batch handler, to compare.
-- Consumer crawl: a handler of 150 ms per event, ack_wait 2 s (also the
-- rules of a second node, which shares the consumer).
local CRAWL = [[
scripting { instructions = 1000000000, time = "2s" }
consumer "crawl" { stream = "orders", filter = "orders.crawl", ack_wait = "2s", max_deliver = 5 }
on("orders.crawl", { consumer = "crawl" }, function(e, ctx, meta)
  local t = tide.now()
  while tide.now() - t < 150 do end
  ctx.publish("handled.calls", { t = e.data.t, ns = { e.data.n }, dels = { meta.deliveries }, seqs = { meta.seq } })
end)
]]

local function rules(held)
  local base = [[
stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }
stream "local" { subjects = { "local.>" } }
consumer "bulk" { stream = "orders", filter = "orders.bulk", ack_wait = "5s", max_deliver = 3 }
consumer "slow" { stream = "orders", filter = "orders.slow", ack_wait = "2s", max_deliver = 3 }
consumer "lbulk" { stream = "local", filter = "local.bulk", ack_wait = "5s", max_deliver = 3 }
stream "dead" { subjects = { "dead.>" }, backend = "jetstream", replicas = 3 }
consumer "dl" { stream = "orders", filter = "orders.dl", ack_wait = "5s", max_deliver = 2, dead_letter = "dead.dl" }
local function report(events, ctx, metas)
  local ns, dels, seqs, boom = {}, {}, {}, false
  for i, e in ipairs(events) do
    ns[i], dels[i], seqs[i] = e.data.n, metas[i].deliveries, metas[i].seq
    if e.data.always or (e.data.boom and metas[i].deliveries == 1) then boom = true end
  end
  ctx.publish("handled.calls", { t = events[1].data.t, ns = ns, dels = dels, seqs = seqs })
  if boom then error("refused on purpose") end
end
on("orders.bulk", { consumer = "bulk", batch = 50, wait = "500ms" }, report)
on("orders.slow", { consumer = "slow", batch = 50, wait = "3s" }, report)
on("local.bulk", { consumer = "lbulk", batch = 50, wait = "500ms" }, report)
on("orders.dl", { consumer = "dl", batch = 10, wait = "300ms" }, report)
]] .. CRAWL
  local extra = held and ([[
consumer "held" { stream = "orders", filter = "orders.held", ack_wait = "30s", max_deliver = 3 }
on("orders.held", { consumer = "held", batch = 50, wait = "HELDWAIT" }, report)
]]):gsub("HELDWAIT", held) or ""
  return base .. extra
end

-- Publishes the events (tables { n = ..., ... }, tagged t) on subject
-- through pub with replies, all at once, and waits for every PubAck.
-- Returns when the last one came.
local function publish_acked(pub, subject, t, events)
  local parts = {}
  for i, e in ipairs(events) do
    e.t = t
    local body = json.encode { specversion = "1.0", id = t .. e.n, source = "spec", type = subject, data = e }
    parts[#parts + 1] = ("PUB %s _INBOX.acks.%s.%d %d\r\n%s\r\n"):format(subject, t, i, #body, body)
  end
  assert(pub:send(table.concat(parts)))
  local got, nores = 0, 0
  assert(h.wait_until(function()
    local f = pub:frame(0.5)
    if f and (f.op == "MSG" or f.op == "HMSG") and f.subject:match("^_INBOX%.acks%." .. t .. "%.") then
      local a = json.decode(f.payload)
      if f.op == "HMSG" and f.headers:match("^NATS/1.0 503") then
        -- a local stream's publish also goes to the cluster, where nobody
        -- answers it: the node's PubAck comes beside this
        nores = nores + 1
      else
        assert(a and a.seq and not a.error, "not acked: " .. f.payload)
        got = got + 1
      end
    end
    return got == #events
  end, 30, 0), ("%d of %d events acked (%d no responders)"):format(got, #events, nores))
  return socket.gettime()
end

-- Reads the calls tagged t reported on w into calls (each { ns, dels,
-- seqs, at }) until done(calls) or timeout seconds; returns calls.
local function collect(w, t, calls, done, timeout)
  h.wait_until(function()
    local f = w:frame(0.2)
    if f and (f.op == "MSG" or f.op == "HMSG") and f.subject == "handled.calls" then
      local o = json.decode(f.payload)
      local d = o and (o.data or o)
      if d and d.t == t then
        d.at = socket.gettime()
        calls[#calls + 1] = d
      end
    end
    return done(calls)
  end, timeout, 0)
  return calls
end

-- Events handled so far in calls: by[n] = times.
local function handled(calls)
  local by, total = {}, 0
  for _, c in ipairs(calls) do
    for _, n in ipairs(c.ns) do
      by[n] = (by[n] or 0) + 1
      total = total + 1
    end
  end
  return by, total
end

local function sizes(calls)
  local s = {}
  for i, c in ipairs(calls) do s[i] = #c.ns end
  return table.concat(s, " ")
end

local function consumer_info(port, consumer)
  local m = h.request(port, "$JS.API.CONSUMER.INFO.orders." .. consumer, "")
  return m and json.decode(m.payload)
end

local function events(first, last, extra)
  local list = {}
  for n = first, last do
    local e = { n = n }
    for k, v in pairs(extra or {}) do e[k] = v end
    list[#list + 1] = e
  end
  return list
end

describe("cluster mode, batch handlers on a consumer of a jetstream-backed stream", function()
  local tr, ns, node, w, pub, dir = cs.new()

  setup(function()
    dir = h.make_tmpdir("cluster-batch")
    ns = tr:start_cluster(dir, "tidebatch", true)
    node = tr:start_node("ba", { ns[1].port }, rules("20s"))
    cs.wait_ready({ node }, 30)
    assert(h.wait_until(function()
      local log = node:log()
      return log:find("consumer 'bulk' on stream 'orders' ready", 1, true)
        and log:find("consumer 'slow' on stream 'orders' ready", 1, true)
        and log:find("consumer 'held' on stream 'orders' ready", 1, true)
        and log:find("consumer 'dl' on stream 'orders' ready", 1, true)
        and log:find("consumer 'crawl' on stream 'orders' ready", 1, true)
    end, 30), "the consumers were not made:\n" .. node:log())
    w = cs.watcher(ns[2].port, ns[1].port) -- handled.>
    w:sub("dead.>", "3")
    assert(w:ping())
    pub = cs.client(node.port)
    pub:sub("_INBOX.acks.>", "9")
    assert(pub:ping())
    -- JetStream stores what the stream captures (its leader is elected)
    assert(h.wait_until(function()
      local m = h.request(ns[1].port, "orders.probe", "{}")
      local a = m and json.decode(m.payload)
      return a and a.seq
    end, 20), "the stream stores nothing")
  end)

  teardown(function()
    if pub then pub:close() end
    if w then w:close() end
    tr:stop_all()
    if dir then h.remove_tmpdir(dir) end
  end)

  -- A pull's events wait for the handler one after another while their
  -- ack_wait runs: 20 events of 150 ms pulled at once would outlast the
  -- 2 s ack_wait, and JetStream would offer the last ones again to a node
  -- that has time for them.
  it("pulls no more events than a slow handler gets through within ack_wait", function()
    local N = 40
    -- a second node on the consumer, with a quick handler: what JetStream
    -- offers again goes there, while the first still holds it
    local second = tr:start_node("bc", { ns[2].port },
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n' ..
      CRAWL:gsub("< 150", "< 1"))
    assert(h.wait_until(function()
      return second:log():find("consumer 'crawl' on stream 'orders' ready", 1, true)
    end, 30), second:log())
    publish_acked(pub, "orders.crawl", "crawl", events(1, N))
    local calls = collect(w, "crawl", {}, function(c) return select(2, handled(c)) >= N end, 60)
    local by, total = handled(calls)
    local again = {}
    for _, c in ipairs(calls) do
      if c.dels[1] ~= 1 then again[#again + 1] = ("%d (delivery %d)"):format(c.ns[1], c.dels[1]) end
    end
    assert.same({}, again, "events offered again while they waited for the handler")
    for n = 1, N do assert.equal(1, by[n], ("event %d handled %s times"):format(n, tostring(by[n]))) end
    assert.equal(N, total)
    local info = consumer_info(ns[1].port, "crawl")
    assert.equal(0, info and info.num_redelivered, info and json.encode(info))
    cs.stop(second)
  end)

  it("hands 1,000 events over in batches of up to 50, each event once", function()
    local N = 1000
    local t0 = socket.gettime()
    publish_acked(pub, "orders.bulk", "many", events(1, N))
    local calls = collect(w, "many", {}, function(c) return select(2, handled(c)) >= N end, 60)
    local took = calls[#calls] and calls[#calls].at - t0 or 0
    local by, total = handled(calls)
    for n = 1, N do assert.equal(1, by[n], ("event %d handled %s times"):format(n, tostring(by[n]))) end
    assert.equal(N, total)
    local full, largest = 0, 0
    for _, c in ipairs(calls) do
      full = full + (#c.ns == 50 and 1 or 0)
      largest = math.max(largest, #c.ns)
      for _, d in ipairs(c.dels) do assert.equal(1, d) end
    end
    -- the same flow on a local stream, for comparison
    local l0 = socket.gettime()
    publish_acked(pub, "local.bulk", "lmany", events(1, N))
    local lcalls = collect(w, "lmany", {}, function(c) return select(2, handled(c)) >= N end, 60)
    local ltook = lcalls[#lcalls] and lcalls[#lcalls].at - l0 or 0
    print(("\n  jetstream: %d events in %d calls (%d of 50), %.2fs from the first publish to the last call; "
      .. "local stream: %d calls, %.2fs"):format(N, #calls, full, took, #lcalls, ltook))
    assert.equal(50, largest, sizes(calls))
    assert.truthy(full >= #calls / 2, "most calls should hold 50 events: " .. sizes(calls))
    -- nothing left pending: every event of every batch acked
    assert(h.wait_until(function()
      local info = consumer_info(ns[2].port, "bulk")
      return info and info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
    end, 10), "events stayed pending: " .. json.encode(consumer_info(ns[2].port, "bulk")))
  end)

  it("hands a partial batch over once wait has passed since its first event", function()
    local acked = publish_acked(pub, "orders.bulk", "part", events(1, 7))
    local calls = collect(w, "part", {}, function(c) return select(2, handled(c)) >= 7 end, 10)
    assert.equal(1, #calls, "one call for the 7 events: " .. sizes(calls))
    assert.equal(7, #calls[1].ns)
    local after = calls[1].at - acked
    print(("\n  a batch of 7 handed over %.2fs after the last PubAck (wait 500ms)"):format(after))
    -- the wait, less what passed between the first event's arrival and the
    -- PubAck; at most the wait plus a pull round
    assert.truthy(after >= 0.3, ("handed over after %.2fs, before the wait"):format(after))
    assert.truthy(after < 0.5 + 1.5, ("handed over after %.2fs"):format(after))
  end)

  it("redelivers a failed batch whole; each event's delivery count is 2", function()
    local list = events(1, 10)
    list[4].boom = true
    publish_acked(pub, "orders.bulk", "boom", list)
    local calls = collect(w, "boom", {}, function(c) return select(2, handled(c)) >= 20 end, 15)
    local by, total = handled(calls)
    assert.equal(20, total, sizes(calls))
    for n = 1, 10 do assert.equal(2, by[n], ("event %d handled %s times"):format(n, tostring(by[n]))) end
    -- first the batch of ten with deliveries 1, then again with 2
    assert.equal(2, #calls, sizes(calls))
    for i = 1, 2 do
      assert.equal(10, #calls[i].ns)
      for _, d in ipairs(calls[i].dels) do assert.equal(i, d) end
    end
    table.sort(calls[1].seqs)
    table.sort(calls[2].seqs)
    assert.same(calls[1].seqs, calls[2].seqs)
    assert(h.wait_until(function()
      local info = consumer_info(ns[2].port, "bulk")
      return info and info.num_ack_pending == 0 and info.num_pending == 0
    end, 10), "events stayed pending: " .. json.encode(consumer_info(ns[2].port, "bulk")))
  end)

  it("gives each event of a batch that keeps failing up on its own, to its own dead letter", function()
    pub:sub("_INBOX.dlacks.*", "10")
    assert(pub:ping())
    for n = 1, 3 do
      local body = json.encode { specversion = "1.0", id = "dl" .. n, source = "spec", type = "orders.dl",
                                 data = { n = n, t = "dl", always = true } }
      pub:hpub("orders.dl", { { "X-Trace", "trace-" .. n }, { "Nats-Msg-Id", "dl-" .. n } }, body, "_INBOX.dlacks." .. n)
    end
    local acked = 0
    assert(h.wait_until(function()
      local f = pub:frame(0.3)
      if f and f.subject and f.subject:match("^_INBOX%.dlacks%.") then
        local a = json.decode(f.payload)
        acked = acked + (a and a.seq and 1 or 0)
      end
      return acked == 3
    end, 10), "not acked")
    local calls, dead = {}, {}
    h.wait_until(function()
      local f = w:frame(0.2)
      if f and f.subject == "dead.dl" then
        local _, hd = h.parse_headers(f.headers)
        dead[#dead + 1] = hd
      elseif f and f.subject == "handled.calls" then
        local o = json.decode(f.payload)
        local d = o and (o.data or o)
        if d and d.t == "dl" then calls[#calls + 1] = d end
      end
      return #dead == 3
    end, 15, 0)
    assert.equal(2, #calls, sizes(calls))
    assert.same({ 1, 1, 1 }, calls[1].dels)
    assert.same({ 2, 2, 2 }, calls[2].dels)
    assert.equal(3, #dead)
    local traces = {}
    for _, hd in ipairs(dead) do
      assert.equal("max_deliver", hd["Tide-Reason"])
      assert.equal("2", hd["Tide-Deliveries"])
      assert.truthy(hd["Tide-Error"]:find("refused on purpose", 1, true), hd["Tide-Error"])
      assert.equal(hd["Tide-Dead-Letter-Id"], hd["Nats-Msg-Id"]) -- not the event's own
      traces[#traces + 1] = hd["X-Trace"]
    end
    table.sort(traces)
    assert.same({ "trace-1", "trace-2", "trace-3" }, traces)
    assert(h.wait_until(function()
      local info = consumer_info(ns[2].port, "dl")
      return info and info.num_ack_pending == 0 and info.num_pending == 0
    end, 10), "events stayed pending: " .. json.encode(consumer_info(ns[2].port, "dl")))
  end)

  it("keeps a batch whose wait is longer than ack_wait from being redelivered", function()
    local acked = publish_acked(pub, "orders.slow", "slow", events(1, 5))
    local calls = collect(w, "slow", {}, function(c) return select(2, handled(c)) >= 5 end, 10)
    -- a little longer, for a redelivery that would follow
    collect(w, "slow", calls, function() return false end, 2.5)
    assert.equal(1, #calls, sizes(calls))
    assert.same({ 1, 1, 1, 1, 1 }, calls[1].dels)
    local after = calls[1].at - acked
    assert.truthy(after >= 2.5 and after < 3 + 1.5, ("handed over after %.2fs (wait 3s)"):format(after))
    local info = consumer_info(ns[2].port, "slow")
    assert.truthy(info and info.num_redelivered == 0 and info.num_ack_pending == 0, json.encode(info))
  end)

  it("a reload that drops the consumer sends its filling batch back at once", function()
    publish_acked(pub, "orders.held", "held", events(1, 5))
    -- held: in flight in JetStream, not handed over (the wait is 20 s)
    assert(h.wait_until(function()
      local info = consumer_info(ns[2].port, "held")
      return info and info.num_ack_pending == 5
    end, 10), "the node did not take the events: " .. json.encode(consumer_info(ns[2].port, "held")))
    local calls = collect(w, "held", {}, function() return false end, 1)
    assert.equal(0, #calls, "handed over before the wait: " .. sizes(calls))
    local function reload(text)
      local before = select(2, node:log():gsub("Reloaded scripts", ""))
      h.write_file(node.config, cs.cluster_block("ba", { ns[1].port }) .. text)
      h.proc.kill(node.pid, "HUP")
      assert(h.wait_until(function() return select(2, node:log():gsub("Reloaded scripts", "")) > before end, 10),
        "no reload:\n" .. node:log())
    end
    local t0 = socket.gettime()
    reload(rules(false))
    -- the node has dropped the consumer (its cluster part takes the rules
    -- within a second)
    assert(h.wait_until(function()
      local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, ns[1].port))
      local st = rc == 0 and json.decode(out)
      if not (st and st[1]) then return false end
      for _, c in ipairs(st[1].consumers or {}) do if c.name == "held" then return false end end
      return true
    end, 10), "the consumer is still there:\n" .. node:log())
    -- The consumer back, with a short wait: the events sent back come
    -- again at once, as a second delivery, not after ack_wait (30 s).
    reload(rules("100ms"))
    calls = collect(w, "held", {}, function(c) return select(2, handled(c)) >= 5 end, 10)
    local by, total = handled(calls)
    assert.equal(5, total, sizes(calls))
    for _, c in ipairs(calls) do
      for i, d in ipairs(c.dels) do assert.equal(2, d, "event " .. c.ns[i]) end
    end
    for n = 1, 5 do assert.equal(1, by[n]) end
    local after = calls[#calls].at - t0
    print(("\n  the batch sent back by the reload handled again %.2fs after it"):format(after))
    assert.truthy(after < 10, ("the events came back after %.2fs"):format(after))
  end)
end)
