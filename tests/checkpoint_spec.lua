-- Stream checkpoints: a start after a clean stop reads only what was
-- written after the last checkpoint, every way a checkpoint can be wrong
-- (damaged, older than the data, describing other data, followed by a torn
-- record) falls back or verifies without losing a record, checkpoints
-- written while running survive kill -9 and power loss at every step, and
-- `tide stream verify` finds the damage a trusted checkpoint does not look
-- for.  Every test talks to a real `tide serve` and reads the recovery
-- report of $TIDE.ADMIN.STREAM.INFO.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"
local proc = h.proc

local KB = 1024

local store = require "store_support"
local start, admin, info, stream_decl = store.start, store.admin, store.info, store.stream_decl
local function new_env() return store.new_env("tide-ckpt") end

local function events(port, name)
  local out, seq = {}, 1
  for _ = 1, 10000 do
    local r = admin(port, "STREAM.EVENTS", json.encode { stream = name, from_seq = seq, limit = 1000 })
    assert(r.events, "STREAM.EVENTS: " .. json.encode(r))
    for _, e in ipairs(r.events) do out[#out + 1] = { e.seq, e.payload } end
    if not r.more then break end
    seq = r.next_seq
  end
  return out
end

-- Publishes payload_of(1..count) to subject, up to `window` unanswered;
-- returns ok[k] = seq for every success PubAck, and stops early (a killed
-- server) when o.tick says so or the connection closes.
local function publish_load(port, o)
  local c = h.connect(port, { timeout = 5 })
  c:sub("_L.*", "1")
  local st = { ok = {}, sent = 0, answered = 0 }
  local buf, window = "", o.window or 100
  local deadline = proc.now() + (o.seconds or 30)
  while proc.now() < deadline and st.answered < o.count do
    local parts = {}
    while st.sent < o.count and st.sent - st.answered < window do
      st.sent = st.sent + 1
      local p = o.payload_of(st.sent)
      local subject = o.subject_of and o.subject_of(st.sent) or o.subject
      parts[#parts + 1] = ("PUB %s _L.%d %d\r\n%s\r\n"):format(subject, st.sent, #p, p)
    end
    if #parts > 0 and not c:send(table.concat(parts)) then break end
    if o.tick and o.tick(st) then break end
    socket.select({ c.sock }, nil, 0.05)
    c.sock:settimeout(0)
    local data, err, partial = c.sock:receive(65536)
    buf = buf .. (data or partial or "")
    while true do
      local _, e, k, n = buf:find("^MSG _L%.(%d+) %S+ (%d+)\r\n")
      if e then
        n = tonumber(n)
        if #buf < e + n + 2 then break end
        local seq = buf:sub(e + 1, e + n):match('"seq":(%d+)')
        assert(seq, "an error PubAck: " .. buf:sub(e + 1, e + n))
        st.ok[tonumber(k)] = tonumber(seq)
        st.answered = st.answered + 1
        buf = buf:sub(e + n + 3)
      else
        local line = buf:match("^([^\r\n]*)\r\n")
        if not line then break end
        if line == "PING" then c:send("PONG\r\n") end
        buf = buf:sub(#line + 3)
      end
    end
    if err == "closed" then break end
  end
  c:close()
  return st
end

-- One publish with headers; returns its PubAck, decoded.
local function publish_hdr(port, subject, payload, hdrs)
  local c = h.connect(port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub("_I", "1")
  c:hpub(subject, hdrs, payload, "_I")
  local m, err = c:msg(5)
  assert(m, "no PubAck: " .. tostring(err))
  c:close()
  return json.decode(m.payload)
end

local read_all, write_raw, sh = store.read_all, store.write_raw, store.sh

local function files(dir, suffix)
  local t = {}
  for f in sh(("ls '%s' | sort"):format(dir)):gmatch("[^\n]+") do
    if f:sub(-#suffix) == suffix then t[#t + 1] = dir .. "/" .. f end
  end
  return t
end

-- Flips byte `at` (0-based) of the file at path.
local function flip(path, at)
  local b = read_all(path)
  write_raw(path, b:sub(1, at) .. string.char(b:byte(at + 1) ~ 0xff) .. b:sub(at + 2))
end

local function payload(k) return ("p%05d:%s"):format(k, ("x"):rep(1000)) end

describe("stream checkpoints", function()
  local envs, servers = {}, {}
  local function env(decl)
    local e = new_env()
    e.config = decl
    envs[#envs + 1] = e
    return e
  end
  local function run(e, opts) local s = start(e, opts); servers[#servers + 1] = s; return s end

  after_each(function()
    for _, s in ipairs(servers) do if s:alive() then s:stop() end end
    servers = {}
    for _, e in ipairs(envs) do h.remove_tmpdir(e.dir) end
    envs = {}
  end)

  -- n events of about 1 KB in 64 KB segments, stopped cleanly: the data
  -- directory, what was stored and the info of the stream before the stop.
  -- Subjects s.x.0 .. s.x.12: record k's is s.x.<k % 13>.
  local function subject_of(k) return "s.x." .. (k % 13) end
  local function stored(n, o)
    local e = env(stream_decl("s", o or { segment_size = "64KB" }))
    local srv = run(e)
    local st = publish_load(srv.port, { subject_of = subject_of, count = n, payload_of = payload })
    assert.same(n, st.answered)
    local before = info(srv.port, "s")
    assert.same({ "exited", 0 }, { srv:stop() })
    return e, before
  end

  local function all_there(port, n, from)
    local ev = events(port, "s")
    assert.same(n - (from or 1) + 1, #ev)
    for i, x in ipairs(ev) do
      local k = (from or 1) + i - 1
      if x[1] ~= k or x[2] ~= payload(k) then
        error(("event %d is seq %d '%s'"):format(i, x[1], tostring(x[2]):sub(1, 20)))
      end
    end
  end

  it("reads only the tail after a clean stop: every segment comes from its checkpoint", function()
    local n = 4000 -- about 4 MB in 64 segments
    local e, before = stored(n)
    assert(before.segments >= 50, "expected many segments, got " .. before.segments)
    local srv = run(e)
    local i = info(srv.port, "s")
    local r = i.recovery
    assert.same({ messages = n, bytes = before.bytes, first = 1, last = n, records = n, checkpoints = i.segments,
                  fallbacks = 0, corrupt = 0, torn = 0 },
                { messages = i.messages, bytes = i.bytes, first = i.first_seq, last = i.last_seq,
                  records = r.records, checkpoints = r.checkpoints, fallbacks = r.checkpoint_fallbacks,
                  corrupt = r.corrupt_records, torn = r.torn_bytes })
    -- What was read of the segments: each one's header and last record, and
    -- the zeros filled ahead of the active segment's end (at most 1 MiB);
    -- the checkpoints themselves are 4 bytes per record and the subjects.
    assert(r.scanned_bytes < 1024 * KB + i.segments * 1100,
           ("scanned %d bytes of %d stored"):format(r.scanned_bytes, i.bytes))
    assert(r.checkpoint_bytes < n * 8 + i.segments * 200, "checkpoints of " .. r.checkpoint_bytes .. " bytes")
    all_there(srv.port, n)
    -- The per-subject last sequences came back too (each subject's last
    -- record is in one of the last segments; the others' tables list it
    -- with an older sequence).
    for j = 0, 12 do
      local last = n - ((n - j) % 13)
      local wrong = publish_hdr(srv.port, "s.x." .. j, "no", { { "Nats-Expected-Last-Subject-Sequence",
                                                                 tostring(last - 13) } })
      assert.same(10071, wrong.error and wrong.error.err_code)
      local a = publish_hdr(srv.port, "s.x." .. j, "next", { { "Nats-Expected-Last-Subject-Sequence",
                                                                tostring(last) } })
      assert.same(n + 1 + j, a.seq)
    end
    srv:stop()
    -- Without the checkpoints, the same start scans everything.
    for _, f in ipairs(files(e.data .. "/streams/s", ".ckpt")) do os.remove(f) end
    srv = run(e)
    i = info(srv.port, "s")
    r = i.recovery
    assert.same({ n + 13, 0, i.segments, 0 }, { r.records, r.checkpoints, r.checkpoint_missing,
                                               r.checkpoint_fallbacks })
    assert.truthy(srv:log():find(("stream s: %d segments without a checkpoint scanned in full"):format(i.segments),
                                 1, true))
    assert(r.scanned_bytes >= before.bytes, "a full scan read " .. r.scanned_bytes)
  end)

  it("keeps the dedup window across a restart from checkpoints", function()
    local e = env(stream_decl("s", { segment_size = "4KB" }))
    local srv = run(e)
    for k = 1, 40 do
      assert.same(k, publish_hdr(srv.port, "s.x", payload(k):sub(1, 300), { { "Nats-Msg-Id", "m" .. k } }).seq)
    end
    srv:stop()
    srv = run(e)
    assert(info(srv.port, "s").recovery.checkpoints >= 2)
    for _, k in ipairs { 1, 17, 40 } do
      local a = publish_hdr(srv.port, "s.x", "again", { { "Nats-Msg-Id", "m" .. k } })
      assert.same({ k, true }, { a.seq, a.duplicate })
    end
    assert.same(41, publish_hdr(srv.port, "s.x", "new", { { "Nats-Msg-Id", "m41" } }).seq)
  end)

  it("checkpoints sealed segments while running: after kill -9 only the active segment is scanned", function()
    local e = env(stream_decl("s", { segment_size = "64KB" }))
    local srv = run(e)
    local n = 2000
    local st = publish_load(srv.port, { subject = "s.x", count = n, payload_of = payload })
    assert.same(n, st.answered)
    local segs = info(srv.port, "s").segments
    -- The sync thread writes a sealed segment's checkpoint after the roll.
    assert(h.wait_until(function() return #files(e.data .. "/streams/s", ".ckpt") >= segs - 1 end, 5),
           "checkpoints of the sealed segments were not written")
    srv:kill()
    srv = run(e)
    local i = info(srv.port, "s")
    assert.same({ n, n, segs - 1, 0 }, { i.messages, i.recovery.records, i.recovery.checkpoints,
                                        i.recovery.checkpoint_fallbacks })
    assert(i.recovery.scanned_bytes < 64 * KB + 1024 * KB + segs * 1100, "scanned " .. i.recovery.scanned_bytes)
    all_there(srv.port, n)
  end)

  it("falls back to a full scan of a segment whose checkpoint is damaged, and loses nothing", function()
    local n = 300
    local e = stored(n)
    local ck = files(e.data .. "/streams/s", ".ckpt")
    assert(#ck >= 4)
    -- A byte of the header, of the index and of the subject table.
    flip(ck[1], 20)
    flip(ck[2], 100)
    local b3 = read_all(ck[3])
    flip(ck[3], #b3 - 3)
    write_raw(ck[4], "") -- an empty file
    local srv = run(e)
    local i = info(srv.port, "s")
    assert.same({ messages = n, records = n, fallbacks = 4, checkpoints = i.segments - 4, corrupt = 0 },
                { messages = i.messages, records = i.recovery.records, fallbacks = i.recovery.checkpoint_fallbacks,
                  checkpoints = i.recovery.checkpoints, corrupt = i.recovery.corrupt_records })
    assert.truthy(i.recovery.checkpoint_fallback:find("checksum", 1, true), i.recovery.checkpoint_fallback)
    assert.truthy(srv:log():find("checkpoint not used (its checksum or length is wrong); scanning the segment in full",
                                 1, true))
    all_there(srv.port, n)
    srv:stop()
    -- The next start has good checkpoints again.
    srv = run(e)
    i = info(srv.port, "s")
    assert.same({ i.segments, 0 }, { i.recovery.checkpoints, i.recovery.checkpoint_fallbacks })
  end)

  it("verifies what was written after a checkpoint that is older than the data", function()
    local e = env(stream_decl("s")) -- one segment
    local srv = run(e)
    assert.same(100, publish_load(srv.port, { subject = "s.x", count = 100, payload_of = payload }).answered)
    srv:stop()
    local ck = files(e.data .. "/streams/s", ".ckpt")
    assert.same(1, #ck)
    local old = read_all(ck[1])
    srv = run(e)
    local st = publish_load(srv.port, { subject = "s.x", count = 150, window = 10,
                                        payload_of = function(k) return payload(100 + k) end })
    assert.same(150, st.answered)
    srv:stop()
    write_raw(ck[1], old) -- the checkpoint of the first 100
    srv = run(e)
    local i = info(srv.port, "s")
    assert.same({ messages = 250, records = 250, checkpoints = 1, fallbacks = 0, corrupt = 0, torn = 0 },
                { messages = i.messages, records = i.recovery.records, checkpoints = i.recovery.checkpoints,
                  fallbacks = i.recovery.checkpoint_fallbacks, corrupt = i.recovery.corrupt_records,
                  torn = i.recovery.torn_bytes })
    assert(i.recovery.scanned_bytes >= 150 * 1040, "the 150 after the checkpoint were not scanned")
    all_there(srv.port, 250)
    local a = publish_hdr(srv.port, "s.x", "next", { { "Nats-Expected-Last-Subject-Sequence", "250" } })
    assert.same(251, a.seq)
  end)

  it("does not trust a checkpoint that describes other data, or more than the file holds", function()
    -- Two streams with the same segment names and record sizes, different
    -- contents: a's checkpoint over b's segment; and c's segment cut short
    -- below its checkpoint.
    local e = env(stream_decl("a") .. "\n" .. stream_decl("b") .. "\n" .. stream_decl("c"))
    local srv = run(e)
    for _, name in ipairs { "a", "b", "c" } do
      local st = publish_load(srv.port, { subject = name .. ".x", count = 50, window = 1,
                                          payload_of = function(k) return name .. payload(k) end })
      assert.same(50, st.answered)
    end
    srv:stop()
    local d = e.data .. "/streams/"
    local ca, cb = files(d .. "a", ".ckpt")[1], files(d .. "b", ".ckpt")[1]
    write_raw(cb, read_all(ca))
    local seg_c = files(d .. "c", ".seg")[1]
    local bc = read_all(seg_c)
    local cut = bc:find("cp00041:", 1, true) - 44 -- the start of record 41 (header 40, subject 3)
    write_raw(seg_c, bc:sub(1, cut))
    srv = run(e)
    local b, c = info(srv.port, "b"), info(srv.port, "c")
    assert.same({ 50, 1, 0 }, { b.messages, b.recovery.checkpoint_fallbacks, b.recovery.checkpoints })
    assert.truthy(b.recovery.checkpoint_fallback:find("last record", 1, true), b.recovery.checkpoint_fallback)
    assert.same({ 40, 40, 1, 0 }, { c.messages, c.last_seq, c.recovery.checkpoint_fallbacks, c.recovery.checkpoints })
    assert.truthy(c.recovery.checkpoint_fallback:find("shorter", 1, true), c.recovery.checkpoint_fallback)
    local ev = events(srv.port, "b")
    assert.same({ 50, "b" .. payload(50) }, ev[50])
  end)

  it("cuts a torn record after a checkpoint and keeps the checkpoint", function()
    local e = env(stream_decl("s", { segment_size = "64KB" }))
    local srv = run(e)
    assert.same(200, publish_load(srv.port, { subject = "s.x", count = 200, payload_of = payload }).answered)
    srv:stop()
    local segs = files(e.data .. "/streams/s", ".seg")
    local last = segs[#segs]
    local b = read_all(last)
    -- After the last record (zeros filled ahead of it follow): the first
    -- 700 bytes of a copy of it, as a write the machine did not finish.
    local p = #b
    while p > 0 and b:byte(p) == 0 do p = p - 1 end
    local lp = b:find("p00200:", 1, true) - 44 -- (header 40, subject 3)
    local torn = b:sub(lp + 1, lp + 700)
    write_raw(last, b:sub(1, p) .. torn .. b:sub(p + #torn + 1))
    srv = run(e)
    local i = info(srv.port, "s")
    assert.same({ messages = 200, checkpoints = #segs, fallbacks = 0, torn = 700, corrupt = 0 },
                { messages = i.messages, checkpoints = i.recovery.checkpoints,
                  fallbacks = i.recovery.checkpoint_fallbacks, torn = i.recovery.torn_bytes,
                  corrupt = i.recovery.corrupt_records })
    all_there(srv.port, 200)
    assert.same(201, publish_hdr(srv.port, "s.x", "after", {}).seq)
    srv:stop()
    srv = run(e)
    i = info(srv.port, "s")
    assert.same({ 201, 0, #segs }, { i.messages, i.recovery.torn_bytes, i.recovery.checkpoints })
  end)

  -- tide stream verify NAME -s <port>: exit code, standard output.
  local function verify_cli(port, name, json_out)
    local out = os.tmpname()
    local rc = h.sh(("timeout 20 '%s' stream verify '%s' -s 127.0.0.1:%d %s > '%s' 2>&1"):format(
      h.bin, name, port, json_out and "--json" or "", out))
    local text = h.read_file(out) or ""
    os.remove(out)
    return rc, text
  end

  it("tide stream verify finds a flipped byte in an old segment that a start from checkpoints trusts", function()
    local n = 300
    local e = stored(n)
    local segs = files(e.data .. "/streams/s", ".seg")
    local b = read_all(segs[1])
    local at = b:find("p00007:", 1, true) + 500 -- inside the payload of record 7
    flip(segs[1], at)
    local srv = run(e)
    local i = info(srv.port, "s")
    -- Trusted: the start read neither the record nor its segment.
    assert.same({ n, 0, i.segments }, { i.messages, i.recovery.corrupt_records, i.recovery.checkpoints })
    local rc, out = verify_cli(srv.port, "s")
    assert.is_not.equal(0, rc)
    assert.truthy(out:find(("stream s: %d records %%(%%d+ bytes%%) checked, 1 damaged: sequence 7\n"):format(n - 1)),
                  out)
    -- From now on the record is gone, as after a failed read.
    assert.same({ ok = false, error = "stream 's' has no message 7" },
                admin(srv.port, "STREAM.GET", json.encode { stream = "s", seq = 7 }))
    assert.same(n - 1, info(srv.port, "s").messages)
    local v = admin(srv.port, "STREAM.VERIFY", json.encode { stream = "s" })
    assert.same({ records = n - 1, missing = 1, bad = 0, more = false, next_seq = n + 1 },
                { records = v.records, missing = v.missing, bad = v.bad, more = v.more, next_seq = v.next_seq })
    srv:kill() -- before a clean stop writes a checkpoint again
    -- Its segment's checkpoint is gone: the next start scans that segment
    -- and reports the damage.
    srv = run(e)
    i = info(srv.port, "s")
    assert.same({ n - 1, 1, i.segments - 1 }, { i.messages, i.recovery.corrupt_records, i.recovery.checkpoints })
    for k = 1, n do
      if k ~= 7 then
        local g = admin(srv.port, "STREAM.GET", json.encode { stream = "s", seq = k })
        assert.same(payload(k), g.payload)
      end
    end
    srv:stop()
    -- A whole stream: exit 0; --json.
    local e2 = stored(50, { segment_size = "4KB" })
    srv = run(e2)
    rc, out = verify_cli(srv.port, "s", true)
    assert.same(0, rc, out)
    local j = json.decode(out)
    assert.same({ stream = "s", records = 50, missing = 0, bad = 0, bad_seqs = {} },
                { stream = j.stream, records = j.records, missing = j.missing, bad = j.bad, bad_seqs = j.bad_seqs })
    assert(j.bytes >= 50 * 1040)
    rc, out = verify_cli(srv.port, "nope")
    assert.is_not.equal(0, rc)
    assert.truthy(out:find("nope"), out)
  end)

  it("verifies a big stream in bounded steps (32 MiB or 20 ms a request) and the command takes them all", function()
    local n = 36000 -- about 38 MB
    local e, before = stored(n, { segment_size = "4MB" })
    local srv = run(e)
    local v = admin(srv.port, "STREAM.VERIFY", json.encode { stream = "s", from_seq = 1 })
    assert.is_true(v.more, json.encode(v))
    assert(v.next_seq > 1 and v.next_seq <= n and v.bytes <= 32 * 1024 * KB + 1100 and v.records == v.next_seq - 1,
           json.encode(v))
    -- The next step starts where the first ended.
    local v2 = admin(srv.port, "STREAM.VERIFY", json.encode { stream = "s", from_seq = v.next_seq })
    assert(v2.next_seq > v.next_seq and v2.records == v2.next_seq - v.next_seq, json.encode(v2))
    local rc, out = verify_cli(srv.port, "s", true)
    assert.same(0, rc, out)
    local j = json.decode(out)
    assert.same({ n, 0, 0, before.bytes }, { j.records, j.bad, j.missing, j.bytes })
  end)

  -- The n-th step of writing checkpoints (TIDE_FAULT ckpt: the data's
  -- sync, the temporary file's open, write and sync, the rename, the
  -- directory's sync) is where the process dies or the machine loses
  -- power.  Whatever is left, the next start loses no acknowledged record.
  for _, kind in ipairs { "crash", "powerloss" } do
    it("loses nothing when the process dies at any step of a checkpoint (" .. kind .. ")", function()
      for step = 1, 14 do
        local e = env(stream_decl("s", { segment_size = "4KB" }))
        local srv = run(e, { fault = kind .. ":ckpt:" .. step })
        local st = publish_load(srv.port, { subject = "s.x", count = 60, window = 1,
                                            payload_of = function(k) return payload(k):sub(1, 200) end })
        local n = 0
        for k in pairs(st.ok) do n = math.max(n, k) end
        if srv:alive() then srv:stop() end
        local srv2 = run(e)
        local i = info(srv2.port, "s")
        assert(i.messages >= n and i.last_seq == i.messages,
               ("step %d: %d acknowledged, %d there (last %d)"):format(step, n, i.messages, i.last_seq))
        assert.same({ step, 0 }, { step, i.recovery.corrupt_records })
        local ev = events(srv2.port, "s")
        for k = 1, i.messages do
          assert.same({ step, k, payload(k):sub(1, 200) }, { step, ev[k][1], ev[k][2] })
        end
        srv2:stop()
        h.remove_tmpdir(e.dir)
      end
    end)
  end
end)
