-- Unit tests of the C core through its Lua module (build/tide_core.so):
-- subject validation and matching, the subscription index, the parser.
local core = require "tide_core"

describe("subjects", function()
  it("validates subscription patterns", function()
    for _, s in ipairs { "foo", "foo.bar", "foo.*", "foo.>", "*", ">", "*.*.>", "a*b.c", "foo.b>r", "$JS.API.x" } do
      assert.is_true(core.valid_pattern(s), s)
    end
    for _, s in ipairs { "", ".", "foo.", ".foo", "foo..bar", "foo.>.bar", ">.foo", "fo o", "foo\tbar", "a.b\r" } do
      assert.is_false(core.valid_pattern(s), s)
    end
  end)

  it("validates publish subjects (no wildcards)", function()
    assert.is_true(core.valid_literal("foo.bar"))
    assert.is_true(core.valid_literal("a*b.c>d"))
    for _, s in ipairs { "foo.*", "foo.>", "*", ">", "", "foo..bar", "foo." } do
      assert.is_false(core.valid_literal(s), s)
    end
  end)

  it("validates publish subjects as the rules say, for every short string", function()
    -- the rules, written out: tokens between dots, none empty, none a lone
    -- wildcard, no whitespace or NUL anywhere
    local function rule(s)
      if s == "" or s:find("[ \t\r\n%z]") then return false end
      for tok in (s .. "."):gmatch("([^.]*)%.") do
        if tok == "" or tok == "*" or tok == ">" then return false end
      end
      return true
    end
    local alphabet = { "a", ".", "*", ">", " ", "\t", "\r", "\n", "\0" }
    local n = 0
    local function each(prefix, left)
      assert.are.equal(rule(prefix), core.valid_literal(prefix), ("%q"):format(prefix))
      n = n + 1
      if left == 0 then return end
      for _, c in ipairs(alphabet) do each(prefix .. c, left - 1) end
    end
    each("", 5)
    assert.are.equal(66430, n)
  end)

  it("matches with the NATS wildcard rules", function()
    local t = {
      { "foo", "foo", true }, { "foo", "bar", false }, { "foo", "foo.bar", false },
      { "foo.*", "foo.bar", true }, { "foo.*", "foo", false }, { "foo.*", "foo.bar.baz", false },
      { "foo.>", "foo.bar", true }, { "foo.>", "foo.bar.baz", true }, { "foo.>", "foo", false },
      { "*.bar", "foo.bar", true }, { "*.bar", "foo.baz", false }, { ">", "a", true }, { ">", "a.b.c", true },
      { "*", "a", true }, { "*", "a.b", false }, { "*.*", "a.b", true }, { "a.*.c", "a.b.c", true },
      { "a.*.c", "a.b.d", false }, { "a.*.>", "a.b", false }, { "a.*.>", "a.b.c.d", true },
      { "a*b", "a*b", true }, { "a*b", "axb", false },
    }
    for _, c in ipairs(t) do
      assert.are.equal(c[3], core.matches(c[1], c[2]), c[1] .. " ~ " .. c[2])
    end
  end)
end)

describe("sublist", function()
  local function sorted(t)
    table.sort(t)
    return t
  end

  it("finds plain subscriptions by literal and wildcard patterns", function()
    local sl = core.sublist()
    local a = sl:insert("foo.bar")
    local b = sl:insert("foo.*")
    local c = sl:insert("foo.>")
    local d = sl:insert(">")
    local e = sl:insert("*.bar")
    local f = sl:insert("foo.bar.baz")
    assert.same(sorted { a, b, c, d, e }, sorted(sl:match("foo.bar").plain))
    assert.same(sorted { c, d, f }, sorted(sl:match("foo.bar.baz").plain))
    assert.same(sorted { d }, sorted(sl:match("foo").plain))
    assert.same(sorted { d, e }, sorted(sl:match("x.bar").plain))
  end)

  it("merges queue subscriptions by group name across patterns", function()
    local sl = core.sublist()
    local q1 = sl:insert("orders.*", "workers")
    local q2 = sl:insert("orders.created", "workers")
    local q3 = sl:insert("orders.>", "audit")
    local p = sl:insert("orders.created")
    local r = sl:match("orders.created")
    assert.same({ p }, r.plain)
    assert.are.equal(2, #r.groups)
    local byname = {}
    for _, g in ipairs(r.groups) do byname[g.name] = sorted(g.members) end
    assert.same(sorted { q1, q2 }, byname.workers)
    assert.same({ q3 }, byname.audit)
  end)

  it("serves repeated matches from the cache and invalidates it on change", function()
    local sl = core.sublist()
    local a = sl:insert("foo.*")
    assert.same({ a }, sl:match("foo.bar").plain)
    local before = sl:stats()
    assert.same({ a }, sl:match("foo.bar").plain)
    local after = sl:stats()
    assert.are.equal(before.cache_hits + 1, after.cache_hits)

    -- An insert that matches the cached subject must show up.
    local b = sl:insert("foo.>")
    assert.same(sorted { a, b }, sorted(sl:match("foo.bar").plain))
    -- A remove must disappear from the cached result.
    assert.is_true(sl:remove(a))
    assert.same({ b }, sl:match("foo.bar").plain)
    assert.is_true(sl:remove(b))
    assert.same({}, sl:match("foo.bar").plain)
    assert.are.equal(0, sl:stats().subs)
    -- Removing twice reports it.
    assert.is_false(sl:remove(b))
  end)

  it("keeps unrelated cached results across a literal change", function()
    local sl = core.sublist()
    local a = sl:insert("a.b")
    sl:match("a.b")
    sl:match("x.y")
    local n = sl:stats().cache_entries
    local hits = sl:stats().cache_hits
    -- A literal pattern makes only its own subject's result stale.
    local b = sl:insert("a.b")
    sl:match("x.y")
    assert.are.equal(hits + 1, sl:stats().cache_hits)
    assert.same({ a, b }, sl:match("a.b").plain) -- recomputed, in subscription order
    assert.are.equal(hits + 1, sl:stats().cache_hits)
    assert.are.equal(n, sl:stats().cache_entries)
    assert.same({ a, b }, sl:match("a.b").plain)
    assert.are.equal(hits + 2, sl:stats().cache_hits)
  end)

  it("keeps a held result's members while its subject's result is recomputed", function()
    local sl = core.sublist()
    local a = sl:insert("a.b")
    sl:hold("a.b")
    local b = sl:insert("a.b") -- the cached result is stale now
    sl:hold("a.b") -- a new one: the held one is not rebuilt under its walk
    assert.same({ a, b }, sl:held().plain)
    sl:release()
    assert.same({ a }, sl:held().plain)
    sl:release()
    local hits = sl:stats().cache_hits
    assert.same({ a, b }, sl:match("a.b").plain) -- the new one is what the cache serves
    assert.are.equal(hits + 1, sl:stats().cache_hits)
  end)

  it("keeps a held result when a full cache starts over", function()
    local sl = core.sublist()
    local a = sl:insert("f.1")
    sl:hold("f.1")
    for i = 2, 4096 do sl:match("f." .. i) end
    assert.are.equal(4096, sl:stats().cache_entries)
    sl:match("g.1") -- a miss with the cache full
    assert.are.equal(1, sl:stats().cache_entries)
    assert.same({ a }, sl:held().plain)
    sl:release() -- frees it
    assert.same({ a }, sl:match("f.1").plain) -- computed again
    assert.are.equal(2, sl:stats().cache_entries)
  end)

  it("recomputes every cached result once after a wildcard change", function()
    local sl = core.sublist()
    local a = sl:insert("a.b")
    sl:match("a.b")
    sl:match("x.y")
    local w = sl:insert("*.*")
    local hits = sl:stats().cache_hits
    assert.same({ a, w }, sl:match("a.b").plain)
    assert.same({ w }, sl:match("x.y").plain)
    assert.are.equal(hits, sl:stats().cache_hits)
    assert.same({ w }, sl:match("x.y").plain)
    assert.are.equal(hits + 1, sl:stats().cache_hits)
    assert.is_true(sl:remove(w))
    assert.same({}, sl:match("x.y").plain)
    assert.same({ a }, sl:match("a.b").plain)
  end)

  it("keeps subscription order on a subject after removals in the middle", function()
    local sl = core.sublist()
    local h = {}
    for i = 1, 10 do h[i] = sl:insert("o.s") end
    for _, i in ipairs { 1, 4, 5, 10 } do assert.is_true(sl:remove(h[i])) end
    local again = sl:insert("o.s")
    assert.same({ h[2], h[3], h[6], h[7], h[8], h[9], again }, sl:match("o.s").plain)
    local q = {}
    for i = 1, 5 do q[i] = sl:insert("o.s", "g") end
    assert.is_true(sl:remove(q[3]))
    assert.same({ q[1], q[2], q[4], q[5] }, sl:match("o.s").groups[1].members)
  end)

  -- Against a plain list of the live subscriptions and core.matches: every
  -- subject's result holds exactly the live subscriptions whose pattern
  -- matches it, in subscription order per pattern, through thousands of
  -- inserts and removes interleaved with matches (so cached results go
  -- stale in every way: literal and wildcard, inserts and removes).
  it("agrees with a brute-force match through random inserts, removes and matches", function()
    local sl = core.sublist()
    math.randomseed(16)
    local patterns = { "a", "a.b", "a.c", "a.*", "a.>", "*.b", "*", ">", "a.b.c", "a.*.c", "*.*.c", "b.>" }
    local subjects = { "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "b.c.d" }
    local queues = { false, false, "q1", "q2" }
    local live = {} -- handle -> { pattern, queue }, and the handles in subscription order
    local order = {}
    local function check(subject)
      local r = sl:match(subject)
      local plain, groups = {}, {}
      for _, h in ipairs(order) do
        local s = live[h]
        if s and core.matches(s.pattern, subject) then
          if s.queue then
            groups[s.queue] = groups[s.queue] or {}
            table.insert(groups[s.queue], h)
          else
            plain[#plain + 1] = h
          end
        end
      end
      assert.same(sorted(plain), sorted(r.plain), subject)
      local got = {}
      for _, g in ipairs(r.groups) do got[g.name] = sorted(g.members) end
      for name, members in pairs(groups) do groups[name] = sorted(members) end
      assert.same(groups, got, subject)
    end
    for step = 1, 4000 do
      local roll = math.random()
      if roll < 0.45 or #order == 0 then
        local p, q = patterns[math.random(#patterns)], queues[math.random(#queues)]
        local h = sl:insert(p, q or nil)
        live[h] = { pattern = p, queue = q }
        order[#order + 1] = h
      elseif roll < 0.8 then
        local i = math.random(#order)
        local h = table.remove(order, i)
        assert.is_true(sl:remove(h), "step " .. step)
        live[h] = nil
      else
        check(subjects[math.random(#subjects)])
      end
    end
    for _, subject in ipairs(subjects) do check(subject) end
    assert.are.equal(#order, sl:stats().subs)
  end)

  it("handles many subscriptions and removals consistently", function()
    local sl = core.sublist()
    local handles = {}
    for i = 1, 500 do
      handles[i] = sl:insert(("svc.%d.%s"):format(i % 10, i % 2 == 0 and "*" or "req"))
    end
    local r = sl:match("svc.3.req")
    assert.are.equal(50, #r.plain) -- i % 10 == 3 are all odd: "req"
    for i = 1, 500, 2 do sl:remove(handles[i]) end
    assert.are.equal(0, #sl:match("svc.3.req").plain)
    assert.are.equal(50, #sl:match("svc.4.x").plain)
    assert.are.equal(250, sl:stats().subs)
  end)

  it("rejects invalid patterns", function()
    local sl = core.sublist()
    assert.has_error(function() sl:insert("foo..bar") end)
    assert.has_error(function() sl:match("foo.*") end)
  end)
end)

describe("parser", function()
  local sample = table.concat {
    'CONNECT {"verbose":false,"headers":true}\r\n',
    "PING\r\n",
    "SUB foo.* 1\r\n",
    "SUB foo.> workers 2\r\n",
    "PUB foo.bar 5\r\nhello\r\n",
    "PUB foo.bar reply.x 0\r\n\r\n",
    "HPUB foo.h 24 29\r\nNATS/1.0\r\nA: b\r\nC: d\r\n\r\nhello\r\n",
    "HPUB foo.h inbox.1 12 12\r\nNATS/1.0\r\n\r\n\r\n",
    "UNSUB 1\r\n",
    "UNSUB 2 10\r\n",
    "pong\r\n",
    "pub lower.case 3\r\nabc\r\n",
    "PUB\tfoo.tab\t\t2\nxy\r\n",
  }
  local expected = {
    { op = "CONNECT", json = '{"verbose":false,"headers":true}' },
    { op = "PING" },
    { op = "SUB", subject = "foo.*", sid = "1" },
    { op = "SUB", subject = "foo.>", queue = "workers", sid = "2" },
    { op = "PUB", subject = "foo.bar", payload = "hello" },
    { op = "PUB", subject = "foo.bar", reply = "reply.x", payload = "" },
    { op = "HPUB", subject = "foo.h", hdr = "NATS/1.0\r\nA: b\r\nC: d\r\n\r\n", payload = "hello" },
    { op = "HPUB", subject = "foo.h", reply = "inbox.1", hdr = "NATS/1.0\r\n\r\n", payload = "" },
    { op = "UNSUB", sid = "1" },
    { op = "UNSUB", sid = "2", max = 10 },
    { op = "PONG" },
    { op = "PUB", subject = "lower.case", payload = "abc" },
    { op = "PUB", subject = "foo.tab", payload = "xy" },
  }

  local function feed_all(chunks)
    local p = core.parser()
    local all = {}
    for _, c in ipairs(chunks) do
      local evs, status, err = p:feed(c)
      assert.are.equal("ok", status, err)
      for _, e in ipairs(evs) do all[#all + 1] = e end
    end
    return all
  end

  it("parses every command in one read", function()
    assert.same(expected, feed_all { sample })
  end)

  it("gives the same result split at every byte boundary", function()
    for cut = 1, #sample - 1 do
      local got = feed_all { sample:sub(1, cut), sample:sub(cut + 1) }
      assert.same(expected, got, "split at " .. cut)
    end
  end)

  it("gives the same result one byte at a time", function()
    local chunks = {}
    for i = 1, #sample do chunks[i] = sample:sub(i, i) end
    assert.same(expected, feed_all(chunks))
  end)

  it("gives the same result at every pair of split points (three pieces)", function()
    local short = "SUB a 1\r\nPUB a r 3\r\nxyz\r\nPING\r\n"
    local want = feed_all { short }
    for i = 1, #short - 2 do
      for j = i + 1, #short - 1 do
        assert.same(want, feed_all { short:sub(1, i), short:sub(i + 1, j), short:sub(j + 1) })
      end
    end
  end)

  local function status_of(input, cl, mp)
    local p = core.parser(cl, mp)
    local _, status, err = p:feed(input)
    return status, err
  end

  it("reports unknown operations", function()
    assert.are.equal("unknown_op", status_of "XYZ\r\n")
    assert.are.equal("unknown_op", status_of "PUBX foo 1\r\n")
    assert.are.equal("unknown_op", status_of "\r\n")
    assert.are.equal("unknown_op", status_of "PINGX\r\n")
    assert.are.equal("unknown_op", status_of "\0\1\2")
  end)

  it("reports malformed arguments with the command's syntax", function()
    local st, err = status_of "PUB foo\r\n"
    assert.are.equal("args", st)
    assert.matches("PUB takes", err)
    assert.are.equal("args", status_of "PUB foo bar baz 3\r\n")
    assert.are.equal("args", status_of "PUB foo -1\r\n")
    assert.are.equal("args", status_of "PUB foo 1x\r\n")
    assert.are.equal("args", status_of "HPUB foo 10 5\r\n")
    assert.are.equal("args", status_of "SUB foo\r\n")
    assert.are.equal("args", status_of "SUB a b c d\r\n")
    assert.are.equal("args", status_of "UNSUB 1 x\r\n")
    assert.are.equal("args", status_of "PUB\r\n")
  end)

  it("enforces the control line limit exactly", function()
    -- The limit applies to the arguments, as in nats-server: here 62 bytes.
    local line = "SUB " .. string.rep("a", 60) .. " 1"
    assert.are.equal("ok", status_of(line .. "\r\n", 62))
    assert.are.equal("control_line", status_of(line .. "\r\n", 61))
    -- A CR at the limit, arriving apart from its LF, does not count (fuzzer find).
    local p0 = core.parser(62)
    local _, st0 = p0:feed(line .. "\r")
    assert.are.equal("ok", st0)
    _, st0 = p0:feed("\n")
    assert.are.equal("ok", st0)
    -- Also when the line arrives in pieces and never ends.
    local p = core.parser(100)
    local _, st = p:feed("SUB " .. string.rep("b", 90))
    assert.are.equal("ok", st)
    _, st = p:feed(string.rep("b", 20))
    assert.are.equal("control_line", st)
  end)

  it("enforces max_payload exactly", function()
    assert.are.equal("ok", status_of("PUB foo 10\r\n0123456789\r\n", nil, 10))
    local st, err = status_of("PUB foo 11\r\n", nil, 10)
    assert.are.equal("max_payload", st)
    assert.are.equal("Maximum Payload Violation", err)
    assert.are.equal("max_payload", status_of("HPUB foo 5 11\r\n", nil, 10))
  end)

  it("requires CRLF after the payload", function()
    assert.are.equal("payload_end", status_of "PUB foo 2\r\nhello\r\n")
    assert.are.equal("payload_end", status_of "PUB foo 2\r\nhi\rX")
  end)

  it("stays dead after an error", function()
    local p = core.parser()
    local _, st = p:feed("BAD\r\n")
    assert.are.equal("unknown_op", st)
    _, st = p:feed("PING\r\n")
    assert.are_not.equal("ok", st)
  end)

  it("keeps a large payload split over many reads intact", function()
    local payload = {}
    for i = 1, 100000 do payload[i] = string.char(i % 256) end
    payload = table.concat(payload)
    local msg = "PUB big.one 100000\r\n" .. payload .. "\r\n"
    local chunks = {}
    local i = 1
    while i <= #msg do
      local n = (i * 7919) % 4093 + 1
      chunks[#chunks + 1] = msg:sub(i, i + n - 1)
      i = i + n
    end
    local evs = feed_all(chunks)
    assert.are.equal(1, #evs)
    assert.are.equal("big.one", evs[1].subject)
    assert.is_true(evs[1].payload == payload)
  end)
end)
