-- Cluster mode (docs/cluster.md): the subscriptions inside a node that
-- watch for a person (GET /v1/tail, the console's /api/tail, sub() at the
-- prompt) see the cluster's events on their subjects as a client
-- subscribed on that node does: what any node published, each event once.
-- Three routed nats-servers (with monitoring, to see the node's upstream
-- subscriptions) and two tide nodes, all on loopback.
local h = require "helpers"
local json = require "dkjson"

local cs = require("cluster_support").new() -- every process a test starts, stopped in teardown

local NODE_RULES = "admin { eval = true }\n"

-- A tail of pattern on port's HTTP face (path: "/v1/tail" unless given),
-- curl writing what it receives to a file.  t.text() is what came so far;
-- t.stop() ends it (curl is killed, so the node sees its client go).
local function open_tail(port, pattern, path)
  local out = ("%s/cltail-%d.txt"):format(h.tmpdir, h.free_port())
  local pid = h.proc.spawn({ "/usr/bin/curl", "-s", "-N", "--max-time", "60",
    ("http://127.0.0.1:%d%s?subject=%s"):format(port, path or "/v1/tail", pattern) }, out)
  local t = {}
  function t.text() return h.read_file(out) or "" end
  function t.stop()
    h.proc.kill(pid, "TERM")
    h.proc.wait(pid, 5)
    os.remove(out)
  end
  return t
end

-- Times needle (plain text) occurs in text.
local function count(text, needle)
  local n, at = 0, 1
  while true do
    local s, e = text:find(needle, at, true)
    if not s then return n end
    n, at = n + 1, e + 1
  end
end

-- Publishes probe events "<prefix>.probe" on port until seen(text) finds
-- one, so that the interest behind a watcher on another node has crossed
-- the cluster; raises after 15 s.
local function wait_probe(port, prefix, seen)
  local c = cs.client(port)
  local n = 0
  local ok = h.wait_until(function()
    n = n + 1
    c:pub(prefix .. ".probe", ('{"probe":%d}'):format(n))
    assert(c:ping())
    return h.wait_until(function() return seen() end, 0.3)
  end, 15, 0)
  c:close()
  assert(ok, "the watcher's interest never reached the cluster")
end

-- The subjects of the subscriptions that the upstream connection named
-- "tide <name>" holds, over the servers' monitoring ports: a set.
local function upstream_subs(ns, name)
  local subs = {}
  for _, srv in ipairs(ns) do
    local code, body = cs.get(srv.spec.monitor, "/connz?subs=true")
    assert(code == 200, "connz: " .. tostring(code))
    local doc = assert(json.decode(body))
    for _, conn in ipairs(doc.connections or {}) do
      if conn.name == "tide " .. name then
        for _, s in ipairs(conn.subscriptions_list or {}) do subs[s] = true end
      end
    end
  end
  return subs
end

describe("cluster mode: the node's own watchers", function()
  local ns, a, b, dir

  setup(function()
    dir = h.make_tmpdir("cltail")
    ns = cs:start_cluster(dir, "tl", false, true)
    local ports = { ns[1].spec.port, ns[2].spec.port, ns[3].spec.port }
    -- A's upstream is the first server, B's the second: the events cross a route.
    a = cs:start_node("A", { ports[1] }, NODE_RULES)
    b = cs:start_node("B", { ports[2] }, NODE_RULES)
    cs.wait_ready({ a, b })
  end)

  teardown(function()
    cs:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("an HTTP tail on B sees an event published on A once, and one published on B once", function()
    local t = open_tail(b.hport, "tl1.>")
    wait_probe(a.port, "tl1", function() return t.text():find('"subject":"tl1.probe"', 1, true) end)
    local pa, pb = cs.client(a.port), cs.client(b.port)
    pa:pub("tl1.from.a", '{"id":"event-a"}')
    assert(pa:ping())
    pb:pub("tl1.from.b", '{"id":"event-b"}')
    assert(pb:ping())
    h.proc.sleep(1.5) -- a copy coming back late would arrive by then
    local text = t.text()
    t.stop()
    pa:close()
    pb:close()
    assert.are.equal(1, count(text, '"id":"event-a"'), text)
    assert.are.equal(1, count(text, '"id":"event-b"'), text)
    assert.are.equal(1, count(text, '{"subject":"tl1.from.a"'), text)
    assert.are.equal(1, count(text, '{"subject":"tl1.from.b"'), text)
  end)

  it("the console's tail on B sees an event published on A once", function()
    local t = open_tail(b.hport, "tl5.>", "/api/tail")
    wait_probe(a.port, "tl5", function() return t.text():find('"subject":"tl5.probe"', 1, true) end)
    local pa = cs.client(a.port)
    pa:pub("tl5.from.a", '{"id":"console-a"}')
    assert(pa:ping())
    h.proc.sleep(1)
    local text = t.text()
    t.stop()
    pa:close()
    assert.are.equal(1, count(text, '"id":"console-a"'), text)
  end)

  it("holds the tail's interest upstream while it runs, and drops it when the tail ends", function()
    local t = open_tail(b.hport, "tl2.>")
    wait_probe(a.port, "tl2", function() return t.text():find('"subject":"tl2.probe"', 1, true) end)
    assert.is_true(upstream_subs(ns, "B")["tl2.>"] or false, "no upstream subscription to tl2.> on B's connection")
    assert.is_nil(upstream_subs(ns, "A")["tl2.>"])
    t.stop()
    -- The node finds its client gone at the tail's next keep-alive (1 s).
    local gone = h.wait_until(function() return not upstream_subs(ns, "B")["tl2.>"] end, 10, 0.2)
    assert.is_true(gone or false, "B still subscribes upstream to tl2.> after the tail ended")
  end)

  it("a second tail on the same pattern after the first ended still sees A's events", function()
    local t1 = open_tail(b.hport, "tl3.>")
    wait_probe(a.port, "tl3", function() return t1.text():find('"subject":"tl3.probe"', 1, true) end)
    t1.stop()
    assert(h.wait_until(function() return not upstream_subs(ns, "B")["tl3.>"] end, 10, 0.2))
    local t2 = open_tail(b.hport, "tl3.>")
    wait_probe(a.port, "tl3", function() return t2.text():find('"subject":"tl3.probe"', 1, true) end)
    local pa = cs.client(a.port)
    pa:pub("tl3.again", '{"id":"event-again"}')
    assert(pa:ping())
    h.proc.sleep(1)
    local text = t2.text()
    t2.stop()
    pa:close()
    assert.are.equal(1, count(text, '"id":"event-again"'), text)
  end)

  it("cuts a tail on B that never reads what A floods it with, and drops its interest upstream", function()
    local socket = require "socket"
    local s = socket.tcp()
    s:settimeout(5)
    assert(s:connect("127.0.0.1", b.hport))
    s:send("GET /v1/tail?subject=tl6.%3E HTTP/1.1\r\nHost: x\r\n\r\n")
    assert(s:receive("*l")) -- the status line; from here on it reads nothing
    assert(h.wait_until(function() return upstream_subs(ns, "B")["tl6.>"] end, 10, 0.1),
      "no upstream subscription to tl6.> on B's connection")
    local payload = ("x"):rep(16 * 1024)
    local pubs = {}
    for i = 1, 64 do pubs[i] = ("PUB tl6.flood %d\r\n%s\r\n"):format(#payload, payload) end
    local chunk = table.concat(pubs) -- 1 MB
    local pa = cs.client(a.port)
    local cut = h.wait_until(function()
      for _ = 1, 4 do assert(pa:send(chunk)) end
      assert(pa:ping(30))
      local _, metrics = cs.get(b.hport, "/metrics")
      return (metrics or ""):find("tide_http_slow_tails_total 1", 1, true)
    end, 60, 0)
    pa:close()
    s:close()
    assert(cut, "B never cut the tail that does not read")
    local gone = h.wait_until(function() return not upstream_subs(ns, "B")["tl6.>"] end, 10, 0.2)
    assert.is_true(gone or false, "B still subscribes upstream to tl6.> after it cut the tail")
    assert.is_true(b:alive())
  end)

  it("sub() at a prompt on B sees an event published on A once, and one published on B once", function()
    local out = ("%s/cltail-repl-%d.txt"):format(h.tmpdir, h.free_port())
    local fifo = out .. ".in"
    assert(os.execute(("mkfifo '%s'"):format(fifo)))
    local pid = h.proc.spawn({ "/bin/sh", "-c",
      ("exec %s repl --connect 127.0.0.1:%d < '%s'"):format(h.bin, b.port, fifo) }, out)
    local input = assert(io.open(fifo, "w"))
    assert(input:write('sub("tl4.>")\n'))
    assert(input:flush())
    local function text() return h.read_file(out) or "" end
    local ok, err = pcall(function()
      assert(h.wait_until(function() return text():find("watching tl4.>", 1, true) end, 10), text())
      wait_probe(a.port, "tl4", function() return text():find("tl4.probe", 1, true) end)
      local pa, pb = cs.client(a.port), cs.client(b.port)
      pa:pub("tl4.from.a", '{"id":"prompt-a"}')
      assert(pa:ping())
      pb:pub("tl4.from.b", '{"id":"prompt-b"}')
      assert(pb:ping())
      pa:close()
      pb:close()
      assert(h.wait_until(function() return text():find("prompt-a", 1, true) and text():find("prompt-b", 1, true) end,
        10), text())
      h.proc.sleep(1.5) -- a copy coming back late would arrive by then
      assert.are.equal(1, count(text(), "prompt-a"), text())
      assert.are.equal(1, count(text(), "prompt-b"), text())
      assert.is_true(upstream_subs(ns, "B")["tl4.>"] or false, "no upstream subscription to tl4.> on B's connection")
    end)
    input:close()
    local st = h.proc.wait(pid, 10)
    if not st then
      h.proc.kill(pid, "KILL")
      h.proc.wait(pid, 5)
    end
    os.remove(fifo)
    os.remove(out)
    assert(ok, err)
    -- The session ended with its input: its watchers went, and their interest upstream.
    local gone = h.wait_until(function() return not upstream_subs(ns, "B")["tl4.>"] end, 10, 0.2)
    assert.is_true(gone or false, "B still subscribes upstream to tl4.> after the prompt's session ended")
  end)
end)
