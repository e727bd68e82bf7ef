-- Dead letters: one shape whoever makes them (a consumer giving up, a
-- failing rule), every one kept by the stream that captures its subject
-- (two of one event included), and no silent losses: a dead letter that
-- reaches no stream and no subscriber, or that cannot be made, is counted
-- and logged with the reason.
local h = require "helpers"
local json = require "dkjson"
local proc = h.proc

local live = {}

local function start(body)
  local srv = h.start_scripted("listen { http = false }\n" .. body)
  live[#live + 1] = srv
  return srv
end

after_each(function()
  for _, srv in ipairs(live) do
    srv:stop()
    h.remove_tmpdir(srv.dir)
  end
  live = {}
end)

local function admin(srv, verb, payload)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN." .. verb, payload or ""))
  local v = json.decode(m.payload)
  return (assert(v, m.payload))
end

local function client(srv)
  local c = h.connect(srv.port)
  assert(c:send('CONNECT {"verbose":false,"headers":true}\r\n'))
  return c
end

local function headers_of(m)
  local _, t = h.parse_headers(m.headers)
  return t
end

-- The keys of t, sorted.
local function keys(t)
  local k = {}
  for name in pairs(t) do k[#k + 1] = name end
  table.sort(k)
  return k
end

describe("dead letters", function()
  it("have one shape, from a consumer and from a failing rule", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "200ms", max_deliver = 1, dead_letter = "dlq.w" }
on("pay.>", function(e) error("cannot pay") end)
]])
    local c = client(srv)
    c:sub("dlq.>", "1")
    c:sub("$TIDE.DEAD.>", "2")
    c:sub("work.w", "3")
    c:hpub("order.created", h.header_block { { "X-Trace", "t1" } }, "{}")
    c:hpub("pay.now", h.header_block { { "X-Trace", "t2" } }, "{}")
    local got = {}
    local deadline = proc.now() + 5
    while (not got.dlq or not got.dead) and proc.now() < deadline do
      local m = c:msg(deadline - proc.now())
      if not m then break end
      if m.subject == "dlq.w" then got.dlq = m elseif m.subject == "$TIDE.DEAD.pay.now" then got.dead = m end
    end
    assert(got.dlq, "no dead letter from the consumer")
    assert(got.dead, "no dead letter from the handler")
    local a, b = headers_of(got.dlq), headers_of(got.dead)
    assert.same({ "Tide-Consumer", "Tide-Dead-Letter-Id", "Tide-Deliveries", "Tide-Error", "Tide-Original-Subject",
                  "Tide-Reason", "Tide-Sequence", "Tide-Stream", "X-Trace" }, keys(a))
    assert.same({ "Tide-Dead-Letter-Id", "Tide-Error", "Tide-Original-Subject", "Tide-Reason", "Tide-Script",
                  "Tide-Stage", "X-Trace" }, keys(b))
    assert.are.equal("max_deliver", a["Tide-Reason"])
    assert.are.equal("orders.w.1", a["Tide-Dead-Letter-Id"])
    assert.are.equal("script", b["Tide-Reason"])
    assert.are.equal("handler", b["Tide-Stage"])
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", b["Tide-Dead-Letter-Id"])
    assert.are.equal("pay.now", b["Tide-Original-Subject"])
    -- the same block layout: the status line, the Tide-* headers, the event's own, one empty line
    for _, m in ipairs { got.dlq, got.dead } do
      assert.matches("^NATS/1%.0\r\nTide%-Original%-Subject: [^\r]+\r\nTide%-Reason: ", m.headers)
      assert.matches("\r\nX%-Trace: t%d\r\n\r\n$", m.headers)
    end
    c:close()
  end)

  it("are all stored, two of one event and those of a conditional publish included", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" } }
stream "dlq"    { subjects = { "dlq.>" } }
consumer "c1" { stream = "orders", deliver = "w.c1", ack_wait = "200ms", max_deliver = 1, dead_letter = "dlq.c1" }
consumer "c2" { stream = "orders", deliver = "w.c2", ack_wait = "200ms", max_deliver = 1, dead_letter = "dlq.c2" }
]])
    local c = client(srv)
    c:sub("w.*", "1") -- takes every delivery, acks none
    c:sub("_ACK.>", "2")
    -- one event with a Msg-Id (the dlq stream dedups within its window), one
    -- with a condition that held for "orders" and cannot hold for "dlq"
    c:hpub("order.one", h.header_block { { "Nats-Msg-Id", "m1" } }, '{"n":1}', "_ACK.1")
    c:hpub("order.two", h.header_block { { "Nats-Expected-Stream", "orders" } }, '{"n":2}', "_ACK.2")
    assert(h.wait_until(function()
      return admin(srv, "CONSUMER.INFO", "c1").given_up == 2 and admin(srv, "CONSUMER.INFO", "c2").given_up == 2
    end, 5), "the consumers did not give up")
    assert(h.wait_until(function()
      local i = admin(srv, "STREAM.INFO", "dlq")
      return i.messages == 4 and i.committed_seq == i.last_seq
    end, 3),
      "dead letters lost: " .. json.encode(admin(srv, "STREAM.INFO", "dlq")))
    local info = admin(srv, "STREAM.INFO", "dlq")
    assert.are.equal(0, info.duplicates)
    assert.are.equal(0, info.conflicts)
    local shown = admin(srv, "DLQ.SHOW", "dlq").dead_letters
    local seen = {}
    for _, d in ipairs(shown) do seen[#seen + 1] = d.consumer .. ":" .. d.original_subject end
    table.sort(seen)
    assert.same({ "c1:order.one", "c1:order.two", "c2:order.one", "c2:order.two" }, seen)
    for _, d in ipairs(shown) do
      if d.original_subject == "order.one" then assert.same({ ["Nats-Msg-Id"] = "m1" }, d.headers) end
      if d.original_subject == "order.two" then assert.is_nil(d.headers) end -- the condition is not carried
    end
    for _, name in ipairs { "c1", "c2" } do
      local ci = admin(srv, "CONSUMER.INFO", name)
      assert.are.equal(2, ci.dead_lettered)
      assert.are.equal(0, ci.dead_letters_lost)
    end
    c:close()
  end)

  it("that reach no stream and no subscriber are counted and logged, a rule's and a consumer's", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "200ms", max_deliver = 1, dead_letter = "nowhere.w" }
on("pay.>", function(e) error("cannot pay") end)
]])
    local c = client(srv)
    c:sub("work.w", "1")
    c:pub("pay.now", "{}")
    c:pub("order.created", "{}")
    assert(h.wait_until(function() return admin(srv, "CONSUMER.INFO", "w").given_up == 1 end, 5))
    local ci = admin(srv, "CONSUMER.INFO", "w")
    assert.are.equal(0, ci.dead_lettered)
    assert.are.equal(1, ci.dead_letters_lost)
    local st = h.stats(srv.port).scripts
    assert.are.equal(1, st.dead_letters)
    assert.are.equal(1, st.dead_letters_lost)
    local log = srv:log()
    assert.matches("the dead letter of an event on pay.now is lost: no stream captures $TIDE.DEAD.pay.now and no "
                   .. "one subscribes to it", log, 1, true)
    assert.matches("consumer w: sequence 1 given up after 1 deliveries (max_deliver); its dead letter to nowhere.w "
                   .. "is lost: no stream captures nowhere.w and no one subscribes to it", log, 1, true)
    -- with a subscriber it is delivered, and not counted as lost
    c:sub("$TIDE.DEAD.>", "2")
    c:pub("pay.again", "{}")
    local m
    repeat m = assert(c:msg(5)) until m.subject ~= "order.created" -- the stored event, delivered again
    assert.are.equal("$TIDE.DEAD.pay.again", m.subject)
    st = h.stats(srv.port).scripts
    assert.are.equal(2, st.dead_letters)
    assert.are.equal(1, st.dead_letters_lost)
    c:close()
  end)

  it("of an event retention removed while it was pending is counted and logged", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" }, max_msgs = 1 }
stream "dlq"    { subjects = { "dlq.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "300ms", max_deliver = 1, dead_letter = "dlq.w" }
]])
    local c = client(srv)
    c:sub("work.w", "1")
    c:pub("order.one", "{}")
    assert(c:msg(5), "the first event was not delivered")
    c:pub("order.two", "{}") -- max_msgs 1: the first leaves the stream, still unacknowledged
    assert(h.wait_until(function() return admin(srv, "CONSUMER.INFO", "w").given_up == 2 end, 5))
    local ci = admin(srv, "CONSUMER.INFO", "w")
    assert.are.equal(1, ci.dead_lettered) -- the second
    assert.are.equal(1, ci.dead_letters_lost) -- the first: nothing left to make it from
    assert.matches("consumer w: sequence 1 given up after 1 deliveries (max_deliver); its dead letter to dlq.w is "
                   .. "lost: its record is no longer in the stream", srv:log(), 1, true)
    c:close()
  end)
end)

describe("a stream that cannot store", function()
  it("says so in the log when it refuses publishes nobody hears about, once per outage", function()
    local dir = h.make_tmpdir("tide-refuse")
    h.write_file(dir .. "/tide.lua", 'listen { http = false }\nstream "s" { subjects = { "s.>" } }\n')
    -- the 3rd write fails, and the log cannot be cut back and reopened:
    -- the stream stays failed and refuses what comes next
    local port = h.free_port()
    local srv = h.start_server { bin = "/usr/bin/env", port = port,
      cmd = { "TIDE_FAULT=write:3:EIO,truncate:1+:EIO", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c",
              dir .. "/tide.lua", "--data", dir .. "/data" } }
    srv.dir = dir
    live[#live + 1] = srv
    local c = client(srv)
    for i = 1, 6 do
      c:pub("s.x", "e" .. i) -- no reply subject: no PubAck tells the publisher
      assert(c:ping())
    end
    local info = admin(srv, "STREAM.INFO", "s")
    assert.is_true(info.failed)
    assert.are.equal(4, info.store_errors) -- the one whose write failed, and three refused
    local log = srv:log()
    local _, n = log:gsub("stream s: storing failed %(Input/output error%): publishes are refused", "")
    assert.are.equal(1, n, log)
    c:close()
  end)
end)

-- A +TERM ack routes its dead letter from inside the route of the ack:
-- whatever the inner route does to the subscription index must leave the
-- outer route's result and subscriptions whole.
describe("a dead letter routed while its ack is being delivered", function()
  local config = [[
stream "orders" { subjects = { "order.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "60s", max_deliver = 5, dead_letter = "%s" }
]]

  -- Publishes order.1 and returns the ack subject of its delivery on work.w.
  local function delivered(c)
    c:sub("work.w", "1")
    c:pub("order.1", "{}")
    local m = assert(c:msg(5))
    assert.are.equal("1", m.sid)
    return assert(m.reply)
  end

  it("does not free the ack's cached result when its subject fills the cache", function()
    local srv = start(config:format("dlq.w"))
    local c = client(srv)
    local ack = delivered(c)
    -- the stats on this connection's own inbox, so that each request after
    -- the first leaves the number of cached results as it was
    c:sub("_INBOX.cache", "2")
    local function cached()
      c:pub("$TIDE.ADMIN.STATS", "", "_INBOX.cache")
      local m = assert(c:msg(5))
      return assert(json.decode(m.payload)).subscription_cache
    end
    cached()
    local n = cached()
    -- one short of full (SUBLIST_CACHE_MAX, 4,096 results): the ack's
    -- subject fills the cache, and the dead letter's subject, never matched
    -- before, finds it full and starts it over from inside the ack's route
    local fill = {}
    for i = 1, 4095 - n do fill[#fill + 1] = ("PUB fill.%d 0\r\n\r\n"):format(i) end
    assert(c:send(table.concat(fill)))
    assert.are.equal(4095, cached())
    c:pub(ack, "+TERM")
    assert(c:ping(), "the server did not survive the ack")
    local info = admin(srv, "CONSUMER.INFO", "w")
    assert.are.equal(1, info.terminated)
    assert.are.equal(1, info.given_up)
    c:close()
  end)

  it("does not free a subscription the ack's route has still to visit", function()
    -- the dead letter's subject is one the ack's subscribers also match
    local srv = start(config:format("$JS.ACK.orders.dead"))
    local c = client(srv)
    local ack = delivered(c)
    -- after the server's own $JS.ACK.> in the ack's result, used up by the
    -- dead letter (delivered once, then auto-unsubscribed)
    c:sub("$JS.ACK.orders.>", "3")
    c:send("UNSUB 3 1\r\n")
    c:pub(ack, "+TERM")
    local got = c:until_pong(5)
    assert(got, "the server did not survive the ack")
    -- the subscription took the dead letter, its one message, and not the ack
    assert.are.equal(1, #got)
    assert.are.equal("$JS.ACK.orders.dead", got[1].subject)
    assert(c:ping())
    assert.are.equal(1, admin(srv, "CONSUMER.INFO", "w").terminated)
    c:close()
  end)
end)
