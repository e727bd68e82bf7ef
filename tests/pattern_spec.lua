-- The sandbox's string.find/match/gmatch/gsub (src/script/pattern.c) against
-- stock Lua 5.4's: the same results and the same errors for hand-written and
-- random (pattern, subject, init) cases, and every step counted, so that a
-- budget can stop any call.  Deterministic (fixed seeds).
local core = require "tide_core"

local ours = core.patterns()
local stock = string

-- Error messages name the function as it was called: compare the rest.
local function norm(msg)
  return (tostring(msg):gsub("bad argument #(%d+) to '[^']*'", "bad argument #%1 to '?'"))
end

local function pack_call(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then return { n = 2, false, norm(r[2]) } end
  return r
end

local function show(r)
  local t = {}
  for i = 1, r.n do
    local v = r[i]
    if type(v) == "string" then
      t[i] = ("%q"):format(v)
    elseif type(v) == "function" or type(v) == "table" then
      t[i] = type(v)
    else
      t[i] = (math.type(v) or type(v)) .. ":" .. tostring(v)
    end
  end
  return "(" .. table.concat(t, ", ") .. ")"
end

local function same(a, b)
  if a.n ~= b.n then return false end
  for i = 1, a.n do
    if a[i] ~= b[i] or math.type(a[i]) ~= math.type(b[i]) then return false end
  end
  return true
end

-- Every result of gmatch (at most 200 rounds), as one list.
local function gmatch_all(lib, ...)
  local it = lib.gmatch(...)
  local out = {}
  for _ = 1, 200 do
    local r = table.pack(it())
    out[#out + 1] = show(r)
    if r[1] == nil then break end
  end
  return table.concat(out, " ")
end

-- A replacement function that logs its arguments and answers in turn
-- nil, false, a string, a number and (rarely) a table.
local function replacer(log)
  local k = 0
  return function(...)
    k = k + 1
    log[#log + 1] = show(table.pack(...))
    local m = k % 7
    if m == 0 then return nil elseif m == 1 then return false elseif m == 2 then return "<" .. tostring(...) .. ">"
    elseif m == 3 then return k elseif m == 4 and k > 20 then return {} else return tostring(select("#", ...)) end
  end
end

local failures = {}
local function check(what, a, b, case)
  if a ~= b and #failures < 20 then
    failures[#failures + 1] = ("%s %s\n  stock: %s\n  ours:  %s"):format(what, case, a, b)
  end
end

local function describe_case(...)
  return show(table.pack(...))
end

-- Runs one case through every function and compares.
local function compare(s, p, init, repl, n)
  local case = describe_case(s, p, init)
  check("find", show(pack_call(stock.find, s, p, init)), show(pack_call(ours.find, s, p, init)), case)
  check("find plain", show(pack_call(stock.find, s, p, init, true)), show(pack_call(ours.find, s, p, init, true)), case)
  check("match", show(pack_call(stock.match, s, p, init)), show(pack_call(ours.match, s, p, init)), case)
  local ga = table.pack(pcall(gmatch_all, stock, s, p, init))
  local gb = table.pack(pcall(gmatch_all, ours, s, p, init))
  check("gmatch", tostring(ga[1]) .. norm(ga[2]), tostring(gb[1]) .. norm(gb[2]), case)
  if repl ~= nil then
    local la, lb = {}, {}
    local ra, rb = repl, repl
    if repl == "function" then ra, rb = replacer(la), replacer(lb) end
    local a = show(pack_call(stock.gsub, s, p, ra, n))
    local b = show(pack_call(ours.gsub, s, p, rb, n))
    check("gsub", a .. table.concat(la, ";"), b .. table.concat(lb, ";"), describe_case(s, p, repl, n))
  end
end

local function assert_no_failures(count)
  assert(#failures == 0, ("%d differences in %d cases, the first:\n%s"):format(#failures, count,
    table.concat(failures, "\n")))
end

-- ---- random cases --------------------------------------------------------

local SUBJECT_CHARS = { "a", "b", "c", "a", "b", "(", ")", "[", "]", "%", ".", "-", " ", "\n", "1", "9", "_",
  "\0", "\200", "A", "Z", "x", "^", "$" }

local ITEMS = { "a", "b", "c", "x", ".", "%a", "%A", "%c", "%C", "%d", "%D", "%g", "%G", "%l", "%L", "%p", "%P",
  "%s", "%S", "%u", "%U", "%w", "%W", "%x", "%X", "%.", "%%", "%(", "%)", "%[", "%-", "%z", "%\0", "[ab]", "[^ab]",
  "[a-c]", "[^a-c]", "[%a_]", "[%d%s]", "[]]", "[^]]", "[a-]", "[-a]", "[%]]", "[%%]", "[a%-z]", "[\0-\31]",
  "[\128-\255]", " ", "\n", "1", "_", "\0", "\200", "^", "$" }
local QUANTS = { "", "", "", "*", "+", "-", "?" }
local SPECIAL = { "%b()", "%bab", "%b[]", "%b((", "%f[%w]", "%f[%W]", "%f[^a]", "%f[a-c]", "%f[%z]", "%1", "%2",
  "%3", "()", "(", ")", "(a)", "(.-)", "(%w+)", "$" }
local BROKEN = { "%", "[", "[a", "[^", "[]", "%f", "%fa", "%b", "%bx", "(", ")", "%0", "%9", "[%", "(()", "((a)" }

local function random_subject(len)
  local t = {}
  for i = 1, len do t[i] = SUBJECT_CHARS[math.random(#SUBJECT_CHARS)] end
  return table.concat(t)
end

local function random_pattern()
  local t = {}
  if math.random(5) == 1 then t[#t + 1] = "^" end
  for _ = 1, math.random(0, 6) do
    local r = math.random(20)
    if r <= 13 then
      t[#t + 1] = ITEMS[math.random(#ITEMS)] .. QUANTS[math.random(#QUANTS)]
    elseif r <= 19 then
      t[#t + 1] = SPECIAL[math.random(#SPECIAL)]
    else
      t[#t + 1] = BROKEN[math.random(#BROKEN)]
    end
  end
  if math.random(6) == 1 then t[#t + 1] = "$" end
  return table.concat(t)
end

local INITS = { nil, nil, nil, 1, 2, 3, 0, -1, -2, -5, 5, 10, 30, -30, math.maxinteger, math.mininteger }
local REPLS = { "", "x", "%0", "%1", "<%1|%2>", "%%", "%", "%a", "%9", "function", "function",
  { a = "A", b = false, [1] = "one", ab = 12 }, 42, 1.5 }

describe("the pattern functions against stock Lua 5.4", function()
  before_each(function() failures = {} end)

  it("agree on hand-written cases", function()
    local cases = {
      -- classes, sets, anchors
      { "hello world", "o w" }, { "hello world", "l+" }, { "hello", "^h" }, { "hello", "^e" }, { "hello", "o$" },
      { "a$b", "$b" }, { "a^b", "a^b" }, { "^a", "^^a" }, { "x", "x$$" }, { "", "" }, { "", "^$" }, { "", ".*" },
      { "ABC abc 123 \t\n!?", "%u+" }, { "ABC abc 123 \t\n!?", "%l+%s+%d+" }, { "ABC abc 123", "[%u%d]+" },
      { "a]b", "[]]" }, { "a]b", "[^]]+" }, { "a-b", "[a-]+" }, { "a-b", "[-b]+" }, { "a%b", "[%%]" },
      { "a\0b", "%z" }, { "a\0b", "\0b" }, { "a\0b", "[\0]" }, { "a\0b", "%Z+" }, { "\255\128", "[\128-\255]+" },
      -- repetitions and backtracking
      { "aaab", "a-b" }, { "aaab", "a*ab" }, { "aaab", "a+a+b" }, { "aaa", "a?a?a?aaa" }, { "ab", "a?b?c?" },
      { "<<a>>", "<(.-)>" }, { "<<a>>", "<(.*)>" }, { "  x  ", "^%s*(.-)%s*$" }, { "key = value", "(%w+)%s*=%s*(%w+)" },
      -- captures
      { "hello", "()ll()" }, { "hello", "(h)(e)(l)(l)(o)" }, { "hello", "((h)(e))" }, { "abab", "(ab)%1" },
      { "abba", "(a)(b)%2%1" }, { "x", "()" }, { "hello", "(l)(l)%2" }, { "aa", "(a)%0" }, { "aa", "%1(a)" },
      { "x", "(x" }, { "x", "x)" }, { "x", "(()" }, { string.rep("a", 40), string.rep("(a)", 33) },
      { "abc", string.rep("()", 32) }, { "abc", string.rep("()", 33) },
      -- %b and %f
      { "f(a(b)c)d", "%b()" }, { "((", "%b()" }, { "x", "%b" }, { "x", "%bx" }, { "''a''", "%b''" },
      { "THE (quick) fox", "%f[%a]%a+" }, { "THE (quick) fox", "%f[%A]" }, { "abc", "%f[a]" }, { "abc", "%f[%z]" },
      { "x", "%f" }, { "x", "%fx" }, { "x", "%f[" },
      -- malformed
      { "x", "%" }, { "x", "[a" }, { "x", "[" }, { "x", "[^" }, { "x", "[%" }, { "x", "[a%]" }, { "x", "%1" },
      { "x", "%0" }, { "x", "(%1)" }, { "x", ")" },
      -- depth
      { string.rep("a", 300), string.rep("a?", 190) }, { string.rep("a", 300), string.rep("a?", 210) },
      { string.rep("a", 300), string.rep("(", 250) }, { "aa", string.rep("a-", 150) .. "b" },
      { "aa", string.rep("a-", 250) .. "b" },
      -- inits
      { "hello", "l", 4 }, { "hello", "l", -1 }, { "hello", "l", -2 }, { "hello", "", 6 }, { "hello", "", 7 },
      { "hello", "", -100 }, { "hello", "^l", 3 }, { "hello", "^l", 4 }, { "", "", 1 }, { "", "", 2 },
      -- numbers as subjects and patterns
      { 12345, 3 }, { 1.5, "%." }, { 10, "^1" },
    }
    for _, c in ipairs(cases) do compare(c[1], c[2], c[3], "function") end
    for _, c in ipairs(cases) do compare(c[1], c[2], c[3], "<%0>") end
    assert_no_failures(#cases)
  end)

  it("agree on gsub's replacements, counts and errors", function()
    local cases = {
      { "hello world", "o", "0" }, { "hello world", "(o)", "%1%1" }, { "hello world", "%w+", "%0 %0", 1 },
      { "hello", "", "-" }, { "hello", "x*", "-" }, { "hello", "l", "L", 0 }, { "hello", "l", "L", -1 },
      { "hello", "^h", "H" }, { "hello", "^l", "L" }, { "abc", "%w", "%1" }, { "abc", "%w", "%2" },
      { "abc", "(%w)", "%2" }, { "abc", "()", "%1" }, { "abc", "b()", "[%1]" }, { "abc", "b", "%" },
      { "abc", "b", "%x" }, { "abc", "b", "%%" }, { "abc", "b", 7 }, { "abc", "b", 7.5 }, { "abc", "b", true },
      { "abc", "b", nil }, { "abc", "b", { b = 1 } }, { "abc", "b", { b = {} } }, { "abc", "(b)", { b = "B" } },
      { "abc", "()b", { [2] = "two" } }, { "abc", "b", "x", "y" }, { "abc", "(b", "x" }, { "abc", "b)", "x" },
      { "$name is $age", "%$(%w+)", { name = "tide", age = 3 } }, { "abc", ".", "%0%0", 2.0 },
      { "abc", ".", "%0", 2.5 },
    }
    for _, c in ipairs(cases) do
      local a = show(pack_call(stock.gsub, c[1], c[2], c[3], c[4]))
      local b = show(pack_call(ours.gsub, c[1], c[2], c[3], c[4]))
      check("gsub", a, b, describe_case(c[1], c[2], c[3], c[4]))
    end
    -- errors raised by the replacement function pass through unchanged
    local function boom() error("boom") end
    check("gsub error", show(pack_call(stock.gsub, "abc", "b", boom)), show(pack_call(ours.gsub, "abc", "b", boom)), "")
    -- arguments
    for _, args in ipairs({ {}, { "a" }, { {}, "a" }, { "a", {} }, { "a", "a", 1, "x" } }) do
      for _, f in ipairs({ "find", "match", "gmatch", "gsub" }) do
        check(f .. " args", show(pack_call(stock[f], table.unpack(args, 1, 4))),
          show(pack_call(ours[f], table.unpack(args, 1, 4))), describe_case(table.unpack(args, 1, 4)))
      end
    end
    assert_no_failures(#cases)
  end)

  it("agree on gmatch's init and empty matches (5.4 semantics)", function()
    local cases = {
      { "hello world from Lua", "%a+" }, { "abc", "" }, { "abc", "x*" }, { "abc", "()" }, { "k=v, a=b", "(%w+)=(%w+)" },
      { "abc", "^a" }, { "^abc", "^a" }, { "hello", "l", 4 }, { "hello", "", -2 }, { "hello", ".", 10 },
      { "hello", ".", -10 }, { "aaa", "a-" }, { "abab", "()ab" },
    }
    for _, c in ipairs(cases) do compare(c[1], c[2], c[3]) end
    assert_no_failures(#cases)
  end)

  it("agree on 6000 random patterns, subjects and inits", function()
    math.randomseed(54321)
    local count = 0
    for _ = 1, 6000 do
      local s = random_subject(math.random(0, 16))
      local p = random_pattern()
      local init = INITS[math.random(#INITS + 3)]
      local repl = REPLS[math.random(#REPLS)]
      compare(s, p, init, repl, math.random(4) == 1 and math.random(-1, 3) or nil)
      count = count + 1
    end
    assert_no_failures(count)
  end)

  it("agree on 3000 random cases over two letters, where backtracking goes deeper", function()
    math.randomseed(2024)
    local items = { "a", "b", ".", "[ab]", "[^a]", "%a", "(a)", "(b+)", "(.-)", "()", "%1", "%2", "%bab", "%f[b]" }
    local single = { a = true, b = true, ["."] = true, ["[ab]"] = true, ["[^a]"] = true, ["%a"] = true }
    local quants = { "", "", "*", "+", "-", "?" }
    local count = 0
    for _ = 1, 3000 do
      local t = {}
      for i = 1, math.random(5) do
        local it = items[math.random(#items)]
        t[i] = it .. (single[it] and quants[math.random(#quants)] or "")
      end
      local s = {}
      for i = 1, math.random(0, 24) do s[i] = math.random(3) == 1 and "b" or "a" end
      compare(table.concat(s), (math.random(4) == 1 and "^" or "") .. table.concat(t), INITS[math.random(#INITS)],
        math.random(2) == 1 and "function" or "[%0]")
      count = count + 1
    end
    assert_no_failures(count)
  end)

  it("agree on plain finds, with memmem and with the two-way search", function()
    math.randomseed(777)
    local two_way = core.patterns({ two_way_from = 1 })
    local alphabets = { "ab", "abc", "a", "ab\0", "abcdefghijklmnop" }
    local count = 0
    for _ = 1, 3000 do
      local abc = alphabets[math.random(#alphabets)]
      local function word(n)
        local t = {}
        for i = 1, n do local k = math.random(#abc) t[i] = abc:sub(k, k) end
        return table.concat(t)
      end
      local h = word(math.random(0, 60))
      local n
      if math.random(3) == 1 and #h > 0 then -- a piece of h, maybe changed
        local i = math.random(#h)
        n = h:sub(i, i + math.random(0, 12))
        if math.random(2) == 1 then n = n .. word(1) end
      else
        n = word(math.random(0, 8))
      end
      local init = INITS[math.random(#INITS + 3)]
      local a = show(pack_call(stock.find, h, n, init, true))
      check("plain", a, show(pack_call(ours.find, h, n, init, true)), describe_case(h, n, init))
      check("two-way", a, show(pack_call(two_way.find, h, n, init, true)), describe_case(h, n, init))
      count = count + 1
    end
    -- Needles whose first byte is everywhere: memchr gives way to memmem's
    -- windows.  With a needle of 9001 bytes that happens at offset 8 and
    -- the windows take 9001 starts each, so a match at 1-based position
    -- 18009 - 9000 is the last of the first window (pattern.c's
    -- find_plain): matches around the first two windows' edges.
    local k = 9000
    local needle = ("a"):rep(k) .. "b"
    for _, q in ipairs({ 18006, 18007, 18008, 18009, 18010, 18011, 27009, 27010, 27011 }) do
      local hay = ("a"):rep(q - 1) .. "b" .. ("a"):rep(100)
      check("windows", show(pack_call(stock.find, hay, needle, 1, true)),
        show(pack_call(ours.find, hay, needle, 1, true)), k .. "/" .. q)
      count = count + 1
    end
    for _, k2 in ipairs({ 3, 50, 300 }) do
      local needle2 = ("a"):rep(k2) .. "b"
      for _, q in ipairs({ 70000, 100001 }) do
        local hay = ("a"):rep(q - 1) .. "b" .. ("a"):rep(100)
        check("windows", show(pack_call(stock.find, hay, needle2, 1, true)),
          show(pack_call(ours.find, hay, needle2, 1, true)), k2 .. "/" .. q)
        count = count + 1
      end
    end
    -- Long needles (the two-way search by default), periodic and not.
    local hay = ("ab"):rep(100000) .. "abc" .. ("ab"):rep(1000)
    for _, needle in ipairs({ ("ab"):rep(40000) .. "c", ("ab"):rep(40000), "b" .. ("ab"):rep(40000) .. "c",
      ("ab"):rep(40000) .. "d", ("x"):rep(70000) }) do
      for _, init in ipairs({ 1, -90000 }) do
        check("long", show(pack_call(stock.find, hay, needle, init, true)),
          show(pack_call(ours.find, hay, needle, init, true)), #needle .. "@" .. init)
        count = count + 1
      end
    end
    assert_no_failures(count)
  end)
end)

describe("the pattern functions' steps", function()
  it("are counted for every call, in proportion to the work", function()
    local str = core.patterns()
    for _ = 1, 10000 do str.find("hello world", "o") end -- short calls pay once they add up
    assert.is_true(core.pattern_steps() >= 10000 - 4096)
    local before = core.pattern_steps()
    str.find(("x"):rep(100000), "y+") -- a character test at each place
    assert.is_true(core.pattern_steps() - before >= 100000)
    before = core.pattern_steps()
    str.find(("x"):rep(100000), "y", 1, true) -- memchr: a step for 16 bytes
    assert.is_true(core.pattern_steps() - before >= 100000 / 16)
  end)

  it("of a plain find grow with the haystack, whatever the needle", function()
    -- Stock Lua compares the needle at each place its first byte occurs:
    -- seconds for the first of these.
    local hay = ("a"):rep(1000000)
    for _, needle in ipairs({ ("a"):rep(499999) .. "b", ("a"):rep(99) .. "b" .. ("a"):rep(100),
      ("a"):rep(30000) .. "b", "b" .. ("a"):rep(70000) }) do
      local str = core.patterns()
      local t0 = os.clock()
      assert.is_nil(str.find(hay, needle, 1, true))
      local steps = core.pattern_steps()
      assert.is_true(steps >= #hay / 2 and steps <= 3 * #hay, #needle .. ": " .. steps .. " steps")
      assert.is_true(os.clock() - t0 < 0.5, #needle .. (": took %.2f s of CPU"):format(os.clock() - t0))
    end
  end)

  -- Each of these takes seconds to minutes in one C call of stock Lua.
  local attacks = {
    { "a long run of '.'", function(f) return f.find(("a"):rep(200000), ("."):rep(300000)) end },
    { "%b over unbalanced text", function(f) return f.find(("("):rep(200000), "%b()") end },
    { "nested repetitions", function(f) return f.find(("a"):rep(5000), ".-.-.-b") end },
    { "gmatch over unbalanced text", function(f) for _ in f.gmatch(("("):rep(200000), "%b()") do end end },
    { "a back-reference to a long capture", function(f) return f.find(("a"):rep(100000), "(.*)%1b") end },
    { "a long set", function(f) return f.find(("a"):rep(100000), "[" .. ("b"):rep(100000) .. "]") end },
  }
  for _, attack in ipairs(attacks) do
    it("stop " .. attack[1] .. " at the limit, a check at least every 4096 steps", function()
      local limit = 2000000
      local str = core.patterns({ limit = limit })
      local t0 = os.clock()
      local ok, err = pcall(attack[2], str)
      local took = os.clock() - t0
      assert.is_false(ok)
      assert.matches("step limit reached", err)
      -- the largest single payment is a memmem window or a long comparison
      assert.is_true(core.pattern_steps() <= limit + 200000, "steps: " .. core.pattern_steps())
      assert.is_true(took < 1, ("took %.2f s of CPU"):format(took))
    end)
  end
end)
