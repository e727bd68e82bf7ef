-- A push consumer's flow control: tests/interop/node/jsfc.mjs (nats.js
-- v2) reads a flow-controlled push consumer with a plain subscription that
-- does not answer (the 100 FlowControl Request, the stall, the heartbeats
-- that name the outstanding request), answers once (delivery goes on, the
-- window doubled), then reads everything with js.subscribe and
-- flowControl(); against nats-server -js and tide, which must agree.
local h = require "helpers"
local json = require "dkjson"

local NODE_DIR = h.root .. "/tests/interop/node"
local PROGRAM_TIMEOUT = 70

local function run_steps(port, label, log)
  local rc, out = h.sh(("cd '%s' && timeout -k 5 %d node jsfc.mjs %d"):format(NODE_DIR, PROGRAM_TIMEOUT, port))
  local line = out:match("(%b{})%s*$")
  local res = line and json.decode(line)
  assert(rc == 0 and res, ("%s: jsfc.mjs ended with %s:\n%s\n--- server log ---\n%s"):format(label, tostring(rc), out,
    log()))
  return res
end

describe("push consumers' flow control with nats.js v2, against nats-server -js", function()
  local ref, got, srv, data

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    local sd = h.make_tmpdir("jsfc-ns")
    local port = h.free_port()
    local ns = h.start_server { bin = h.nats_server_bin(), port = port,
      cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", sd } }
    ref = run_steps(port, "nats-server", function() return ns:log() end)
    ns:stop("INT")
    h.remove_tmpdir(sd)
    data = h.make_tmpdir("jsfc-data")
    srv = h.start_scripted("-- nothing declared\n", { args = { "--data", data } })
    got = run_steps(srv.port, "tide", function() return srv:log() end)
  end)

  teardown(function()
    if srv then
      srv:kill()
      h.remove_tmpdir(srv.dir)
    end
    if data then h.remove_tmpdir(data) end
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
