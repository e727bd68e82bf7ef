-- Streams and durable consumers (src/stream.h, src/decl.c): PubAcks,
-- deduplication, expected sequences, retention, push consumers with acks,
-- redelivery, dead letters, ordering, restarts, hot reload and config
-- errors, all over the raw NATS protocol against a real `tide serve -c`.
local h = require "helpers"
local json = require "dkjson"

local now, sleep = h.proc.now, h.proc.sleep

-- Servers and directories ----------------------------------------------------

local live = {} -- servers started by the running test; stopped after it

-- Starts `tide serve -c` on a config made of `body` (the HTTP listener off,
-- so that specs running side by side do not meet on port 8222).
local function start(body, opts)
  local srv = h.start_scripted("listen { http = false }\n" .. body, opts)
  live[#live + 1] = srv
  return srv
end

-- Stops srv cleanly (SIGTERM, exit 0) and starts it again on the same files.
local function restart(srv)
  local st, code = srv:stop()
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
  local s2 = h.start_server { args = { "-c", srv.config } }
  s2.dir, s2.config = srv.dir, srv.config
  live[#live + 1] = s2
  return s2
end

after_each(function()
  local dirs = {}
  for _, srv in ipairs(live) do
    srv:stop()
    if srv.dir then dirs[srv.dir] = true end
  end
  for d in pairs(dirs) do h.remove_tmpdir(d) end
  live = {}
end)

-- The line of the first line of text containing needle (plain).
local function line_of(text, needle)
  local n = 0
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if l:find(needle, 1, true) then return n end
  end
  error("no line with " .. needle)
end

-- Admin requests -----------------------------------------------------------

local function admin(srv, what, payload)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN." .. what, payload or ""))
  return json.decode(m.payload), m.payload
end

local function sinfo(srv, name)
  local v, raw = admin(srv, "STREAM.INFO", name)
  assert(type(v) == "table" and v.name == name, "STREAM.INFO " .. name .. ": " .. raw)
  return v
end

local function cinfo(srv, name)
  local v, raw = admin(srv, "CONSUMER.INFO", name)
  assert(type(v) == "table" and v.name == name, "CONSUMER.INFO " .. name .. ": " .. raw)
  return v
end

local function get(srv, stream, seq)
  return admin(srv, "STREAM.GET", json.encode { stream = stream, seq = seq })
end

-- Clients ------------------------------------------------------------------

-- A connection with headers and no_responders on; c.q keeps messages that
-- arrived while we waited for something else.
local function client(srv)
  local c = h.connect(srv.port)
  assert(c:send('CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n'))
  c.q, c.n = {}, 0
  return c
end

local function recv(c, timeout)
  if #c.q > 0 then return table.remove(c.q, 1) end
  return c:msg(timeout or 5)
end

-- A PING/PONG round trip: the server has handled everything sent before.
local function flush(c)
  local msgs = assert(c:until_pong())
  for _, m in ipairs(msgs) do c.q[#c.q + 1] = m end
end

-- Up to n messages within timeout seconds.
local function recv_n(c, n, timeout)
  local out, deadline = {}, now() + (timeout or 5)
  while #out < n do
    local left = deadline - now()
    if left <= 0 then break end
    local m = recv(c, left)
    if not m then break end
    out[#out + 1] = m
  end
  return out
end

-- Everything that arrives within secs.
local function during(c, secs)
  return recv_n(c, math.huge, secs)
end

-- The n messages a step should bring (waited for up to 5 s, as slow as a
-- loaded machine makes them), then everything else that comes within secs:
-- all of them, for the caller to compare with exactly what it expects.
local function expect_n(c, n, secs)
  local got = recv_n(c, n, 5)
  for _, m in ipairs(during(c, secs)) do got[#got + 1] = m end
  return got
end

-- Publishes with a reply subject and returns the decoded PubAck, the raw
-- reply message and how long it took.
local function publish(c, subject, payload, headers)
  if not c.ack_sub then
    assert(c:sub("_ACK.>", "acks"))
    c.ack_sub = true
  end
  c.n = c.n + 1
  local reply = "_ACK." .. c.n
  local t0 = now()
  if headers then
    assert(c:hpub(subject, headers, payload or "", reply))
  else
    assert(c:pub(subject, payload or "", reply))
  end
  local deadline = now() + 5
  while now() < deadline do
    local m = c:msg(deadline - now())
    if not m then break end
    if m.subject == reply then return json.decode(m.payload), m, now() - t0 end
    c.q[#c.q + 1] = m
  end
  error("no PubAck for a publish on " .. subject)
end

-- A connection subscribed (SUB done) to a consumer's deliver subject.
local function worker(srv, subject, queue)
  local c = client(srv)
  assert(c:sub(subject, "w", queue))
  flush(c)
  return c
end

-- The fields of $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.
local function meta(m)
  assert(m and m.reply, "a delivery without a reply subject")
  local s, c, d, ss, cs, ts, p =
    m.reply:match("^%$JS%.ACK%.([%w_-]+)%.([%w_-]+)%.(%d+)%.(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  assert(s, "not the ack reply layout: " .. m.reply)
  return { stream = s, consumer = c, delivered = tonumber(d), sseq = tonumber(ss), cseq = tonumber(cs),
           ts = math.tointeger(tonumber(ts)), pending = tonumber(p) }
end

local function seqs(msgs)
  local out = {}
  for i, m in ipairs(msgs) do out[i] = meta(m).sseq end
  return out
end

local function ack(c, m, body)
  meta(m) -- a delivery with an ack subject
  assert(c:pub(m.reply, body or "+ACK"))
end

-- Acks with a reply subject (AckSync) and waits for the server's reply.
local function ack_sync(c, m, body)
  c.n = c.n + 1
  local inbox = "_SYNC." .. c.n
  assert(c:sub(inbox, "sync" .. c.n))
  assert(c:pub(m.reply, body or "+ACK", inbox))
  local deadline = now() + 5
  while now() < deadline do
    local r = c:msg(deadline - now())
    if not r then break end
    if r.subject == inbox and r.headers and r.headers:match("^NATS/1%.0 503") then
      -- a "no responders" status ahead of the real reply (see the AckSync
      -- test below): noted, and skipped so that other tests can go on
      c.saw_503 = true
    elseif r.subject == inbox then
      c:send("UNSUB sync" .. c.n .. "\r\n")
      return r
    else
      c.q[#c.q + 1] = r
    end
  end
  error("no reply to an AckSync on " .. m.reply)
end

local function headers_of(m)
  local status, t = h.parse_headers(m.headers)
  return t, status
end

-- "2026-01-02T15:04:05.123456789Z" -> ns since the epoch.
local function iso_ns(s)
  local Y, M, D, hh, mm, ss, frac = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$")
  assert(Y, "not an RFC 3339 time with ns: " .. tostring(s))
  Y, M, D = tonumber(Y), tonumber(M), tonumber(D)
  local y = M <= 2 and Y - 1 or Y
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (M + (M > 2 and -3 or 9)) + 2) // 5 + D - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return (days * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)) * 1000000000
    + math.tointeger(tonumber(frac))
end

local function seg_files(srv, stream)
  local _, out = h.sh(("ls '%s/data/streams/%s'"):format(srv.dir, stream))
  local files = {}
  for f in out:gmatch("(%d+%.seg)") do files[#files + 1] = f end
  table.sort(files)
  return files
end

-- Publishing ---------------------------------------------------------------

describe("publishing into a stream", function()
  local CFG = [[
stream "orders" { subjects = { "order.>" } }
stream "pay" { subjects = { "pay.*", "refund" } }
]]

  it("answers a publish with a reply subject with a PubAck, sequences 1, 2, 3", function()
    local srv = start(CFG)
    local c = client(srv)
    for i = 1, 3 do
      local _, m = publish(c, "order.created", "o" .. i)
      assert.are.equal("MSG", m.op) -- no headers on a PubAck
      assert.are.equal(('{"stream":"orders","seq":%d}'):format(i), m.payload)
    end
    local st = sinfo(srv, "orders")
    assert.are.equal(3, st.messages)
    assert.are.equal(1, st.first_seq)
    assert.are.equal(3, st.last_seq)
    assert.are.equal(3, st.stored)
    local rec = get(srv, "orders", 2)
    assert.are.equal("order.created", rec.subject)
    assert.are.equal("o2", rec.payload)
    assert.are.equal(2, rec.seq)
  end)

  it("stores a publish that has no reply subject", function()
    local srv = start(CFG)
    local c = client(srv)
    c:pub("order.a", "first")
    c:hpub("order.b", { { "X-Kind", "plain" } }, "second")
    flush(c)
    local st = h.wait_until(function()
      local s = sinfo(srv, "orders")
      return s.committed_seq == 2 and s
    end, 5)
    assert(st, "two publishes without reply were not stored")
    assert.are.equal(2, st.messages)
    assert.are.equal(2, st.last_seq)
    assert.are.equal("first", get(srv, "orders", 1).payload)
    local rec = get(srv, "orders", 2)
    assert.are.equal("second", rec.payload)
    assert.are.equal("order.b", rec.subject)
    assert.are.same({ ["X-Kind"] = "plain" }, rec.headers)
    -- and nothing was sent back to the publisher
    assert.are.same({}, c.q)
  end)

  it("keeps the subjects of two streams apart, each with its own sequences", function()
    local srv = start(CFG)
    local c = client(srv)
    assert.are.same({ stream = "orders", seq = 1 }, (publish(c, "order.x", "1")))
    assert.are.same({ stream = "pay", seq = 1 }, (publish(c, "pay.card", "2")))
    assert.are.same({ stream = "pay", seq = 2 }, (publish(c, "refund", "3")))
    assert.are.same({ stream = "orders", seq = 2 }, (publish(c, "order.y.z", "4")))
    -- pay.* takes one token only: pay.card.visa is nobody's
    c:pub("pay.card.visa", "5", "_ACK.none")
    local m = assert(recv(c, 5))
    assert.are.equal("_ACK.none", m.subject)
    assert.are.equal("NATS/1.0 503", (select(2, headers_of(m))))
    assert.are.equal(2, sinfo(srv, "orders").messages)
    assert.are.equal(2, sinfo(srv, "pay").messages)
    assert.are.equal("refund", get(srv, "pay", 2).subject)
  end)

  it("leaves subjects no stream captures to the core: no responders is a 503 status", function()
    local srv = start(CFG)
    local c = client(srv)
    c:sub("_R.>", "r")
    c:pub("nobody.home", "x", "_R.1")
    local m = assert(recv(c, 5), "no 503 for a request nobody serves")
    assert.are.equal("HMSG", m.op)
    assert.are.equal("_R.1", m.subject)
    assert.are.equal("NATS/1.0 503\r\n\r\n", m.headers)
    assert.are.equal("", m.payload)
    -- without no_responders (or headers) the core says nothing, as before
    local plain = h.connect(srv.port)
    plain:send('CONNECT {"verbose":false,"headers":true}\r\n')
    plain:sub("_P.1", "p")
    plain:pub("nobody.home", "x", "_P.1")
    assert.are.same({}, assert(plain:until_pong()))
    plain:close()
    -- a request on a captured subject is answered by the stream, not with a 503
    local ack = publish(c, "order.req", "y")
    assert.are.same({ stream = "orders", seq = 1 }, ack)
    assert.are.same({}, during(c, 0.1))
    -- subscribers of a captured subject still get the message, and the publisher its PubAck
    local sub = worker(srv, "order.>")
    assert.are.same({ stream = "orders", seq = 2 }, (publish(c, "order.live", "z")))
    local got = assert(recv(sub, 5))
    assert.are.equal("order.live", got.subject)
    assert.are.equal("z", got.payload)
    assert.are.equal(1, sinfo(srv, "orders").first_seq)
  end)
end)

-- Deduplication ------------------------------------------------------------

describe("deduplication", function()
  it("stores a repeated Nats-Msg-Id once and answers the repeat with the first sequence", function()
    local srv = start('stream "orders" { subjects = { "order.>" } }\n')
    local c = client(srv)
    local a1 = select(2, publish(c, "order.a", "one", { { "Nats-Msg-Id", "id-1" } }))
    assert.are.equal('{"stream":"orders","seq":1}', a1.payload)
    publish(c, "order.a", "other", { { "Nats-Msg-Id", "id-2" } })
    local a3 = select(2, publish(c, "order.a", "one again", { { "Nats-Msg-Id", "id-1" } }))
    assert.are.equal('{"stream":"orders","seq":1,"duplicate":true}', a3.payload)
    local st = sinfo(srv, "orders")
    assert.are.equal(2, st.messages)
    assert.are.equal(2, st.last_seq)
    assert.are.equal(1, st.duplicates)
    assert.are.equal("one", get(srv, "orders", 1).payload)
  end)

  it("takes a CloudEvents JSON envelope's source and id as the key", function()
    local srv = start('stream "ev" { subjects = { "ev.>" } }\n')
    local c = client(srv)
    local function ce(source, id, data)
      return json.encode { specversion = "1.0", type = "t", source = source, id = id, data = data }
    end
    assert.are.same({ stream = "ev", seq = 1 }, (publish(c, "ev.x", ce("/shop", "e1", 1))))
    -- same id, other source: another event
    assert.are.same({ stream = "ev", seq = 2 }, (publish(c, "ev.x", ce("/other", "e1", 2))))
    -- same source and id (other data, other subject): the same event
    assert.are.same({ stream = "ev", seq = 1, duplicate = true }, (publish(c, "ev.y", ce("/shop", "e1", 3))))
    -- JSON without specversion is not an envelope
    local plain = json.encode { source = "/shop", id = "e1" }
    assert.are.same({ stream = "ev", seq = 3 }, (publish(c, "ev.x", plain)))
    assert.are.same({ stream = "ev", seq = 4 }, (publish(c, "ev.x", plain)))
    assert.are.equal(4, sinfo(srv, "ev").messages)
  end)

  it("takes ce-id and ce-source headers as the key (the same key as the envelope)", function()
    local srv = start('stream "ev" { subjects = { "ev.>" } }\n')
    local c = client(srv)
    local hdr = { { "ce-specversion", "1.0" }, { "ce-type", "t" }, { "ce-source", "/shop" }, { "ce-id", "b1" } }
    assert.are.same({ stream = "ev", seq = 1 }, (publish(c, "ev.x", "data", hdr)))
    assert.are.same({ stream = "ev", seq = 1, duplicate = true }, (publish(c, "ev.x", "data", hdr)))
    local other = { { "ce-source", "/elsewhere" }, { "ce-id", "b1" } }
    assert.are.same({ stream = "ev", seq = 2 }, (publish(c, "ev.x", "data", other)))
    -- the structured form of the first event is the same event
    local env = json.encode { specversion = "1.0", type = "t", source = "/shop", id = "b1" }
    assert.are.same({ stream = "ev", seq = 1, duplicate = true }, (publish(c, "ev.x", env)))
    -- Nats-Msg-Id wins over the CloudEvents attributes
    local both = { { "Nats-Msg-Id", "n1" }, { "ce-source", "/shop" }, { "ce-id", "b1" } }
    assert.are.same({ stream = "ev", seq = 3 }, (publish(c, "ev.x", "data", both)))
    assert.are.equal(3, sinfo(srv, "ev").messages)
  end)

  it("forgets a key after dedup_window", function()
    local srv = start('stream "d" { subjects = { "d.>" }, dedup_window = "1s" }\n')
    local c = client(srv)
    local id = { { "Nats-Msg-Id", "w1" } }
    assert.are.same({ stream = "d", seq = 1 }, (publish(c, "d.x", "a", id)))
    sleep(0.5)
    assert.are.same({ stream = "d", seq = 1, duplicate = true }, (publish(c, "d.x", "a", id)))
    sleep(0.7) -- 1.2 s after the first
    assert.are.same({ stream = "d", seq = 2 }, (publish(c, "d.x", "a", id)))
    assert.are.same({ stream = "d", seq = 2, duplicate = true }, (publish(c, "d.x", "a", id)))
    assert.are.equal(1, sinfo(srv, "d").limits.dedup_window)
  end)

  it("keeps the window across a restart", function()
    local srv = start('stream "d" { subjects = { "d.>" } }\n')
    local c = client(srv)
    publish(c, "d.x", "a", { { "Nats-Msg-Id", "r1" } })
    publish(c, "d.x", "b", { { "Nats-Msg-Id", "r2" } })
    c:close()
    srv = restart(srv)
    c = client(srv)
    assert.are.same({ stream = "d", seq = 2, duplicate = true }, (publish(c, "d.x", "b", { { "Nats-Msg-Id", "r2" } })))
    assert.are.same({ stream = "d", seq = 1, duplicate = true }, (publish(c, "d.x", "a", { { "Nats-Msg-Id", "r1" } })))
    assert.are.same({ stream = "d", seq = 3 }, (publish(c, "d.x", "c", { { "Nats-Msg-Id", "r3" } })))
    assert.are.equal(3, sinfo(srv, "d").messages)
  end)

  it("does not call a repeat a duplicate of a message that then fails to be stored", function()
    -- Every fdatasync fails: the first publish is refused with a 503.  The
    -- repeat, sent before that sync ended, must not be told it is stored.
    local dir = h.make_tmpdir("tide-cfg")
    h.write_file(dir .. "/tide.lua", 'listen { http = false }\nstream "d" { subjects = { "d.>" } }\n')
    local port = h.free_port()
    local srv = h.start_server { port = port, bin = "/usr/bin/env",
      cmd = { "TIDE_FAULT=sync:1+:EIO", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port),
              "-c", dir .. "/tide.lua" } }
    srv.dir = dir
    live[#live + 1] = srv
    local c = client(srv)
    c:sub("_R.>", "r")
    c:hpub("d.x", { { "Nats-Msg-Id", "f1" } }, "a", "_R.1")
    c:hpub("d.x", { { "Nats-Msg-Id", "f1" } }, "a", "_R.2")
    local replies = {}
    for _, m in ipairs(recv_n(c, 2, 5)) do replies[m.subject] = json.decode(m.payload) end
    assert.are.equal(503, replies["_R.1"] and replies["_R.1"].error and replies["_R.1"].error.code)
    assert.is_nil(get(srv, "d", 1).seq) -- not stored
    local r2 = assert(replies["_R.2"], "no reply to the repeat")
    assert.is_not_true(r2.duplicate, "the repeat was acknowledged as a duplicate of a message that is not stored: "
      .. json.encode(r2))
  end)
end)

-- Expected sequences -----------------------------------------------------

describe("expected sequences", function()
  local CFG = 'stream "acct" { subjects = { "acct.>" } }\n'

  it("Nats-Expected-Last-Sequence: stores on a match, refuses a mismatch with 400/10071", function()
    local srv = start(CFG)
    local c = client(srv)
    assert.are.same({ stream = "acct", seq = 1 },
      (publish(c, "acct.a", "1", { { "Nats-Expected-Last-Sequence", "0" } })))
    assert.are.same({ stream = "acct", seq = 2 },
      (publish(c, "acct.b", "2", { { "Nats-Expected-Last-Sequence", "1" } })))
    local _, m = publish(c, "acct.a", "3", { { "Nats-Expected-Last-Sequence", "1" } })
    assert.are.equal('{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 2"},"stream":"acct"}',
      m.payload)
    -- not a number: refused too
    local bad = publish(c, "acct.a", "4", { { "Nats-Expected-Last-Sequence", "two" } })
    assert.are.equal(10071, bad.error.err_code)
    local st = sinfo(srv, "acct")
    assert.are.equal(2, st.messages)
    assert.are.equal(2, st.last_seq)
    assert.are.equal(2, st.conflicts)
    -- without a reply the mismatch is still not stored
    c:hpub("acct.a", { { "Nats-Expected-Last-Sequence", "7" } }, "5")
    flush(c)
    assert.are.same({ stream = "acct", seq = 3 },
      (publish(c, "acct.a", "6", { { "Nats-Expected-Last-Sequence", "2" } })))
    assert.are.equal("6", get(srv, "acct", 3).payload)
  end)

  it("Nats-Expected-Last-Subject-Sequence: append to a subject only at the version expected", function()
    local srv = start(CFG)
    local c = client(srv)
    local function append(subject, expect, data)
      return (publish(c, subject, data, { { "Nats-Expected-Last-Subject-Sequence", tostring(expect) } }))
    end
    assert.are.same({ stream = "acct", seq = 1 }, append("acct.A", 0, "A opened"))
    assert.are.same({ stream = "acct", seq = 2 }, append("acct.B", 0, "B opened"))
    -- A is at 1 although the stream is at 2
    assert.are.same({ stream = "acct", seq = 3 }, append("acct.A", 1, "A deposit"))
    -- a writer still holding version 1 of A loses
    local lost = append("acct.A", 1, "A stale withdraw")
    assert.are.same({ code = 400, err_code = 10071, description = "wrong last sequence: 3" }, lost.error)
    assert.are.equal("acct", lost.stream)
    -- B is untouched by A's writes; a new subject is at 0
    assert.are.same({ stream = "acct", seq = 4 }, append("acct.B", 2, "B deposit"))
    assert.are.same({ error = { code = 400, err_code = 10071, description = "wrong last sequence: 0" },
                      stream = "acct" }, append("acct.C", 4, "C?"))
    assert.are.same({ stream = "acct", seq = 5 }, append("acct.C", 0, "C opened"))
    local st = sinfo(srv, "acct")
    assert.are.equal(5, st.messages)
    assert.are.equal(2, st.conflicts)
  end)

  it("Nats-Expected-Stream: stores when it names the capturing stream, else 400/10060", function()
    local srv = start(CFG .. 'stream "other" { subjects = { "other.>" } }\n')
    local c = client(srv)
    assert.are.same({ stream = "acct", seq = 1 }, (publish(c, "acct.a", "1", { { "Nats-Expected-Stream", "acct" } })))
    local r = publish(c, "acct.a", "2", { { "Nats-Expected-Stream", "other" } })
    assert.are.same({ error = { code = 400, err_code = 10060, description = "expected stream does not match" },
                      stream = "acct" }, r)
    assert.are.equal(1, sinfo(srv, "acct").messages)
    assert.are.equal(0, sinfo(srv, "other").messages)
  end)
end)

-- Retention ----------------------------------------------------------------

describe("retention", function()
  it("max_msgs keeps the newest messages and moves first_seq", function()
    local srv = start('stream "r" { subjects = { "r.>" }, max_msgs = 3 }\n')
    local c = client(srv)
    for i = 1, 5 do assert.are.equal(i, publish(c, "r.x", "m" .. i).seq) end
    local st = sinfo(srv, "r")
    assert.are.equal(3, st.messages)
    assert.are.equal(3, st.first_seq)
    assert.are.equal(5, st.last_seq)
    assert.are.equal(3, st.limits.max_msgs)
    local gone = get(srv, "r", 2)
    assert.is_false(gone.ok)
    assert.matches("has no message 2", gone.error)
    assert.are.equal("m3", get(srv, "r", 3).payload)
  end)

  it("max_bytes keeps what fits", function()
    -- a record takes 40 bytes of header + subject + payload: 40 + 3 + 57 = 100
    local srv = start('stream "r" { subjects = { "r.>" }, max_bytes = 350 }\n')
    local c = client(srv)
    local payload = ("x"):rep(57)
    for i = 1, 5 do publish(c, "r.x", payload) end
    local st = sinfo(srv, "r")
    assert.are.equal(3, st.messages)
    assert.are.equal(300, st.bytes)
    assert.are.equal(3, st.first_seq)
    assert.are.equal(5, st.last_seq)
  end)

  it("max_age drops messages once they are older", function()
    local srv = start('stream "r" { subjects = { "r.>" }, max_age = "1s" }\n')
    local c = client(srv)
    local t0 = now()
    for i = 1, 3 do publish(c, "r.x", "m" .. i) end
    sleep(0.5)
    assert.are.equal(3, sinfo(srv, "r").messages)
    local st = h.wait_until(function()
      local s = sinfo(srv, "r")
      return s.messages == 0 and s
    end, 4, 0.05)
    assert(st, "messages older than max_age are still there")
    assert.is_true(now() - t0 >= 0.9, "dropped too early")
    assert.are.equal(4, st.first_seq)
    assert.are.equal(3, st.last_seq)
    assert.are.same({ stream = "r", seq = 4 }, (publish(c, "r.x", "m4")))
  end)

  it("deletes segment files once every message in them is gone", function()
    -- 1000-byte records (40 + 3 + 957), 4KB segments: 4 records per segment
    local srv = start('stream "r" { subjects = { "r.>" }, segment_size = "4KB", max_msgs = 6 }\n')
    local c = client(srv)
    local payload = ("y"):rep(957)
    for i = 1, 12 do publish(c, "r.x", payload) end
    -- messages 7..12 are left: segment 1 (1..4) is gone, 5 (5..8) still holds 7 and 8
    assert.are.same({ "00000000000000000005.seg", "00000000000000000009.seg" }, h.wait_until(function()
      local f = seg_files(srv, "r")
      return #f == 2 and f
    end, 4) or seg_files(srv, "r"))
    for i = 13, 20 do publish(c, "r.x", payload) end
    -- messages 15..20 are left: segments 1, 5 and 9 are gone
    local want = { "00000000000000000013.seg", "00000000000000000017.seg" }
    local files = h.wait_until(function()
      local f = seg_files(srv, "r")
      return #f == 2 and f
    end, 4) or seg_files(srv, "r")
    assert.are.same(want, files)
    local st = sinfo(srv, "r")
    assert.are.equal(6, st.messages)
    assert.are.equal(15, st.first_seq)
    assert.are.equal(2, st.segments)
  end)

  it("deletes every sealed segment when max_age empties the stream", function()
    local srv = start('stream "r" { subjects = { "r.>" }, segment_size = "4KB", max_age = "1s" }\n')
    local c = client(srv)
    local payload = ("z"):rep(957)
    for i = 1, 10 do publish(c, "r.x", payload) end
    assert.are.same({ "00000000000000000001.seg", "00000000000000000005.seg", "00000000000000000009.seg" },
      seg_files(srv, "r"))
    assert(h.wait_until(function() return sinfo(srv, "r").messages == 0 end, 4, 0.05),
      "messages older than max_age are still there")
    local files = h.wait_until(function()
      local f = seg_files(srv, "r")
      return #f == 1 and f
    end, 3, 0.05) or seg_files(srv, "r")
    -- the active segment stays (the next record goes there)
    assert.are.same({ "00000000000000000009.seg" }, files)
    assert.are.same({ stream = "r", seq = 11 }, (publish(c, "r.x", "after")))
  end)
end)

-- Consumers ----------------------------------------------------------------

describe("a consumer", function()
  local function cfg(consumer, stream_extra)
    return ('stream "orders" { subjects = { "order.>" }%s }\nconsumer "w" { stream = "orders", deliver = "work.w", %s }\n')
      :format(stream_extra or "", consumer or "")
  end

  it("delivers only while its deliver subject has a subscriber; what was stored before comes then", function()
    local srv = start(cfg('ack_wait = "10s"'))
    local p = client(srv)
    publish(p, "order.a", "one", { { "X-Trace", "t1" } })
    publish(p, "order.b", "two")
    sleep(0.3)
    local ci = cinfo(srv, "w")
    assert.are.equal(0, ci.delivered)
    assert.are.equal(2, ci.num_pending)
    local w = worker(srv, "work.w")
    local got = recv_n(w, 2, 5)
    assert.are.same({ 1, 2 }, seqs(got))
    -- through the deliver subject's subscription, under the event's own subject
    -- (as JetStream push consumers deliver)
    assert.are.same({ "w", "w" }, { got[1].sid, got[2].sid })
    assert.are.same({ "order.a", "order.b" }, { got[1].subject, got[2].subject })
    assert.are.equal("HMSG", got[1].op)
    assert.are.equal("one", got[1].payload)
    assert.are.equal("t1", headers_of(got[1])["X-Trace"])
    assert.are.equal("MSG", got[2].op)
    assert.are.equal("two", got[2].payload)
    for _, m in ipairs(got) do ack(w, m) end
    -- nobody listening again: the next one waits for the next subscriber
    w:send("UNSUB w\r\n")
    flush(w)
    publish(p, "order.c", "three")
    sleep(0.3)
    assert.are.same({}, during(w, 0.05))
    assert.are.equal(1, cinfo(srv, "w").num_pending)
    local w2 = worker(srv, "work.w")
    local m = assert(recv(w2, 5), "the message stored while nobody listened never came")
    assert.are.equal("three", m.payload)
    assert.are.equal(3, meta(m).sseq)
    assert.are.equal(1, meta(m).delivered)
  end)

  it("sends $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> as the reply subject", function()
    local srv = start(cfg('ack_wait = "10s"'))
    local p = client(srv)
    for i = 1, 3 do publish(p, "order.x", "m" .. i) end
    local w = worker(srv, "work.w")
    local got = recv_n(w, 3, 5)
    assert.are.equal(3, #got)
    for i, m in ipairs(got) do
      local md = meta(m)
      assert.are.equal("orders", md.stream)
      assert.are.equal("w", md.consumer)
      assert.are.equal(1, md.delivered)
      assert.are.equal(i, md.sseq)
      assert.are.equal(i, md.cseq)
      assert.are.equal(3 - i, md.pending)
      assert.are.equal(iso_ns(get(srv, "orders", i).time), md.ts)
    end
    assert.is_true(math.abs(meta(got[1]).ts / 1e9 - os.time()) < 60, "ts is not ns since the epoch")
  end)

  it("stops delivering a message once it is acked (+ACK or an empty ack)", function()
    local srv = start(cfg('ack_wait = "200ms"'))
    local p = client(srv)
    publish(p, "order.x", "a")
    publish(p, "order.x", "b")
    local w = worker(srv, "work.w")
    local got = recv_n(w, 2, 5)
    assert.are.same({ 1, 2 }, seqs(got))
    ack(w, got[1], "+ACK")
    ack(w, got[2], "")
    assert.are.same({}, seqs(during(w, 0.7)))
    local ci = cinfo(srv, "w")
    assert.are.equal(2, ci.acked)
    assert.are.equal(0, ci.num_ack_pending)
    assert.are.equal(2, ci.delivered)
    assert.are.equal(0, ci.redelivered)
  end)

  it("redelivers an unacked message after ack_wait with the delivered count raised", function()
    local srv = start(cfg('ack_wait = "200ms"'))
    local p = client(srv)
    publish(p, "order.x", "again")
    local w = worker(srv, "work.w")
    local m1 = assert(recv(w, 5))
    local t1 = now()
    local m2 = assert(recv(w, 3), "not redelivered")
    local dt = now() - t1
    assert.is_true(dt >= 0.15 and dt < 0.6, ("redelivered after %.3f s, ack_wait is 0.2 s"):format(dt))
    assert.are.same({ delivered = 1, sseq = 1, cseq = 1 },
      { delivered = meta(m1).delivered, sseq = meta(m1).sseq, cseq = meta(m1).cseq })
    assert.are.same({ delivered = 2, sseq = 1, cseq = 2 },
      { delivered = meta(m2).delivered, sseq = meta(m2).sseq, cseq = meta(m2).cseq })
    assert.are.equal("again", m2.payload)
    assert.are.equal(meta(m1).ts, meta(m2).ts)
    ack(w, m2)
    assert.are.same({}, during(w, 0.5))
    local ci = cinfo(srv, "w")
    assert.are.equal(1, ci.redelivered)
    assert.are.equal(1, ci.ack_timeouts)
  end)

  it("waits ack_wait and then the backoff step before each redelivery", function()
    local srv = start(cfg('ack_wait = "200ms", backoff = { "300ms", "600ms" }'))
    local p = client(srv)
    publish(p, "order.x", "slow")
    local w = worker(srv, "work.w")
    local times, counts = {}, {}
    for i = 1, 4 do
      local m = assert(recv(w, 3), "delivery " .. i .. " did not come")
      times[i], counts[i] = now(), meta(m).delivered
    end
    assert.are.same({ 1, 2, 3, 4 }, counts)
    -- ack_wait 0.2 + backoff[1] 0.3, then 0.2 + 0.6, then the last step again
    local want = { 0.5, 0.8, 0.8 }
    for i = 1, 3 do
      local dt = times[i + 1] - times[i]
      assert.is_true(dt >= want[i] - 0.08 and dt <= want[i] + 0.3,
        ("interval %d was %.3f s, expected about %.1f s"):format(i, dt, want[i]))
    end
  end)

  it("dead-letters after max_deliver with every Tide-* header and the original message", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" } }
stream "dlq" { subjects = { "dlq.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "200ms", max_deliver = 2, dead_letter = "dlq.orders" }
]])
    local p = client(srv)
    publish(p, "order.created", '{"id":7}', { { "X-Trace", "abc" } })
    local dl = worker(srv, "dlq.orders")
    local w = worker(srv, "work.w")
    local got = recv_n(w, 2, 3)
    assert.are.same({ 1, 2 }, (function() local d = {} for i, m in ipairs(got) do d[i] = meta(m).delivered end return d end)())
    local d = assert(recv(dl, 3), "nothing on the dead-letter subject")
    assert.are.equal("dlq.orders", d.subject)
    assert.are.equal('{"id":7}', d.payload)
    local hd, status = headers_of(d)
    assert.are.equal("NATS/1.0", status)
    assert.are.same({
      ["Tide-Original-Subject"] = "order.created",
      ["Tide-Stream"] = "orders",
      ["Tide-Consumer"] = "w",
      ["Tide-Sequence"] = "1",
      ["Tide-Deliveries"] = "2",
      ["Tide-Reason"] = "max_deliver",
      ["Tide-Error"] = "max_deliver",
      ["Tide-Dead-Letter-Id"] = "orders.w.1",
      ["X-Trace"] = "abc",
    }, hd)
    -- one well-formed block: its only empty line is the last
    assert.are.equal(#d.headers - 3, d.headers:find("\r\n\r\n", 1, true))
    -- no third delivery
    assert.are.same({}, during(w, 0.6))
    -- the dead-letter stream stored it
    local rec = h.wait_until(function()
      local r = get(srv, "dlq", 1)
      return r.seq and r
    end, 3)
    assert(rec, "the dead-letter stream did not store the message")
    assert.are.equal("dlq.orders", rec.subject)
    assert.are.same({ id = 7 }, rec.data)
    assert.are.equal("order.created", rec.headers["Tide-Original-Subject"])
    assert.are.equal("max_deliver", rec.headers["Tide-Reason"])
    assert.are.equal("abc", rec.headers["X-Trace"])
    local ci = cinfo(srv, "w")
    assert.are.equal(1, ci.dead_lettered)
    assert.are.equal(0, ci.num_ack_pending)
  end)

  it("dead-letters at once on +TERM, with the reason as Tide-Error", function()
    local srv = start(cfg('ack_wait = "200ms", dead_letter = "dlq.w"'))
    local p = client(srv)
    publish(p, "order.bad", "poison")
    local dl = worker(srv, "dlq.w")
    local w = worker(srv, "work.w")
    local m = assert(recv(w, 3))
    ack(w, m, "+TERM cannot parse the order")
    local d = assert(recv(dl, 3), "nothing on the dead-letter subject after +TERM")
    local hd = headers_of(d)
    assert.are.equal("term", hd["Tide-Reason"])
    assert.are.equal("cannot parse the order", hd["Tide-Error"])
    assert.are.equal("1", hd["Tide-Deliveries"])
    assert.are.equal("1", hd["Tide-Sequence"])
    assert.are.equal("order.bad", hd["Tide-Original-Subject"])
    assert.are.equal("poison", d.payload)
    assert.are.same({}, during(w, 0.6))
    local ci = cinfo(srv, "w")
    assert.are.equal(1, ci.terminated)
    assert.are.equal(0, ci.num_ack_pending)
  end)

  it("dead-letters a -NAK of the last allowed delivery at once", function()
    local srv = start(cfg('ack_wait = "5s", max_deliver = 2, dead_letter = "dlq.w"'))
    local p = client(srv)
    publish(p, "order.x", "twice")
    local dl = worker(srv, "dlq.w")
    local w = worker(srv, "work.w")
    ack(w, assert(recv(w, 3)), "-NAK")
    local m2 = assert(recv(w, 2))
    assert.are.equal(2, meta(m2).delivered)
    local t0 = now()
    ack(w, m2, "-NAK")
    local d = assert(recv(dl, 2), "no dead letter after the last -NAK")
    assert.is_true(now() - t0 < 1, "dead-lettered only after ack_wait")
    local hd = headers_of(d)
    assert.are.same({ "max_deliver", "2", "1" }, { hd["Tide-Reason"], hd["Tide-Deliveries"], hd["Tide-Sequence"] })
    assert.are.same({}, during(w, 0.3))
  end)

  it("redelivers promptly on -NAK", function()
    local srv = start(cfg('ack_wait = "5s"'))
    local p = client(srv)
    publish(p, "order.x", "n")
    local w = worker(srv, "work.w")
    local m = assert(recv(w, 3))
    local t0 = now()
    ack(w, m, "-NAK")
    local again = assert(recv(w, 2), "no redelivery after -NAK")
    assert.is_true(now() - t0 < 0.3, ("redelivered %.3f s after -NAK"):format(now() - t0))
    assert.are.equal(2, meta(again).delivered)
    assert.are.equal(1, meta(again).sseq)
    assert.are.equal(1, cinfo(srv, "w").naked)
  end)

  it("holds a -NAK with a delay back for that long", function()
    local srv = start(cfg('ack_wait = "5s"'))
    local p = client(srv)
    publish(p, "order.x", "d1")
    publish(p, "order.x", "d2")
    local w = worker(srv, "work.w")
    local got = recv_n(w, 2, 3)
    local t0 = now()
    ack(w, got[1], '-NAK {"delay": 500000000}')
    ack(w, got[2], "-NAK 300ms")
    local first = assert(recv(w, 2), "no redelivery after -NAK 300ms")
    local t1 = now() - t0
    local second = assert(recv(w, 2), "no redelivery after -NAK {delay}")
    local t2 = now() - t0
    assert.are.equal(2, meta(first).sseq)
    assert.is_true(t1 >= 0.27 and t1 < 0.6, ("-NAK 300ms came back after %.3f s"):format(t1))
    assert.are.equal(1, meta(second).sseq)
    assert.are.equal(2, meta(second).delivered)
    assert.is_true(t2 >= 0.47 and t2 < 0.9, ('-NAK {"delay": 5e8} came back after %.3f s'):format(t2))
  end)

  it("pushes the deadline out on +WPI", function()
    -- ack_wait four times the +WPI interval, so a loaded machine's late
    -- report does not pass for a missing one.
    local srv = start(cfg('ack_wait = "600ms"'))
    local p = client(srv)
    publish(p, "order.x", "long job")
    local w = worker(srv, "work.w")
    local m = assert(recv(w, 3))
    local t0 = now()
    local extra = {}
    while now() - t0 < 1.0 do
      ack(w, m, "+WPI")
      for _, x in ipairs(during(w, 0.15)) do extra[#extra + 1] = x end
    end
    assert.are.same({}, seqs(extra))
    -- without more progress reports it comes back after ack_wait
    local t1 = now()
    local again = assert(recv(w, 2), "not redelivered once +WPI stopped")
    local dt = now() - t1
    assert.is_true(dt < 0.9, ("redelivered %.3f s after the last +WPI"):format(dt))
    assert.are.equal(2, meta(again).delivered)
  end)

  it("answers an ack that has a reply subject (AckSync) with an empty message", function()
    local srv = start(cfg('ack_wait = "200ms"'))
    local p = client(srv)
    publish(p, "order.x", "s")
    local w = worker(srv, "work.w")
    local m = assert(recv(w, 3))
    local r = ack_sync(w, m)
    assert.are.equal("MSG", r.op)
    assert.are.equal("", r.payload)
    assert.are.equal(1, cinfo(srv, "w").acked)
    assert.are.same({}, during(w, 0.5))
  end)

  it("answers an AckSync from a no_responders client with the empty reply only, no 503", function()
    -- nats.go, nats.js, ... connect with headers and no_responders on: a 503
    -- status first makes their ackAck()/AckSync fail although the ack was taken
    local srv = start(cfg('ack_wait = "10s"'))
    local p = client(srv)
    publish(p, "order.x", "s")
    local w = worker(srv, "work.w") -- CONNECT {"headers":true,"no_responders":true}
    local m = assert(recv(w, 3))
    w:sub("_SYNC.raw", "raw")
    w:pub(m.reply, "+ACK", "_SYNC.raw")
    local replies = expect_n(w, 1, 0.5)
    assert.are.equal(1, #replies)
    assert.are.equal("_SYNC.raw", replies[1].subject)
    assert.is_nil(replies[1].headers, "the first reply to the AckSync is a status: " .. tostring(replies[1].headers))
    assert.are.equal("", replies[1].payload)
  end)

  it("keeps at most max_ack_pending unacked messages out", function()
    local srv = start(cfg('ack_wait = "10s", max_ack_pending = 3'))
    local p = client(srv)
    for i = 1, 10 do publish(p, "order.x", "m" .. i) end
    local w = worker(srv, "work.w")
    local got = recv_n(w, 10, 0.6)
    assert.are.same({ 1, 2, 3 }, seqs(got))
    assert.are.equal(3, cinfo(srv, "w").num_ack_pending)
    ack(w, got[2])
    local more = expect_n(w, 1, 0.4)
    assert.are.same({ 4 }, seqs(more))
    ack(w, got[1])
    ack(w, got[3])
    assert.are.same({ 5, 6 }, seqs(expect_n(w, 2, 0.4)))
    local ci = cinfo(srv, "w")
    assert.are.equal(3, ci.num_ack_pending)
    assert.are.equal(4, ci.num_pending)
  end)

  it("shares deliveries among a queue group on the deliver subject, each once", function()
    local srv = start(cfg('ack_wait = "10s", queue = "workers"'))
    local a = worker(srv, "work.w", "workers")
    local b = worker(srv, "work.w", "workers")
    local p = client(srv)
    for i = 1, 20 do publish(p, "order.x", tostring(i)) end
    local seen, per = {}, { 0, 0 }
    local function take(k, c, secs)
      for _, m in ipairs(during(c, secs)) do
        local s = meta(m).sseq
        assert.is_nil(seen[s], "sequence " .. s .. " delivered twice")
        seen[s] = true
        per[k] = per[k] + 1
        ack(c, m)
      end
    end
    local deadline = now() + 5
    while per[1] + per[2] < 20 and now() < deadline do
      take(1, a, 0.1)
      take(2, b, 0.1)
    end
    take(1, a, 0.3) -- and nothing more
    take(2, b, 0.3)
    assert.are.equal(20, per[1] + per[2])
    assert.is_true(per[1] > 0 and per[2] > 0, ("split %d/%d"):format(per[1], per[2]))
    assert.are.equal(20, cinfo(srv, "w").delivered)
  end)

  it("delivers only the subjects its filter matches", function()
    local srv = start(cfg('ack_wait = "10s", filter = "order.created"'))
    local p = client(srv)
    publish(p, "order.created", "c1")
    publish(p, "order.shipped", "s1")
    publish(p, "order.created", "c2")
    publish(p, "order.created.late", "c3")
    local w = worker(srv, "work.w")
    local got = expect_n(w, 2, 0.5)
    assert.are.same({ 1, 3 }, seqs(got))
    assert.are.equal("c1", got[1].payload)
    assert.are.equal("c2", got[2].payload)
    assert.are.same({ 1, 2 }, { meta(got[1]).cseq, meta(got[2]).cseq })
    assert.are.equal("order.created", cinfo(srv, "w").filter)
  end)

  it("counts only messages its filter matches as pending", function()
    local srv = start(cfg('ack_wait = "10s", filter = "order.created"'))
    local p = client(srv)
    publish(p, "order.created", "c1")
    publish(p, "order.shipped", "s1")
    publish(p, "order.shipped", "s2")
    publish(p, "order.created", "c2")
    publish(p, "order.shipped", "s3")
    assert.are.equal(2, cinfo(srv, "w").num_pending)
    local w = worker(srv, "work.w")
    local got = expect_n(w, 2, 0.5)
    assert.are.same({ 1, 4 }, seqs(got))
    assert.are.same({ 1, 0 }, { meta(got[1]).pending, meta(got[2]).pending })
    assert.are.equal(0, cinfo(srv, "w").num_pending)
  end)

  it("ordered_by a data field: one unacked per key, other keys go on, order kept per key", function()
    local srv = start(cfg('ack_wait = "10s", ordered_by = "data.order_id"'))
    local p = client(srv)
    for _, k in ipairs { "A", "A", "B", "A", "B" } do
      publish(p, "order.x", json.encode { order_id = k })
    end
    local w = worker(srv, "work.w")
    local first = expect_n(w, 2, 0.4)
    assert.are.same({ 1, 3 }, seqs(first))
    assert.are.equal(3, cinfo(srv, "w").num_parked)
    -- B goes on while A's first is still out
    ack(w, first[2])
    local b2 = expect_n(w, 1, 0.3)
    assert.are.same({ 5 }, seqs(b2))
    -- A's next only after A's first
    ack(w, first[1])
    local a2 = expect_n(w, 1, 0.3)
    assert.are.same({ 2 }, seqs(a2))
    ack(w, b2[1])
    assert.are.same({}, seqs(during(w, 0.2)))
    ack(w, a2[1])
    local a3 = expect_n(w, 1, 0.3)
    assert.are.same({ 4 }, seqs(a3))
    ack(w, a3[1])
    assert.are.same({}, during(w, 0.2))
    local ci = cinfo(srv, "w")
    assert.are.equal(0, ci.num_parked)
    assert.are.equal(0, ci.num_ack_pending)
    assert.are.equal(5, ci.acked)
  end)

  it("ordered_by a field keeps a key's order through redeliveries", function()
    local srv = start(cfg('ack_wait = "200ms", ordered_by = "data.order_id"'))
    local p = client(srv)
    publish(p, "order.x", '{"order_id":"A","step":1}')
    publish(p, "order.x", '{"order_id":"A","step":2}')
    local w = worker(srv, "work.w")
    -- step 1 is never acked in time: it comes again, step 2 still waits
    local got = recv_n(w, 3, 5)
    assert.are.same({ 1, 1, 1 }, seqs(got))
    ack(w, got[#got])
    -- (step 1 may have come once more before the ack got there)
    local nxt = assert(recv(w, 2))
    while meta(nxt).sseq == 1 do nxt = assert(recv(w, 2)) end
    assert.are.equal(2, meta(nxt).sseq)
    assert.are.equal(1, meta(nxt).delivered)
  end)

  it("ordered_by a header", function()
    local srv = start(cfg('ack_wait = "10s", ordered_by = "header:Key"'))
    local p = client(srv)
    publish(p, "order.x", "1", { { "Key", "K1" } })
    publish(p, "order.x", "2", { { "Key", "K1" } })
    publish(p, "order.x", "3", { { "Key", "K2" } })
    publish(p, "order.x", "4") -- no key: not held back by anything
    local w = worker(srv, "work.w")
    local first = expect_n(w, 3, 0.4)
    assert.are.same({ 1, 3, 4 }, seqs(first))
    ack(w, first[1])
    assert.are.same({ 2 }, seqs(expect_n(w, 1, 0.3)))
  end)

  it("starts where its deliver_policy says (all, new, last, by_start_sequence, by_start_time)", function()
    local base = 'stream "orders" { subjects = { "order.>" } }\n'
    local srv = start(base)
    local p = client(srv)
    for i = 1, 3 do
      publish(p, "order.x", "m" .. i)
      sleep(0.01)
    end
    local t3 = get(srv, "orders", 3).time
    h.write_file(srv.config, "listen { http = false }\n" .. base .. ([[
consumer "all"  { stream = "orders", deliver = "d.all", ack_wait = "10s", deliver_policy = "all" }
consumer "new"  { stream = "orders", deliver = "d.new", ack_wait = "10s", deliver_policy = "new" }
consumer "last" { stream = "orders", deliver = "d.last", ack_wait = "10s", deliver_policy = "last" }
consumer "seq"  { stream = "orders", deliver = "d.seq", ack_wait = "10s", deliver_policy = "by_start_sequence", start_seq = 2 }
consumer "time" { stream = "orders", deliver = "d.time", ack_wait = "10s", deliver_policy = "by_start_time", start_time = %q }
]]):format(t3))
    local r, raw = admin(srv, "RELOAD")
    assert.is_true(r.ok, raw)
    local ls = admin(srv, "CONSUMER.LS")
    assert.are.equal(5, #ls)
    local ws = {}
    for _, n in ipairs { "all", "new", "last", "seq", "time" } do ws[n] = worker(srv, "d." .. n) end
    publish(p, "order.x", "m4")
    local want = { all = { 1, 2, 3, 4 }, new = { 4 }, last = { 3, 4 }, seq = { 2, 3, 4 }, time = { 3, 4 } }
    for n, w in pairs(ws) do
      assert.are.same(want[n], seqs(expect_n(w, #want[n], 0.3)), "deliver_policy of consumer " .. n)
    end
  end)

  it("deliver_policy last with a filter starts at the last message the filter matches", function()
    local base = 'stream "orders" { subjects = { "order.>" } }\n'
    local srv = start(base)
    local p = client(srv)
    publish(p, "order.created", "c1")
    publish(p, "order.shipped", "s1")
    publish(p, "order.created", "c2")
    publish(p, "order.shipped", "s2")
    h.write_file(srv.config, "listen { http = false }\n" .. base
      .. 'consumer "lc" { stream = "orders", deliver = "d.lc", ack_wait = "10s", filter = "order.created", '
      .. 'deliver_policy = "last" }\n')
    local r, raw = admin(srv, "RELOAD")
    assert.is_true(r.ok, raw)
    local w = worker(srv, "d.lc")
    local got = expect_n(w, 1, 0.4)
    assert.are.same({ 3 }, seqs(got))
    assert.are.equal("c2", got[1] and got[1].payload)
  end)
end)

-- Restarts -----------------------------------------------------------------

describe("after a restart", function()
  local CFG = [[
stream "orders" { subjects = { "order.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "10s" }
]]

  -- sig: "TERM" (a clean stop, exit 0) or "KILL"
  local function resumes(sig)
    local srv = start(CFG)
    local p = client(srv)
    for i = 1, 4 do publish(p, "order.x", "m" .. i) end
    local w = worker(srv, "work.w")
    local got = recv_n(w, 4, 5)
    assert.are.same({ 1, 2, 3, 4 }, seqs(got))
    ack_sync(w, got[1])
    ack_sync(w, got[3], "")
    -- 2 and 4 stay unacked
    w:close()
    p:close()
    if sig == "KILL" then
      srv:kill()
      local s2 = h.start_server { args = { "-c", srv.config } }
      s2.dir, s2.config = srv.dir, srv.config
      live[#live + 1] = s2
      srv = s2
    else
      srv = restart(srv)
    end
    local ci = cinfo(srv, "w")
    assert.are.equal(2, ci.num_ack_pending)
    assert.are.equal(5, ci.next_seq)
    w = worker(srv, "work.w")
    local again = expect_n(w, 2, 0.4)
    -- (their order is the subject of the next test)
    table.sort(again, function(x, y) return meta(x).sseq < meta(y).sseq end)
    assert.are.same({ 2, 4 }, seqs(again))
    assert.are.same({ 2, 2 }, { meta(again[1]).delivered, meta(again[2]).delivered })
    local cseqs = { meta(again[1]).cseq, meta(again[2]).cseq }
    table.sort(cseqs)
    assert.are.same({ 5, 6 }, cseqs)
    assert.are.equal("m2", again[1].payload)
    assert.are.equal("m4", again[2].payload)
    -- the stream goes on from 5
    p = client(srv)
    assert.are.same({ stream = "orders", seq = 5 }, (publish(p, "order.x", "m5")))
    local m5 = assert(recv(w, 3))
    assert.are.same({ sseq = 5, delivered = 1, cseq = 7 },
      { sseq = meta(m5).sseq, delivered = meta(m5).delivered, cseq = meta(m5).cseq })
    local st = sinfo(srv, "orders")
    assert.are.equal(5, st.messages)
    assert.are.equal(4, st.recovery.records)
    assert.are.equal(0, st.recovery.corrupt_records)
  end

  it("a consumer resumes after a clean stop: acked ones stay acked, unacked come again, counts kept", function()
    resumes("TERM")
  end)

  it("a consumer resumes after kill -9 the same way (AckSync'ed acks and PubAck'ed messages are on disk)", function()
    resumes("KILL")
  end)

  it("redelivers what was unacked in stream order", function()
    local srv = start(CFG)
    local p = client(srv)
    for i = 1, 8 do publish(p, "order.x", "m" .. i) end
    local w = worker(srv, "work.w")
    local got = recv_n(w, 8, 5)
    assert.are.equal(8, #got)
    for _, i in ipairs { 1, 4, 7 } do ack_sync(w, got[i]) end
    w:close()
    srv = restart(srv)
    w = worker(srv, "work.w")
    assert.are.same({ 2, 3, 5, 6, 8 }, seqs(expect_n(w, 5, 0.4)))
  end)

  it("keeps events parked behind their ordered_by key parked", function()
    local srv = start([[
stream "orders" { subjects = { "order.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "10s", ordered_by = "data.k" }
]])
    local p = client(srv)
    for _, k in ipairs { "A", "A", "B", "A" } do publish(p, "order.x", json.encode { k = k }) end
    local w = worker(srv, "work.w")
    assert.are.same({ 1, 3 }, seqs(expect_n(w, 2, 0.4)))
    w:close()
    srv = restart(srv)
    local ci = cinfo(srv, "w")
    assert.are.same({ 2, 2 }, { ci.num_ack_pending, ci.num_parked })
    w = worker(srv, "work.w")
    local again = expect_n(w, 2, 0.4)
    table.sort(again, function(x, y) return meta(x).sseq < meta(y).sseq end)
    assert.are.same({ 1, 3 }, seqs(again))
    ack(w, again[1])
    local a2 = assert(recv(w, 2), "A's second event did not follow the ack of its first")
    assert.are.same({ 2, 1 }, { meta(a2).sseq, meta(a2).delivered })
    assert.are.same({}, seqs(during(w, 0.3)))
    ack(w, a2)
    assert.are.same({ 4 }, seqs(expect_n(w, 1, 0.3)))
  end)

  it("keeps an ack sent without a reply just before a clean stop", function()
    local srv = start(CFG)
    local p = client(srv)
    publish(p, "order.x", "a")
    local w = worker(srv, "work.w")
    local m = assert(recv(w, 3))
    ack(w, m)
    flush(w)
    w:close()
    srv = restart(srv)
    w = worker(srv, "work.w")
    assert.are.same({}, seqs(during(w, 0.4)))
    assert.are.equal(0, cinfo(srv, "w").num_ack_pending)
  end)
end)

-- Hot reload -----------------------------------------------------------------

describe("a hot reload", function()
  -- What is declared depends on a phase kept in tide.kv (which outlives
  -- reloads), so a reload changes the config without touching the file
  -- (the file watcher would reload by itself).
  local CFG = [[
on("phase.set", function(e, ctx) tide.kv.set("phase", tonumber(e.raw)); ctx.reply("ok") end)
local phase = tide.kv.get("phase") or 1
stream "a" { subjects = { "a.>" } }
consumer "aw" { stream = "a", deliver = "work.a", ack_wait = "10s" }
if phase >= 2 then
  stream "b" { subjects = { "b.>" } }
  consumer "bw" { stream = "b", deliver = "work.b", ack_wait = "10s" }
  consumer "aw2" { stream = "a", deliver = "work.a2", ack_wait = "10s" }
end
if phase >= 3 then
  consumer "bad" { stream = "nope", deliver = "work.bad" }
end
]]

  local function set_phase(srv, n)
    local r = assert(h.request(srv.port, "phase.set", tostring(n)))
    assert.are.equal("ok", r.payload)
  end

  local function check_phase2_live(srv)
    local p = client(srv)
    assert.are.same({ stream = "b", seq = 1 }, (publish(p, "b.x", "to b")))
    local wb = worker(srv, "work.b")
    local m = assert(recv(wb, 3), "the new consumer does not deliver")
    assert.are.equal("to b", m.payload)
    assert.are.same({ "b", "bw" }, { meta(m).stream, meta(m).consumer })
    -- the consumer added to the old stream starts at its beginning
    local wa2 = worker(srv, "work.a2")
    assert.are.same({ 1 }, seqs(expect_n(wa2, 1, 0.3)))
  end

  it("on SIGHUP makes a new stream and new consumers live", function()
    local srv = start(CFG)
    local p = client(srv)
    publish(p, "a.x", "before")
    set_phase(srv, 2)
    sleep(0.2)
    assert.is_false((admin(srv, "STREAM.INFO", "b")).ok) -- not before the reload
    assert(h.proc.kill(srv.pid, "HUP"))
    assert(h.wait_until(function() return (admin(srv, "STREAM.INFO", "b")).name == "b" end, 5),
      "stream b is not there after SIGHUP")
    check_phase2_live(srv)
    assert.matches("Reloaded scripts %(SIGHUP%)", srv:log())
  end)

  it("on $TIDE.ADMIN.RELOAD makes a new stream and new consumers live", function()
    local srv = start(CFG)
    local p = client(srv)
    publish(p, "a.x", "before")
    set_phase(srv, 2)
    local r, raw = admin(srv, "RELOAD")
    assert.is_true(r.ok, raw)
    assert.are.equal(3, #admin(srv, "CONSUMER.LS"))
    check_phase2_live(srv)
  end)

  it("naming an unknown stream in a consumer fails, says why, and keeps the old config", function()
    local srv = start(CFG)
    local p = client(srv)
    publish(p, "a.x", "one")
    set_phase(srv, 3)
    local r, raw = admin(srv, "RELOAD")
    assert.is_false(r.ok, raw)
    local line = line_of("listen { http = false }\n" .. CFG, 'consumer "bad"')
    assert.matches("tide%.lua:" .. line .. ": consumer 'bad': no stream 'nope' is declared", r.error)
    -- nothing of the new config: no stream b (not even its directory), no new consumers
    assert.are.same({ ok = false, error = "no stream 'b'" }, (admin(srv, "STREAM.INFO", "b")))
    assert.are.equal(1, #admin(srv, "CONSUMER.LS"))
    assert.is_nil(io.open(srv.dir .. "/data/streams/b/"))
    local stats = h.stats(srv.port).scripts
    assert.are.equal(1, stats.reload_failures)
    assert.matches("no stream 'nope' is declared", stats.last_reload)
    -- the old config serves on
    assert.are.same({ stream = "a", seq = 2 }, (publish(p, "a.x", "two")))
    local wa = worker(srv, "work.a")
    assert.are.same({ 1, 2 }, seqs(expect_n(wa, 2, 0.3)))
    local c = client(srv)
    c:sub("_R.b", "r")
    c:pub("b.x", "nobody", "_R.b")
    assert.are.equal("NATS/1.0 503\r\n\r\n", assert(recv(c, 3)).headers)
  end)

  it("does not silently ignore a changed subject list of a stream that is already open", function()
    -- "Everything is declared in the entry file and follows it on reload":
    -- either the new subjects are captured, or the reload is refused and says why
    local srv = start('stream "s" { subjects = { "one.>" } }\n')
    local p = client(srv)
    assert.are.same({ stream = "s", seq = 1 }, (publish(p, "one.x", "1")))
    h.write_file(srv.config, 'listen { http = false }\nstream "s" { subjects = { "one.>", "two.>" } }\n')
    local r, raw = admin(srv, "RELOAD")
    if r.ok then
      assert.are.same({ "one.>", "two.>" }, sinfo(srv, "s").subjects,
        "the reload said ok but the stream still captures only its old subjects")
      assert.are.same({ stream = "s", seq = 2 }, (publish(p, "two.x", "2")))
    else
      assert.matches("subjects", r.error, raw)
    end
  end)

  it("applies changed limits of a stream that is already open", function()
    local srv = start('stream "s" { subjects = { "s.>" } }\n')
    local p = client(srv)
    for i = 1, 5 do publish(p, "s.x", tostring(i)) end
    h.write_file(srv.config, 'listen { http = false }\nstream "s" { subjects = { "s.>" }, max_msgs = 2 }\n')
    local r, raw = admin(srv, "RELOAD")
    assert.is_true(r.ok, raw)
    local st = sinfo(srv, "s")
    assert.are.equal(2, st.messages)
    assert.are.equal(4, st.first_seq)
    assert.are.equal(2, st.limits.max_msgs)
  end)
end)

-- Config errors ------------------------------------------------------------

describe("a config error", function()
  local function fails(text, pattern)
    local s = h.start_scripted(text, { wait = false })
    local st, code = h.proc.wait(s.pid, 10)
    if not st then s:kill() end
    local log = s:log()
    h.remove_tmpdir(s.dir)
    assert.are.equal("exited", st)
    assert.are_not.equal(0, code)
    assert.matches(pattern, log)
    assert.is_nil(log:find("Server is ready", 1, true))
  end

  local cases = {
    { "an unknown stream setting",
      'listen { http = false }\nstream "s" { subjects = { "s.>" }, max_msg = 5 }\n',
      "tide%.lua:2: stream 's': unknown setting 'max_msg'" },
    { "an unknown consumer setting",
      'listen { http = false }\nstream "s" { subjects = { "s.>" } }\n\nconsumer "c" { stream = "s", ackwait = "1s" }\n',
      "tide%.lua:4: consumer 'c': unknown setting 'ackwait'" },
    { "a bad fsync value",
      'listen { http = false }\n-- comment\nstream "s" {\n  subjects = { "s.>" },\n  fsync = "sometimes",\n}\n',
      "tide%.lua:3: stream 's': fsync must be \"always\", \"interval\" or \"never\"" },
    { "a duration with an unknown unit",
      'listen { http = false }\nstream "s" { subjects = { "s.>" }, max_age = "7 days" }\n',
      "tide%.lua:2: stream 's': unknown unit in max_age '7 days'" },
    { "a duration that is not one",
      'listen { http = false }\nstream "s" { subjects = { "s.>" } }\nconsumer "c" { stream = "s", deliver = "d", ack_wait = "soon" }\n',
      "tide%.lua:3: consumer 'c': cannot read ack_wait 'soon' as a duration" },
    { "a bad backoff step",
      'listen { http = false }\nstream "s" { subjects = { "s.>" } }\nconsumer "c" { stream = "s", backoff = { "1s", "fast" } }\n',
      "tide%.lua:3: consumer 'c': cannot read backoff 'fast' as a duration" },
    { "a bad size",
      'listen { http = false }\nstream "s" { subjects = { "s.>" }, max_bytes = "lots" }\n',
      "tide%.lua:2: stream 's': cannot read max_bytes 'lots' as a size" },
    { "a consumer naming an unknown stream",
      'listen { http = false }\nstream "s" { subjects = { "s.>" } }\nconsumer "c" { stream = "t", deliver = "d" }\n',
      "tide%.lua:3: consumer 'c': no stream 't' is declared" },
    { "by_start_sequence without start_seq",
      'listen { http = false }\nstream "s" { subjects = { "s.>" } }\nconsumer "c" { stream = "s", deliver_policy = "by_start_sequence" }\n',
      "tide%.lua:3: consumer 'c': deliver_policy by_start_sequence needs start_seq" },
  }
  for _, case in ipairs(cases) do
    it("(" .. case[1] .. ") stops tide serve, naming file and line", function()
      fails(case[2], case[3])
    end)
  end
end)
