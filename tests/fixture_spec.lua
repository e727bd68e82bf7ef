-- A data directory written by tide 0.1.0 (tests/fixtures/data-0.1.0, made
-- by the flow beside it: 80 events in 4 segments of "orders", 4 dead
-- letters in "dead", the consumer "billing" with its state and ack log,
-- and a kv log) opens unchanged with today's build: every stored record,
-- every dead letter, every kv value and the consumer's position read back
-- as that release wrote them.
local h = require "helpers"
local json = require "dkjson"

local FIX = h.root .. "/tests/fixtures/data-0.1.0"

describe("a data directory written by tide 0.1.0", function()
  local srv, dir

  -- Runs build/tide with args against srv; returns rc, stdout.
  local function tide(args)
    local out = dir .. "/out"
    local rc = h.sh(("{ timeout 20 %s %s -s 127.0.0.1:%d > '%s' 2>/dev/null; }"):format(h.bin, args, srv.port, out))
    return rc, h.read_file(out) or ""
  end

  setup(function()
    dir = h.make_tmpdir("tide-fixture")
    assert(os.execute(("cp -r '%s/data' '%s/data' && cp '%s/tide.lua' '%s/tide.lua'"):format(FIX, dir, FIX, dir)))
    srv = h.start_server({ args = { "-c", dir .. "/tide.lua", "--data", dir .. "/data", "--no-http" } })
  end)

  teardown(function()
    if srv then srv:stop() end
    h.remove_tmpdir(dir)
  end)

  it("reads back every stored record of both streams, in order", function()
    for _, name in ipairs({ "orders", "dead" }) do
      local rc, out = tide("stream export " .. name)
      assert.are.equal(0, rc)
      assert.are.equal(h.read_file(FIX .. "/" .. name .. ".jsonl"), out)
    end
    local _, out = tide("stream info orders --json")
    local info = assert(json.decode(out), out)
    assert.are.same({ 80, 12758, 1, 80 }, { info.messages, info.bytes, info.first_seq, info.last_seq })
    assert.are.same({}, info.damaged or {})
  end)

  it("shows the dead letters with their reason and error", function()
    local _, out = tide("dlq show dead --json")
    local n = 0
    for line in out:gmatch("[^\n]+") do
      local d = assert(json.decode(line), line)
      n = n + 1
      assert.are.equal("max_deliver", d.reason)
      assert.matches("cannot bill order %d+0", d.error)
    end
    assert.are.equal(4, n)
  end)

  it("keeps the consumer where it was, with nothing to redeliver", function()
    local _, out = tide("consumer info billing --json")
    local c = assert(json.decode(out), out)
    assert.are.equal(81, c.next_seq)
    assert.are.equal(0, c.num_pending)
    assert.are.equal(0, c.num_ack_pending)
  end)

  it("loads every kv value", function()
    -- The dump goes through a handler: publish requests until the
    -- subscriber (started in the background) has the answer.
    local out = dir .. "/kv"
    assert.are.equal(0, h.sh(("(timeout 20 %s sub kv.dumped --count 1 -s 127.0.0.1:%d > '%s' 2>&1 &)"):format(
      h.bin, srv.port, out)))
    local text
    for _ = 1, 20 do
      h.sh(("%s pub kv.dump '{}' -s 127.0.0.1:%d"):format(h.bin, srv.port))
      text = h.wait_until(function()
        local t = h.read_file(out)
        return t and t:match("\n({.-})\n")
      end, 0.5)
      if text then break end
    end
    assert(text, "no kv dump arrived")
    local ev = assert(json.decode(text))
    assert.are.same(json.decode(h.read_file(FIX .. "/kv.json")), ev.data)
  end)
end)
