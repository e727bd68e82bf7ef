-- The object store with stock clients: tests/interop/node/obj.mjs drives
-- nats.js v2 (js.views.os) and v3 (@nats-io/obj) through bucket create,
-- put / get of a 10 MB object (bytes and digest), a small object and its
-- replacement, info, list, a link, delete, and the OBJ_<bucket> stream
-- under them, against nats-server -js (the reference, on a fresh store)
-- and against tide (a fresh data directory); the two must agree on every
-- step.

local js = require "js_support"

local PROGRAM_TIMEOUT = 110
local BIG = 10 * 1024 * 1024


local function compare_suite(label, flag)
  describe("the object store with " .. label .. ", against nats-server -js", function()
    local ref, got, srv, data

    setup(function()
      ref, got, srv, data = js.run_both("obj.mjs", flag, PROGRAM_TIMEOUT, "obj")
    end)

    teardown(function()
      js.stop(srv, data)
    end)

    it("gives the same answer as nats-server at every step", function()
      js.assert_same_steps(ref, got, 20, srv)
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
      assert.are.same({ bucket = "FILES", sealed = true }, got.seal)
      assert.is_true(got.stream_config_sealed.sealed)
      assert.are.equal("hello again", got.get_after_seal)
      assert.are.same(got.state_after_delete, got.state_after_seal)
      -- nats.js v3 words the error "error: 10109"
      assert.is_truthy(tostring(got.put_after_seal.err):match("10109"), js.canon(got.put_after_seal))
      assert.is_truthy(tostring(got.delete_after_seal.err):match("10109"), js.canon(got.delete_after_seal))
    end)
  end)
end

compare_suite("nats.js v2", "")
compare_suite("nats.js v3", "--v3")
