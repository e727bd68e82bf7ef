-- NATS client protocol conformance over raw sockets, against a real
-- `tide serve` on loopback.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local srv

-- After every bad client: a fresh client on the same server still works.
local function assert_server_healthy()
  local sub = h.connect(srv.port)
  local pub = h.connect(srv.port)
  sub:send("SUB health.check 1\r\n")
  assert(sub:ping())
  pub:send("PUB health.check 2\r\nok\r\n")
  local m = assert(sub:msg())
  assert.are.equal("ok", m.payload)
  sub:close()
  pub:close()
end

local function expect_err_and_close(c, pattern)
  local l = c:line()
  assert.is_not_nil(l, "expected -ERR, connection gave nothing")
  assert.matches(pattern, l)
  assert.is_true(c:closed(2), "server should close the connection after: " .. l)
end

setup(function()
  srv = h.start_server { args = { "--max-payload", "65536" } }
end)

teardown(function()
  local st, code = srv:stop()
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("connection", function()
  it("sends INFO with the fields clients need", function()
    local c = h.connect(srv.port)
    local info = json.decode(c.info)
    assert.is_string(info.server_id)
    assert.are.equal(22, #info.server_id)
    assert.are.equal(1, info.proto)
    assert.is_true(info.headers)
    assert.are.equal(65536, info.max_payload)
    assert.are.equal(srv.port, info.port)
    assert.is_string(info.version)
    assert.is_number(info.client_id)
    assert.are.equal("127.0.0.1", info.client_ip)
    c:close()
  end)

  it("answers PING with PONG, also before CONNECT and in lower case", function()
    local c = h.connect(srv.port)
    assert.same({}, c:ping())
    c:send("ping\r\n")
    assert.are.equal("PONG", c:line())
    c:close()
  end)

  it("accepts CONNECT with auth fields and optional settings", function()
    local c = h.connect(srv.port)
    c:send('CONNECT {"verbose":false,"pedantic":true,"user":"u","pass":"p","auth_token":"t",' ..
           '"name":"spec","lang":"lua","version":"1","protocol":1,"echo":true,"headers":true}\r\n')
    assert.same({}, c:ping())
    c:close()
  end)

  it("acknowledges every command with +OK in verbose mode", function()
    local c = h.connect(srv.port)
    c:send('CONNECT {"verbose":true}\r\n')
    assert.are.equal("+OK", c:line())
    c:send("SUB v.x 1\r\n")
    assert.are.equal("+OK", c:line())
    c:send("PUB v.y 1\r\na\r\n")
    assert.are.equal("+OK", c:line())
    c:send("HPUB v.y 12 13\r\nNATS/1.0\r\n\r\na\r\n")
    assert.are.equal("+OK", c:line())
    c:send("UNSUB 1\r\n")
    assert.are.equal("+OK", c:line())
    c:send("UNSUB 999\r\n") -- unknown sid: ignored, still acknowledged
    assert.are.equal("+OK", c:line())
    c:send("PING\r\n")
    assert.are.equal("PONG", c:line()) -- no +OK for PING
    c:close()
  end)
end)

describe("messaging", function()
  it("delivers PUB to subscribers with sid and reply subject", function()
    local sub = h.connect(srv.port)
    local pub = h.connect(srv.port)
    sub:send("SUB m.one 7\r\nSUB m.one 8\r\n")
    assert(sub:ping())
    pub:send("PUB m.one inbox.42 5\r\nhello\r\n")
    local got = {}
    for _ = 1, 2 do
      local m = assert(sub:msg())
      assert.are.equal("m.one", m.subject)
      assert.are.equal("inbox.42", m.reply)
      assert.are.equal("hello", m.payload)
      got[m.sid] = true
    end
    assert.same({ ["7"] = true, ["8"] = true }, got)
    sub:close()
    pub:close()
  end)

  it("matches '*' and '>' wildcards", function()
    local sub = h.connect(srv.port)
    local pub = h.connect(srv.port)
    sub:send("SUB w.* star\r\nSUB w.> gt\r\n")
    assert(sub:ping())
    pub:send("PUB w.a 1\r\n1\r\nPUB w.a.b 1\r\n2\r\nPUB w 1\r\n3\r\nPUB x.a 1\r\n4\r\n")
    assert(pub:ping())
    local seen = {}
    for _ = 1, 3 do
      local m = assert(sub:msg())
      seen[#seen + 1] = m.sid .. ":" .. m.subject
    end
    table.sort(seen)
    assert.same({ "gt:w.a", "gt:w.a.b", "star:w.a" }, seen)
    assert.same({}, sub:ping()) -- nothing else arrived
    sub:close()
    pub:close()
  end)

  it("sends each message to one member of a queue group and all plain subscribers", function()
    local members = {}
    for i = 1, 3 do
      members[i] = h.connect(srv.port)
      members[i]:send("SUB q.work workers " .. i .. "\r\n")
      assert(members[i]:ping())
    end
    local plain = h.connect(srv.port)
    plain:send("SUB q.work p\r\n")
    assert(plain:ping())
    local pub = h.connect(srv.port)
    local n = 60
    local out = {}
    for i = 1, n do out[#out + 1] = ("PUB q.work %d\r\n%d\r\n"):format(#tostring(i), i) end
    pub:send(table.concat(out))
    assert(pub:ping())
    local seen, total = {}, 0
    for i = 1, 3 do
      local lines = assert(members[i]:ping(1)) -- ping flushes: everything before PONG is ours
      local count = 0
      -- ping() returns raw lines; payload lines alternate with MSG lines.
      for j = 1, #lines, 2 do
        assert.matches("^MSG q.work " .. i .. " ", lines[j])
        local v = lines[j + 1]
        assert.is_nil(seen[v], "message " .. v .. " delivered twice")
        seen[v] = true
        count = count + 1
      end
      assert.is_true(count > 0, "member " .. i .. " got nothing")
      total = total + count
    end
    assert.are.equal(n, total)
    local plain_lines = assert(plain:ping())
    assert.are.equal(2 * n, #plain_lines)
    for _, c in ipairs(members) do c:close() end
    plain:close()
    pub:close()
  end)

  it("does not echo to the publisher when echo is false", function()
    local c = h.connect(srv.port)
    local other = h.connect(srv.port)
    c:send('CONNECT {"echo":false}\r\nSUB e.x 1\r\n')
    other:send("SUB e.x 1\r\n")
    assert(c:ping())
    assert(other:ping())
    c:send("PUB e.x 2\r\nhi\r\n")
    assert.same({}, c:ping())
    assert.are.equal("hi", assert(other:msg()).payload)
    c:close()
    other:close()
  end)

  it("delivers HPUB as HMSG to header-aware clients and as MSG to others", function()
    local hc = h.connect(srv.port)
    local plain = h.connect(srv.port)
    local pub = h.connect(srv.port)
    hc:send('CONNECT {"headers":true}\r\nSUB hd.x 1\r\n')
    plain:send("SUB hd.x 2\r\n")
    assert(hc:ping())
    assert(plain:ping())
    local hdr = "NATS/1.0\r\nX-Id: 12\r\nX-Id: 13\r\n\r\n"
    pub:send(("HPUB hd.x r.1 %d %d\r\n%sbody\r\n"):format(#hdr, #hdr + 4, hdr))
    local m = assert(hc:msg())
    assert.are.equal("HMSG", m.op)
    assert.are.equal(hdr, m.headers)
    assert.are.equal("body", m.payload)
    assert.are.equal("r.1", m.reply)
    local p = assert(plain:msg())
    assert.are.equal("MSG", p.op)
    assert.are.equal("body", p.payload)
    hc:close()
    plain:close()
    pub:close()
  end)

  it("unsubscribes after max messages and on plain UNSUB", function()
    local sub = h.connect(srv.port)
    local pub = h.connect(srv.port)
    sub:send("SUB u.x 1\r\nUNSUB 1 3\r\nSUB u.y 2\r\n")
    assert(sub:ping())
    for i = 1, 5 do pub:send("PUB u.x 1\r\n" .. i .. "\r\n") end
    assert(pub:ping())
    for i = 1, 3 do assert.are.equal(tostring(i), assert(sub:msg()).payload) end
    assert.same({}, sub:ping())
    sub:send("UNSUB 2\r\n")
    assert(sub:ping())
    pub:send("PUB u.y 1\r\nz\r\n")
    assert(pub:ping())
    assert.same({}, sub:ping())
    sub:close()
    pub:close()
  end)

  it("UNSUB with a max already reached removes at once", function()
    local sub = h.connect(srv.port)
    sub:send("SUB ur.x 1\r\nPUB ur.x 1\r\na\r\nPUB ur.x 1\r\nb\r\n")
    assert.are.equal("a", assert(sub:msg()).payload)
    assert.are.equal("b", assert(sub:msg()).payload)
    sub:send("UNSUB 1 2\r\nPUB ur.x 1\r\nc\r\n")
    assert.same({}, sub:ping())
    sub:close()
  end)

  it("serves request/reply", function()
    local responder = h.connect(srv.port)
    local requester = h.connect(srv.port)
    responder:send("SUB svc.echo workers 1\r\n")
    assert(responder:ping())
    requester:send("SUB _INBOX.abc.* 9\r\n")
    assert(requester:ping())
    for i = 1, 5 do
      requester:send(("PUB svc.echo _INBOX.abc.%d 4\r\nq-%02d\r\n"):format(i, i))
      local req = assert(responder:msg())
      assert.are.equal("_INBOX.abc." .. i, req.reply)
      responder:send(("PUB %s %d\r\nr:%s\r\n"):format(req.reply, #req.payload + 2, req.payload))
      local rep = assert(requester:msg())
      assert.are.equal(("r:q-%02d"):format(i), rep.payload)
      assert.are.equal("9", rep.sid)
    end
    responder:close()
    requester:close()
  end)

  it("answers a request nobody serves with a 503 status when asked to", function()
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true,"no_responders":true}\r\nSUB _INBOX.nr.* 1\r\n')
    c:send("PUB nobody.home _INBOX.nr.1 2\r\nhi\r\n")
    local m = assert(c:msg())
    assert.are.equal("HMSG", m.op)
    assert.are.equal("_INBOX.nr.1", m.subject)
    assert.matches("^NATS/1.0 503", m.headers)
    assert.are.equal("", m.payload)
    c:close()
  end)

  it("keeps order and loses nothing when many commands arrive pipelined", function()
    local sub = h.connect(srv.port)
    local pub = h.connect(srv.port)
    sub:send("SUB pipe.x 1\r\n")
    assert(sub:ping())
    local n, out = 2000, {}
    for i = 1, n do out[i] = ("PUB pipe.x %d\r\n%d\r\n"):format(#tostring(i), i) end
    pub:send(table.concat(out) .. "PING\r\n")
    assert.are.equal("PONG", pub:line())
    for i = 1, n do
      assert.are.equal(tostring(i), assert(sub:msg()).payload)
    end
    sub:close()
    pub:close()
  end)

  it("parses a stream split at every byte boundary", function()
    local sub = h.connect(srv.port)
    sub:send("SUB frag.> 1\r\n")
    assert(sub:ping())
    local hdr = "NATS/1.0\r\nK: v\r\n\r\n"
    local stream = table.concat {
      'CONNECT {"verbose":false,"headers":true}\r\n',
      "PUB frag.a r.1 5\r\nhello\r\n",
      "SUB frag.mine 2\r\n",
      ("HPUB frag.b %d %d\r\n%sxy\r\n"):format(#hdr, #hdr + 2, hdr),
      "PUB frag.c 0\r\n\r\n",
      "UNSUB 2\r\n",
      "PING\r\n",
    }
    for cut = 1, #stream - 1 do
      local pub = h.connect(srv.port)
      pub:send(stream:sub(1, cut))
      socket.sleep(0.001)
      pub:send(stream:sub(cut + 1))
      assert.are.equal("PONG", pub:line(), "cut at " .. cut)
      local a = assert(sub:msg())
      local b = assert(sub:msg())
      local c = assert(sub:msg())
      assert.are.equal("frag.a|r.1|hello", a.subject .. "|" .. a.reply .. "|" .. a.payload, "cut " .. cut)
      assert.are.equal("frag.b|xy", b.subject .. "|" .. b.payload, "cut " .. cut)
      assert.are.equal("frag.c|", c.subject .. "|" .. c.payload, "cut " .. cut)
      pub:close()
    end
    assert.same({}, sub:ping())
    sub:close()
  end)
end)

describe("bad input", function()
  it("answers an unknown operation with -ERR and closes", function()
    local c = h.connect(srv.port)
    c:send("FOO bar\r\n")
    expect_err_and_close(c, "^%-ERR 'Unknown Protocol Operation'$")
    assert_server_healthy()
  end)

  it("closes on garbage bytes", function()
    local c = h.connect(srv.port)
    c:send("\0\255\1binary\r\n\r\n")
    expect_err_and_close(c, "^%-ERR 'Unknown Protocol Operation'$")
    assert_server_healthy()
  end)

  it("closes on a control line over 4096 bytes, and accepts one at the limit", function()
    local ok = h.connect(srv.port)
    local args = "SUB " .. string.rep("a", 4096 - 2) .. " 1"   -- arguments exactly 4096 bytes
    ok:send(args .. "\r\n")
    assert.same({}, ok:ping())
    ok:close()
    local c = h.connect(srv.port)
    c:send("SUB " .. string.rep("a", 5000) .. " 1\r\n")
    expect_err_and_close(c, "^%-ERR 'Maximum Control Line Exceeded'$")
    -- Also when the line never ends.
    local d = h.connect(srv.port)
    d:send("PUB " .. string.rep("b", 8000))
    expect_err_and_close(d, "^%-ERR 'Maximum Control Line Exceeded'$")
    assert_server_healthy()
  end)

  it("closes on a payload over max_payload, and accepts one at the limit", function()
    local sub = h.connect(srv.port)
    sub:send("SUB big.x 1\r\n")
    assert(sub:ping())
    local pub = h.connect(srv.port)
    local payload = string.rep("p", 65536)
    pub:send("PUB big.x 65536\r\n" .. payload .. "\r\n")
    assert.is_true(assert(sub:msg()).payload == payload)
    pub:send("PUB big.x 65537\r\n")
    expect_err_and_close(pub, "^%-ERR 'Maximum Payload Violation'$")
    local hp = h.connect(srv.port)
    hp:send("HPUB big.x 12 70000\r\n")
    expect_err_and_close(hp, "^%-ERR 'Maximum Payload Violation'$")
    sub:close()
    assert_server_healthy()
  end)

  it("refuses invalid publish subjects but keeps the connection", function()
    local c = h.connect(srv.port)
    for _, s in ipairs { "foo.*", "foo.>", "foo..bar", ".foo", "foo." } do
      c:send(("PUB %s 1\r\nx\r\n"):format(s))
      assert.are.equal("-ERR 'Invalid Publish Subject'", c:line())
    end
    c:send("PUB ok.subject bad..reply 1\r\nx\r\n")
    assert.are.equal("-ERR 'Invalid Publish Subject'", c:line())
    assert.same({}, c:ping())
    c:close()
  end)

  it("refuses invalid subscription subjects but keeps the connection", function()
    local c = h.connect(srv.port)
    for _, s in ipairs { "foo..bar", "foo.>.bar", ">.x", "." } do
      c:send(("SUB %s 1\r\n"):format(s))
      assert.are.equal("-ERR 'Invalid Subject'", c:line())
    end
    assert.same({}, c:ping())
    c:close()
    assert_server_healthy()
  end)

  it("closes on malformed arguments with a message naming the syntax", function()
    for _, bad in ipairs { "PUB foo\r\n", "PUB foo x\r\n", "SUB onlyone\r\n", "UNSUB 1 two\r\n",
                           "HPUB foo 10 5\r\n", "PUB\r\n" } do
      local c = h.connect(srv.port)
      c:send(bad)
      expect_err_and_close(c, "^%-ERR 'Parser Error: %u+ takes")
    end
    assert_server_healthy()
  end)

  it("closes when a payload is not followed by CRLF", function()
    local c = h.connect(srv.port)
    c:send("PUB foo 2\r\nhello\r\n")
    expect_err_and_close(c, "^%-ERR 'Parser Error: payload must end with CRLF'$")
    assert_server_healthy()
  end)

  it("closes on invalid CONNECT JSON", function()
    local c = h.connect(srv.port)
    c:send("CONNECT {not json\r\n")
    expect_err_and_close(c, "^%-ERR 'Invalid CONNECT JSON'$")
    assert_server_healthy()
  end)

  it("keeps a sid with a NUL byte whole (found by the fuzzer)", function()
    local c = h.connect(srv.port)
    c:send("SUB nul.sid a\0b\r\nPUB nul.sid 1\r\nx\r\n")
    local m = assert(c:msg())
    assert.are.equal("a\0b", m.sid)
    assert.are.equal("x", m.payload)
    c:close()
    assert_server_healthy()
  end)

  it("survives a client that disconnects mid-message", function()
    local c = h.connect(srv.port)
    c:send("PUB cut.off 100\r\nonly part")
    c:close()
    assert_server_healthy()
  end)
end)

describe("slow consumers", function()
  local s2
  setup(function()
    -- The slow one reads what it was sent only after the good one got
    -- everything, which takes more than the default 2 s write deadline of
    -- a closing connection on a loaded machine (under ASan): allow 60 s, so
    -- the test sees the -ERR that ends its output.
    s2 = h.start_server { args = { "--max-pending", "262144", "--write-deadline", "60" } }
  end)
  teardown(function()
    assert.are.equal("exited", (s2:stop()))
  end)

  it("disconnects a subscriber that never reads while others get everything", function()
    local slow = h.connect(s2.port)
    slow:send("SUB sc.x 1\r\n")
    assert(slow:ping())
    local good = h.connect(s2.port)
    good:send("SUB sc.x 1\r\n")
    assert(good:ping())
    local pub = h.connect(s2.port)
    local payload = string.rep("s", 1000)
    local frame = "PUB sc.x 1000\r\n" .. payload .. "\r\n"
    local batch = string.rep(frame, 100)
    local n, received = 30000, 0
    local buf = ""
    good.sock:settimeout(0)
    local function drain()
      while true do
        local data, err, part = good.sock:receive(65536)
        data = data or part
        if data and #data > 0 then buf = buf .. data end
        if not data or #data == 0 or err then break end
      end
      -- count whole frames: each is a MSG line, 1000 bytes, CRLF
      local pos = 1
      while true do
        local e = buf:find("\r\n", pos, true)
        if not e then break end
        local line = buf:sub(pos, e - 1)
        local size = tonumber(line:match("^MSG %S+ %S+ (%d+)$"))
        assert(size, "unexpected line " .. line)
        if #buf < e + 1 + size + 2 then break end
        received = received + 1
        pos = e + 2 + size + 2
      end
      buf = buf:sub(pos)
    end
    for b = 1, n / 100 do
      assert(pub:send(batch))
      -- A reader that keeps up: wait until it is at most one batch behind.
      local deadline = h.proc.now() + 10
      repeat
        drain()
        if received >= (b - 1) * 100 then break end
        socket.sleep(0.001)
      until h.proc.now() > deadline
    end
    assert(pub:ping(10))
    local deadline = h.proc.now() + 10
    while received < n and h.proc.now() < deadline do
      drain()
      socket.sleep(0.005)
    end
    assert.are.equal(n, received)
    -- The slow one was cut off with the error at the end of what it was sent.
    slow.sock:settimeout(5)
    local rest, tail = {}, ""
    while true do
      local data, err, part = slow.sock:receive(65536)
      data = data or part
      if data and #data > 0 then
        rest[#rest + 1] = data
        tail = (tail .. data):sub(-200)
      end
      if err == "closed" then break end
      assert.are_not.equal("timeout", err, "slow consumer was not disconnected")
    end
    assert.matches("%-ERR 'Slow Consumer'\r\n$", tail)
    assert.matches("slow consumer", s2:log())
    good:close()
    pub:close()
  end)
end)

describe("a burst past max_pending to a subscriber that reads", function()
  -- One read holds 60 KB of messages for a subscriber allowed 16 KB
  -- pending: the server writes to its socket before calling it slow, and
  -- the socket takes them.
  it("is delivered whole, not cut off as a slow consumer", function()
    local s = h.start_server { args = { "--max-pending", "16384" } }
    finally(function() s:stop() end) -- (a no-op once the test has stopped it)
    local sub = h.connect(s.port)
    sub:send("SUB b.x 1\r\n")
    assert(sub:ping())
    local pub = h.connect(s.port)
    local frame = "PUB b.x 1000\r\n" .. string.rep("b", 1000) .. "\r\n"
    assert(pub:send(string.rep(frame, 60)))
    assert(pub:ping(5))
    assert.are.equal(60, #sub:collect(60, 5))
    assert.is_nil(s:log():match("slow consumer"))
    sub:close()
    pub:close()
    assert.are.equal("exited", (s:stop()))
  end)
end)

describe("keepalive", function()
  local s3
  setup(function()
    s3 = h.start_server { args = { "--ping-interval", "0.2", "--max-pings-out", "2" } }
  end)
  teardown(function()
    assert.are.equal("exited", (s3:stop()))
  end)

  it("drops a client that does not answer PINGs as stale", function()
    local c = h.connect(s3.port)
    local t0 = h.proc.now()
    assert.are.equal("PING", c:line(3))
    assert.are.equal("PING", c:line(3))
    assert.are.equal("-ERR 'Stale Connection'", c:line(3))
    assert.is_true(c:closed(2))
    assert.is_true(h.proc.now() - t0 < 3)
  end)

  it("keeps a client that answers PINGs", function()
    local c = h.connect(s3.port)
    local deadline = h.proc.now() + 1.2
    local pings = 0
    while h.proc.now() < deadline do
      local l = c:line(0.5)
      if l == "PING" then
        pings = pings + 1
        c:send("PONG\r\n")
      end
    end
    assert.is_true(pings >= 3, "expected PINGs, got " .. pings)
    assert.same({}, c:ping())
    c:close()
  end)
end)

describe("write coalescing", function()
  it("sends a burst of messages to one subscriber in few write calls", function()
    local has_strace = os.execute("command -v strace >/dev/null 2>&1")
    assert.is_truthy(has_strace, "strace is needed (make deps installs it)")
    local trace = h.tmpdir .. "/tide-writes-" .. h.free_port() .. ".strace"
    local port = h.free_port()
    local pidfile = trace .. ".pid"
    -- (LeakSanitizer cannot run under ptrace: the sanitizer pass checks
    -- leaks everywhere else, so not in this one process)
    local s = h.start_server { bin = "/usr/bin/env", port = port,
      cmd = { "ASAN_OPTIONS=detect_leaks=0", "/usr/bin/strace", "-f", "-e", "trace=write,writev,sendmsg,sendto",
              "-o", trace, h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-P", pidfile, "--no-http" } }
    local sub = h.connect(port)
    sub:send("SUB burst.x 1\r\n")
    assert(sub:ping())
    local pub = h.connect(port)
    local n = 1000
    pub:send(string.rep("PUB burst.x 5\r\nhello\r\n", n) .. "PING\r\n")
    assert.are.equal("PONG", pub:line())
    for i = 1, n do assert(sub:msg(), "message " .. i) end
    sub:close()
    pub:close()
    -- stop tide itself (strace passes no signal on); strace then exits with it
    local pf = assert(io.open(pidfile))
    local tide_pid = tonumber(pf:read("l"))
    pf:close()
    h.proc.kill(tide_pid, "TERM")
    local st, code = s:stop("0", 10) -- signal 0: just wait for strace
    assert.are.equal("exited", st)
    assert.are.equal(0, code)
    local f = assert(io.open(trace))
    local calls = 0
    for line in f:lines() do
      if line:match("writev%(") or line:match("write%(") or line:match("send") then calls = calls + 1 end
    end
    f:close()
    os.remove(trace)
    -- 1000 deliveries, plus INFO, PONGs and the log: coalesced into a handful of calls
    assert.is_true(calls < 60, "write calls: " .. calls)
  end)
end)
