-- The object store with stock clients: tests/interop/node/obj.mjs drives
-- nats.js v2 (js.views.os) and v3 (@nats-io/obj) through bucket create,
-- put / get of a 10 MB object (bytes and digest), a small object and its
-- replacement, info, list, a link, delete, and the OBJ_<bucket> stream
-- under them, against nats-server -js (the reference, on a fresh store)
-- and against tide (a fresh data directory); the two must agree on every
-- step.
local h = require "helpers"
local json = require "dkjson"

local NODE_DIR = h.root .. "/tests/interop/node"
local PROGRAM_TIMEOUT = 110
local BIG = 10 * 1024 * 1024

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs obj.mjs against the server on port; returns its decoded answers.
local function run_steps(port, flag, label, log)
  local rc, out = h.sh(("cd %s && timeout -k 5 %d node obj.mjs %d %s"):format(q(NODE_DIR), PROGRAM_TIMEOUT, port, flag))
  local line = out:match("(%b{})%s*$")
  local res = line and json.decode(line)
  assert(rc == 0 and res, ("%s: obj.mjs ended with %s:\n%s\n--- server log ---\n%s"):format(label, tostring(rc), out,
    log()))
  return res
end

-- Canonical text of a decoded value (sorted keys), to compare and print.
local function canon(v)
  if type(v) ~= "table" then return json.encode(v) end
  local keys, parts, n = {}, {}, #v
  if n > 0 or next(v) == nil then
    for i = 1, n do parts[i] = canon(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = json.encode(k) .. ":" .. canon(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function compare_suite(label, flag)
  describe("the object store with " .. label .. ", against nats-server -js", function()
    local ref, got, srv, data

    setup(function()
      local ok, out = h.npm_ready()
      assert(ok, "npm ci failed:\n" .. tostring(out))
      local sd = h.make_tmpdir("obj-ns")
      local port = h.free_port()
      local ns = h.start_server { bin = h.nats_server_bin(), port = port,
        cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", sd } }
      ref = run_steps(port, flag, "nats-server", function() return ns:log() end)
      ns:stop("INT")
      h.remove_tmpdir(sd)
      data = h.make_tmpdir("obj-data")
      srv = h.start_scripted("-- nothing declared\n", { args = { "--data", data } })
      got = run_steps(srv.port, flag, "tide", function() return srv:log() end)
    end)

    teardown(function()
      if srv then
        srv:kill()
        h.remove_tmpdir(srv.dir)
      end
      if data then h.remove_tmpdir(data) end
    end)

    it("gives the same answer as nats-server at every step", function()
      local diffs, keys = {}, {}
      for k in pairs(ref) do keys[#keys + 1] = k end
      table.sort(keys)
      assert(#keys >= 20, "the reference run has only " .. #keys .. " steps")
      for _, k in ipairs(keys) do
        if canon(ref[k]) ~= canon(got[k]) then
          diffs[#diffs + 1] = ("%s:\n  nats-server: %s\n  tide:        %s"):format(k, canon(ref[k]), canon(got[k]))
        end
      end
      assert(#diffs == 0, table.concat(diffs, "\n") .. "\n--- tide log ---\n" .. srv:log())
    end)

    it("answered the steps themselves (not only the same failure twice)", function()
      assert.are.equal(BIG, got.put_big.size)
      assert.are.same({ length = BIG, digest = got.big_digest_expected, same = true }, got.get_big)
      assert.are.equal(got.big_digest_expected .. "=", got.info_big.digest)
      assert.are.same({ length = BIG, same = true }, got.get_big_stream)
      assert.are.equal("hello again", got.get_small_replaced)
      assert.are.equal("hello again", got.get_link)
      assert.are.same({ "alias.txt", "big.bin", "small.txt" },
        { got.list[1].name, got.list[2].name, got.list[3].name })
      assert.is_true(got.info_big_deleted.deleted)
      assert.are.same({ "alias.txt", "small.txt" }, got.list_after_delete)
      assert.are.equal(4, got.state_after_delete.messages)
    end)
  end)
end

compare_suite("nats.js v2", "")
compare_suite("nats.js v3", "--v3")
