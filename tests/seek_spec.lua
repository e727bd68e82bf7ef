-- Seeking in a stream by time: each segment's seek index (an entry every
-- 64 KiB of records: sequence, time, offset) finds the window in memory,
-- so a seek into the middle of a many-segment stream reads one window of
-- the file however big the stream is; it finds the first record at or
-- after the time asked for (STREAM.EVENTS since, a consumer with
-- deliver_policy by_start_time); and when a segment's checkpoint (which
-- keeps its seek index) is missing or damaged, the scan at start rebuilds
-- the index and seeks stay right.  The reads are the store's own count of
-- what it read of segment files ($TIDE.ADMIN.STREAM.INFO `io`).
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local store = require "store_support"
local start, admin, info, stream_decl = store.start, store.admin, store.info, store.stream_decl
local read_all, write_raw, sh = store.read_all, store.write_raw, store.sh

local KB = 1024
local WINDOW = 64 * KB -- the seek index's step

local function payload(k) return ("p%06d:%s"):format(k, ("x"):rep(1000)) end

-- Publishes payload(from..to) on s.x without waiting for PubAcks, then
-- waits until the stream holds `to` messages.
local function fill(port, from, to)
  local c = h.connect(port, { timeout = 10 })
  for k0 = from, to, 200 do
    local parts = {}
    for k = k0, math.min(k0 + 199, to) do
      local p = payload(k)
      parts[#parts + 1] = ("PUB s.x %d\r\n%s\r\n"):format(#p, p)
    end
    assert(c:send(table.concat(parts)))
    assert(c:until_pong(10))
  end
  c:close()
  assert(h.wait_until(function() return info(port, "s").messages == to end, 20),
         "the stream did not get to " .. to .. " messages")
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

-- The time string t moved by d ns (|d| < 1 s, not across a second).
local function iso_add(t, d)
  local head, frac = t:match("^(.*)%.(%d+)Z$")
  local f = math.tointeger(tonumber(frac)) + d
  assert(f >= 0 and f < 1000000000, "pick another record: " .. t)
  return ("%s.%09dZ"):format(head, f)
end

-- Every record's time string, by sequence.
local function times(port)
  local out, seq = {}, 1
  for _ = 1, 1000 do
    local r = admin(port, "STREAM.EVENTS", json.encode { stream = "s", from_seq = seq, limit = 1000 })
    assert(r.events, "STREAM.EVENTS: " .. json.encode(r))
    for _, e in ipairs(r.events) do out[e.seq] = e.time end
    if not r.more then break end
    seq = r.next_seq
  end
  return out
end

-- The first sequence whose time is at or after target (ns), from ts.
local function expected(ts, n, target)
  for k = 1, n do
    if ts[k] and iso_ns(ts[k]) >= target then return k end
  end
  return n + 1
end

-- One seek by time (STREAM.EVENTS since, one event): the first sequence it
-- found, and what the store read for it.
local function seek(port, since)
  local before = info(port, "s").io
  local r = admin(port, "STREAM.EVENTS", json.encode { stream = "s", since = since, limit = 1 })
  assert(r.events, "STREAM.EVENTS: " .. json.encode(r))
  local after = info(port, "s").io
  return r.events[1] and r.events[1].seq or r.next_seq, {
    seeks = after.seeks - before.seeks, reads = after.seek_reads - before.seek_reads,
    bytes = after.seek_bytes - before.seek_bytes, records = after.seek_records - before.seek_records }
end

-- CRC-32C (Castagnoli), as record.c seals checkpoints with.
local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1 == 1) and ((c >> 1) ~ 0x82f63b78) or (c >> 1) end
  CRC[i] = c
end
local function crc32c(b)
  local c = 0xffffffff
  for i = 1, #b do c = (c >> 8) ~ CRC[(c ~ b:byte(i)) & 0xff] end
  return c ~ 0xffffffff
end

local function files(dir, suffix)
  local t = {}
  for f in sh(("ls '%s' | sort"):format(dir)):gmatch("[^\n]+") do
    if f:sub(-#suffix) == suffix then t[#t + 1] = dir .. "/" .. f end
  end
  return t
end

describe("seeking by time", function()
  local envs, servers = {}, {}
  local function run(e) local s = start(e); servers[#servers + 1] = s; return s end
  after_each(function()
    for _, s in ipairs(servers) do if s:alive() then s:stop() end end
    servers = {}
    for _, e in ipairs(envs) do h.remove_tmpdir(e.dir) end
    envs = {}
  end)

  -- A stream of n records of about 1 KB in 1 MB segments, stopped cleanly
  -- (every segment has its checkpoint); its env and each record's time.
  local function stored(n)
    local e = store.new_env("tide-seek")
    e.config = stream_decl("s", { segment_size = "1MB", fsync = "never" })
    envs[#envs + 1] = e
    local srv = run(e)
    fill(srv.port, 1, n)
    local ts = times(srv.port)
    assert.same({ "exited", 0 }, { srv:stop() })
    return e, ts
  end

  -- Seeks to the record in the middle (its time, and 1 ns after it) and
  -- checks the answers and that each read at most one window.
  local function seek_middle(port, ts, n)
    local cost = {}
    for _, m in ipairs { n // 2 + 7, n // 3 + 1 } do
      for _, d in ipairs { 0, 1, -1 } do
        local since = iso_add(ts[m], d)
        local got, c = seek(port, since)
        assert.same(expected(ts, n, iso_ns(since)), got, "seek to " .. since)
        assert.same(1, c.seeks)
        -- One window: 64 KiB and a record, read through the 64 KiB
        -- read-ahead, so at most two reads.
        assert(c.reads <= 2 and c.bytes <= 2 * WINDOW and c.records <= WINDOW // 1000 + 2,
               ("seek to %s in %d records read %d times, %d bytes, %d records"):format(since, n, c.reads, c.bytes,
                                                                                      c.records))
        cost[#cost + 1] = c
      end
    end
    return cost
  end

  it("reads one window of the file for a seek into the middle, whatever the size of the stream", function()
    local worst = {}
    for _, n in ipairs { 3000, 12000 } do
      local e, ts = stored(n)
      local srv = run(e)
      local i = info(srv.port, "s")
      assert(i.segments >= n // 1000 - 1, ("%d segments"):format(i.segments))
      assert.same({ i.segments, 0 }, { i.recovery.checkpoints, i.recovery.checkpoint_fallbacks })
      local w = { reads = 0, bytes = 0, records = 0 }
      for _, c in ipairs(seek_middle(srv.port, ts, n)) do
        for k in pairs(w) do w[k] = math.max(w[k], c[k]) end
      end
      worst[n] = w
      -- Before the first record and after the last.
      assert.same(1, (seek(srv.port, iso_add(ts[1], -1))))
      assert.same(n + 1, (seek(srv.port, iso_add(ts[n], 1))))
      srv:stop()
    end
    -- Four times the records: the same reads (within the read-ahead's
    -- alignment: one read more at most).
    assert(worst[12000].reads <= worst[3000].reads + 1 and worst[12000].bytes <= worst[3000].bytes + WINDOW,
           ("3000 records: %s; 12000: %s"):format(json.encode(worst[3000]), json.encode(worst[12000])))
  end)

  it("finds the right first message with the index built while appending, at and around every entry", function()
    local e = store.new_env("tide-seek")
    e.config = stream_decl("s", { segment_size = "256KB", fsync = "never" })
    envs[#envs + 1] = e
    local srv = run(e)
    local n = 1500
    fill(srv.port, 1, n)
    local ts = times(srv.port)
    -- Every 16th record (some start a segment or an index window, some
    -- end one), at its time, 1 ns before and after.
    for k = 1, n, 16 do
      for _, d in ipairs { -1, 0, 1 } do
        local since = iso_add(ts[k], d)
        local got, c = seek(srv.port, since)
        assert.same(expected(ts, n, iso_ns(since)), got, "seek to " .. since .. " (record " .. k .. ")")
        assert(c.reads <= 2, "record " .. k .. ": " .. c.reads .. " reads")
      end
    end
    -- A consumer that starts by time (1 ns after a record's) starts there
    -- too.
    local since = iso_add(ts[777], 1)
    h.write_file(e.dir .. "/tide.lua", e.config .. ([[

consumer "t" { stream = "s", deliver = "d.t", ack_wait = "30s", deliver_policy = "by_start_time", start_time = %q }
]]):format(since))
    local w = h.connect(srv.port)
    assert(w:sub("d.t", "1"))
    assert(w:until_pong())
    local r = admin(srv.port, "RELOAD")
    assert.is_true(r.ok, json.encode(r))
    local msg = assert(w:msg(10), "no delivery")
    assert.same(payload(expected(ts, n, iso_ns(since))), msg.payload)
    w:close()
  end)

  it("falls back to the scan, which rebuilds the index, when a checkpoint is missing or damaged", function()
    local n = 4500
    local e, ts = stored(n)
    local dir = e.data .. "/streams/s"
    local ckpts = files(dir, ".ckpt")
    assert(#ckpts >= 3, "checkpoints: " .. #ckpts)
    -- The first checkpoint goes; the second has a byte of its seek index
    -- flipped (the first entry's time); the third's seek index says its
    -- first entry is later than the segment's last record, under a CRC
    -- made again (a checkpoint that passes its checksum but not the checks
    -- of its seek index).
    os.remove(ckpts[1])
    local b = read_all(ckpts[2])
    local nslots = string.unpack("<I8", b, 25)
    local at = 96 + 4 * nslots + 4 + 8 + 3 -- 0-based
    write_raw(ckpts[2], b:sub(1, at) .. string.char(b:byte(at + 1) ~ 0x40) .. b:sub(at + 2))
    b = read_all(ckpts[3])
    nslots = string.unpack("<I8", b, 25)
    local last_ts = string.unpack("<i8", b, 73)
    at = 96 + 4 * nslots + 4 + 8 -- 0-based: entry 0's time
    b = b:sub(1, at) .. string.pack("<i8", last_ts + 1) .. b:sub(at + 9)
    write_raw(ckpts[3], b:sub(1, 4) .. string.pack("<I4", crc32c(b:sub(9))) .. b:sub(9))
    local srv = run(e)
    local i = info(srv.port, "s")
    local r = i.recovery
    assert.same({ n, 1, 2 }, { i.messages, r.checkpoint_missing, r.checkpoint_fallbacks })
    assert.truthy(r.checkpoint_fallback:find("checksum", 1, true), r.checkpoint_fallback)
    assert.truthy(srv:log():find("checkpoint not used (its seek index does not fit its records)", 1, true))
    -- Seeks into the three segments scanned, and into one from its
    -- checkpoint.
    local segs = files(dir, ".seg")
    assert(#segs >= 4, "segments: " .. #segs)
    local function first_of(path) return tonumber(path:match("(%d+)%.seg$")) end
    for _, k in ipairs { first_of(segs[1]) + 100, first_of(segs[2]) + 5, first_of(segs[2]) + 300,
                         first_of(segs[3]) + 1, first_of(segs[3]) + 200, first_of(segs[4]) + 200 } do
      for _, d in ipairs { 0, 1 } do
        local since = iso_add(ts[k], d)
        local got, c = seek(srv.port, since)
        assert.same(expected(ts, n, iso_ns(since)), got, "seek to " .. since)
        assert(c.reads <= 2 and c.bytes <= 2 * WINDOW, ("record %d: %d reads, %d bytes"):format(k, c.reads, c.bytes))
      end
    end
    -- Their checkpoints are written again (the sealed segments scanned in
    -- full): the next start takes every segment from its checkpoint.
    assert(h.wait_until(function() return #files(dir, ".ckpt") >= #ckpts end, 10), "no new checkpoints")
    srv:stop()
    srv = run(e)
    r = info(srv.port, "s").recovery
    assert.same({ 0, 0 }, { r.checkpoint_missing, r.checkpoint_fallbacks })
    local got = seek(srv.port, ts[first_of(segs[2]) + 300])
    assert.same(expected(ts, n, iso_ns(ts[first_of(segs[2]) + 300])), got)
  end)
end)
