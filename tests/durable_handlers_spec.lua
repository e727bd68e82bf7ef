-- Lua handlers bound to durable consumers (src/durable.c): what their
-- answers do (ack, tide.nak, tide.progress, tide.term, an error), batches,
-- the meta argument, and upgraders applied to stored events on delivery,
-- for handler-bound and push consumers.  Against a real `tide serve -c`.
local h = require "helpers"
local json = require "dkjson"

local live = {}

local function start(body)
  local srv = h.start_scripted("listen { http = false }\n" .. body)
  live[#live + 1] = srv
  return srv
end

after_each(function()
  for _, srv in ipairs(live) do
    srv:stop()
    if srv.dir then h.remove_tmpdir(srv.dir) end
  end
  live = {}
end)

local function ce(id, typ, data, version)
  return json.encode { specversion = "1.0", id = id, source = "spec", type = typ, data = data, version = version }
end

local function publish(srv, subject, payload)
  local m = assert(h.request(srv.port, subject, payload))
  local ack = json.decode(m.payload)
  assert(ack and ack.seq, "no PubAck: " .. m.payload)
  return ack.seq
end

local function cinfo(srv, name)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN.CONSUMER.INFO", name))
  return assert(json.decode(m.payload))
end

-- A subscriber that keeps what arrives; :wait(n) waits for n messages.
local function watcher(srv, pattern)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub(pattern, "1")
  c:ping()
  local w = { c = c, got = {} }
  function w:wait(n, timeout)
    local more = self.c:collect(n - #self.got, timeout or 5)
    for _, m in ipairs(more) do self.got[#self.got + 1] = m end
    return #self.got >= n
  end
  return w
end

local function data_of(m) return json.decode(m.payload).data end

local STREAM = 'stream "orders" { subjects = { "order.>" } }\n'

describe("a handler bound to a consumer", function()
  it("acks by returning, and gets the event and {stream, consumer, seq, deliveries}", function()
    local srv = start(STREAM .. [[
consumer "c" { stream = "orders" }
on("order.*", { consumer = "c" }, function(e, ctx, meta)
  ctx.publish("seen", { k = e.data.k, seq = meta.seq, stream = meta.stream, consumer = meta.consumer,
                        deliveries = meta.deliveries })
end)
]])
    local w = watcher(srv, "seen")
    for i = 1, 3 do publish(srv, "order.created", ce("e" .. i, "order.created", { k = i })) end
    assert.is_true(w:wait(3))
    for i = 1, 3 do
      assert.same({ k = i, seq = i, stream = "orders", consumer = "c", deliveries = 1 }, data_of(w.got[i]))
    end
    assert.truthy(h.wait_until(function() return cinfo(srv, "c").acked == 3 end))
    local info = cinfo(srv, "c")
    assert.equals(0, info.num_ack_pending)
    assert.equals(0, info.redelivered)
  end)

  it("redelivers after an error with the backoff, and dead-letters the error text after max_deliver", function()
    local srv = start(STREAM .. [[
stream "dead" { subjects = { "dlq.>" } }
consumer "c" { stream = "orders", max_deliver = 3, backoff = { "100ms" }, dead_letter = "dlq.c" }
on("order.*", { consumer = "c" }, function(e, ctx, meta)
  ctx.publish("try", { deliveries = meta.deliveries })
  error("cannot handle " .. e.data.k)
end)
]])
    local tries, dlq = watcher(srv, "try"), watcher(srv, "dlq.c")
    publish(srv, "order.created", ce("x", "order.created", { k = 7 }))
    assert.is_true(tries:wait(3))
    assert.same({ 1, 2, 3 }, { data_of(tries.got[1]).deliveries, data_of(tries.got[2]).deliveries,
                               data_of(tries.got[3]).deliveries })
    assert.is_true(dlq:wait(1))
    local _, hd = h.parse_headers(dlq.got[1].headers)
    assert.equals("order.created", hd["Tide-Original-Subject"])
    assert.equals("3", hd["Tide-Deliveries"])
    assert.equals("max_deliver", hd["Tide-Reason"])
    assert.matches("cannot handle 7", hd["Tide-Error"], 1, true)
    assert.is_false(tries:wait(4, 0.5)) -- no fourth try
    assert.equals(1, cinfo(srv, "c").dead_lettered)
  end)

  it("follows tide.nak(delay), tide.progress() and tide.term(reason)", function()
    local srv = start(STREAM .. [[
consumer "c" { stream = "orders", ack_wait = "300ms", dead_letter = "dlq.c" }
on("order.*", { consumer = "c" }, function(e, ctx, meta)
  ctx.publish("call." .. e.data.kind, { deliveries = meta.deliveries })
  if e.data.kind == "nak" and meta.deliveries == 1 then return tide.nak("400ms") end
  if e.data.kind == "progress" and meta.deliveries == 1 then return tide.progress() end
  if e.data.kind == "term" then return tide.term("not for us") end
end)
]])
    local calls, dlq = watcher(srv, "call.*"), watcher(srv, "dlq.c")
    local t0 = h.proc.now()
    publish(srv, "order.n", ce("1", "order.n", { kind = "nak" }))
    publish(srv, "order.p", ce("2", "order.p", { kind = "progress" }))
    publish(srv, "order.t", ce("3", "order.t", { kind = "term" }))
    assert.is_true(calls:wait(5, 5))
    local seen = {}
    for _, m in ipairs(calls.got) do
      seen[#seen + 1] = m.subject .. "#" .. data_of(m).deliveries
    end
    table.sort(seen)
    -- nak: again (after its delay); progress: again after ack_wait; term: once.
    assert.same({ "call.nak#1", "call.nak#2", "call.progress#1", "call.progress#2", "call.term#1" }, seen)
    assert.is_true(h.proc.now() - t0 >= 0.35)
    assert.is_true(dlq:wait(1))
    local _, hd = h.parse_headers(dlq.got[1].headers)
    assert.equals("term", hd["Tide-Reason"])
    assert.equals("not for us", hd["Tide-Error"])
    assert.truthy(h.wait_until(function() return cinfo(srv, "c").num_ack_pending == 0 end))
  end)

  it("hands a batch handler full batches, and the rest after `wait`", function()
    local srv = start(STREAM .. [[
consumer "b" { stream = "orders" }
on("order.>", { consumer = "b", batch = 4, wait = "300ms" }, function(events, ctx, metas)
  local ns, seqs = {}, {}
  for i, e in ipairs(events) do ns[i] = e.data.k; seqs[i] = metas[i].seq end
  ctx.publish("batch", { ns = ns, seqs = seqs })
end)
]])
    local w = watcher(srv, "batch")
    -- Ten events in one go: batches of 4, 4, then 2 after the wait.
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    for i = 1, 10 do c:pub("order.created", ce("b" .. i, "order.created", { k = i })) end
    c:ping()
    assert.is_true(w:wait(3, 5))
    local all = {}
    for _, m in ipairs(w.got) do
      local d = data_of(m)
      assert.is_true(#d.ns <= 4)
      for i, n in ipairs(d.ns) do
        all[#all + 1] = n
        assert.equals(n, d.seqs[i])
      end
    end
    assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, all)
    assert.equals(2, #data_of(w.got[3]).ns)
  end)

  it("naks a whole batch when the batch handler fails; each event keeps its own count", function()
    local srv = start(STREAM .. [[
consumer "b" { stream = "orders", backoff = { "100ms" } }
on("order.>", { consumer = "b", batch = 2, wait = "200ms" }, function(events, ctx, metas)
  local ds = {}
  for i, m in ipairs(metas) do ds[i] = m.deliveries end
  ctx.publish("batch", { n = #events, ds = ds })
  if metas[1].deliveries < 2 then error("database down") end
end)
]])
    local w = watcher(srv, "batch")
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:pub("order.a", ce("a", "order.a", {}))
    c:pub("order.b", ce("b", "order.b", {}))
    c:ping()
    assert.is_true(w:wait(2, 5))
    assert.same({ n = 2, ds = { 1, 1 } }, data_of(w.got[1]))
    assert.same({ n = 2, ds = { 2, 2 } }, data_of(w.got[2]))
    assert.truthy(h.wait_until(function() return cinfo(srv, "b").acked == 2 end))
  end)

  it("refuses a binding to an undeclared consumer, with file and line", function()
    local dir = h.make_tmpdir("durable-bad")
    h.write_file(dir .. "/tide.lua", "listen { http = false }\n" .. STREAM ..
      'on("order.*", { consumer = "nope" }, function(e) end)\n')
    local out = io.popen(("'%s' serve -p %d -c '%s' 2>&1; echo EXIT=$?"):format(h.bin, h.free_port(),
      dir .. "/tide.lua")):read("a")
    h.remove_tmpdir(dir)
    assert.matches("tide.lua:3: on%(...%) names consumer 'nope', which is not declared", out)
    assert.matches("EXIT=1", out)
  end)
end)

describe("stored events meet today's upgraders", function()
  it("delivers events stored as v1 as v2 once an upgrader is loaded, to handlers and deliver subjects", function()
    local srv = start(STREAM)
    for i = 1, 2 do
      publish(srv, "order.created", ce("u" .. i, "order.created", { name = "Ada Lovelace " .. i }, 1))
    end
    -- Now a v1 -> v2 upgrader, and two consumers reading from the start.
    -- (Subscribed first: the server may reload as soon as it sees the file
    -- change, before the admin request, and the handler's output is not
    -- kept for a late subscriber.)
    local push, lua = watcher(srv, "out.push"), watcher(srv, "out.lua")
    h.write_file(srv.config, "listen { http = false }\n" .. STREAM .. [[
upgrade("order.created", 1, function(e)
  local first, last = e.data.name:match("^(%S+)%s*(.*)$")
  e.data = { firstName = first, lastName = last }
  return e
end)
consumer "push" { stream = "orders", deliver = "out.push" }
consumer "lua" { stream = "orders" }
on("order.created", { consumer = "lua" }, function(e, ctx)
  ctx.publish("out.lua", { version = e.version, first = e.data.firstName, last = e.data.lastName })
end)
]])
    local m = assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", ""))
    assert.matches('"ok":true', m.payload)
    assert.is_true(lua:wait(2))
    assert.same({ version = 2, first = "Ada", last = "Lovelace 1" }, data_of(lua.got[1]))
    assert.is_true(push:wait(2))
    local ev = json.decode(push.got[2].payload)
    assert.equals(2, ev.version)
    assert.same({ firstName = "Ada", lastName = "Lovelace 2" }, ev.data)
    assert.equals("order.created", push.got[2].subject)
    -- The stored records are unchanged: still v1.
    local g = assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.GET", json.encode { stream = "orders", seq = 1 }))
    local rec = json.decode(g.payload)
    assert.equals(1, rec.data.version)
    assert.equals("Ada Lovelace 1", rec.data.data.name)
  end)
end)

describe("a stream's dedup_key function", function()
  it("keys events that have no Msg-Id or CloudEvents id, within the window", function()
    local srv = start([[
stream "pay" { subjects = { "pay.>" }, dedup_key = function(e) return e.data and e.data.payment_id end }
]])
    local function pub(payload, hdr)
      local m = assert(h.request(srv.port, "pay.in", payload, hdr and { headers = hdr } or nil))
      return json.decode(m.payload)
    end
    -- Envelopes without an id: the function's key decides.
    local a = pub('{"specversion":"1.0","source":"s","type":"pay","data":{"payment_id":"P-1","n":1}}')
    local b = pub('{"specversion":"1.0","source":"s","type":"pay","data":{"payment_id":"P-1","n":2}}')
    local c = pub('{"specversion":"1.0","source":"s","type":"pay","data":{"payment_id":"P-2","n":3}}')
    assert.same({ stream = "pay", seq = 1 }, a)
    assert.same({ stream = "pay", seq = 1, duplicate = true }, b)
    assert.same({ stream = "pay", seq = 2 }, c)
    -- A Nats-Msg-Id comes first; the function is not asked.
    local d = pub('{"specversion":"1.0","source":"s","type":"pay","data":{"payment_id":"P-1"}}',
      h.header_block { { "Nats-Msg-Id", "m-1" } })
    assert.same({ stream = "pay", seq = 3 }, d)
    -- No key from the function (nil): stored every time.
    assert.same({ stream = "pay", seq = 4 }, pub('{"x":1}'))
    assert.same({ stream = "pay", seq = 5 }, pub('{"x":1}'))
  end)

  it("stores an event whose key function fails, and says so in the log", function()
    local srv = start([[
stream "pay" { subjects = { "pay.>" }, dedup_key = function(e) error("no key here") end }
]])
    local m = assert(h.request(srv.port, "pay.in", '{"a":1}'))
    assert.same({ stream = "pay", seq = 1 }, json.decode(m.payload))
    assert.truthy(h.wait_until(function() return srv:log():find("dedup_key: .-no key here", 1) end))
  end)
end)

describe("a handler's ack", function()
  -- The process dies just before the n-th write of the store (TIDE_FAULT
  -- crash: what was written stays, as after a kill -9), for every n the run
  -- makes: the event the handler answers, the event it publishes and the
  -- consumer's ack are written in some order.  After the restart the
  -- handler's output exists exactly once: its ack was not written before
  -- the output was durable, and its Nats-Msg-Id makes a re-run's publish a
  -- duplicate.
  it("waits until what the handler published is durable, whatever write the process dies at", function()
    local config = [[
listen { http = false }
stream "in"  { subjects = { "in.>" } }
stream "out" { subjects = { "out.>" } }
consumer "c" { stream = "in", ack_wait = "300ms" }
on("in.>", { consumer = "c" }, function(e, ctx, meta)
  ctx.publish("out.done", { n = e.data.x }, { ["Nats-Msg-Id"] = "done." .. meta.seq })
end)
]]
    local cuts = 0
    for n = 1, 14 do
      local dir = h.make_tmpdir("ack-barrier")
      h.write_file(dir .. "/tide.lua", config)
      local function serve(fault)
        local port = h.free_port()
        local cmd = { "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/tide.lua", "--data", dir .. "/data" }
        if fault then
          table.insert(cmd, 1, h.bin)
          table.insert(cmd, 1, "TIDE_FAULT=" .. fault)
        end
        local srv = h.start_server { bin = fault and "/usr/bin/env" or nil, cmd = cmd, port = port }
        live[#live + 1] = srv -- stopped by after_each, should an assertion fail
        return srv
      end
      local started, srv = pcall(serve, "crash:write:" .. n)
      local acked
      if started then -- (else it died at one of its start-up writes)
        -- (the server may go down in the middle of the request)
        local ok, reply = pcall(h.request, srv.port, "in.x", ce("x1", "in.x", { x = 1 }), { timeout = 2 })
        acked = ok and reply and json.decode(reply.payload).seq
        h.wait_until(function() return not srv:alive() end, 2)
        if srv:alive() then
          srv:stop() -- the run needed fewer than n writes
        else
          cuts = cuts + 1
          assert.equals(98, srv.code)
        end
      end
      srv = serve(nil)
      local m = assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.INFO", "in"))
      local stored_in = json.decode(m.payload).messages
      if acked then assert.equals(1, stored_in) end -- an acknowledged event survives
      assert.truthy(h.wait_until(function()
        local o = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.INFO", "out")).payload)
        local c = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.CONSUMER.INFO", "c")).payload)
        return o.messages == stored_in and c.num_ack_pending == 0 and c.num_pending == 0
      end, 5), "write " .. n .. ": the handler's output is missing")
      local o = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.INFO", "out")).payload)
      assert.equals(stored_in, o.messages) -- exactly once
      srv:stop()
      h.remove_tmpdir(dir)
    end
    assert.is_true(cuts >= 4)
  end)
end)
