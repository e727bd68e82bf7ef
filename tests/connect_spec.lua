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

-- The server's resident memory in KB (VmRSS).
local function rss_kb(pid)
  local status = h.read_file(("/proc/%d/status"):format(pid)) or ""
  return tonumber(status:match("VmRSS:%s+(%d+)"))
end

-- n messages of 1 KB on load.<k>, sent in batches; returns once the server
-- has read them all (the PONG after them).
local function publish_load(c, n, srv)
  local payload = ('{"specversion":"1.0","id":"%s","source":"load","type":"load","data":{"pad":"'
    .. ("x"):rep(900) .. '"}}')
  local batch = {}
  for i = 1, n do
    local p = payload:format(i)
    batch[#batch + 1] = ("PUB load.%d %d\r\n%s\r\n"):format(i % 10, #p, p)
    if #batch == 200 or i == n then
      assert(c:send(table.concat(batch)))
      batch = {}
    end
  end
  local t0 = h.proc.now()
  assert(c:ping(30), ("the node did not take %d messages within 30 s (RSS %d KB)"):format(n, rss_kb(srv.pid)))
  return h.proc.now() - t0
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

describe("tide repl --connect sessions", function()
  local asan = os.getenv("TIDE_PASS") == "asan"
  it("leave nothing behind: the node's memory returns to where it was", function()
    local srv = h.start_scripted([[
admin { eval = true }
filter("load.>", function(e) return e.data.pad ~= nil end)
]])
    local dir = h.make_tmpdir()
    local ok, err = pcall(function()
      local c = h.connect(srv.port)
      publish_load(c, 20000, srv) -- the node's own buffers at their working size first
      h.proc.sleep(0.5)
      local base = rss_kb(srv.pid)
      local during = {}
      for i = 1, 3 do
        local s = open_session(srv.port, dir, "s" .. i)
        s.lines('sub("load.>")\ntrace()\n')
        s.wait_for("trace on")
        publish_load(c, 20000, srv)
        s.settle()
        local r1 = rss_kb(srv.pid)
        publish_load(c, 20000, srv)
        s.settle()
        local r2 = rss_kb(srv.pid)
        during[#during + 1] = ("%d->%d"):format(r1, r2)
        s.lines('expect("out' .. i .. '.jsonl")\n')
        s.wait_for("wrote %d+ deliveries", 60) -- after the trace of 40,000 events (slow under ASan)
        local st, code = s.leave()
        assert.are.equal("exited", st)
        assert.are.equal(0, code)
        publish_load(c, 20000, srv) -- between sessions
        -- (a) while attached, memory does not grow with the traffic.
        -- (Under ASan freed memory sits in quarantine; there the leak check at exit decides.)
        if not asan then
          assert.is_true(r2 - r1 < 4 * 1024, ("session %d grew from %d KB to %d KB with 20,000 more messages")
            :format(i, r1, r2))
        end
      end
      h.proc.sleep(0.5)
      local after = rss_kb(srv.pid)
      print(("\nRSS before the first session %d KB, during (after 20k, 40k messages) %s, after three sessions %d KB")
        :format(base, table.concat(during, ", "), after))
      -- (b) and once the sessions are over, it is back where it was
      if not asan then
        assert.is_true(after - base < 4 * 1024, ("RSS %d KB before the sessions, %d KB after"):format(base, after))
      end
      c:close()
    end)
    local st, code = srv:stop()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(dir)
    assert(ok, err)
    assert.are.equal("exited", st)
    assert.are.equal(0, code, "exit code (99: leaks reported by LeakSanitizer)")
  end)
end)

describe("the end of a tide repl --connect session", function()
  local srv, dir
  setup(function()
    srv = h.start_scripted([[
admin { eval = true }
on("order.>", function(e) print("handled " .. e.subject) end)
]])
    dir = h.make_tmpdir()
  end)
  teardown(function()
    local st, code = srv:stop()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(dir)
    assert.are.equal("exited", st)
    assert.are.equal(0, code, "exit code (99: leaks reported by LeakSanitizer)")
  end)

  -- Publishes subject (with $TIDE.TRACE watched on the same connection)
  -- and returns the $TIDE.TRACE lines that follow within a moment.
  local function trace_lines_after(subject)
    local c = h.connect(srv.port)
    c:sub("$TIDE.TRACE", "1")
    assert(c:ping())
    local ev = '{"specversion":"1.0","id":"E1","data":{}}'
    c:send(("PUB %s %d\r\n%s\r\n"):format(subject, #ev, ev))
    h.proc.sleep(0.3)
    local msgs = assert(c:until_pong())
    c:close()
    local lines = {}
    for _, m in ipairs(msgs) do lines[#lines + 1] = m.payload end
    return table.concat(lines, "\n")
  end

  it("takes down what it set up: trace, watchers, recordings, the helpers", function()
    local s = open_session(srv.port, dir, "setup")
    s.lines('trace()\nsub("order.>")\nkeep = sub\nrecord("order.>", "rec.jsonl")\n')
    s.wait_for("recording order")
    assert.matches("event order%.during", trace_lines_after("order.during"))
    assert.are.equal("exited", (s.leave()))

    -- Nothing traces or watches any more, nothing is recorded, and the
    -- rules' print goes to the log again.
    assert.are.equal("", trace_lines_after("order.after"))
    local rec = h.read_file(srv.dir .. "/data/repl/rec.jsonl")
    assert.matches("order%.during", rec)
    assert.is_nil(rec:match("order%.after"))
    assert(h.wait_until(function() return srv:log():match("handled order%.after") end, 5), srv:log())

    -- A helper kept in a global outlives its session only to say so.
    local s2 = open_session(srv.port, dir, "later")
    s2.lines('keep("x.>")\n')
    s2.wait_for("error: ")
    assert.matches("session this helper came from has ended", s2.output())
    assert.are.equal("exited", (s2.leave()))
  end)

  it("reaches no file beyond the rules' directory and <data>/repl", function()
    -- A file the server can write and one it can read, outside both.
    h.write_file(dir .. "/victim.txt", "keep me\n")
    h.write_file(dir .. "/secret.lua", "leaked = 'yes'\n")
    h.write_file(srv.dir .. "/mine.lua", "mine = 42\n")
    local s = open_session(srv.port, dir, "files")
    s.lines(('expect("%s/victim.txt")\n'):format(dir))
    s.wait_for("expect: a remote prompt writes only plain file names")
    s.lines(('record(">", "%s/victim.txt")\n'):format(dir))
    s.wait_for("record: a remote prompt writes only")
    s.lines('record(">", "../../victim.txt")\n')
    s.wait_for("not '%.%./%.%./victim%.txt'")
    s.lines(('load("%s/secret.lua")\n'):format(dir))
    s.wait_for("load: a remote prompt loads only files of the rules. directory")
    s.lines('load("data/../../secret.lua")\nprint(leaked)\n')
    s.wait_for("not 'data/%.%./%.%./secret%.lua'")
    -- What the docs allow works.
    s.lines('load("mine.lua")\nprint("mine is", mine)\nexpect("out.jsonl")\n')
    s.wait_for("mine is\t42")
    s.wait_for("wrote %d+ deliveries to .-/data/repl/out%.jsonl")
    assert.are.equal("exited", (s.leave()))
    assert.are.equal("keep me\n", h.read_file(dir .. "/victim.txt"))
    assert.is_nil(s.output():match("yes"), s.output())
    assert.is_not_nil(h.read_file(srv.dir .. "/data/repl/out.jsonl"))
  end)

  it("ends when its connection goes without saying goodbye", function()
    local s = open_session(srv.port, dir, "killed")
    s.lines('trace()\n')
    s.wait_for("trace on")
    s.kill()
    assert(h.wait_until(function() return trace_lines_after("order.gone") == "" end, 5),
      "the node still traces after its session's connection went")
  end)

  it("lasts while any connection that joined it is there", function()
    local a, b = open_session(srv.port, dir, "a"), open_session(srv.port, dir, "b")
    a.lines('trace()\n')
    a.wait_for("trace on")
    b.lines('1 + 1\n')
    b.wait_for("\n2\n")
    assert.are.equal("exited", (a.leave()))
    assert.matches("event order%.shared", trace_lines_after("order.shared"))
    assert.are.equal("exited", (b.leave()))
    assert.are.equal("", trace_lines_after("order.alone"))
  end)
end)

describe("tide repl --connect to a tide repl", function()
  it("is refused: that node's prompt is its terminal", function()
    local dir = h.make_tmpdir()
    local port = h.free_port()
    h.write_file(dir .. "/flow.lua", "admin { eval = true }\n")
    local pid = h.proc.spawn({ "/bin/sh", "-c", ("sleep 3 | %s repl -c %s/flow.lua --listen 127.0.0.1:%d")
      :format(h.bin, dir, port) }, dir .. "/prompt.txt")
    local up = h.wait_until(function() return pcall(h.connect, port) end, 5)
    local rc, out = remote(port, "1 + 1\n")
    h.proc.wait(pid, 10)
    h.remove_tmpdir(dir)
    assert(up, "the prompt's router did not listen")
    assert.are.equal(0, rc, out)
    assert.matches("error: this node is a tide repl: its prompt is its terminal", out)
  end)
end)

describe("a node that stops", function()
  it("takes its tide repl --connect session down with it", function()
    local srv = h.start_scripted("admin { eval = true }\n")
    local dir = h.make_tmpdir()
    local s = open_session(srv.port, dir, "open")
    s.lines('trace()\nsub(">")\nrecord(">", "rec.jsonl")\n')
    s.wait_for("recording >")
    local st, code = srv:stop()
    local sst = s.leave()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(dir)
    assert.are.equal("exited", st)
    assert.are.equal(0, code, "exit code (99: leaks reported by LeakSanitizer)")
    assert.are.equal("exited", sst)
  end)
end)
