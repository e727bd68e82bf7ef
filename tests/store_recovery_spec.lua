-- The stream store under trouble: kill -9 in the middle of a load, simulated
-- power loss, failing writes and syncs, torn tails, flipped bytes, damaged
-- consumer state and a disk that is really full.  Every test talks to a
-- real `tide serve`, reads what survived back through the admin requests
-- ($TIDE.ADMIN.STREAM.INFO / GET / EVENTS) and checks it against what the
-- server acknowledged.
--
--   TIDE_CRASH_ROUNDS   kill -9 rounds of the crash test (default 20;
--                       scripts/soak.sh runs more)
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"
local proc = h.proc

math.randomseed(os.time(), proc.now() * 1e6 // 1)

local CRASH_ROUNDS = tonumber(os.getenv("TIDE_CRASH_ROUNDS") or "") or 20
local SEG_HDR, REC_HDR = 16, 40

-- Servers ----------------------------------------------------------------------

local store = require "store_support"
local start, admin, info, stream_decl = store.start, store.admin, store.info, store.stream_decl
local function new_env() return store.new_env("tide-store") end

local function events(port, name, from)
  local out, seq = {}, from or 1
  for _ = 1, 10000 do
    local r = admin(port, "STREAM.EVENTS", json.encode { stream = name, from_seq = seq, limit = 1000 })
    assert(r.events, "STREAM.EVENTS: " .. json.encode(r))
    for _, e in ipairs(r.events) do out[#out + 1] = e end
    if #r.events == 0 or r.next_seq <= seq then break end
    seq = r.next_seq
  end
  return out
end

-- The same as events() for payloads that are plain strings without quotes
-- or escapes, as {seq, payload} pairs: read with patterns instead of a JSON
-- decoder, which would take seconds for the crash test's hundred thousand
-- events (the count of events found is checked against the reply's).
local function event_payloads(port, name, from)
  local out, seq = {}, from or 1
  for _ = 1, 100000 do
    local m = assert(h.request(port, "$TIDE.ADMIN.STREAM.EVENTS",
                               json.encode { stream = name, from_seq = seq, limit = 2000 }, { timeout = 10 }))
    local body = m.payload
    local n, total = 0, select(2, body:gsub('{"stream":', ""))
    for sq, p in body:gmatch('"seq":(%d+),"time":"[^"]*","subject":"[^"]*","payload":"([^"\\]*)"}') do
      out[#out + 1] = { tonumber(sq), p }
      n = n + 1
    end
    assert(n == total, "STREAM.EVENTS: cannot read the reply: " .. body:sub(1, 300))
    local next_seq, more = body:match('"next_seq":(%d+),"more":(%a+)}$')
    next_seq = tonumber(next_seq)
    assert(next_seq, "STREAM.EVENTS: no next_seq: " .. body:sub(1, 300))
    if more ~= "true" or next_seq <= seq then break end
    seq = next_seq
  end
  return out
end

local read_all, write_raw, sh = store.read_all, store.write_raw, store.sh

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- The segment files of a stream, oldest first.
local function segments(data, name)
  local out = sh(("ls '%s/streams/%s' | grep '\\.seg$' | sort"):format(data, name))
  local t = {}
  for f in out:gmatch("[^\n]+") do t[#t + 1] = ("%s/streams/%s/%s"):format(data, name, f) end
  return t
end

-- The records of a segment file: { off, len, seq, payload } each (parsed
-- here independently of the server, from the layout in src/store/slog.h), and
-- where they end: the active segment of an fsync = "always" stream is
-- zero-filled ahead of its last record.
local function parse_segment(bytes)
  assert(bytes:sub(1, 8) == "TIDESEG1", "not a segment")
  local recs, p = {}, SEG_HDR + 1
  while p + REC_HDR - 1 <= #bytes do
    local magic, _, len, sl, kl, seq, _, hl, pl = string.unpack("<I4I4I4I2I2I8i8I4I4", bytes, p)
    if magic == 0 then break end
    assert(magic == 0x31435254 and len == REC_HDR + sl + kl + hl + pl, "bad record at " .. (p - 1))
    recs[#recs + 1] = { off = p - 1, len = len, seq = seq,
                        payload = bytes:sub(p + REC_HDR + sl + kl + hl, p + len - 1) }
    p = p + len
  end
  assert(not bytes:find("[^%z]", p), "trailing bytes in a segment")
  return recs, p - 1
end

-- Publishing ---------------------------------------------------------------------

local function decode_ack(payload)
  local a = json.decode(payload)
  assert(type(a) == "table", "a PubAck that is not JSON: " .. payload)
  return a
end

--[[ Publishes payload_of(1), payload_of(2), ... to `subject`, each with its
own reply subject, keeping up to o.window (200) unanswered, until o.count
are published and answered, the connection closes, or o.seconds pass.
o.tick(state) runs between reads (the crash test kills the server there).
Returns state: ok[k] = seq, err[k] = error object, at[k] = when the ack
arrived (proc.now()), sent, answered, closed_at.  It reads the socket in
big chunks and parses the MSG frames itself: the thousands of PubAcks of a
load would take seconds through Client:frame. ]]
local function publish_load(port, o)
  local c = h.connect(port, { timeout = 5 })
  local inbox = "_R" .. tostring(proc.now() * 1000 // 1)
  c:sub(inbox .. ".*", "1")
  local st = { ok = {}, err = {}, at = {}, sent = 0, answered = 0, at0 = proc.now() }
  local window, count = o.window or 200, o.count or math.huge
  local deadline = proc.now() + (o.seconds or 30)
  local buf = ""
  local function on_ack(subject, payload)
    local k = tonumber(subject:match("%.(%d+)$"))
    assert(k and k <= st.sent and not st.ok[k] and not st.err[k], "unexpected PubAck on " .. subject)
    local seq = payload:match('^{"stream":"[^"]*","seq":(%d+)}$')
    if seq then
      st.ok[k] = tonumber(seq)
    else
      st.err[k] = decode_ack(payload).error
      assert(st.err[k], "a PubAck with neither seq nor error: " .. payload)
    end
    st.at[k] = proc.now()
    st.answered = st.answered + 1
  end
  local function parse()
    local pos = 1
    while true do
      local _, e, subject, n = buf:find("^MSG (%S+) %S+ (%d+)\r\n", pos)
      if e then
        n = tonumber(n)
        if #buf < e + n + 2 then break end
        on_ack(subject, buf:sub(e + 1, e + n))
        pos = e + n + 3
      else
        local line = buf:match("^([^\r\n]*)\r\n", pos)
        if not line then break end
        if line == "PING" then c:send("PONG\r\n") end
        assert(not line:match("^%-ERR"), "server error: " .. line)
        pos = pos + #line + 2
      end
    end
    buf = buf:sub(pos)
  end
  while proc.now() < deadline and st.answered < count do
    if not st.closed_at and st.sent < count and st.sent - st.answered < window then
      local parts = {}
      while st.sent < count and st.sent - st.answered < window do
        st.sent = st.sent + 1
        local p = o.payload_of(st.sent)
        parts[#parts + 1] = ("PUB %s %s.%d %d\r\n%s\r\n"):format(o.subject, inbox, st.sent, #p, p)
      end
      if not c:send(table.concat(parts)) then st.closed_at = st.closed_at or proc.now() end
    end
    if o.tick then o.tick(st) end
    socket.select({ c.sock }, nil, st.sent - st.answered >= window and 0.2 or 0.002)
    c.sock:settimeout(0)
    local data, err, partial = c.sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      buf = buf .. data
      parse()
    end
    if err == "closed" then
      st.closed_at = st.closed_at or proc.now()
      break
    end
  end
  c:close()
  return st
end

-- Publishes payloads one at a time (each waits for its PubAck): the i-th
-- publish is the i-th write of the store.  Returns ok/err as publish_load
-- does.
local function one_by_one(port, subject, payloads)
  local c = h.connect(port)
  c:sub("_O.*", "1")
  local st = { ok = {}, err = {} }
  for i, p in ipairs(payloads) do
    c:pub(subject, p, "_O." .. i)
    local m, err = c:msg(5)
    assert(m, ("no PubAck for publish %d (%s)"):format(i, tostring(err)))
    local a = decode_ack(m.payload)
    if a.error then st.err[i] = a.error else st.ok[i] = a.seq end
  end
  c:close()
  return st
end

-- One publish with a Nats-Msg-Id; returns its PubAck, decoded.
local function publish_id(port, subject, payload, id)
  local c = h.connect(port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub("_I", "1")
  c:hpub(subject, { { "Nats-Msg-Id", id } }, payload, "_I")
  local m, err = c:msg(5)
  assert(m, "no PubAck: " .. tostring(err))
  c:close()
  return decode_ack(m.payload)
end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- Tests ----------------------------------------------------------------------------

describe("stream store recovery", function()
  local envs = {}
  local servers = {}
  local function env() local e = new_env(); envs[#envs + 1] = e; return e end
  local function run(e, opts) local s = start(e, opts); servers[#servers + 1] = s; return s end

  after_each(function()
    for _, s in ipairs(servers) do
      if s:alive() then s:stop() end
    end
    servers = {}
    for _, e in ipairs(envs) do h.remove_tmpdir(e.dir) end
    envs = {}
  end)

  -- Runs check(port, case, data) for every case, up to 60 streams (one per
  -- case, declared with opts) in one server: prepare(data, case) lays out
  -- the files of stream case.name first.  opts.after(port, case, data)
  -- then runs on a second start of the same data.
  local function per_stream(cases, prepare, check, opts)
    for g = 1, #cases, 60 do
      local t = env()
      local decl = {}
      for j = g, math.min(g + 59, #cases) do
        sh(("mkdir -p '%s/streams/%s'"):format(t.data, cases[j].name))
        prepare(t.data, cases[j])
        decl[#decl + 1] = stream_decl(cases[j].name, opts)
      end
      t.config = table.concat(decl, "\n")
      local s = run(t)
      for j = g, math.min(g + 59, #cases) do check(s.port, cases[j], t.data) end
      s:stop()
      if opts and opts.after then
        s = run(t)
        for j = g, math.min(g + 59, #cases) do opts.after(s.port, cases[j], t.data) end
        s:stop()
      end
    end
  end

  -- Stores `n` records on a new stream `name` (payload_of(i)), stops the
  -- server and returns the segment files' bytes and parsed records.
  local function make_log(name, n, payload_of, opts)
    local e = env()
    e.config = stream_decl(name, opts)
    local srv = run(e)
    local payloads = {}
    for i = 1, n do payloads[i] = payload_of(i) end
    local st = one_by_one(srv.port, name .. ".a", payloads)
    assert.same(n, #keys(st.ok))
    assert.same("exited", (srv:stop()))
    local segs = {}
    for _, path in ipairs(segments(e.data, name)) do
      local bytes = read_all(path)
      local recs, stop = parse_segment(bytes)
      -- (the records only: tests that want zeros after them add them)
      segs[#segs + 1] = { file = path:match("[^/]+$"), bytes = bytes:sub(1, stop), recs = recs, filled = #bytes - stop }
    end
    return segs, payloads
  end

  -- Checks that the stored events from sequence `base` + 1 on are exactly
  -- the publishes 1..m of `tag` in order for some m, with contiguous
  -- sequences, and that every acknowledged publish (o.acked_before: every
  -- one acknowledged before that time) is among them at the sequence its
  -- PubAck named.  The stream's last sequence is base + m, or with o.gap
  -- it may be past that (see the power loss tests); it holds o.msgs (else
  -- base) + m messages.  Returns m and the stream's info.
  local function check_prefix(port, name, tag, base, st, o)
    o = o or {}
    local ev = event_payloads(port, name, base + 1)
    for k, e in ipairs(ev) do
      if e[1] ~= base + k or e[2]:match("^[^ ]+") ~= ("%s:%d"):format(tag, k) then
        error(("%s: stored event %d is seq %d '%s'; expected seq %d, publish %d"):format(tag, k, e[1], e[2], base + k, k))
      end
    end
    for k, seq in pairs(st.ok) do -- (plain ifs: luassert is slow for 10^5 checks)
      if k > #ev and (not o.acked_before or st.at[k] < o.acked_before) then
        error(("%s: publish %d was acknowledged (seq %d) but only %d are stored"):format(tag, k, seq, #ev))
      end
      if seq ~= base + k then error(("%s: publish %d was acknowledged as seq %d, not %d"):format(tag, k, seq, base + k)) end
    end
    local i = info(port, name)
    assert.same({ messages = (o.msgs or base) + #ev, corrupt = 0 },
                { messages = i.messages, corrupt = i.recovery.corrupt_records })
    if o.gap then
      assert(i.last_seq >= base + #ev, ("last_seq %d below the %d stored"):format(i.last_seq, base + #ev))
    else
      assert.same(base + #ev, i.last_seq)
    end
    return #ev, i
  end

  it("keeps every acknowledged message, once and in order, through kill -9 (" .. CRASH_ROUNDS .. " rounds)",
     function()
    local e = env()
    -- 64 KB segments: a load rolls several, so kills land around rolls too.
    e.config = stream_decl("s", { fsync = "always", segment_size = "64KB" })
    local base, acked_total, t0, rounds = 0, 0, proc.now(), {}
    for round = 1, CRASH_ROUNDS do
      local srv = run(e)
      if round > 1 then assert.same(base, info(srv.port, "s").last_seq) end
      local kill_at = proc.now() + 0.02 + math.random() * 0.28
      local tag = "r" .. round
      local st = publish_load(srv.port, {
        subject = "s.crash", seconds = 10,
        payload_of = function(k) return ("%s:%d %s"):format(tag, k, ("p"):rep(k % 20)) end,
        tick = function() if proc.now() >= kill_at and srv:alive() then srv:kill() end end,
      })
      assert.is_false(srv:alive())
      assert.same({}, st.err)
      local srv2 = run(e)
      local m = check_prefix(srv2.port, "s", tag, base, st)
      local acked = #keys(st.ok)
      assert(m >= acked)
      rounds[round] = { base = base, m = m }
      base, acked_total = base + m, acked_total + acked
      srv2:stop()
    end
    -- Nothing of an earlier round was disturbed by a later crash or
    -- recovery: the counts, and a sample of the records of every round.
    local srv = run(e)
    local i = info(srv.port, "s")
    assert.same({ first = 1, last = base, messages = base, corrupt = 0, torn = 0 },
                { first = i.first_seq, last = i.last_seq, messages = i.messages, corrupt = i.recovery.corrupt_records,
                  torn = i.recovery.torn_bytes })
    for round, r in ipairs(rounds) do
      for _ = 1, r.m > 0 and 5 or 0 do
        local k = math.random(1, r.m)
        local g = admin(srv.port, "STREAM.GET", json.encode { stream = "s", seq = r.base + k })
        assert.same(("r%d:%d"):format(round, k), g.payload and g.payload:match("^[^ ]+"))
      end
    end
    assert(acked_total > CRASH_ROUNDS, "too few acknowledged publishes to mean anything: " .. acked_total)
    print(("\n   crash: %d rounds, %d acknowledged, %d stored, %.1f s"):format(CRASH_ROUNDS, acked_total, base,
                                                                          proc.now() - t0))
  end)

  -- Power loss at the n-th write of the store (rounds on one data dir):
  -- the server exits 99 with every unsynced byte gone, and restarts
  -- without the fault.  Returns what each round acked and kept.
  local function power_loss_rounds(e, ns, opts)
    local base, msgs, out = 0, 0, {}
    for round, n in ipairs(ns) do
      local srv = run(e, { fault = "powerloss:write:" .. n })
      local tag = "r" .. round
      local st = publish_load(srv.port, { subject = "s.x", seconds = 20, window = opts.window, tick = opts.tick,
                                          payload_of = function(k) return ("%s:%d %s"):format(tag, k, ("p"):rep(k % 30)) end })
      assert(st.closed_at, "the server did not go down at write " .. n)
      assert.same({ "exited", 99 }, { srv:stop() })
      assert.same({}, st.err)
      local srv2 = run(e)
      local m, i = check_prefix(srv2.port, "s", tag, base, st,
                                { acked_before = opts.bound and st.closed_at - opts.bound, gap = true, msgs = msgs })
      local acked, late, lost_age = 0, 0, 0
      for k in pairs(st.ok) do
        acked = acked + 1
        if k > m then
          late = late + 1
          lost_age = math.max(lost_age, st.closed_at - st.at[k])
        end
      end
      out[round] = { n = n, acked = acked, kept = m, lost_acked = late, lost_age = lost_age,
                     secs = st.closed_at - st.at0, gap = i.last_seq - base - m }
      base, msgs = i.last_seq, msgs + m
      srv2:stop()
    end
    return out
  end

  it("keeps every acknowledged message through a power loss at a random write (fsync always)", function()
    local e = env()
    e.config = stream_decl("s", { fsync = "always" })
    local ns = {}
    for i = 1, 6 do ns[i] = math.random(5, 200) end
    local out = power_loss_rounds(e, ns, {})
    for _, r in ipairs(out) do assert.same(0, r.lost_acked) end
  end)

  it("keeps every acknowledged message through a power loss with 4KB segments rolling under load", function()
    local e = env()
    e.config = stream_decl("s", { fsync = "always", segment_size = "4KB" })
    local ns = {}
    for i = 1, 4 do ns[i] = math.random(20, 200) end
    local out = power_loss_rounds(e, ns, { window = 2000 })
    for _, r in ipairs(out) do assert.same(0, r.lost_acked) end
  end)

  it("keeps acknowledged messages through a power loss after the directory's sync failed", function()
    -- Sync 1 is the directory's, for the segment made at start-up.  When
    -- it fails, the segment's name is not yet on the disk: the store must
    -- sync the directory again before it acknowledges records in it.
    for _, fault in ipairs { "sync:1:EIO,powerloss:write:6", "sync:1:ENOSPC,powerloss:write:3" } do
      local e = env()
      e.config = stream_decl("s")
      local srv = run(e, { fault = fault })
      assert(h.wait_until(function() return info(srv.port, "s").syncs >= 1 end, 5), "no first sync")
      local st = publish_load(srv.port, { subject = "s.x", window = 1, seconds = 10,
                                          payload_of = function(k) return "d:" .. k end })
      assert.same({ "exited", 99 }, { srv:stop() })
      local want = tonumber(fault:match("write:(%d+)")) - 1
      assert.same({ fault, want, {} }, { fault, #keys(st.ok), st.err })
      local srv2 = run(e)
      check_prefix(srv2.port, "s", "d", 0, st)
      srv2:stop()
    end
  end)

  it("loses at most the last sync interval on a power loss (fsync interval)", function()
    -- An ack under "interval" means written, not synced: the sync thread
    -- syncs every sync_interval (200 ms).  What was acknowledged more than
    -- an interval plus a margin (300 ms: the sync itself, scheduling, the
    -- client noticing the exit) before the cut must be there.
    local e = env()
    e.config = stream_decl("s", { fsync = "interval", sync_interval = "200ms", segment_size = "256KB" })
    local ns = {}
    for i = 1, 3 do ns[i] = math.random(700, 1400) end
    -- One publish in flight, about one a millisecond: the cut comes about a
    -- second into the load, at a random point of the sync cycle.
    local out = power_loss_rounds(e, ns, { bound = 0.5, window = 1, tick = function() proc.sleep(0.001) end })
    local t = {}
    for _, r in ipairs(out) do
      assert(r.secs > 0.6, "too short a load to mean anything: " .. r.secs)
      t[#t + 1] = ("%d of %d acked lost (last %.2f s)"):format(r.lost_acked, r.acked, r.lost_age)
    end
    print("\n   interval: " .. table.concat(t, "; "))
  end)

  -- After a run with faults, from the disk: the stored events are exactly
  -- the publishes that got a success PubAck, each at the sequence it
  -- named, in publish order, with sequences 1..K; nothing is damaged and
  -- nothing torn (the server takes a partial write back itself, so not
  -- even a failed write may leave a torn tail behind a clean stop).
  local function check_stored(port, name, st, tag)
    local ev = event_payloads(port, name)
    local ok = keys(st.ok)
    local got = {}
    for i, e in ipairs(ev) do
      local k = tonumber(e[2]:match("^" .. tag .. ":(%d+)"))
      if e[1] ~= i or not k or st.ok[k] ~= e[1] then
        error(("stored event %d is seq %d '%s'%s"):format(i, e[1], e[2], k and st.err[k] and
              (": that publish got an error PubAck " .. json.encode(st.err[k])) or ""))
      end
      got[#got + 1] = k
    end
    assert.same(ok, got)
    local i = info(port, name)
    assert.same({ last = #ev, messages = #ev, corrupt = 0, torn = 0 },
                { last = i.last_seq, messages = i.messages, corrupt = i.recovery.corrupt_records,
                  torn = i.recovery.torn_bytes })
  end

  local function check_errors(st)
    for k, e in pairs(st.err) do
      if e.code ~= 503 or e.err_code ~= 10077 then error(("publish %d: %s"):format(k, json.encode(e))) end
    end
  end

  -- Runs `fault` over a workload, checks the server is up, restarts it
  -- without faults and checks what is stored.  workload(port) returns the
  -- publish state.  Returns it.
  local function fault_run(fault, config, workload, tag, opts)
    local e = env()
    e.config = config
    local srv = run(e, { fault = fault })
    -- The sync of the directory for the new segment comes first (sync 1).
    assert(h.wait_until(function() return info(srv.port, "s").syncs >= 1 end, 5), "no first sync")
    local st = workload(srv.port)
    check_errors(st)
    assert(srv:alive(), fault .. ": the server went down")
    local c = h.connect(srv.port)
    assert(c:ping(5), fault .. ": no PONG")
    c:close()
    local log = srv:log()
    assert.same({ "exited", 0 }, { srv:stop() })
    if opts and opts.log then
      assert(log:find(opts.log, 1, true), fault .. ": no '" .. opts.log .. "' in the log:\n" .. log)
    end
    local srv2 = run(e)
    check_stored(srv2.port, "s", st, tag)
    -- and the stream goes on at the next sequence
    local after = one_by_one(srv2.port, "s.after", { "after" })
    assert.same({ #keys(st.ok) + 1 }, after.ok)
    srv2:stop()
    return st
  end

  it("answers every publish through failing writes and syncs, and stores exactly what it acknowledged", function()
    local n = 12
    local payloads = {}
    for k = 1, n do payloads[k] = "f:" .. k end
    local cases = {}
    for w = 1, 8 do
      for _, err in ipairs { "ENOSPC", "EIO" } do
        cases[#cases + 1] = { fault = ("write:%d:%s"):format(w, err), fails = { w } }
      end
    end
    for y = 1, 7 do
      for _, err in ipairs { "ENOSPC", "EIO" } do
        -- Syncs 1 to 3 are the directories' (the stream's, for its new
        -- segment, and the two above it, for the stream's own directory),
        -- made at start-up: no publish is waiting for them.
        cases[#cases + 1] = { fault = ("sync:%d:%s"):format(y, err), fails = y <= 3 and {} or { y - 3 } }
      end
    end
    -- Zero-filling ahead of the log (alloc) fails: appends grow the file
    -- instead, and no publish notices.
    cases[#cases + 1] = { fault = "alloc:1+:ENOSPC", fails = {}, log = "cannot zero-fill ahead of the log" }
    cases[#cases + 1] = { fault = "alloc:1:EIO", fails = {}, log = "cannot zero-fill ahead of the log" }
    -- Writes 3 to 10 fail, then space comes back: storing resumes.
    cases[#cases + 1] = { fault = "write:3-10:ENOSPC", fails = { 3, 4, 5, 6, 7, 8, 9, 10 } }
    -- Every sync from the 5th on (the one after publish 1's) fails: nothing
    -- after publish 1 is stored.
    cases[#cases + 1] = { fault = "sync:5+:EIO", fails = { 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 } }
    -- A failed write whose partial record cannot be taken back at once.
    cases[#cases + 1] = { fault = "write:2:ENOSPC,truncate:1:EIO", fails = { 2 } }
    -- A failed sync whose record cannot be cut off at once: the stream
    -- refuses publishes until the cut is done (retried every second), then
    -- goes on after the last stored record.  Meanwhile the lost record is
    -- neither read back nor taken as the first copy of a retry.
    cases[#cases + 1] = { fault = "sync:4:EIO,truncate:1:EIO", fails = { 1 }, workload = function(port)
      local a = publish_id(port, "s.x", payloads[1], "m1")
      assert.same({ 503, 10077 }, { a.error and a.error.code, a.error and a.error.err_code })
      local st = { ok = {}, err = { a.error } }
      assert.is_true(info(port, "s").failed)
      assert.same({ ok = false, error = "stream 's' has no message 1" },
                  admin(port, "STREAM.GET", json.encode { stream = "s", seq = 1 }))
      local retry = publish_id(port, "s.x", "f:x", "m1")
      assert.same({ 503, 10077 }, { retry.error and retry.error.code, retry.error and retry.error.err_code })
      assert(h.wait_until(function() return not info(port, "s").failed end, 5), "the stream stays failed")
      local rest = one_by_one(port, "s.x", { table.unpack(payloads, 2) })
      for k, v in pairs(rest.ok) do st.ok[k + 1] = v end
      for k, v in pairs(rest.err) do st.err[k + 1] = v end
      return st
    end }
    for _, c in ipairs(cases) do
      local st = fault_run(c.fault, stream_decl("s"), c.workload or function(port)
        return one_by_one(port, "s.x", payloads)
      end, "f", c)
      local want_ok = {}
      for k = 1, n do want_ok[k] = true end
      for _, k in ipairs(c.fails) do want_ok[k] = nil end
      assert.same({ c.fault, c.fails, keys(want_ok) }, { c.fault, keys(st.err), keys(st.ok) })
    end
  end)

  it("takes back every record of a failed group write or sync, with small segments rolling", function()
    for _, fault in ipairs { "write:2:ENOSPC", "write:4:EIO", "sync:5:EIO", "sync:7:ENOSPC", "write:3-6:ENOSPC" } do
      local st = fault_run(fault, stream_decl("s", { segment_size = "4KB" }), function(port)
        -- One publish alone, then bursts of 150 (several records per write,
        -- segments of about 60 records).
        local st = publish_load(port, { subject = "s.x", count = 1, payload_of = function(k) return "g:" .. k end })
        for _ = 1, 6 do
          local more = publish_load(port, { subject = "s.x", count = 150, window = 150,
                                            payload_of = function(k) return "g:" .. (st.sent + k) end })
          assert.same(150, more.answered)
          for k, v in pairs(more.ok) do st.ok[st.sent + k] = v end
          for k, v in pairs(more.err) do st.err[st.sent + k] = v end
          st.sent = st.sent + 150
        end
        return st
      end, "g")
      assert(#keys(st.err) > 0, fault .. ": no publish failed")
    end
  end)

  it("refuses publishes on a really full disk, keeps what it stored, and stores again once there is room", function()
    local e = env()
    local mnt = e.dir .. "/mnt"
    sh(("mkdir -p '%s'"):format(mnt))
    local rc, out = h.sh(("mount -t tmpfs -o size=2m tmpfs '%s'"):format(mnt))
    if rc ~= 0 then pending("cannot mount a 2 MB tmpfs to fill (needs root): " .. out) end
    finally(function()
      for _, s in ipairs(servers) do if s:alive() then s:stop() end end
      h.sh(("umount '%s'"):format(mnt))
    end)
    e.data = mnt .. "/data"
    e.config = stream_decl("s")
    -- Leave about 192 KB free.
    sh(("dd if=/dev/zero of='%s/filler' bs=64k count=29 status=none"):format(mnt))
    local srv = run(e)
    local pad = ("x"):rep(1000)
    local function payload(k) return ("g:%d %s"):format(k, pad) end
    local st = publish_load(srv.port, { subject = "s.x", count = 400, window = 10, payload_of = payload })
    assert.same(400, st.answered)
    check_errors(st)
    local nok, nerr = #keys(st.ok), #keys(st.err)
    assert(nok > 100 and nerr > 100, ("expected both stored and refused publishes: %d ok, %d refused"):format(nok, nerr))
    local i = info(srv.port, "s")
    -- `stored` counts only what stayed stored (refused writes are taken back).
    assert.same({ false, nok, nok }, { i.failed, i.messages, i.stored })
    assert(i.write_errors > 0)
    local c = h.connect(srv.port)
    assert(c:ping(5))
    c:close()
    -- From the disk, still full.
    assert.same({ "exited", 0 }, { srv:stop() })
    local srv2 = run(e)
    check_stored(srv2.port, "s", st, "g")
    -- Room again: storing goes on at the next sequence.
    os.remove(mnt .. "/filler")
    local more = publish_load(srv2.port, { subject = "s.x", count = 50, window = 10,
                                           payload_of = function(k) return payload(400 + k) end })
    assert.same({ 50, {} }, { #keys(more.ok), more.err })
    for k, seq in pairs(more.ok) do
      assert.same(nok + k, seq)
      st.ok[400 + k] = seq
    end
    srv2:stop()
    local srv3 = run(e)
    check_stored(srv3.port, "s", st, "g")
    srv3:stop()
  end)

  -- The $JS.ACK reply subject of a delivery: delivered count and stream seq.
  local function ack_info(reply)
    local n, seq = reply:match("^%$JS%.ACK%.[^.]+%.[^.]+%.(%d+)%.(%d+)%.")
    assert(n, "not an ack subject: " .. tostring(reply))
    return tonumber(n), tonumber(seq)
  end

  it("keeps consumer progress acknowledged with AckSync through kill -9", function()
    local N = 300
    for round = 1, 3 do
      local e = env()
      e.config = stream_decl("q") .. '\nconsumer "w" { stream = "q", deliver = "work.w", ack_wait = "60s" }\n'
      local srv = run(e)
      local st = publish_load(srv.port, { subject = "q.x", count = N, payload_of = function(k) return "e" .. k end })
      assert.same(N, #keys(st.ok))
      local d = h.connect(srv.port)
      d:sub("work.w", "1")
      d:sub("_K.*", "2")
      local reply_of = {}
      for _, m in ipairs(d:collect(N, 10)) do
        local n, seq = ack_info(m.reply)
        assert.same({ 1, "e" .. seq }, { n, m.payload })
        assert(not reply_of[seq], "delivered twice: " .. seq)
        reply_of[seq] = m.reply
      end
      assert.same(N, #keys(reply_of))
      -- Ack a random half in random order, 10 at a time, each batch waiting
      -- for its AckSync replies; kill -9 right after sending batch `cut`.
      local order = {}
      for seq = 1, N do order[seq] = seq end
      for i = N, 2, -1 do
        local j = math.random(i)
        order[i], order[j] = order[j], order[i]
      end
      local nbatches = N // 2 // 10
      local cut = math.random(1, nbatches)
      local synced, uncertain = {}, {}
      for b = 1, cut do
        local batch, parts = {}, {}
        for i = (b - 1) * 10 + 1, b * 10 do
          batch[#batch + 1] = order[i]
          parts[#parts + 1] = ("PUB %s _K.%d 4\r\n+ACK\r\n"):format(reply_of[order[i]], order[i])
        end
        assert(d:send(table.concat(parts)))
        if b == cut then
          for _, seq in ipairs(batch) do uncertain[seq] = true end
          srv:kill()
        else
          for _, m in ipairs(d:collect(#batch, 5)) do
            assert.same("", m.payload)
            synced[tonumber(m.subject:match("%d+$"))] = true
          end
          for _, seq in ipairs(batch) do assert(synced[seq], "no AckSync reply for " .. seq) end
        end
      end
      d:close()
      local srv2 = run(e)
      local d2 = h.connect(srv2.port)
      d2:sub("work.w", "1")
      local unacked = N - #keys(synced) - #keys(uncertain)
      local again = {}
      local got = d2:collect(unacked, 5) -- at least these; then any uncertain ones
      for _, m in ipairs(d2:collect(N, 0.3)) do got[#got + 1] = m end
      for _, m in ipairs(got) do
        local n, seq = ack_info(m.reply)
        assert(not synced[seq], ("round %d: %d was acknowledged with AckSync and is delivered again"):format(round, seq))
        assert(not again[seq], "redelivered twice: " .. seq)
        assert.same({ 2, "e" .. seq }, { n, m.payload })
        again[seq] = true
      end
      local missing = {}
      for seq = 1, N do
        if not synced[seq] and not uncertain[seq] and not again[seq] then missing[#missing + 1] = seq end
      end
      assert.same({}, missing)
      local back = #keys(again) - unacked
      assert(back >= 0 and back <= 10)
      d2:close()
      srv2:stop()
    end
  end)

  -- Flips the byte at `at` (0-based) of a file.
  local function flip(path, at)
    local b = read_all(path)
    write_raw(path, b:sub(1, at) .. string.char(b:byte(at + 1) ~ 0xff) .. b:sub(at + 2))
  end

  -- The offset of the acks.log record (17 bytes after a 16-byte header)
  -- with op and seq.
  local function ack_record(path, op, seq)
    local b = read_all(path)
    for off = 16, #b - 17, 17 do
      local o, _, sq = string.unpack("<c1I4I8", b, off + 1)
      if o == op and sq == seq then return off end
    end
    error(("no %s record for %d in %s"):format(op, seq, path))
  end

  -- A consumer delivers N events, 15 are acknowledged with AckSync, the
  -- server is killed, damage(data) spoils its files, the server starts
  -- again: returns the events delivered from then on (seq -> count, each
  -- acknowledged), and the new server's log.
  local N, ACKED = 40, 15
  local function consumer_after_damage(damage)
    local e = env()
    e.config = stream_decl("q") .. '\nconsumer "w" { stream = "q", deliver = "work.w", ack_wait = "60s" }\n'
    local srv = run(e)
    local st = publish_load(srv.port, { subject = "q.x", count = N, payload_of = function(k) return "e" .. k end })
    assert.same(N, #keys(st.ok))
    local d = h.connect(srv.port)
    d:sub("work.w", "1")
    d:sub("_K.*", "2")
    local got = d:collect(N, 10)
    assert.same(N, #got)
    for i = 1, ACKED do d:pub(got[i].reply, "+ACK", "_K." .. i) end
    assert.same(ACKED, #d:collect(ACKED, 5))
    d:close()
    srv:kill()
    damage(e.data .. "/consumers/w/")
    local srv2 = run(e)
    local d2 = h.connect(srv2.port)
    d2:sub("work.w", "1")
    local seen = {}
    local function take(msgs)
      for _, m in ipairs(msgs) do
        local _, seq = ack_info(m.reply)
        seen[seq] = (seen[seq] or 0) + 1
        d2:pub(m.reply, "+ACK")
      end
    end
    take(d2:collect(N - ACKED, 5))
    take(d2:collect(N, 0.3))
    -- It still takes new events.
    local more = publish_load(srv2.port, { subject = "q.y", count = 5, payload_of = function(k) return "n" .. k end })
    assert.same(5, #keys(more.ok))
    take(d2:collect(5, 5))
    d2:close()
    srv2:stop()
    local missing, again = {}, 0
    for seq = 1, N + 5 do
      if seq > ACKED and not seen[seq] then missing[#missing + 1] = seq end
      if seq <= ACKED and seen[seq] then again = again + 1 end
    end
    return missing, again, srv2:log()
  end

  local function log_flip(op, seq, at)
    return function(dir)
      local p = dir .. "acks.log"
      flip(p, ack_record(p, op, seq) + at)
    end
  end

  it("delivers every unacknowledged event after its consumer's state files are damaged", function()
    local variants = {
      { "state: a flipped byte", function(dir) flip(dir .. "state", 20) end, "its state snapshot is damaged" },
      { "state: cut short", function(dir) sh(("truncate -s 30 '%sstate'"):format(dir)) end,
        "its state snapshot is damaged" },
      { "state: deleted", function(dir) os.remove(dir .. "state") end },
      { "acks.log: a flipped byte in an ack", log_flip("A", 5, 7), "skipped 1 damaged record in its ack log" },
      { "acks.log: cut inside a record", function(dir)
        sh(("truncate -s %d '%sacks.log'"):format(ack_record(dir .. "acks.log", "A", 3) + 9, dir))
      end },
      { "acks.log: a flipped byte in its header", function(dir) flip(dir .. "acks.log", 3) end },
      { "acks.log: deleted", function(dir) os.remove(dir .. "acks.log") end },
      { "both deleted", function(dir)
        os.remove(dir .. "acks.log")
        os.remove(dir .. "state")
      end },
    }
    local report = {}
    for _, v in ipairs(variants) do
      local name, damage, says = v[1], v[2], v[3]
      local missing, again, log = consumer_after_damage(damage)
      assert.same({ name, {} }, { name, missing })
      if says then assert(log:find("consumer w: " .. says, 1, true), name .. ": the log does not say '" .. says .. "'") end
      report[#report + 1] = ("%s: %d acknowledged redelivered; log: %s"):format(name, again,
        log:match("%[WRN%] (consumer w:[^\n]*)") or "-")
    end
    print("\n   " .. table.concat(report, "\n   "))
  end)


  it("redelivers an event whose delivery record in acks.log is damaged", function()
    local missing = consumer_after_damage(log_flip("D", 20, 7))
    assert.same({}, missing)
  end)

  it("says in the log when a consumer's state file is missing, cut short or unreadable", function()
    for _, v in ipairs {
      { "state deleted", function(dir) os.remove(dir .. "state") end },
      { "acks.log deleted", function(dir) os.remove(dir .. "acks.log") end },
      { "acks.log header", function(dir) flip(dir .. "acks.log", 3) end },
      { "acks.log cut", function(dir)
        sh(("truncate -s %d '%sacks.log'"):format(ack_record(dir .. "acks.log", "A", 3) + 9, dir))
      end },
    } do
      local _, _, log = consumer_after_damage(v[2])
      assert(log:match("%[WRN%] consumer w:"), v[1] .. ": nothing in the log:\n" .. log)
    end
  end)

  it("cuts a torn tail at every byte of the last two records, keeps the prefix and goes on", function()
    local segs, payloads = make_log("t", 12, function(i) return ("t%02d:%s"):format(i, ("x"):rep(i * 3)) end)
    assert.same(1, #segs)
    local bytes, recs = segs[1].bytes, segs[1].recs
    assert.same(12, #recs)
    local cases = {}
    for cut = recs[11].off, #bytes - 1 do
      local intact, boundary = 0, SEG_HDR
      for _, r in ipairs(recs) do
        if r.off + r.len <= cut then intact, boundary = intact + 1, r.off + r.len end
      end
      -- Torn bytes are counted up to the last one that is not zero (zeros
      -- at the end of a file may have been filled ahead of the log).
      local torn_end = cut
      while torn_end > boundary and bytes:byte(torn_end) == 0 do torn_end = torn_end - 1 end
      cases[#cases + 1] = { name = "c" .. cut, cut = cut, intact = intact, boundary = boundary,
                            torn = torn_end - boundary }
    end
    assert.same(recs[12].off + recs[12].len - recs[11].off, #cases)
    local function path(data, c) return ("%s/streams/%s/%s"):format(data, c.name, segs[1].file) end
    local function check_events(port, c, n)
      local ev = events(port, c.name)
      assert.same(n, #ev)
      for i, ev_i in ipairs(ev) do
        assert.same(i, ev_i.seq)
        assert.same(i <= c.intact and payloads[i] or ("new:" .. c.name), ev_i.payload)
      end
    end
    per_stream(cases, function(data, c)
      write_raw(path(data, c), bytes:sub(1, c.cut))
    end, function(port, c, data)
      local i = info(port, c.name)
      assert.same({ records = c.intact, corrupt = 0, torn = c.torn, messages = c.intact,
                    last = c.intact, failed = false },
                  { records = i.recovery.records, corrupt = i.recovery.corrupt_records, torn = i.recovery.torn_bytes,
                    messages = i.messages, last = i.last_seq, failed = i.failed })
      assert.same(c.boundary, file_size(path(data, c))) -- the torn bytes are gone from the file
      check_events(port, c, c.intact)
      local st = one_by_one(port, c.name .. ".a", { "new:" .. c.name })
      assert.same({ c.intact + 1 }, st.ok)
    end, { after = function(port, c)
      -- Once more from the disk: the new record follows the prefix cleanly.
      local i = info(port, c.name)
      assert.same({ records = c.intact + 1, corrupt = 0, torn = 0 },
                  { records = i.recovery.records, corrupt = i.recovery.corrupt_records, torn = i.recovery.torn_bytes })
      check_events(port, c, c.intact + 1)
    end })
  end)

  it("reads zeros filled ahead of the log as its end, after whole records and after a torn one", function()
    local segs, payloads = make_log("z", 12, function(i) return ("z%02d:%s"):format(i, ("q"):rep(i * 5)) end)
    assert.same(1, #segs)
    -- Under fsync = "always" the active segment is zero-filled ahead.
    assert(segs[1].filled > 0, "no zeros after the last record of an fsync=always stream")
    local bytes, recs = segs[1].bytes, segs[1].recs
    local zeros = ("\0"):rep(70000)
    local last = recs[12]
    -- Zeros at the end of those 30 bytes cannot be told from the fill: the
    -- store counts the torn bytes up to the last one that is not zero.  (Byte
    -- 29 is in the record's time, zero for 18 minutes in every 78 hours.)
    local part_torn = #(bytes:sub(last.off + 1, last.off + 30):gsub("\0+$", ""))
    local cases = {
      -- the file as a stop left it, zeros after the last record
      { name = "whole", bytes = bytes .. zeros, intact = 12, torn = 0, size = #bytes + #zeros },
      -- a record written over zeros in part: its first 30 bytes reached the disk
      { name = "part", bytes = bytes:sub(1, last.off + 30) .. zeros, intact = 11, torn = part_torn,
        size = last.off },
      -- only its tail reached the disk: zeros at its start, bytes after
      { name = "tail", bytes = bytes:sub(1, last.off) .. ("\0"):rep(20) .. bytes:sub(last.off + 21) .. zeros,
        intact = 11, torn = last.len, size = last.off },
    }
    local function path(data, c) return ("%s/streams/%s/%s"):format(data, c.name, segs[1].file) end
    local function check_events(port, c, n)
      local ev = events(port, c.name)
      assert.same(n, #ev)
      for i, ev_i in ipairs(ev) do
        assert.same({ i, i <= c.intact and payloads[i] or ("new:" .. c.name) }, { ev_i.seq, ev_i.payload })
      end
    end
    per_stream(cases, function(data, c)
      write_raw(path(data, c), c.bytes)
    end, function(port, c, data)
      local i = info(port, c.name)
      assert.same({ name = c.name, records = c.intact, corrupt = 0, torn = c.torn, last = c.intact },
                  { name = c.name, records = i.recovery.records, corrupt = i.recovery.corrupt_records,
                    torn = i.recovery.torn_bytes, last = i.last_seq })
      assert.same(c.size, file_size(path(data, c)))
      check_events(port, c, c.intact)
      local st = one_by_one(port, c.name .. ".a", { "new:" .. c.name })
      assert.same({ c.intact + 1 }, st.ok)
    end, { after = function(port, c, data)
      local i = info(port, c.name)
      assert.same({ records = c.intact + 1, corrupt = 0, torn = 0 },
                  { records = i.recovery.records, corrupt = i.recovery.corrupt_records, torn = i.recovery.torn_bytes })
      check_events(port, c, c.intact + 1)
      local recs2 = parse_segment(read_all(path(data, c)))
      assert.same(c.intact + 1, #recs2)
    end })
  end)

  it("skips exactly the record with a flipped byte in a sealed segment, wherever the byte is", function()
    local n = 200
    local segs, payloads = make_log("b", n, function(i) return ("b%03d:%s"):format(i, ("y"):rep(i % 7)) end,
                                    { segment_size = "4KB" })
    assert.is_true(#segs >= 3, "expected several segments, got " .. #segs)
    local first = segs[1].recs
    local mid = first[#first // 2]
    local cases = {}
    for b = 0, mid.len - 1 do cases[#cases + 1] = { name = "m" .. b, seg = 1, rec = mid, byte = b } end
    -- Also the first record of the log, the last of the first segment and
    -- the first of the second one.
    cases[#cases + 1] = { name = "f0", seg = 1, rec = first[1], byte = 0 }
    cases[#cases + 1] = { name = "l30", seg = 1, rec = first[#first], byte = 30 }
    cases[#cases + 1] = { name = "s16", seg = 2, rec = segs[2].recs[1], byte = 16 }
    local total_bytes = 0
    for _, s in ipairs(segs) do for _, r in ipairs(s.recs) do total_bytes = total_bytes + r.len end end
    per_stream(cases, function(data, c)
      for k, s in ipairs(segs) do
        local b = s.bytes
        if k == c.seg then
          local at = c.rec.off + c.byte + 1
          b = b:sub(1, at - 1) .. string.char(b:byte(at) ~ 0xff) .. b:sub(at + 1)
        end
        write_raw(("%s/streams/%s/%s"):format(data, c.name, s.file), b)
      end
    end, function(port, c)
      local bad = c.rec.seq
      local i = info(port, c.name)
      assert.same({ records = n - 1, corrupt = 1, corrupt_bytes = c.rec.len, torn = 0, messages = n - 1,
                    bytes = total_bytes - c.rec.len, first = bad == 1 and 2 or 1, last = n },
                  { records = i.recovery.records, corrupt = i.recovery.corrupt_records,
                    corrupt_bytes = i.recovery.corrupt_bytes, torn = i.recovery.torn_bytes, messages = i.messages,
                    bytes = i.bytes, first = i.first_seq, last = i.last_seq })
      local g = admin(port, "STREAM.GET", json.encode { stream = c.name, seq = bad })
      assert.same({ ok = false, error = ("stream '%s' has no message %d"):format(c.name, bad) }, g)
      local ev = events(port, c.name)
      assert.same(n - 1, #ev)
      local k = 0
      for seq = 1, n do
        if seq ~= bad then
          k = k + 1
          assert.same({ seq, payloads[seq] }, { ev[k].seq, ev[k].payload })
        end
      end
      local st = one_by_one(port, c.name .. ".a", { "after" })
      assert.same({ n + 1 }, st.ok)
    end, { segment_size = "4KB" })
  end)

  it("keeps the byte count exact when retention passes a skipped record", function()
    local n = 100
    local segs, payloads = make_log("r", n, function(i) return ("r%03d:%s"):format(i, ("z"):rep(i % 9)) end)
    local recs, bad = segs[1].recs, segs[1].recs[50]
    per_stream({ { name = "r" } }, function(data, c)
      local b = segs[1].bytes
      local at = bad.off + 30
      write_raw(("%s/streams/r/%s"):format(data, segs[1].file), b:sub(1, at) .. string.char(b:byte(at + 1) ~ 0xff) ..
                b:sub(at + 2))
    end, function(port)
      assert.same(1, info(port, "r").recovery.corrupt_records)
      -- 60 more: retention drops 1..61 (one of them, 50, was skipped).
      local more = {}
      for k = 1, 60 do more[k] = ("new%03d"):format(k) end
      assert.same(60, #keys(one_by_one(port, "r.a", more).ok))
      local want = 0
      for seq = 62, n do want = want + recs[seq].len end
      for k = 1, 60 do want = want + REC_HDR + #"r.a" + #more[k] end
      local i = info(port, "r")
      assert.same({ first = 62, last = n + 60, messages = n + 60 - 61, bytes = want },
                  { first = i.first_seq, last = i.last_seq, messages = i.messages, bytes = i.bytes })
    end, { max_msgs = 99 })
    assert.same(payloads[1], "r001:z")
  end)
end)
