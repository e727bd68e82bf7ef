-- tide.kv on disk (src/kv.c): with a data directory, every change is logged
-- to <data>/kv/log and the store is reloaded at start (snapshot, then log);
-- damaged records are skipped, the log is compacted into a new snapshot.
local h = require "helpers"

-- The entry file: counts the server's starts in "boots" (an increment at
-- load time) and answers requests that change or read the store.
local function config(data)
  return ([==[
storage { dir = %q }
tide.kv.incr("boots")

local function describe(v)
  local t = type(v)
  if t == "number" then
    return math.type(v) == "integer" and ("int:" .. string.format("%%d", v)) or ("float:" .. string.format("%%.17g", v))
  elseif t == "string" then
    return (string.format("%%q", v):gsub("\\\n", "\\n"))
  elseif t == "boolean" or v == nil then
    return tostring(v)
  end
  local keys, out = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do out[#out + 1] = tostring(k) .. "=" .. describe(v[k]) end
  return "{" .. table.concat(out, ",") .. "}"
end

on("kv.fill", function(e, ctx)
  tide.kv.set("str", "hello\0world\r\n")
  tide.kv.set("empty", "")
  tide.kv.set("int", 42)
  tide.kv.set("max", math.maxinteger)
  tide.kv.set("neg", -7)
  tide.kv.set("flt", 1.5)
  tide.kv.set("third", 1 / 3)
  tide.kv.set("yes", true)
  tide.kv.set("no", false)
  tide.kv.set("tbl", { n = 3, f = 2.5, name = "x", flag = false,
                       list = { 1, 2, { deep = { x = 10, big = 9007199254740993 } } } })
  ctx.reply("ok")
end)
on("kv.set", function(e, ctx)   -- payload "key=value" (a string value)
  local k, v = e.raw:match("^([^=]+)=(.*)$")
  tide.kv.set(k, v)
  ctx.reply("ok")
end)
on("kv.incr", function(e, ctx) ctx.reply(tostring(tide.kv.incr(e.raw))) end)
on("kv.del", function(e, ctx) ctx.reply(tostring(tide.kv.del(e.raw))) end)
on("kv.unset", function(e, ctx) tide.kv.set(e.raw, nil) ctx.reply("ok") end)
-- payload "n": n sets over 50 keys, churn.<i %% 50> = running counter
on("kv.churn", function(e, ctx)
  local n = tonumber(e.raw)
  for _ = 1, n do
    local c = tide.kv.incr("churn.count")
    tide.kv.set("churn." .. (c %% 50), c)
  end
  ctx.reply("ok")
end)
on("kv.dump", function(e, ctx)
  local out = {}
  for _, k in ipairs(tide.kv.keys()) do out[#out + 1] = k .. " " .. describe(tide.kv.get(k)) end
  ctx.reply(table.concat(out, "\n"))
end)
on("kv.get", function(e, ctx) ctx.reply(describe(tide.kv.get(e.raw))) end)
]==]):format(data)
end

local EXPECTED_FILL = {
  ["str"] = [["hello\0world\13\n"]],
  ["empty"] = '""',
  ["int"] = "int:42",
  ["max"] = "int:9223372036854775807",
  ["neg"] = "int:-7",
  ["flt"] = "float:1.5",
  ["third"] = "float:" .. string.format("%.17g", 1 / 3),
  ["yes"] = "true",
  ["no"] = "false",
  ["tbl"] = "{f=float:2.5,flag=false,list={1=int:1,2=int:2,3={deep={big=int:9007199254740993,x=int:10}}},"
    .. "n=int:3,name=\"x\"}",
}

local data, cfgdir, cfg, srv

local function call(subject, payload)
  local m = assert(h.request(srv.port, subject, payload or "", { timeout = 5 }))
  return m.payload
end

-- kv.dump as a table key -> description.
local function dump()
  local t = {}
  local text = call("kv.dump")
  for line in text:gmatch("[^\n]+") do
    local k, d = line:match("^(%S+) (.*)$")
    t[k] = d
  end
  return t, text
end

-- Starts a server on the config (written by start) and the data directory.
local function boot()
  srv = h.start_server({ args = { "-c", cfg } })
  return srv
end

local function start()
  h.write_file(cfg, config(data))
  return boot()
end

-- Stops the server (TERM, or KILL when hard) and starts it again.
local function restart(hard)
  if hard then srv:kill() else srv:stop() end
  return boot()
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- Replaces the bytes of path at offset off (0-based).
local function patch(path, off, bytes)
  local f = assert(io.open(path, "r+b"))
  f:seek("set", off)
  f:write(bytes)
  f:close()
end

before_each(function()
  data = h.make_tmpdir("tide-kvdata")
  cfgdir = h.make_tmpdir("tide-cfg")
  cfg = cfgdir .. "/tide.lua"
end)

after_each(function()
  if srv then srv:stop() end
  srv = nil
  h.remove_tmpdir(data)
  h.remove_tmpdir(cfgdir)
end)

describe("tide.kv with a data directory", function()
  it("keeps values of every type across a clean restart", function()
    start()
    assert.are.equal("ok", call("kv.fill"))
    for i = 1, 3 do assert.are.equal(tostring(i), call("kv.incr", "hits")) end
    local before, text = dump()
    for k, want in pairs(EXPECTED_FILL) do assert.are.equal(want, before[k], k) end
    assert.are.equal("int:3", before.hits)
    assert.are.equal("int:1", before.boots)

    restart()
    local after, text2 = dump()
    before.boots = nil
    after.boots = nil
    assert.are.same(before, after)
    -- The entry file's increment at load adds to the stored counter.
    assert.are.equal("int:2", call("kv.get", "boots"))
    assert.are.equal("4", call("kv.incr", "hits"))
    assert.matches("kv: loaded 12 keys from", srv:log(), nil, true)
    assert.is_true(#text > 0 and #text2 > 0)
  end)

  it("keeps them across kill -9", function()
    start()
    assert.are.equal("ok", call("kv.fill"))
    assert.are.equal("1", call("kv.incr", "hits"))
    assert.are.equal("ok", call("kv.set", "late=written just before the kill"))
    restart(true)
    local after = dump()
    for k, want in pairs(EXPECTED_FILL) do assert.are.equal(want, after[k], k) end
    assert.are.equal("int:1", after.hits)
    assert.are.equal('"written just before the kill"', after.late)
    assert.are.equal("int:2", after.boots)
    restart(true)
    assert.are.equal("int:3", call("kv.get", "boots"))
    assert.are.equal("2", call("kv.incr", "hits"))
  end)

  it("keeps deleted keys deleted", function()
    start()
    for _, k in ipairs({ "a", "b", "c", "d" }) do assert.are.equal("ok", call("kv.set", k .. "=v" .. k)) end
    assert.are.equal("true", call("kv.del", "a"))
    assert.are.equal("ok", call("kv.unset", "b"))
    assert.are.equal("false", call("kv.del", "nothere"))
    restart()
    assert.are.equal("nil", call("kv.get", "a"))
    assert.are.equal("nil", call("kv.get", "b"))
    assert.are.equal('"vc"', call("kv.get", "c"))
    assert.are.equal("true", call("kv.del", "c"))
    restart(true)
    local after = dump()
    assert.is_nil(after.a)
    assert.is_nil(after.b)
    assert.is_nil(after.c)
    assert.are.equal('"vd"', after.d)
  end)

  it("compacts the log into a snapshot and loads the same state", function()
    start()
    assert.are.equal("ok", call("kv.fill"))
    -- 25 x 1000 rounds of two changes each: 50,000 records unless compacted.
    for _ = 1, 25 do assert.are.equal("ok", call("kv.churn", "1000")) end
    local before = dump()
    assert.are.equal("int:25000", before["churn.count"])
    assert.are.equal("int:24999", before["churn.49"])
    assert.are.equal("int:25000", before["churn.0"])

    local snap = assert(h.read_file(data .. "/kv/snapshot"), "no snapshot was written")
    local magic, gen, count = string.unpack("<c8I8I8", snap)
    assert.are.equal("TIDEKVS1", magic)
    assert.is_true(gen >= 1)
    assert.is_true(count >= 50 and count <= 70, "snapshot entries: " .. count)
    local log = assert(h.read_file(data .. "/kv/log"))
    local lmagic, lgen = string.unpack("<c8I8", log)
    assert.are.equal("TIDEKVL1", lmagic)
    assert.are.equal(gen, lgen)
    -- One record is ~30 bytes: 50,000 of them would be ~1.5 MB.
    local total = #snap + #log
    assert.is_true(total < 400000, "kv files hold " .. total .. " bytes")

    restart()
    local after = dump()
    before.boots, after.boots = nil, nil
    assert.are.same(before, after)
    restart(true)
    local again = dump()
    again.boots = nil
    assert.are.same(before, again)
    assert.is_nil(srv:log():find("damaged", 1, true), srv:log())
  end)

  it("never applies a log older than the snapshot", function()
    start()
    assert.are.equal("ok", call("kv.set", "x=old"))
    local stale = assert(h.read_file(data .. "/kv/log"))
    assert.are.equal(0, (string.unpack("<I8", stale, 9)))
    assert.is_truthy(stale:find("old", 1, true))
    assert.are.equal("ok", call("kv.set", "x=new"))
    for _ = 1, 6 do assert.are.equal("ok", call("kv.churn", "1000")) end
    srv:stop()
    local snap = assert(h.read_file(data .. "/kv/snapshot"))
    assert.is_true(string.unpack("<I8", snap, 9) >= 1)
    -- As a crash between the snapshot's rename and the new log's leaves it.
    h.write_file(data .. "/kv/log", stale)
    boot()
    assert.are.equal('"new"', call("kv.get", "x"))
    -- (what the snapshot holds: the changes after it were in the log replaced)
    local n = tonumber(call("kv.get", "churn.count"):match("^int:(%d+)$"))
    assert.is_true(n >= 4000 and n <= 6000, tostring(n))
    assert.matches("kv: .*/kv/log is of generation 0, older than the snapshot %(%d+%): not applied", srv:log())
    restart()
    assert.are.equal('"new"', call("kv.get", "x"))
  end)

  it("skips a damaged record in the log and keeps the others", function()
    start()
    for i = 1, 5 do assert.are.equal("ok", call("kv.set", "k" .. i .. "=VALUE-NUMBER-" .. i)) end
    srv:stop()
    local path = data .. "/kv/log"
    local log = assert(h.read_file(path))
    local at = assert(log:find("VALUE-NUMBER-3", 1, true))
    patch(path, at - 1 + 6, "X") -- one byte of k3's value: its CRC no longer matches
    local size = #log

    boot()
    local after = dump()
    assert.are.equal('"VALUE-NUMBER-1"', after.k1)
    assert.are.equal('"VALUE-NUMBER-2"', after.k2)
    assert.is_nil(after.k3)
    assert.are.equal('"VALUE-NUMBER-4"', after.k4)
    assert.are.equal('"VALUE-NUMBER-5"', after.k5)
    assert.are.equal("int:2", after.boots)
    local text = srv:log()
    assert.matches("%[WRN%] kv: .*/kv/log: skipped 1 damaged record%(s%)", text)
    -- A copy of the damaged log is kept and a fresh snapshot written.
    assert.are.equal(size, file_size(data .. "/kv/log.damaged"))
    assert.is_truthy(file_size(data .. "/kv/snapshot"))

    -- The next start finds nothing damaged.
    assert.are.equal("ok", call("kv.set", "k6=six"))
    restart()
    local again = dump()
    assert.are.equal('"six"', again.k6)
    assert.are.equal('"VALUE-NUMBER-5"', again.k5)
    assert.is_nil(again.k3)
    assert.is_nil(srv:log():find("damaged", 1, true), srv:log())
  end)

  it("cuts a torn tail off the log", function()
    start()
    for i = 1, 3 do assert.are.equal("ok", call("kv.set", "t" .. i .. "=torn-" .. i)) end
    srv:kill()
    local path = data .. "/kv/log"
    local good = file_size(path)
    -- Half of a record, as a crash in the middle of a write leaves it.
    local f = assert(io.open(path, "ab"))
    f:write("TKV1\1\2\3\4\200\0\0\0S")
    f:close()
    boot()
    local after = dump()
    assert.are.equal('"torn-3"', after.t3)
    assert.matches("kv: .*/kv/log: cut a torn tail of 13 bytes", srv:log())
    -- Appends go on right after the last whole record.
    assert.are.equal("ok", call("kv.set", "t4=after the cut"))
    srv:stop()
    boot()
    assert.are.equal('"after the cut"', call("kv.get", "t4"))
    assert.are.equal("int:3", call("kv.get", "boots"))
    assert.is_nil(srv:log():find("torn", 1, true), srv:log())
    assert.is_true(file_size(path) > good)
  end)

  it("reports a corrupt snapshot and still starts", function()
    start()
    assert.are.equal("ok", call("kv.fill"))
    for _ = 1, 12 do assert.are.equal("ok", call("kv.churn", "1000")) end
    srv:stop()
    local path = data .. "/kv/snapshot"
    local snap = assert(h.read_file(path))
    assert.are.equal("TIDEKVS1", snap:sub(1, 8))

    -- A damaged header: reported, the records themselves still load.
    patch(path, 10, "\255\255")
    boot()
    local text = srv:log()
    assert.matches("%[ERR%] kv: the snapshot .*/kv/snapshot is damaged: its header does not check out", text)
    assert.are.equal("int:12000", call("kv.get", "churn.count"))
    assert.are.equal(EXPECTED_FILL.tbl, call("kv.get", "tbl"))
    srv:stop()

    -- Garbage instead of the snapshot: reported; the server starts, serves
    -- and keeps what is written from then on.
    local f = assert(io.open(path, "wb"))
    f:write(string.rep("\0garbage", 500))
    f:close()
    boot()
    assert.matches("%[ERR%] kv: the snapshot .*/kv/snapshot is damaged", srv:log())
    assert.is_true(srv:alive())
    assert.are.equal("ok", call("kv.set", "fresh=start"))
    srv:kill()
    boot()
    assert.are.equal('"start"', call("kv.get", "fresh"))
    assert.is_nil(srv:log():find("damaged", 1, true), srv:log())
  end)

  it("logs a failed write, keeps the value and writes it once the disk takes it", function()
    local port = h.free_port()
    h.write_file(cfg, config(data))
    -- Writes: 1 the log header, 2 the entry file's increment, 3 a, 4 b (fails).
    srv = h.start_server({ port = port, bin = "/usr/bin/env",
      cmd = { "TIDE_FAULT=write:4:ENOSPC", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", cfg,
              "--no-http" } })
    assert.are.equal("ok", call("kv.set", "a=1"))
    assert.are.equal("ok", call("kv.set", "b=2"))
    assert.matches("%[ERR%] kv: cannot write a change in .*/kv: No space left on device", srv:log())
    assert.are.equal('"2"', call("kv.get", "b"))
    -- More than a second later the next change writes a snapshot of it all.
    require("procmod").sleep(1.1)
    assert.are.equal("ok", call("kv.set", "c=3"))
    assert.matches("kv: the store is on disk again", srv:log())
    srv:kill()
    boot()
    local after = dump()
    assert.are.equal('"1"', after.a)
    assert.are.equal('"2"', after.b)
    assert.are.equal('"3"', after.c)
    assert.are.equal("int:2", after.boots)
  end)
end)
