-- Changed events without a tree (docs/scripting.md, "Decoding"): a rule's
-- writes of strings, numbers, booleans and tide.null to members of objects
-- are kept against the payload's index and spliced into its original text.
-- What a rule reads and what subscribers get must be exactly what the
-- document tree gives; every test here checks the two ways against each
-- other and uses the stats to show which way an event took.
local h = require "helpers"
local json = require "dkjson"

local RULES = [==[
-- The writes each case makes (the same for both ways), and what it reads
-- back afterwards (into X-Read).
local cases = {
  function(e) e.data.currency = "EUR" end,
  function(e) e.data.amount = 151 e.data.amount = 152 end,                 -- set twice
  function(e) e.data.s = 'q"uote\\ \n\t\1 caf\195\169 a\0b' end,            -- escapes, UTF-8, a NUL
  function(e) e.data.f = 0.1 e.data.g = 2.0 e.data.big = math.mininteger e.data.e = 1e300 end,
  function(e) e.data.t = true e.data.n = tide.null e.data.b = false end,
  function(e)                                                                -- nested objects
    local d = e.data
    if d.inner then d.inner.z = "z" d.inner.a = 0 end
    if d.empty then d.empty.k = "v" end
    d.list_obj = "x"
  end,
  function(e) e.source = "other" e.version = 9 e.ce_subject = "s" e.extra = 1.5 end,
  function(e) e.data["k\0ey"] = 1 e.data["\"q\""] = 2 e.data[""] = 3 end,   -- keys to escape
  function(e) for i = 1, 12 do e.data["k" .. i] = i end end,                 -- more edits than are kept
  function(e) e.data.long = string.rep("x", 600) end,                        -- more bytes than are kept
  function(e) e.data.amount = "was a number" e.data.name = 7 e.data.nothing = "was null" end,
  function(e) e.data = "data replaced by a string" end,                      -- data was an object: a tree
}

local function read_back(e)
  local d, r = e.data, {}
  r[#r + 1] = tostring(e.version) .. ":" .. math.type(e.version)
  local ty = e.type == e.subject and "(the subject)" or e.type -- the two ways use two subjects
  r[#r + 1] = tostring(ty) .. ":" .. tostring(e.source) .. ":" .. tostring(e.ce_subject) .. ":" .. tostring(e.extra)
  if type(d) ~= "userdata" then
    r[#r + 1] = tostring(d)
    return table.concat(r, "|")
  end
  local keys = {}
  for k, v in pairs(d) do
    local text = type(v) == "userdata" and tostring(v) or type(v) == "number" and string.format("%.17g", v)
      or tide.json.encode(v)
    keys[#keys + 1] = tide.json.encode(k) .. "=" .. text .. ":" .. (math.type(v) or type(v))
  end
  r[#r + 1] = table.concat(keys, ",")
  r[#r + 1] = "#" .. #d
  return table.concat(r, "|")
end

for i, change in ipairs(cases) do
  -- The edits' way: nothing here needs the tree.
  filter("ed.splice." .. i, function(e)
    change(e)
    e.headers["X-Amount"] = tostring(type(e.data) == "userdata" and e.data.amount)
    return true
  end)
  -- The tree's way: tostring() of a value builds the document's tree first.
  filter("ed.tree." .. i, function(e)
    local _ = tostring(e.data)
    change(e)
    e.headers["X-Amount"] = tostring(type(e.data) == "userdata" and e.data.amount)
    return true
  end)
  -- Reading everything back (pairs and # need the tree when an edit
  -- added to the object): after the bytes, so that they are spliced.
  on("ed.splice." .. i, function(e, ctx) ctx.publish("ed.read", read_back(e)) end)
  on("ed.tree." .. i, function(e, ctx) ctx.publish("ed.read", read_back(e)) end)
end

-- The bytes read in the middle of a change, then more changes.
filter("ed.raw", function(e)
  e.data.a = 1
  local first = e.raw
  e.data.b = 2
  e.headers["X-First"] = first
  e.headers["X-Second"] = e.raw
  return true
end)

-- A view kept into an object a write then replaced by a tree.
filter("ed.stale", function(e)
  local obj = e.data.obj
  e.data.x = 1
  e.data.obj = tide.null
  obj.y = 2
  e.headers["X-Old"] = tostring(obj.y) .. ":" .. tostring(e.data.obj)
  return true
end)

-- Removal with nil after edits: the tree gets the edits first.
filter("ed.unset", function(e)
  e.data.a = 5
  e.data.c = 6
  e.data.b = nil
  e.data.a = nil
  return true
end)

-- Reads after writes, in the same rule and in the next.
filter("ed.reads", function(e)
  e.data.n = 42
  e.data.s = "x\0y"
  e.data.f = 0.5
  e.data.t = tide.null
  e.headers["X-Same"] = table.concat({ math.type(e.data.n), tostring(e.data.n), #e.data.s,
    tostring(e.data.f), tostring(e.data.t == tide.null), tostring(e.data.old) }, ",")
  return true
end)
route("ed.reads", function(e)
  e.headers["X-Next"] = table.concat({ tostring(e.data.n), tostring(e.data.s == "x\0y"), tostring(e.data.f) }, ",")
  return nil
end)

-- NaN is refused as it always was.
filter("ed.nan", function(e)
  local ok, err = pcall(function() e.data.v = 0 / 0 end)
  e.headers["X-Nan"] = tostring(ok) .. ":" .. tostring(err):gsub("^[^:]*:%d+: ", "")
  return true
end)

-- Upgraders: one that adds a field (the bench's), a chain, a type written
-- with an escape, a version written as a float, and one that fails.
upgrade("up.order", 1, function(e) e.data.currency = "EUR" return e end)
upgrade("up.chain", 1, function(e) e.data.v2 = true end)
upgrade("up.chain", 2, function(e) e.data.v3 = true end)
upgrade("up.chain", 3, function(e) e.data.v4 = true end)
upgrade("up.fails", 1, function(e) e.data.x = 1 error("upgrader-breaks") end)
-- An event without a type has its subject's: renaming it renames the type.
upgrade("up.sub", 1, function(e) e.subject = "up.sub2" end)
upgrade("up.sub2", 2, function(e) e.data.two = true end)
-- Upgraders registered while events flow: a new start, a new last step.
on("up.add", function(e)
  upgrade("up.late", 1, function(e) e.data.late = true end)
  upgrade("up.chain", 4, function(e) e.data.v5 = true end)
end)
]==]

local srv

local function listener(...)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  for i, s in ipairs { ... } do c:sub(s, tostring(i)) end
  assert(c:until_pong())
  return c
end

local function publish(subject, payload)
  local c = h.connect(srv.port)
  c:pub(subject, payload)
  assert(c:until_pong())
  c:close()
end

-- Publishes one event on subject; returns what was delivered on it and on
-- the other subjects listened to.
local function roundtrip(subject, payload, ...)
  local c = listener(subject, ...)
  publish(subject, payload)
  local msgs = assert(c:until_pong())
  c:close()
  return msgs
end

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

local function counts()
  local s = h.stats(srv.port).scripts
  return s.spliced, s.reencoded
end

-- Compact documents (whitespace makes the tree's printing the way).
local DOCS = {
  '{"specversion":"1.0","id":"1","type":"t","source":"bench","data":{"amount":150,"pad":"xxxx"}}',
  '{"data":{"amount":1.10,"name":"caf\\u00e9 \\ud83d\\ude00","big":12345678901234567890,"nothing":null,' ..
    '"inner":{"a":[1,{"b":[]}],"z":"\\/"},"empty":{},"list_obj":[{}],"k\\u0000ey":0,"\\"q\\"":-0,"":1e400},' ..
    '"version":1,"type":"typed"}',
  '{"data":{}}',
  '{"data":{"inner":{},"empty":{},"list_obj":{"deep":[[[]]]}},"extra":null}',
}

setup(function()
  srv = h.start_scripted(RULES)
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("scalar writes kept as edits", function()
  it("give the bytes, headers and reads the tree gives, splicing only what they can", function()
    local cases = 12
    local spliced, tree = 0, 0
    for d, doc in ipairs(DOCS) do
      for i = 1, cases do
        local s0, r0 = counts()
        local a = roundtrip("ed.splice." .. i, doc, "ed.read")
        local s1, r1 = counts()
        local b = roundtrip("ed.tree." .. i, doc, "ed.read")
        local s2, r2 = counts()
        local what = ("document %d, case %d"):format(d, i)
        assert.are.equal(2, #a, what)
        assert.are.equal(2, #b, what)
        assert.are.equal(b[1].payload, a[1].payload, what)
        assert.are.equal(header(b[1], "X-Amount"), header(a[1], "X-Amount"), what)
        assert.are.equal(b[2].payload, a[2].payload, what .. " (read back)")
        assert(json.decode(a[1].payload), what .. ": not JSON: " .. a[1].payload)
        -- The tree's way always prints from the tree.
        assert.are.same({ 0, 1 }, { s2 - s1, r2 - r1 }, what)
        spliced, tree = spliced + (s1 - s0), tree + (r1 - r0)
        -- Cases 9, 10 and 12 need the tree (too many edits, too many
        -- bytes, an object replaced); so does case 6 where list_obj was an
        -- array or an object.
        local needs_tree = i == 9 or i == 10 or i == 12 or (i == 6 and (d == 2 or d == 4))
        assert.are.same(needs_tree and { 0, 1 } or { 1, 0 }, { s1 - s0, r1 - r0 }, what)
      end
    end
    assert(spliced >= 30, "spliced " .. spliced)
  end)

  it("keep the untouched bytes exactly, with the changes written in place or at the object's end", function()
    local doc = '{"specversion":"1.0","id":"j-1","data":{"zeta":1.10,"big":12345678901234567890,' ..
      '"u":"caf\\u00e9 \\u0000","dup":1,"nested":[{"b":1},{}],"amount":150,"empty":{}},"x":[]}'
    local s0, r0 = counts()
    local m = roundtrip("ed.splice.2", doc)[1]
    assert.are.equal((doc:gsub('"amount":150', '"amount":152')), m.payload)
    m = roundtrip("ed.splice.6", '{"data":{"inner":{"q":1},"empty":{},"list_obj":1}}')[1]
    assert.are.equal('{"data":{"inner":{"q":1,"z":"z","a":0},"empty":{"k":"v"},"list_obj":"x"}}', m.payload)
    m = roundtrip("ed.splice.7", '{"type":"t","data":1}')[1]
    assert.are.equal('{"type":"t","data":1,"source":"other","version":9,"subject":"s","extra":1.5}', m.payload)
    m = roundtrip("ed.splice.3", '{"data":{}}')[1]
    assert.are.equal('{"data":{"s":"q\\"uote\\\\ \\n\\t\\u0001 caf\195\169 a\\u0000b"}}', m.payload)
    local s1, r1 = counts()
    assert.are.same({ 4, 0 }, { s1 - s0, r1 - r0 })
  end)

  it("print from the tree a document with whitespace, as before", function()
    local s0, r0 = counts()
    local m = roundtrip("ed.splice.1", '{ "data" : { "amount" : 1.10 } }\n')[1]
    assert.are.equal('{"data":{"amount":1.10,"currency":"EUR"}}', m.payload)
    local s1, r1 = counts()
    assert.are.same({ 0, 1 }, { s1 - s0, r1 - r0 })
  end)

  it("leave an event no rule changed with its bytes and count nothing", function()
    local doc = '{"data":{"amount":150}}'
    local s0, r0 = counts()
    local m = roundtrip("ed.unknown", doc)[1]
    assert.are.equal(doc, m.payload)
    local s1, r1 = counts()
    assert.are.same({ 0, 0 }, { s1 - s0, r1 - r0 })
  end)

  it("splice again after the bytes were read in the middle of the changes", function()
    local m = roundtrip("ed.raw", '{"data":{"z":0}}')[1]
    assert.are.equal('{"data":{"z":0,"a":1}}', header(m, "X-First"))
    assert.are.equal('{"data":{"z":0,"a":1,"b":2}}', header(m, "X-Second"))
    assert.are.equal('{"data":{"z":0,"a":1,"b":2}}', m.payload)
  end)

  it("do not let a view into a replaced object reach the output", function()
    local m = roundtrip("ed.stale", '{"data":{"obj":{"k":1},"w":0}}')[1]
    assert.are.equal("2:null", header(m, "X-Old"))
    assert.are.equal('{"data":{"obj":null,"w":0,"x":1}}', m.payload)
  end)

  it("apply the edits before a removal with nil", function()
    local m = roundtrip("ed.unset", '{"data":{"a":1,"b":2}}')[1]
    assert.are.equal('{"data":{"c":6}}', m.payload)
  end)

  it("are read back at once and by the next rules", function()
    local m = roundtrip("ed.reads", '{"data":{"n":"old","old":true}}')[1]
    assert.are.equal("integer,42,3,0.5,true,true", header(m, "X-Same"))
    assert.are.equal("42,true,0.5", header(m, "X-Next"))
    assert.are.equal('{"data":{"n":42,"old":true,"s":"x\\u0000y","f":0.5,"t":null}}', m.payload)
  end)

  it("refuse NaN as JSON, as before", function()
    local m = roundtrip("ed.nan", '{"data":{}}')[1]
    assert.are.equal("false:cannot encode NaN as JSON", header(m, "X-Nan"))
    assert.are.equal('{"data":{}}', m.payload)
  end)
end)

describe("the upgrader chain", function()
  it("splices the upgrader's field and the new version into the original bytes", function()
    local doc = '{"specversion":"1.0","id":"7","type":"up.order","source":"bench","data":{"amount":150,"pad":"xx"}}'
    local s0, r0 = counts()
    local m = roundtrip("up.order", doc)[1]
    assert.are.equal('{"specversion":"1.0","id":"7","type":"up.order","source":"bench",' ..
      '"data":{"amount":150,"pad":"xx","currency":"EUR"},"version":2}', m.payload)
    local s1, r1 = counts()
    assert.are.same({ 1, 0 }, { s1 - s0, r1 - r0 })
  end)

  it("finds each step again for events of one type at different versions, in any order", function()
    local want = {
      [1] = '"data":{"v2":true,"v3":true,"v4":true}}',
      [2] = '"data":{"v3":true,"v4":true}}',
      [3] = '"data":{"v4":true}}',
    }
    for _, v in ipairs { 1, 2, 3, 1, 3, 2, 2, 1, 4, 5 } do
      local doc = '{"type":"up.chain","version":' .. v .. ',"data":{}}'
      local m = roundtrip("up.chain", doc)[1]
      if want[v] then
        assert.are.equal('{"type":"up.chain","version":4,' .. want[v], m.payload)
      else
        assert.are.equal(doc, m.payload) -- no upgrader for v4 or v5: untouched
      end
    end
  end)

  it("reads a type written with escapes and a version written as a float as scripts do", function()
    local m = roundtrip("up.chain", '{"type":"up\\u002echain","version":3,"data":{}}')[1]
    assert.are.equal('{"type":"up\\u002echain","version":4,"data":{"v4":true}}', m.payload)
    -- 3.0 is a float: not an integer version, so the event is at version 1
    m = roundtrip("up.chain", '{"type":"up.chain","version":3.0,"data":{}}')[1]
    assert.are.equal('{"type":"up.chain","version":4,"data":{"v2":true,"v3":true,"v4":true}}', m.payload)
  end)

  it("follows a type that changed with the subject, and the first of repeated type and version keys", function()
    local c = listener("up.sub", "up.sub2")
    publish("up.sub", '{"data":{}}')
    local msgs = assert(c:until_pong())
    c:close()
    assert.are.equal(1, #msgs)
    assert.are.equal("up.sub2", msgs[1].subject)
    assert.are.equal('{"data":{"two":true},"version":3}', msgs[1].payload)
    -- version 2 (the first) is read; setting it leaves one pair, as the tree does
    local m = roundtrip("up.chain", '{"type":"up.chain","version":2,"type":"x","version":1,"data":{}}')[1]
    assert.are.equal('{"type":"up.chain","version":4,"type":"x","data":{"v3":true,"v4":true}}', m.payload)
  end)

  it("takes in upgraders registered after events of their type went through", function()
    -- (naming a known upgrader's type, so that the chain looks up up.late)
    local late, chain = '{"type":"up.late","data":{"see":"up.order"}}', '{"type":"up.chain","data":{}}'
    assert.are.equal('{"type":"up.chain","data":{"v2":true,"v3":true,"v4":true},"version":4}',
      roundtrip("up.chain", chain)[1].payload)
    assert.are.equal(late, roundtrip("up.late", late)[1].payload)
    publish("up.add", "{}")
    assert.are.equal('{"type":"up.late","data":{"see":"up.order","late":true},"version":2}',
      roundtrip("up.late", late)[1].payload)
    assert.are.equal('{"type":"up.chain","data":{"v2":true,"v3":true,"v4":true,"v5":true},"version":5}',
      roundtrip("up.chain", chain)[1].payload)
  end)

  it("dead-letters an event whose upgrader fails, unchanged, naming the upgrader", function()
    local doc = '{"type":"up.fails","data":{"a":1}}'
    local msgs = roundtrip("up.fails", doc, "$TIDE.DEAD.>")
    assert.are.equal(1, #msgs)
    assert.are.equal("$TIDE.DEAD.up.fails", msgs[1].subject)
    assert.are.equal(doc, msgs[1].payload)
    assert.are.equal("upgrade", header(msgs[1], "Tide-Stage"))
    assert(header(msgs[1], "Tide-Error"):find("upgrader-breaks", 1, true))
    assert.matches("tide%.lua:%d+$", header(msgs[1], "Tide-Script"))
  end)
end)
