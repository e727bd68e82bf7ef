-- tide.kv became the JetStream KV bucket `tide` (the stream KV_tide): a
-- data directory whose tide.kv store was written before (<data>/kv, in
-- tests/fixtures/kv-before-bucket, made by the build of before with the
-- entry file beside it) is moved into the bucket at start: every key with
-- its value and type, keys the clients' KV API would not take under their
-- encoded names, the old files renamed aside, never deleted; and a start
-- cut short at any write or rename of the move, restarted, ends with every
-- key there once.
local h = require "helpers"
local json = require "dkjson"

local FIX = h.root .. "/tests/fixtures/kv-before-bucket"
local KEYS = 319

-- base64url without padding, as the encoded keys are named.
local function b64url(s)
  local abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local n = c and 4 or b and 3 or 2
    for j = 1, n do
      local d = (v >> (18 - 6 * (j - 1))) & 63
      out[#out + 1] = abc:sub(d + 1, d + 1)
    end
  end
  return table.concat(out)
end

describe("a tide.kv store written before tide.kv was the bucket `tide`", function()
  local dir, srv

  before_each(function()
    dir = h.make_tmpdir("tide-kvmig")
    assert(os.execute(("cp -r '%s/data' '%s/data' && cp '%s/tide.lua' '%s/tide.lua'"):format(FIX, dir, FIX, dir)))
  end)

  after_each(function()
    if srv then srv:stop() end
    srv = nil
    h.remove_tmpdir(dir)
  end)

  local function boot()
    srv = h.start_server({ args = { "-c", dir .. "/tide.lua", "--no-http" } })
    return srv
  end

  local function call(subject)
    return assert(h.request(srv.port, subject, "", { timeout = 5 })).payload
  end

  local function stream_messages()
    local info = json.decode(call("$JS.API.STREAM.INFO.KV_tide"))
    return info.state and info.state.messages, info
  end

  local function direct_get(key)
    local m = assert(h.request(srv.port, "$JS.API.DIRECT.GET.KV_tide.$KV.tide." .. key, "", { timeout = 5 }))
    return m.payload, m
  end

  it("moves every key, with its value and type, into the bucket and keeps the old files aside", function()
    local old_log = assert(h.read_file(dir .. "/data/kv/log"))
    boot()
    assert.are.equal(h.read_file(FIX .. "/expected.txt"), call("kv.dump"))
    assert.are.equal(KEYS, stream_messages())
    assert.matches("kv: moved " .. KEYS .. " keys of .*/data/kv into bucket tide %(stream KV_tide%); 0 were there " ..
      "already", srv:log())
    h.wait_until(function() return h.read_file(dir .. "/data/kv.migrated/log") end, 5)
    assert.are.equal(old_log, h.read_file(dir .. "/data/kv.migrated/log"))
    assert.is_nil(h.read_file(dir .. "/data/kv/log"))
    -- logged just after the rename it follows
    h.wait_until(function() return srv:log():find("its old files are kept in", 1, true) end, 5)
    assert.matches("its old files are kept in .*/data/kv.migrated", srv:log())
    -- What a client reads: valid keys as they are, the others encoded.
    assert.are.equal("42", (direct_get("int")))
    assert.are.equal("a valid key", (direct_get("ok-key/with_all=chars.1")))
    assert.are.equal("spaces and a colon", (direct_get("=" .. b64url("user:42 name"))))
    assert.are.equal("the empty key", (direct_get("=")))
    assert.are.equal("leading equals", (direct_get("=" .. b64url("=eq"))))
    assert.are.equal("two dots", (direct_get("=" .. b64url("a..b"))))
    -- The next start has nothing to move and reads the same.
    srv:stop()
    boot()
    assert.are.equal(h.read_file(FIX .. "/expected.txt"), call("kv.dump"))
    assert.is_nil(srv:log():find("kv: moved", 1, true), srv:log())
    assert.are.equal(KEYS, stream_messages())
  end)

  it("ends with every key there once when a crash cuts the move short at any write or rename", function()
    local points, after_write = 0, 0
    for _, op in ipairs({ "write", "rename" }) do
      for n = 1, 60 do
        local d = h.make_tmpdir("tide-kvmig-crash")
        assert(os.execute(("cp -r '%s/data' '%s/data' && cp '%s/tide.lua' '%s/tide.lua'"):format(FIX, d, FIX, d)))
        local port = h.free_port()
        -- Crashes (exit 98) at the n-th write / rename, or runs until the timeout once the start is past them.
        local rc = h.sh(("cd '%s' && TIDE_FAULT=crash:%s:%d timeout 3 '%s' serve -a 127.0.0.1 -p %d -c tide.lua " ..
          "--no-http > crash.log 2>&1"):format(d, op, n, h.bin, port))
        if rc ~= 98 then
          h.remove_tmpdir(d)
          break
        end
        points = points + 1
        srv = h.start_server({ args = { "-c", d .. "/tide.lua", "--no-http" } })
        assert.are.equal(h.read_file(FIX .. "/expected.txt"), call("kv.dump"), op .. " " .. n)
        assert.are.equal(KEYS, stream_messages(), op .. " " .. n)
        -- A crash after the bucket's messages were written: they are not written again.
        if srv:log():find("kv: moved 0 keys of .* " .. KEYS .. " were there already") then after_write = after_write + 1 end
        h.wait_until(function() return h.read_file(d .. "/data/kv.migrated/log") end, 5)
        assert.is_truthy(h.read_file(d .. "/data/kv.migrated/log"), op .. " " .. n)
        assert.is_nil(h.read_file(d .. "/data/kv/log"), op .. " " .. n)
        srv:stop()
        srv = nil
        h.remove_tmpdir(d)
      end
    end
    print(("crash points: %d, %d of them after the bucket's messages were written"):format(points, after_write))
    assert.is_true(points >= 2, "crash points: " .. points)
    assert.is_true(after_write >= 1, "no crash point after the bucket's messages were written")
  end)
end)
