-- tide repl --connect: a prompt whose lines run on a serving node.
local h = require "helpers"
local sh = h.sh

local function remote(port, lines)
  local dir = h.make_tmpdir()
  h.write_file(dir .. "/in.txt", lines)
  local rc, out = sh(("%s repl --connect 127.0.0.1:%d < %s"):format(h.bin, port, dir .. "/in.txt"))
  h.remove_tmpdir(dir)
  return rc, out
end

describe("tide repl --connect", function()
  local srv
  setup(function()
    srv = h.start_scripted([[
admin { eval = true }
filter("order.>", function(e) return e.data == nil or e.data.amount ~= 0 end)
]])
  end)
  teardown(function()
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
  end)

  it("runs lines on the node: expressions, statements over lines, rules, errors", function()
    local rc, out = remote(srv.port, table.concat({
      "1 + 1",
      "function sq(x)",
      "  return x * x",
      "end",
      "sq(9)",
      "rules()",
      "error('boom')",
      "tide.kv.set('remote', 5)",
      "tide.kv.get('remote') + 1",
    }, "\n") .. "\n")
    assert.are.equal(0, rc, out)
    assert.matches("connected to 127.0.0.1:" .. srv.port, out)
    assert.matches("\n2\n", out)
    assert.matches("\n81\n", out)
    assert.matches("filter%s+order%.>%s+tide%.lua:%d+%s+calls", out)
    assert.matches("error: prompt:1: boom", out)
    assert.matches("\n6\n", out)
  end)

  it("publishes from the prompt to real subscribers, with the trace in the reply", function()
    local c = h.connect(srv.port)
    c:send("SUB order.> 1\r\n")
    assert(c:ping())
    local rc, out = remote(srv.port, "trace()\npub('order.created', { amount = 3 })\ntrace(false)\n")
    assert.are.equal(0, rc, out)
    assert.matches("event order.created  %(type order.created v1", out)
    assert.matches("filter%s+order%.>%s+tide%.lua:%d+%s+kept", out)
    assert.matches("deliver  order.created   1 subscriber", out)
    local m = assert(c:msg())
    assert.are.equal("order.created", m.subject)
    assert.matches('"amount":3', m.payload)
    c:close()
  end)

  it("shows the trace of events other clients publish, as they happen", function()
    local dir = h.make_tmpdir()
    local pid = h.proc.spawn({ "/bin/sh", "-c",
      ("(printf 'trace()\\n'; sleep 1.5; printf 'trace(false)\\n') | %s repl --connect 127.0.0.1:%d")
        :format(h.bin, srv.port) }, dir .. "/out.txt")
    h.proc.sleep(0.6)
    local c = h.connect(srv.port)
    local ev = '{"specversion":"1.0","id":"L1","data":{"amount":0}}'
    c:send(("PUB order.live %d\r\n%s\r\n"):format(#ev, ev))
    assert(c:ping())
    c:close()
    local st, code = h.proc.wait(pid, 10)
    local out = h.read_file(dir .. "/out.txt") or ""
    h.remove_tmpdir(dir)
    assert.are.equal("exited", st)
    assert.are.equal(0, code)
    assert.matches("event order.live  %(type order.live v1, id L1%)", out)
    assert.matches("filter%s+order%.>%s+tide%.lua:%d+%s+DROPPED", out)
  end)
end)

describe("tide repl --connect to a node that does not allow it", function()
  it("is refused, and says how to allow it", function()
    local srv = h.start_scripted('filter("x", function(e) return true end)\n')
    local rc, out = remote(srv.port, "1 + 1\n")
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
    assert.are.equal(0, rc, out)
    assert.matches("error: remote evaluation is off: set admin { eval = true }", out)
    assert.is_nil(out:match("\n2\n"))
  end)

  it("fails clearly when no server is there", function()
    local rc, out = sh(("%s repl --connect 127.0.0.1:%d < /dev/null"):format(h.bin, h.free_port()))
    assert.are.equal(1, rc)
    assert.matches("cannot connect", out)
  end)
end)
