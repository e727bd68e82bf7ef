-- Key-value buckets with stock clients: tests/interop/node/kv.mjs drives
-- nats.js v2 (js.views.kv) and v3 (@nats-io/kv) through bucket create,
-- put / get / create / update / delete / purge, the history limit and a
-- TTL, and the stream features under them (max_msgs_per_subject,
-- Nats-Rollup, memory storage), against nats-server -js (the reference,
-- on a fresh store) and against tide (a fresh data directory); the two
-- must agree on every step.  Then tide alone keeps the buckets across a
-- kill -9.
local h = require "helpers"

local js = require "js_support"

local PROGRAM_TIMEOUT = 45


local api = js.api


local function compare_suite(label, flag)
  describe("KV buckets with " .. label .. ", against nats-server -js", function()
    local ref, got, srv, data

    setup(function()
      ref, got, srv, data = js.run_both("kv.mjs", flag, PROGRAM_TIMEOUT, "kv")
    end)

    teardown(function()
      js.stop(srv, data)
    end)

    it("gives the same answer as nats-server at every step", function()
      js.assert_same_steps(ref, got, 40, srv)
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
      assert.are.equal(10, last.message and last.message.seq, js.canon(last))
      local old = api(srv.port, "$JS.API.STREAM.MSG.GET.KV_CFG", { seq = 1 })
      assert.are.equal(10037, old.error and old.error.err_code, js.canon(old))
      assert.are.equal(10059, api(srv.port, "$JS.API.STREAM.INFO.MEM").error.err_code)
    end)
  end)
end

compare_suite("nats.js v2", "")
compare_suite("nats.js v3 (@nats-io/kv)", "--v3")
