-- Key-value buckets with stock clients: tests/interop/node/kv.mjs drives
-- nats.js v2 (js.views.kv) and v3 (@nats-io/kv) through bucket create,
-- put / get / create / update / delete / purge, the history limit and a
-- TTL, and the stream features under them (max_msgs_per_subject,
-- Nats-Rollup, memory storage), against nats-server -js (the reference,
-- on a fresh store) and against tide (a fresh data directory); the two
-- must agree on every step.  Then tide alone keeps the buckets across a
-- kill -9.
local h = require "helpers"
local json = require "dkjson"

local NODE_DIR = h.root .. "/tests/interop/node"
local PROGRAM_TIMEOUT = 45

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs kv.mjs against the server on port; returns its decoded answers.
local function run_steps(port, flag, label, log)
  local rc, out = h.sh(("cd %s && timeout -k 5 %d node kv.mjs %d %s"):format(q(NODE_DIR), PROGRAM_TIMEOUT, port, flag))
  local line = out:match("(%b{})%s*$")
  local res = line and json.decode(line)
  assert(rc == 0 and res, ("%s: kv.mjs ended with %s:\n%s\n--- server log ---\n%s"):format(label, tostring(rc), out,
    log()))
  return res
end

local function api(port, subject, body)
  local m = h.request(port, subject, body and json.encode(body) or "")
  return m and assert(json.decode(m.payload), subject .. ": not JSON: " .. m.payload)
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
  describe("KV buckets with " .. label .. ", against nats-server -js", function()
    local ref, got, srv, data

    setup(function()
      local ok, out = h.npm_ready()
      assert(ok, "npm ci failed:\n" .. tostring(out))
      local sd = h.make_tmpdir("kv-ns")
      local port = h.free_port()
      local ns = h.start_server { bin = h.nats_server_bin(), port = port,
        cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", sd } }
      ref = run_steps(port, flag, "nats-server", function() return ns:log() end)
      ns:stop("INT")
      h.remove_tmpdir(sd)
      data = h.make_tmpdir("kv-data")
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
      assert(#keys >= 40, "the reference run has only " .. #keys .. " steps")
      for _, k in ipairs(keys) do
        if canon(ref[k]) ~= canon(got[k]) then
          diffs[#diffs + 1] = ("%s:\n  nats-server: %s\n  tide:        %s"):format(k, canon(ref[k]), canon(got[k]))
        end
      end
      assert(#diffs == 0, table.concat(diffs, "\n") .. "\n--- tide log ---\n" .. srv:log())
    end)

    it("answered the steps themselves (not only the same failure twice)", function()
      assert.are.same({ key = "a", value = "1", revision = 1, operation = "PUT", length = 1 }, got.get_a_rev1)
      assert.are.equal(10071, got.create_existing.err)
      assert.are.equal(4, got.create_c)
      assert.are.equal(5, got.update_a)
      assert.are.equal(10071, got.update_a_stale.err)
      assert.is_nil(got.get_a_rev1_after_history)
      assert.are.equal("DEL", got.get_b_deleted.operation)
      assert.are.equal("again", got.get_b_again.value)
      assert.are.equal("PURGE", got.get_a_purged.operation)
      assert.are.same({ messages = 5, bytes_gt0 = true, first_seq = 3, last_seq = 11 }, got.state_after_purge)
      assert.are.equal("v", got.ttl_get_before.value)
      assert.is_nil(got.ttl_get_after)
      assert.are.same({ messages = 3, bytes_gt0 = true, first_seq = 3, last_seq = 5 }, got.per_subject_state)
      assert.are.same({ messages = 1, bytes_gt0 = true, first_seq = 5, last_seq = 5 }, got.rollup_all_state)
      assert.are.equal("memory", got.add_memory.storage)
      assert.are.equal(10052, got.rollup_without_purge.err)
    end)

    it("keeps the bucket as the client left it across a kill -9", function()
      srv:kill()
      local dir, config = srv.dir, srv.config
      srv = h.start_server { args = { "-c", config, "--data", data } }
      srv.dir, srv.config = dir, config
      local st = api(srv.port, "$JS.API.STREAM.INFO.KV_CFG").state
      assert.are.same(got.state_after_purge, { messages = st.messages, bytes_gt0 = st.bytes > 0,
        first_seq = st.first_seq, last_seq = st.last_seq })
      local last = api(srv.port, "$JS.API.STREAM.MSG.GET.KV_CFG", { last_by_subj = "$KV.CFG.b.x" })
      assert.are.equal(10, last.message and last.message.seq, canon(last))
      local old = api(srv.port, "$JS.API.STREAM.MSG.GET.KV_CFG", { seq = 1 })
      assert.are.equal(10037, old.error and old.error.err_code, canon(old))
      assert.are.equal(10059, api(srv.port, "$JS.API.STREAM.INFO.MEM").error.err_code)
    end)
  end)
end

compare_suite("nats.js v2", "")
compare_suite("nats.js v3 (@nats-io/kv)", "--v3")
