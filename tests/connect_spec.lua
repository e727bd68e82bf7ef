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

-- A session whose input comes from a FIFO, so the test decides when it
-- types and when it leaves.  lines(text) types; wait_for(pattern) waits
-- for the session's output; leave() closes its input (Ctrl-D) and waits
-- for it to exit; kill() ends it with SIGKILL.  Open every session of a
-- test before typing into any (see lines).
local function open_session(port, dir, name)
  local fifo, out = dir .. "/" .. name .. ".in", dir .. "/" .. name .. ".out"
  assert(os.execute(("mkfifo '%s'"):format(fifo)))
  local pid = h.proc.spawn({ "/bin/sh", "-c",
    ("exec %s repl --connect 127.0.0.1:%d < '%s'"):format(h.bin, port, fifo) }, out)
  -- The writing end is opened at the first line typed (it opens once the
  -- session reads): a session spawned before then does not inherit it.
  local input
  local s = {}
  function s.lines(text)
    input = input or assert(io.open(fifo, "w"))
    assert(input:write(text))
    assert(input:flush())
  end
  function s.output() return h.read_file(out) or "" end
  -- Waits until the session has printed everything the node sent it (its
  -- output stops growing).
  function s.settle()
    local last, since = -1, h.proc.now()
    h.wait_until(function()
      local f = io.open(out, "rb")
      local size = f and f:seek("end") or 0
      if f then f:close() end
      if size ~= last then last, since = size, h.proc.now() end
      return h.proc.now() - since > 0.4
    end, 30, 0.05)
  end
  function s.wait_for(pattern, timeout)
    return assert(h.wait_until(function() return s.output():match(pattern) end, timeout or 10),
      "no '" .. pattern .. "' in the session's output:\n" .. s.output():sub(1, 2000))
  end
  function s.kill()
    h.proc.kill(pid, "KILL")
    h.proc.wait(pid, 10)
    if input then input:close() end
  end
  function s.leave()
    if input then input:close() end
    local st, code = h.proc.wait(pid, 20)
    if not st then h.proc.kill(pid, "KILL"); h.proc.wait(pid, 5) end
    return st, code
  end
  return s
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

describe("tide repl --connect with input from a pipe", function()
  local srv, dir
  setup(function()
    srv = h.start_scripted("admin { eval = true }\n")
    dir = h.make_tmpdir()
  end)
  teardown(function()
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(dir)
  end)

  it("answers lines that arrive together, and shows the node's output while waiting for more", function()
    local s = open_session(srv.port, dir, "pipe")
    s.lines("x = 41\nx + 1\ntrace()\n") -- one write: the later lines must not wait in a buffer
    s.wait_for("trace on")
    assert.matches("\n42\n", s.output())
    local c = h.connect(srv.port)
    local ev = '{"specversion":"1.0","id":"P1","data":{}}'
    c:send(("PUB idle.event %d\r\n%s\r\n"):format(#ev, ev))
    assert(c:ping())
    c:close()
    -- no line typed since: the session reads the node while it waits for input
    s.wait_for("event idle%.event  %(no rule matches%)")
    s.lines("trace(false)\n")
    assert.are.equal("exited", (s.leave()))
  end)

  it("takes an answer larger than its read buffer", function()
    local s = open_session(srv.port, dir, "big")
    s.lines("string.rep('ab', 60000)\n#string.rep('ab', 60000)\n")
    s.wait_for("\n120000\n")
    local st, code = s.leave()
    assert.are.equal("exited", st)
    assert.are.equal(0, code)
    assert.matches(("ab"):rep(60000), s.output(), 1, true)
    assert.is_nil(s.output():match("closed the connection"))
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
