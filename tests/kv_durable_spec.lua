-- tide.kv on disk: with a data directory tide.kv is the JetStream KV bucket
-- `tide`, the stream KV_tide (one message per key, the newest), so values
-- of every type outlive a restart and a kill -9, deletes stay deleted, the
-- stream holds one message per key however many changes, and the stream
-- log's recovery (a damaged record skipped, a torn tail cut) and failed
-- writes apply to it.
local h = require "helpers"
local json = require "dkjson"

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

local function stream_info()
  return json.decode(call("$JS.API.STREAM.INFO.KV_tide"))
end

-- The stream's segment file (one, at these sizes).
local function segment()
  return data .. "/streams/KV_tide/00000000000000000001.seg"
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
    -- The store is the stream KV_tide: one message per key.
    assert.are.equal(12, stream_info().state.messages)
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

  it("holds one message per key however many changes, and loads the same state", function()
    start()
    assert.are.equal("ok", call("kv.fill"))
    -- 25 x 1000 rounds of two changes each: 50,000 messages if all were kept.
    for _ = 1, 25 do assert.are.equal("ok", call("kv.churn", "1000")) end
    local before = dump()
    assert.are.equal("int:25000", before["churn.count"])
    assert.are.equal("int:24999", before["churn.49"])
    assert.are.equal("int:25000", before["churn.0"])
    local st = stream_info().state
    assert.is_true(st.messages >= 50 and st.messages <= 70, "messages: " .. st.messages)
    assert.is_true(st.last_seq > 50000, "last_seq: " .. st.last_seq)

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

  it("skips a damaged record of the bucket's stream and keeps the others", function()
    start()
    for i = 1, 5 do assert.are.equal("ok", call("kv.set", "k" .. i .. "=VALUE-NUMBER-" .. i)) end
    srv:stop()
    local seg = assert(h.read_file(segment()))
    local at = assert(seg:find("VALUE-NUMBER-3", 1, true))
    patch(segment(), at - 1 + 6, "X") -- one byte of k3's value: its CRC no longer matches
    boot()
    local after = dump()
    assert.are.equal('"VALUE-NUMBER-1"', after.k1)
    assert.are.equal('"VALUE-NUMBER-2"', after.k2)
    assert.is_nil(after.k3)
    assert.are.equal('"VALUE-NUMBER-4"', after.k4)
    assert.are.equal('"VALUE-NUMBER-5"', after.k5)
    assert.are.equal("int:2", after.boots)
    assert.matches("streams/KV_tide: record %d+ failed its checksum", srv:log())
    assert.are.equal("ok", call("kv.set", "k6=six"))
    restart()
    assert.are.equal('"six"', call("kv.get", "k6"))
    assert.are.equal('"VALUE-NUMBER-5"', call("kv.get", "k5"))
  end)

  it("cuts a torn tail off the bucket's stream", function()
    start()
    for i = 1, 3 do assert.are.equal("ok", call("kv.set", "t" .. i .. "=torn-" .. i)) end
    srv:kill()
    -- Half of a record after the last whole one, as a crash in the middle of a write leaves it.
    local seg = assert(h.read_file(segment()))
    local last = assert(seg:find("torn-3", 1, true)) + 5
    patch(segment(), last, seg:sub(1, 40))
    boot()
    local after = dump()
    assert.are.equal('"torn-1"', after.t1)
    assert.are.equal('"torn-3"', after.t3)
    assert.matches("stream KV_tide: .*torn", srv:log())
    -- Appends go on right after the last whole record.
    assert.are.equal("ok", call("kv.set", "t4=after the cut"))
    srv:stop()
    boot()
    assert.are.equal('"after the cut"', call("kv.get", "t4"))
    assert.are.equal("int:3", call("kv.get", "boots"))
  end)

  it("logs a failed write; the change it lost reads as gone, later changes are stored", function()
    local port = h.free_port()
    h.write_file(cfg, config(data))
    -- Writes: 1 the bucket's saved configuration, 2 the entry file's
    -- increment, 3 a, 4 b (fails).
    srv = h.start_server({ port = port, bin = "/usr/bin/env",
      cmd = { "TIDE_FAULT=write:4:ENOSPC", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", cfg,
              "--no-http" } })
    assert.are.equal("ok", call("kv.set", "a=1"))
    assert.are.equal("ok", call("kv.set", "b=2"))
    h.wait_until(function() return srv:log():find("write failed", 1, true) end, 5)
    assert.matches("%[ERR%] store: .*/streams/KV_tide: write failed %(No space left on device%); 1 record not stored",
      srv:log())
    assert.are.equal("nil", call("kv.get", "b"))
    assert.are.equal("ok", call("kv.set", "c=3"))
    assert.are.equal('"3"', call("kv.get", "c"))
    srv:kill()
    boot()
    local after = dump()
    assert.are.equal('"1"', after.a)
    assert.is_nil(after.b)
    assert.are.equal('"3"', after.c)
    assert.are.equal("int:2", after.boots)
  end)

  it("holds the kv { } limits on the bucket, counting what a client put too; what is refused changes nothing", function()
    h.write_file(cfg, ([[
storage { dir = %q }
kv { max_value = "50KB", max_bytes = "64KB", max_keys = 10 }
on("kv.try", function(e, ctx)
  local k, n = e.raw:match("^(%%S+) (%%d+)$")
  local ok, err = pcall(tide.kv.set, k, string.rep("v", tonumber(n)))
  ctx.reply((ok and "ok" or tostring(err)) .. " count=" .. tide.kv.count() .. " has=" .. tostring(tide.kv.has(k)))
end)
]]):format(data))
    boot()
    assert.are.equal("ok count=1 has=true", call("kv.try", "a 40000"))
    local r = call("kv.try", "big 60000")
    assert.matches("tide.kv.set('big'): a value of 60000 bytes is over kv { max_value = 51200 }", r, 1, true)
    assert.matches("has=false", r, 1, true)
    r = call("kv.try", "b 40000") -- 80,002 bytes would pass 64 KiB
    assert.matches("the store holds 40001 bytes; kv { max_bytes = 65536 } leaves no room", r, 1, true)
    assert.matches("count=1 has=false", r, 1, true)
    assert.are.equal("ok count=1 has=true", call("kv.try", "a 50000")) -- a new value counts only the difference
    -- A client's put counts too (it is held only to the bucket's own limits).
    local ack = assert(h.request(srv.port, "$KV.tide.fromclient", "x", { timeout = 5 }))
    assert.is_nil(json.decode(ack.payload).error, ack.payload)
    for i = 1, 8 do assert.matches("^ok count=" .. (i + 2), call("kv.try", "k" .. i .. " 10")) end
    r = call("kv.try", "k9 10")
    assert.matches("the store holds 10 keys, kv { max_keys = 10 }", r, 1, true)
    assert.matches("count=10 has=false", r, 1, true)
    assert.matches("^ok count=10", call("kv.try", "k1 20")) -- a key that is there is no new key
  end)

  it("acks a key's new value on a bucket stream that does not sync each write (interval, memory)", function()
    start()
    for _, v in ipairs({ { "KV_iv", '"metadata":{"tide_fsync":"interval"}' }, { "KV_mem", '"storage":"memory"' } }) do
      local name = v[1]
      local bucket = name:sub(4)
      local m = assert(h.request(srv.port, "$JS.API.STREAM.CREATE." .. name, ('{"name":"%s","subjects":["$KV.%s.>"],' ..
        '"max_msgs_per_subject":1,"discard":"new","allow_rollup_hdrs":true,"allow_direct":true,%s}'):format(name,
        bucket, v[2]), { timeout = 5 }))
      assert.is_nil(json.decode(m.payload).error, m.payload)
      for i = 1, 3 do -- the second and third drop the value before them
        local ack = h.request(srv.port, "$KV." .. bucket .. ".k", "v" .. i, { timeout = 2 })
        assert.is_truthy(ack, name .. ": no PubAck for value " .. i)
        assert.are.same({ stream = name, seq = i }, json.decode(ack.payload))
      end
      local got = assert(h.request(srv.port, "$JS.API.DIRECT.GET." .. name .. ".$KV." .. bucket .. ".k", "", { timeout = 5 }))
      assert.are.equal("v3", got.payload)
    end
  end)
end)
