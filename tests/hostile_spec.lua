-- tide under attack (docs/scripting.md "Budgets and limits", docs/streams.md
-- "HTTP"): each test is written as the attack, with a second, ordinary NATS
-- client whose PING round trip must stay short while it runs, and, where
-- memory is the target, the server's RSS.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

-- The server's resident memory in KiB.
local function rss_kb(srv)
  local text = h.read_file("/proc/" .. srv.pid .. "/status") or ""
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

-- That the RSS grew by less than limit KiB.  Under ASan freed memory sits in
-- quarantine; there the leak check at exit decides.
local function assert_grew_less(grown, limit)
  if os.getenv("TIDE_PASS") ~= "asan" then
    assert.is_true(grown < limit, ("RSS grew %d KiB"):format(grown))
  end
end

-- The PING round trip of client c, in ms.
local function ping_ms(c)
  local t0 = h.proc.now()
  c:ping(5)
  return (h.proc.now() - t0) * 1000
end

-- One HTTP request over a raw socket: returns the status code (or nil when
-- the server closed the connection without answering) and the raw answer.
local function http_raw(port, text, timeout)
  local s = socket.tcp()
  s:settimeout(timeout or 5)
  assert(s:connect("127.0.0.1", port))
  local ok, err = s:send(text)
  local answer = ""
  if ok then
    while true do
      local chunk, e, partial = s:receive(4096)
      answer = answer .. (chunk or partial or "")
      if not chunk then break end
    end
  end
  s:close()
  return tonumber(answer:match("^HTTP/1%.%d (%d%d%d)")), answer, err
end

-- POST path with body and header lines (a list of "Name: value").
local function post(port, path, body, headers)
  local lines = { ("POST %s HTTP/1.1"):format(path), ("Host: 127.0.0.1:%d"):format(port),
    ("Content-Length: %d"):format(#body), "Connection: close" }
  for _, l in ipairs(headers or {}) do lines[#lines + 1] = l end
  return http_raw(port, table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
end

-- How long a PING may wait while an attack runs, beyond the attack's own
-- budget.  The attacks that these tests stop held the server for seconds
-- (or, for two of the string attacks, 560 and 585 ms); on a 2-core machine
-- shared with the other pass of the suite a prompt server still answers
-- within this.  make soak runs the spec alone with TIDE_PING_SLACK_MS=50.
local SLACK_MS = tonumber(os.getenv("TIDE_PING_SLACK_MS")) or 250

local function stats(srv)
  return h.stats(srv.port)
end

-- A client connected and past CONNECT (headers: it takes HMSG).
local function client(port, headers)
  local c = h.connect(port)
  c:send(headers and 'CONNECT {"verbose":false,"headers":true}\r\n' or 'CONNECT {"verbose":false}\r\n')
  return c
end

-- 100 PUBs of 1 KiB on subject, as one string to send.
local function flood_chunk(subject)
  local payload = ("x"):rep(1024)
  local pubs = {}
  for i = 1, 100 do pubs[i] = ("PUB %s %d\r\n%s\r\n"):format(subject, #payload, payload) end
  return table.concat(pubs)
end

-- Starts a server with these rules, runs fn(srv) and stops the server
-- whatever fn does; fn's error fails the test.
local function with_server(rules, fn)
  local srv = h.start_scripted(rules)
  local ok, err = pcall(fn, srv)
  srv:stop()
  assert(ok, err)
end

describe("the HTTP face under attack", function()
  local srv, hport, normal

  setup(function()
    hport = h.free_port()
    srv = h.start_scripted(([[
      listen { http = "127.0.0.1:%d" }
      http { idle_timeout = "1s" }
      storage { dir = "data" }
      stream "orders" { subjects = { "orders.>" } }
      filter("orders.>", function(e) return true end)
    ]]):format(hport))
    normal = client(srv.port)
  end)

  teardown(function()
    if normal then normal:close() end
    if srv then srv:stop() end
  end)

  it("never publishes to $TIDE. or $JS. subjects, in any mode", function()
    local reloads = stats(srv).scripts.reloads
    local code, answer = post(hport, "/v1/publish/$TIDE.ADMIN.RELOAD", "{}", { "Content-Type: application/json" })
    assert.are.equal(403, code, answer)
    assert.matches("reserved", answer)
    local ce = json.encode({ specversion = "1.0", id = "1", source = "x", type = "$TIDE.ADMIN.RELOAD" })
    code = post(hport, "/v1/events", ce, { "Content-Type: application/cloudevents+json" })
    assert.are.equal(403, code)
    code = post(hport, "/v1/events", "[" .. ce:gsub("%$TIDE.ADMIN.RELOAD", "orders.ok") .. "," .. ce .. "]",
      { "Content-Type: application/cloudevents-batch+json" })
    assert.are.equal(403, code)
    code = post(hport, "/v1/events", "{}", { "Content-Type: application/json", "ce-specversion: 1.0", "ce-id: 2",
      "ce-source: x", "ce-type: $JS.API.STREAM.NAMES" })
    assert.are.equal(403, code)
    assert.are.equal(reloads, stats(srv).scripts.reloads)
    -- The batch that held one reserved subject published none of its events.
    local _, out = h.sh(("%s stream info orders --json -s 127.0.0.1:%d"):format(h.bin, srv.port))
    assert.are.equal(0, json.decode(out).messages)
  end)

  it("wants a JSON or CloudEvents content type", function()
    local code = post(hport, "/v1/publish/orders.a", "{}")
    assert.are.equal(415, code)
    code = post(hport, "/v1/events", "{}", { "ce-specversion: 1.0", "ce-id: 3", "ce-source: x", "ce-type: orders.a" })
    assert.are.equal(415, code)
    code = post(hport, "/v1/publish/orders.a", "{}", { "Content-Type: application/json" })
    assert.are.equal(201, code)
  end)

  it("refuses writes a browser sends for a page of another origin", function()
    local code = post(hport, "/v1/publish/orders.b", "{}",
      { "Content-Type: application/json", "Origin: http://evil.example" })
    assert.are.equal(403, code)
    code = post(hport, "/v1/publish/orders.b", "{}", { "Content-Type: application/json", "Sec-Fetch-Site: cross-site" })
    assert.are.equal(403, code)
    code = post(hport, "/v1/publish/orders.b", "{}",
      { "Content-Type: application/json", ("Origin: http://127.0.0.1:%d"):format(hport) })
    assert.are.equal(201, code)
  end)

  it("takes the PubAck from the store, not from a subscriber that answers first", function()
    local forger = client(srv.port)
    forger:sub("orders.>", 1)
    forger:ping()
    -- The POST is sent, then the forger answers what it sees before the
    -- answer is read.
    local s = socket.tcp()
    s:settimeout(5)
    assert(s:connect("127.0.0.1", hport))
    s:send(("POST /v1/publish/orders.forged HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
      .. "Content-Length: 2\r\nConnection: close\r\n\r\n{}"):format(hport))
    local m = assert(forger:msg(5))
    assert.is_truthy(m.reply, "the event carries the store's reply subject")
    forger:pub(m.reply, '{"stream":"orders","seq":424242}')
    local frame = assert(forger:frame(5))
    assert.are.equal("-ERR", frame.op)
    assert.matches("Permissions Violation for Publish to", frame.text)
    local answer = s:receive("*a")
    s:close()
    assert.matches("^HTTP/1%.1 201", answer)
    assert.not_matches("424242", answer)
    assert.matches('"stream":"orders"', answer)
    forger:close()
  end)

  it("closes a connection that sends half a request and nothing more", function()
    local s = socket.tcp()
    s:settimeout(5)
    assert(s:connect("127.0.0.1", hport))
    s:send("POST /v1/events HTTP/1.1\r\nHost: x\r\n")
    local t0 = h.proc.now()
    local _, err = s:receive(1)
    s:close()
    assert.are.equal("closed", err)
    local waited = h.proc.now() - t0
    assert.is_true(waited >= 0.8 and waited < 4, ("closed after %.2f s"):format(waited))
  end)

  it("cuts a tail whose client never reads, as a slow consumer", function()
    local s = socket.tcp()
    s:settimeout(5)
    assert(s:connect("127.0.0.1", hport))
    s:send("GET /v1/tail?subject=flood.%3E HTTP/1.1\r\nHost: x\r\n\r\n")
    assert(s:receive("*l")) -- the status line; from here on it reads nothing
    local before = rss_kb(srv)
    local pub = client(srv.port)
    local chunk = flood_chunk("flood.x")
    local worst = 0
    for _ = 1, 600 do -- 60 MB in all
      pub:send(chunk)
      worst = math.max(worst, ping_ms(normal))
    end
    pub:ping()
    local grown = rss_kb(srv) - before
    local _, metrics = h.sh(("curl -s http://127.0.0.1:%d/metrics"):format(hport))
    s:close()
    pub:close()
    assert.matches("tide_http_slow_tails_total 1", metrics)
    assert_grew_less(grown, 30 * 1024)
    assert.is_true(worst < SLACK_MS, ("PING took %.1f ms"):format(worst))
  end)

  it("refuses a request whose headers are too big, and stays small and responsive", function()
    local before = rss_kb(srv)
    local big = {}
    for i = 1, 2000 do big[#big + 1] = ("X-Pad-%d: %s"):format(i, ("a"):rep(50)) end
    for _ = 1, 3 do
      local code = post(hport, "/v1/publish/orders.c", "{}", { "Content-Type: application/json", table.unpack(big) })
      assert.is_true(code == nil or code == 413 or code == 431 or code == 400, tostring(code))
      assert.is_true(ping_ms(normal) < SLACK_MS)
    end
    assert.is_true(rss_kb(srv) - before < 20 * 1024, ("RSS grew %d KiB"):format(rss_kb(srv) - before))
  end)
end)

describe("the admin surface reached sideways", function()
  it("refuses a publish whose reply subject is an admin request", function()
    with_server([[ admin { eval = true } ]], function(srv)
      local echo = client(srv.port)
      echo:sub("echo", 1)
      local watch = client(srv.port)
      watch:sub("pwned.>", 1)
      echo:ping()
      watch:ping()
      local attacker = client(srv.port)
      attacker:pub("echo", 'pub("pwned.x", {})', "$TIDE.ADMIN.EVAL")
      local frame = assert(attacker:frame(5))
      assert.are.equal("-ERR", frame.op)
      assert.matches('Permissions Violation for Publish with reply subject "%$TIDE%.ADMIN%.EVAL"', frame.text)
      -- The echo service never saw it, so it could not forward it; nothing ran.
      assert.are.same({}, echo:until_pong(1))
      assert.are.same({}, watch:until_pong(1))
      -- The connection stays usable.
      attacker:ping()
    end)
  end)
end)

describe("connections and output that one client can run up", function()
  it("refuses connections past limits { max_connections } as nats-server does", function()
    -- 4 clients held, and room for the one h.stats opens.
    with_server([[ limits { max_connections = 5 } ]], function(srv)
      local held = {}
      for i = 1, 4 do
        held[i] = h.connect(srv.port)
        held[i]:send("CONNECT {\"verbose\":false}\r\n")
        held[i]:ping()
      end
      local fifth = h.connect(srv.port)
      local extra = h.connect(srv.port, { no_info = true })
      assert.are.equal("-ERR 'maximum connections exceeded'", extra:line(5))
      assert.is_true(extra:closed(5))
      assert.is_true(ping_ms(held[1]) < SLACK_MS)
      fifth:close()
      -- (Once the server has seen it go: the stats request needs a
      -- connection, and one made too early is refused and counted too.)
      local st = h.wait_until(function()
        local okk, v = pcall(stats, srv)
        return okk and v
      end, 5)
      assert.is_true(st.refused_connections >= 1)
      held[4]:close()
      -- Room again once it is gone.
      assert.is_truthy(h.wait_until(function()
        local c = h.connect(srv.port, { no_info = true })
        local l = c:line(2)
        c:close()
        return l and l:match("^INFO ")
      end, 5))
      for i = 1, 3 do held[i]:close() end
    end)
  end)

  it("keeps a descriptor in reserve: with none left, a new client is told and closed, the others go on", function()
    local port, hport = h.free_port(), h.free_port()
    local dir = h.make_tmpdir("tide-fd")
    h.write_file(dir .. "/tide.lua", ([[
      listen { http = "127.0.0.1:%d" }
      http { idle_timeout = "5s" }
    ]]):format(hport))
    -- A hard limit of 48 descriptors: tide raises its soft limit to it, no further.
    local srv = h.start_server({ port = port, bin = "/usr/bin/prlimit",
      cmd = { "--nofile=48:48", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/tide.lua" } })
    local ok, err = pcall(function()
      local normal = client(port)
      normal:ping()
      -- Half-sent HTTP requests take every descriptor left (slowloris).
      local idle = {}
      for i = 1, 60 do
        local s = socket.tcp()
        s:settimeout(1)
        if s:connect("127.0.0.1", hport) then
          s:send("POST / HTTP/1.1\r\n")
          idle[#idle + 1] = s
        end
      end
      local late = h.connect(port, { no_info = true })
      local line = late:line(5)
      assert.are.equal("-ERR 'maximum connections exceeded'", line)
      late:close()
      assert.is_true(ping_ms(normal) < SLACK_MS)
      -- Once the idle timeout has closed them, clients are served again.
      assert.is_truthy(h.wait_until(function()
        local c = h.connect(port, { no_info = true })
        local l = c:line(2)
        c:close()
        return l and l:match("^INFO ")
      end, 10))
      for _, s in ipairs(idle) do s:close() end
      assert.is_true(stats(srv).refused_connections >= 1)
      normal:close()
    end)
    srv:stop()
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("keeps a descriptor in reserve for HTTP too: with none left, a request is answered 503 and closed", function()
    local port, hport = h.free_port(), h.free_port()
    local dir = h.make_tmpdir("tide-fd-http")
    h.write_file(dir .. "/tide.lua", ([[
      listen { http = "127.0.0.1:%d" }
    ]]):format(hport))
    local srv = h.start_server({ port = port, bin = "/usr/bin/prlimit",
      cmd = { "--nofile=48:48", h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/tide.lua" } })
    local ok, err = pcall(function()
      local normal = client(port)
      normal:ping()
      -- Idle NATS connections take every descriptor left; the last ones
      -- are refused by the NATS listener's own reserve.
      local idle = {}
      for i = 1, 60 do
        local s = socket.tcp()
        s:settimeout(1)
        if s:connect("127.0.0.1", port) then idle[#idle + 1] = s end
      end
      local late = h.connect(port, { no_info = true })
      assert.are.equal("-ERR 'maximum connections exceeded'", late:line(5))
      late:close()
      -- A new HTTP request is told at once, not left in the backlog.
      local t0 = h.proc.now()
      local code, answer, e = http_raw(hport, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 3)
      local took = h.proc.now() - t0
      assert.are.equal(503, code, ("%s %s"):format(answer, e))
      assert.matches("no file descriptor left", answer)
      assert.is_true(took < 1, ("the answer took %.2f s"):format(took))
      -- The loop is not spinning on the listener: a client we have is answered.
      assert.is_true(ping_ms(normal) < SLACK_MS)
      -- Once the idle connections are gone, HTTP serves again.
      for _, s in ipairs(idle) do s:close() end
      assert.is_truthy(h.wait_until(function()
        return (http_raw(hport, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2)) == 200
      end, 10))
      normal:close()
    end)
    srv:stop()
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("cuts the clients with the most output queued once all of it passes limits { max_pending_total }", function()
    with_server([[ limits { max_pending_total = "16MB" } ]], function(srv)
      local normal = client(srv.port)
      local sleepers = {}
      for i = 1, 10 do -- subscribe, then never read again
        sleepers[i] = h.connect(srv.port)
        sleepers[i]:send("CONNECT {\"verbose\":false}\r\nSUB flood.> 1\r\n")
        sleepers[i]:ping()
      end
      local before = rss_kb(srv)
      local pub = client(srv.port)
      local chunk = flood_chunk("flood.x")
      local worst = 0
      for _ = 1, 200 do -- 20 MB, to each of 10 subscribers
        pub:send(chunk)
        worst = math.max(worst, ping_ms(normal))
      end
      pub:ping()
      local grown = rss_kb(srv) - before
      local st = stats(srv)
      assert.is_true(st.slow_consumers >= 1, "no client was cut")
      assert_grew_less(grown, 64 * 1024)
      assert.is_true(worst < SLACK_MS, ("PING took %.1f ms"):format(worst))
      for _, c in ipairs(sleepers) do c:close() end
      pub:close()
      normal:close()
    end)
  end)
end)

describe("tide.kv under a careless rule", function()
  it("refuses a value over kv { max_value } (1 MiB by default) with a clear error, and stays small", function()
    with_server([[
      on("big.set", function(e)
        tide.kv.set("k" .. e.data.i, string.rep("x", 8 * 1024 * 1024))
      end)
    ]], function(srv)
      local dead = client(srv.port, true)
      dead:sub("$TIDE.DEAD.>", 1)
      dead:ping()
      local before = rss_kb(srv)
      local pub = client(srv.port)
      for i = 1, 60 do
        pub:pub("big.set", json.encode({ specversion = "1.0", id = tostring(i), source = "t", type = "big.set",
          data = { i = i } }))
      end
      local msgs = dead:collect(60, 20)
      assert.are.equal(60, #msgs)
      local _, hd = h.parse_headers(msgs[1].headers)
      assert.matches("a value of 8388608 bytes is over kv { max_value = 1048576 }", hd["Tide-Error"], 1, true)
      -- 60 refused values of 8 MiB kept would be 480 MiB; what may stay is
      -- the Lua state's garbage, up to its 64 MB cap (scripting { memory }),
      -- collected when the collector gets to it.
      local grown = rss_kb(srv) - before
      assert_grew_less(grown, 80 * 1024)
      pub:close()
      dead:close()
    end)
  end)

  it("holds kv { max_bytes } and { max_keys }; what is refused changes nothing", function()
    with_server([[
      kv { max_bytes = "64KB", max_keys = 10 }
      on("kv.try", function(e, ctx)
        local ok, err = pcall(tide.kv.set, e.data.k, string.rep("v", e.data.n))
        ctx.publish("kv.result", { ok = ok, err = err and tostring(err) or tide.null, count = tide.kv.count(),
          has = tide.kv.has(e.data.k) })
      end)
    ]], function(srv)
      local c = client(srv.port)
      c:sub("kv.result", 1)
      c:ping()
      local function try(k, n)
        c:pub("kv.try", json.encode({ specversion = "1.0", id = k .. n, source = "t", type = "kv.try",
          data = { k = k, n = n } }))
        local m = assert(c:msg(5))
        return json.decode(m.payload).data
      end
      assert.is_true(try("a", 40000).ok)
      local r = try("b", 40000) -- 80,002 bytes would pass 64 KiB
      assert.is_false(r.ok)
      assert.matches("kv { max_bytes = 65536 } leaves no room", r.err, 1, true)
      assert.is_false(r.has)
      assert.is_true(try("a", 60000).ok) -- replacing a value counts only the difference
      for i = 1, 9 do assert.is_true(try("k" .. i, 10).ok) end
      r = try("k10", 10)
      assert.is_false(r.ok)
      assert.matches("kv { max_keys = 10 }", r.err, 1, true)
      assert.are.equal(10, r.count)
      c:close()
    end)
  end)
end)

describe("admin answers one client can blow up", function()
  it("answers STREAM.EVENTS in bounded pages, whatever limit is asked, and export still gets every event", function()
    with_server([[
      storage { dir = "data" }
      stream "big" { subjects = { "big.>" }, fsync = "never" }
    ]], function(srv)
      local pub = client(srv.port)
      local chunk = flood_chunk("big.x")
      for _ = 1, 30 do pub:send(chunk) end
      pub:ping()
      local normal = client(srv.port)
      local worst = 0
      for _ = 1, 10 do
        local m = assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.EVENTS", '{"stream":"big","limit":100000000}'))
        assert.is_true(#m.payload < 1024 * 1024, ("an answer of %d bytes"):format(#m.payload))
        local a = json.decode(m.payload)
        assert.is_true(a.more)
        assert.is_true(#a.events >= 1 and #a.events < 3000)
        worst = math.max(worst, ping_ms(normal))
      end
      assert.is_true(worst < SLACK_MS, ("PING took %.1f ms"):format(worst))
      local rc, out = h.sh(("{ %s stream export big -s 127.0.0.1:%d 2>/dev/null; } | wc -l"):format(h.bin, srv.port))
      assert.are.equal(0, rc)
      assert.are.equal(3000, tonumber(out))
      pub:close()
      normal:close()
    end)
  end)

  it("answers DLQ.SHOW and DLQ.REPLAY in bounded pages, and the CLI still sees and replays every dead letter", function()
    with_server([[
      storage { dir = "data" }
      stream "dead" { subjects = { "$TIDE.DEAD.>" }, fsync = "never" }
      on("pay.>", function(e) error("cannot pay") end)
    ]], function(srv)
      local pub = client(srv.port)
      local chunk = flood_chunk("pay.x")
      for _ = 1, 30 do pub:send(chunk) end
      pub:ping()
      local function messages()
        local m = assert(h.request(srv.port, "$TIDE.ADMIN.STREAM.INFO", "dead"))
        return json.decode(m.payload).messages
      end
      assert(h.wait_until(function() return messages() == 3000 end, 20), "3000 dead letters")
      local normal = client(srv.port)
      local worst = 0
      local m = assert(h.request(srv.port, "$TIDE.ADMIN.DLQ.SHOW", '{"stream":"dead","limit":100000000}'))
      assert.is_true(#m.payload < 1024 * 1024, ("an answer of %d bytes"):format(#m.payload))
      local a = json.decode(m.payload)
      assert.is_true(a.more)
      assert.is_true(#a.dead_letters >= 1 and #a.dead_letters <= 1000, #a.dead_letters .. " dead letters")
      -- Replay all, page by page: each answer bounded, the range fixed by the
      -- first page (the replays fail again and add 3000 dead letters, which
      -- are not replayed), the normal client served between pages.
      local replayed, pages, q = 0, 0, '{"stream":"dead","all":true}'
      repeat
        m = assert(h.request(srv.port, "$TIDE.ADMIN.DLQ.REPLAY", q, { timeout = 10 }))
        a = json.decode(m.payload)
        assert.is_true(a.ok, m.payload)
        assert.is_true(a.replayed <= 256 and #a.seqs == a.replayed)
        assert.are.equal(3000, a.until_seq)
        replayed, pages = replayed + a.replayed, pages + 1
        worst = math.max(worst, ping_ms(normal))
        q = ('{"stream":"dead","all":true,"from_seq":%d,"until_seq":%d}'):format(a.next_seq, a.until_seq)
      until not a.more or pages > 100
      assert.are.equal(3000, replayed)
      assert.is_true(pages >= 12, pages .. " pages")
      assert.is_true(worst < SLACK_MS, ("PING took %.1f ms"):format(worst))
      assert(h.wait_until(function() return messages() == 6000 end, 20), "6000 dead letters")
      -- The CLI pages for itself.
      local rc, out = h.sh(("{ %s dlq show dead --json -s 127.0.0.1:%d 2>/dev/null; } | wc -l"):format(h.bin, srv.port))
      assert.are.equal(0, rc)
      assert.are.equal(6000, tonumber(out))
      local rc2, out2 = h.sh(("%s dlq replay dead --all --json -s 127.0.0.1:%d"):format(h.bin, srv.port))
      assert.are.equal(0, rc2, out2)
      local r = json.decode(out2)
      assert.are.equal(6000, r.replayed)
      assert.are.equal(6000, #r.seqs)
      assert.are.equal(6000, r.seqs[6000])
      assert.is_nil(r.more)
      assert(h.wait_until(function() return messages() == 12000 end, 20), "12000 dead letters")
      pub:close()
      normal:close()
    end)
  end)
end)

describe("rules that try to escape their budgets", function()
  local srv, normal, dead

  setup(function()
    srv = h.start_scripted([[
      scripting { time = "200ms" }
      filter("esc.xpcall_loop", function(e)
        xpcall(function() error("x") end, function(m) while true do end end)
        return true
      end)
      filter("esc.xpcall_long", function(e)
        local n = 0
        xpcall(function() error("x") end, function(m) for i = 1, 3e9 do n = n + 1 end return m end)
        return true
      end)
      filter("esc.xpcall_stop", function(e)
        -- A stop inside the protected function must not enter the handler,
        -- and the rule stays stopped after xpcall returns.
        local ok = xpcall(function() while true do end end, function(m) while true do end end)
        while true do end
      end)
      filter("esc.ok", function(e)
        local ok, m = xpcall(function() error("plain") end, function(m) return "handled: " .. m end)
        e.data.got = m
        return true
      end)
    ]])
    normal = client(srv.port)
    dead = client(srv.port, true)
    dead:sub("$TIDE.DEAD.>", 1)
    dead:sub("esc.ok", 2)
    dead:ping()
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  local function attack(subject)
    local pub = client(srv.port)
    local t0 = h.proc.now()
    pub:pub(subject, '{"specversion":"1.0","id":"1","source":"t","type":"' .. subject .. '","data":{}}')
    local worst = 0
    local m
    repeat
      worst = math.max(worst, ping_ms(normal))
      m = dead:msg(0.05)
    until m or h.proc.now() - t0 > 10
    pub:close()
    assert(m, "no dead letter within 10 s")
    local _, hd = h.parse_headers(m.headers)
    return hd, h.proc.now() - t0, worst
  end

  it("stops an xpcall message handler that loops forever", function()
    local hd, took, worst = attack("esc.xpcall_loop")
    assert.matches("budget exceeded", hd["Tide-Error"])
    assert.is_true(took < 2, ("stopped after %.2f s"):format(took))
    assert.is_true(worst < 250, ("PING took %.1f ms"):format(worst))
  end)

  it("stops a long message handler at the budget, not 30 times past it", function()
    local hd, took = attack("esc.xpcall_long")
    assert.matches("budget exceeded", hd["Tide-Error"])
    assert.is_true(took < 2, ("stopped after %.2f s"):format(took))
  end)

  it("keeps a stopped rule stopped: its handler is not entered, and the code after xpcall does not run", function()
    local hd, took = attack("esc.xpcall_stop")
    assert.matches("budget exceeded", hd["Tide-Error"])
    assert.is_true(took < 2, ("stopped after %.2f s"):format(took))
  end)

  it("still runs the handler of an ordinary error", function()
    local pub = client(srv.port)
    pub:pub("esc.ok", '{"specversion":"1.0","id":"2","source":"t","type":"esc.ok","data":{}}')
    local m = assert(dead:msg(5))
    assert.matches('"got":"handled: [^"]*plain"', m.payload)
    pub:close()
  end)
end)

describe("a cascade that grows without end", function()
  it("is stopped by its own budget, and the loop serves other clients between its steps", function()
    with_server([[
      scripting { cascade_time = "4s" }
      on("fan.>", function(e, ctx)
        local t = os.clock() + 0.04 -- about 40 ms of work per call
        while os.clock() < t do end
        for i = 1, 3 do ctx.publish("fan.x", { n = i }) end
      end)
    ]], function(srv)
      local normal = client(srv.port)
      local dead = client(srv.port, true)
      dead:sub("$TIDE.DEAD.>", 1)
      dead:ping()
      local pub = client(srv.port)
      local t0 = h.proc.now()
      pub:pub("fan.go", "{}")
      local worst, first = 0, nil
      repeat
        worst = math.max(worst, ping_ms(normal))
        first = first or dead:msg(0.02)
      until first or h.proc.now() - t0 > 20
      assert(first, "no dead letter within 20 s")
      local _, hd = h.parse_headers(first.headers)
      assert.matches("cascade budget exceeded", hd["Tide-Error"])
      -- One call (40 ms of CPU, several times that on a loaded machine)
      -- and a slice, not the 4 s the cascade runs.
      assert.is_true(worst < 1000, ("PING took %.1f ms while the cascade ran"):format(worst))
      -- What is left of it is dead-lettered, not run: the server is idle soon.
      local quiet = h.wait_until(function()
        local before = stats(srv).scripts.dead_letters
        h.proc.sleep(0.3)
        return stats(srv).scripts.dead_letters == before
      end, 20)
      assert.is_truthy(quiet)
      assert.is_true(h.proc.now() - t0 < 15, ("the cascade took %.1f s"):format(h.proc.now() - t0))
      pub:close()
      dead:close()
      normal:close()
    end)
  end)
end)

describe("acks a client makes up", function()
  it("takes a NAK delay too large for the clock (1e300 ns, 1e300s, 1e308m) as at most a year", function()
    with_server([[
      storage { dir = "data" }
      stream "q" { subjects = { "q.>" } }
      consumer "w" { stream = "q", deliver = "w.work", ack_wait = "30s" }
    ]], function(srv)
      local c = client(srv.port)
      c:sub("w.work", 1)
      c:ping()
      for i, nak in ipairs({ '-NAK {"delay":1e300}', "-NAK 1e300s", "-NAK 1e308m" }) do
        c:pub("q.x", '{"n":' .. i .. '}')
        local m = assert(c:msg(5))
        c:pub(m.reply, nak)
        -- A delay that overflowed came out negative: redelivered at once.
        local again = c:msg(0.5)
        assert.is_nil(again, nak .. " was redelivered at once")
      end
      assert.is_true(ping_ms(c) < SLACK_MS)
      local _, out = h.sh(("%s consumer info w --json -s 127.0.0.1:%d"):format(h.bin, srv.port))
      local info = json.decode(out)
      assert.are.equal(3, info.naked)
      assert.are.equal(3, info.num_ack_pending)
      c:close()
    end)
  end)
end)

describe("a rule's string functions on big strings", function()
  -- Each of these holds one C call that ran for a second to minutes (stock
  -- Lua 5.4 on a 2-core machine: the run of '.', 47 s; the %b, 9 s; one
  -- plain find, 4.8 s), which the count hook cannot interrupt, so the whole
  -- server stalled.  The budget must stop each like any other code, and
  -- the server answer a PING within 50 ms beyond the rule's time budget.
  -- (A gsub calling a Lua function was stopped by the hook already.)
  local BUDGET_MS = 100
  local attacks = {
    { "a pattern of 300,000 '.' against 200 KB", [[
      local s = ("a"):rep(200000)
      s:find(("."):rep(300000))]] },
    { "%b() over 200 KB of '('", [[
      local s = ("("):rep(200000)
      s:find("%b()")]] },
    { "plain finds of a 500 KB needle in 1 MB", [[
      local s, needle = ("a"):rep(1000000), ("a"):rep(499999) .. "b"
      while true do s:find(needle, 1, true) end]] },
    { "gsub on 8 MB with a cheap C function for each match", [[
      local s = ("x"):rep(8000000)
      while true do s:gsub("(x)()", string.sub) end]] },
    { "gsub on 8 MB with a cheap Lua function for each match", [[
      local s = ("x"):rep(8000000)
      while true do s:gsub("x", function() return "" end) end]] },
    { "a gmatch loop over 200 KB of '('", [[
      local s = ("("):rep(200000)
      for _ in s:gmatch("%b()") do end]] },
    { "a gmatch loop with a pattern of 300,000 '.'", [[
      local s = ("a"):rep(200000)
      for _ in s:gmatch(("."):rep(300000)) do end]] },
    { "string.format of 100,000 %.0s items on a 2 MB string", [[
      local s, args = ("x"):rep(2000000), {}
      for i = 1, 100000 do args[i] = s end
      string.format(("%.0s"):rep(#args), table.unpack(args))]] },
    { "string.format of 20,000 %d items on a 2 MB number", [[
      local s, args = "1" .. (" "):rep(2000000), {}
      for i = 1, 20000 do args[i] = s end
      string.format(("%d"):rep(#args), table.unpack(args))]] },
  }
  for _, attack in ipairs(attacks) do
    it("stops " .. attack[1] .. " at the time budget; the server answers PINGs meanwhile", function()
      local srv = h.start_scripted(([[
        scripting { time = "%dms", instructions = 1000000000000 }
        filter("attack", function(e)
          %s
          return true
        end)
      ]]):format(BUDGET_MS, attack[2]))
      local ok, err = pcall(function()
        local dead = client(srv.port, true)
        dead:sub("$TIDE.DEAD.>", 1)
        dead:ping()
        local normal = client(srv.port)
        normal:ping()
        local pub = client(srv.port)
        pub:pub("attack", "go")
        local t0, worst = h.proc.now(), 0
        while h.proc.now() - t0 < 0.6 do
          local t = h.proc.now()
          assert(normal:ping(3), "no PONG within 3 s")
          worst = math.max(worst, (h.proc.now() - t) * 1000)
        end
        local msgs = dead:collect(1, 3)
        assert.are.equal(1, #msgs)
        assert.are.equal("$TIDE.DEAD.attack", msgs[1].subject)
        local _, hd = h.parse_headers(msgs[1].headers)
        assert.matches(("time budget exceeded (%d ms)"):format(BUDGET_MS), hd["Tide-Error"], 1, true)
        assert.is_true(worst < BUDGET_MS + SLACK_MS, ("PING took %.1f ms"):format(worst))
        dead:close()
        normal:close()
        pub:close()
      end)
      srv:kill()
      h.remove_tmpdir(srv.dir)
      assert(ok, err)
    end)
  end

  it("leaves string.format's results as they were, long arguments included", function()
    -- Evaluated by the rule and here, by stock Lua.
    local cases = [==[
      local big = ("ab"):rep(200)
      local zero = ("ab"):rep(100) .. "\0" .. ("ab"):rep(100)
      local num, flt = "  12" .. (" "):rep(300), "1.5" .. (" "):rep(300)
      local t = setmetatable({}, { __tostring = function() return ("T"):rep(300) end })
      local list = {
        { "%.3s|%-10.5s|%10.2s|%.99s", big, big, big, big }, { "%.0s", zero }, { "%5s", zero }, { "%.5s", t },
        { "%10s", t }, { "%d %5.1f %x", num, flt, num }, { "%d", flt }, { "%d", "1" .. ("x"):rep(300) },
        { "%s %q", big, "a\0b" }, { "%.100s", big }, { "%5.3s", 12345.5 }, { "%c", num }, { "%i", num },
        { "%g|%a", num, flt }, { "%d", zero }, { "%.3s%.3s", big }, { "%.3s", nil }, { "%.2s", true },
        { "%%%.1s%%", big }, { "%", big }, { "%.3z", big }, { "%.3s", "\0" .. big },
      }
      local out = {}
      for i, c in ipairs(list) do
        local ok, r = pcall(string.format, table.unpack(c, 1, 5))
        out[i] = tostring(ok) .. ":" .. tostring(r):gsub("bad argument #(%d+) to '[^']*'", "#%1")
      end
      -- called as a method, an argument error counts from the format
      local _, e = pcall(function() return ("%s|%d"):format("a", "x") end)
      out[#out + 1] = e:gsub("^.-:%d+: ", "")
      return table.concat(out, "\n")
    ]==]
    local srv = h.start_scripted(([[
      local function cases() %s end
      on("fmt", function(e, ctx) ctx.publish("fmt.out", { text = cases() }) end)
    ]]):format(cases))
    local ok, err = pcall(function()
      local c = client(srv.port)
      c:sub("fmt.out", 1)
      c:ping()
      c:pub("fmt", "go")
      local m = assert(c:msg(5))
      assert.are.equal(assert(load(cases))(), json.decode(m.payload).data.text)
      c:close()
    end)
    srv:stop()
    h.remove_tmpdir(srv.dir)
    assert(ok, err)
  end)
end)
