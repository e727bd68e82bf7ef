-- A push consumer's flow control: tests/interop/node/jsfc.mjs (nats.js
-- v2) reads a flow-controlled push consumer with a plain subscription that
-- does not answer (the 100 FlowControl Request, the stall, the heartbeats
-- that name the outstanding request), answers once (delivery goes on, the
-- window doubled), then reads everything with js.subscribe and
-- flowControl(); against nats-server -js and tide, which must agree.
local js = require "js_support"

local PROGRAM_TIMEOUT = 70


describe("push consumers' flow control with nats.js v2, against nats-server -js", function()
  local ref, got, srv, data

  setup(function()
    ref, got, srv, data = js.run_both("jsfc.mjs", nil, PROGRAM_TIMEOUT, "jsfc")
  end)

  teardown(function()
    js.stop(srv, data)
  end)

  it("gives the same answer as nats-server at every step", function()
    assert.are.same(ref, got)
  end)

  it("asks for an answer at half the window, stalls at the window, goes on when answered", function()
    -- 100 KiB messages, a 2 MiB window: the request after the 11th, the
    -- stall after the 21st; the answer frees the first request's bytes and
    -- doubles the window: 31 more.
    assert.are.same({ delivered = 21, requests = { { after = 11, data = 0, reply_form = true } } }, got.stalled)
    assert.is_true(got.stalled_heartbeat)
    assert.is_true(got.still_stalled)
    assert.are.same({ delivered = 52, requests = 2 }, got.after_answer)
    assert.are.same({ got = 500, bytes = 500 * 100 * 1024, delivered = 500, flow_control = true }, got.subscribe)
  end)
end)
