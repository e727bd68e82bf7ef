-- kill -9 during $JS.API.STREAM.CREATE: the process dies just before the
-- n-th open, write, sync or rename of the store (TIDE_FAULT crash: what was
-- written stays, as after a kill -9), for every n the create makes.  After
-- the restart the stream is there whole (its configuration, and a log that
-- takes a publish) or not at all (no configuration, no files), and a
-- second create works.
local h = require "helpers"
local json = require "dkjson"

local live = {}

after_each(function()
  for _, srv in ipairs(live) do
    if srv:alive() then srv:kill() end
  end
  live = {}
end)

local CONFIG = { name = "CR", subjects = { "cr.>" }, max_msgs = 50 }

local function api(port, subject, body)
  local m = assert(h.request(port, subject, body and json.encode(body) or "", { timeout = 3 }))
  return assert(json.decode(m.payload), subject .. ": not JSON: " .. m.payload)
end

-- Names in dir (nil when it does not exist).
local function list(dir)
  local rc, out = h.sh("ls -A '" .. dir .. "' 2>/dev/null")
  if rc ~= 0 then return nil end
  local t = {}
  for l in out:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("a kill -9 during STREAM.CREATE", function()
  it("leaves the stream whole or not at all, and a second create works", function()
    local cuts, whole, none = 0, 0, 0
    for _, op in ipairs({ "open", "write", "sync", "rename" }) do
      for n = 1, 8 do
        local dir = h.make_tmpdir("jsapi-crash")
        local data = dir .. "/data"
        h.write_file(dir .. "/tide.lua", "-- nothing declared\n")
        local function serve(fault)
          local port = h.free_port()
          local cmd = { "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/tide.lua", "--data", data }
          if fault then
            table.insert(cmd, 1, h.bin)
            table.insert(cmd, 1, "TIDE_FAULT=" .. fault)
          end
          local srv = h.start_server { bin = fault and "/usr/bin/env" or nil, cmd = cmd, port = port }
          live[#live + 1] = srv
          return srv
        end
        local what = ("crash:%s:%d"):format(op, n)
        local started, srv = pcall(serve, what)
        local created
        if started then
          local ok, r = pcall(api, srv.port, "$JS.API.STREAM.CREATE.CR", CONFIG)
          created = ok and r.config ~= nil
          h.wait_until(function() return not srv:alive() end, 1)
          if srv:alive() then
            srv:stop() -- the create needed fewer than n of them
          else
            cuts = cuts + 1
            assert.equals(98, srv.code, what)
          end
        end
        srv = serve(nil)
        local info = api(srv.port, "$JS.API.STREAM.INFO.CR")
        local files = list(data .. "/streams/CR")
        if info.error then
          assert.is_falsy(created, what .. ": an answered create is gone")
          assert.equals(10059, info.error.err_code, what)
          assert.is_nil(files, what .. ": stream files without the stream: " .. table.concat(files or {}, " "))
          none = none + 1
        else
          assert.are.same(CONFIG.subjects, info.config.subjects, what)
          assert.equals(50, info.config.max_msgs, what)
          local ack = api(srv.port, "cr.x", nil)
          assert.equals(1, ack.seq, what .. ": " .. json.encode(ack))
          whole = whole + 1
        end
        local again = api(srv.port, "$JS.API.STREAM.CREATE.CR", CONFIG)
        assert.are.same(CONFIG.subjects, again.config and again.config.subjects, what .. ": " .. json.encode(again))
        local ack = api(srv.port, "cr.y", nil)
        assert.is_number(ack.seq, what .. ": " .. json.encode(ack))
        srv:stop()
        h.remove_tmpdir(dir)
      end
    end
    assert.is_true(cuts >= 4, "only " .. cuts .. " cuts")
    assert.is_true(whole >= 1 and none >= 1, ("whole %d, none %d"):format(whole, none))
  end)
end)
