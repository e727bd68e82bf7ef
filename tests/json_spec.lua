-- Lossless JSON (docs/scripting.md, "JSON values"): what scripts do not
-- touch reaches subscribers exactly as it was published, byte for byte.
local h = require "helpers"
local json = require "dkjson"

local RULES = [==[
-- Reads the whole document, changes nothing.
local function walk(v)
  if type(v) == "userdata" then
    local n = #v
    for _, x in pairs(v) do walk(x) end
    return n
  end
end
filter("same.>", function(e)
  walk(e.data)
  local _ = e.id, e.type, e.version, e.specversion, e.headers["X-Any"], tostring(e.data)
  return true
end)

filter("change.>", function(e)
  e.data.x = 1
  return true
end)

filter("change.range", function(e)
  local d = e.data
  e.headers["X-Read"] = string.format("%s %.17g %s %.17g", math.type(d.past_u64), d.past_u64,
    math.type(d.below_i64), d.below_i64)
  return true
end)

filter("change.nul", function(e)
  e.headers["X-Len"] = tostring(#e.data.s)
  return true
end)

filter("order", function(e)
  local keys = {}
  for k in pairs(e.data) do keys[#keys + 1] = k end
  local items = {}
  for i, v in pairs(e.data.list) do items[#items + 1] = i .. "=" .. tostring(v) end
  e.headers["X-Keys"] = table.concat(keys, ",")
  e.headers["X-Items"] = table.concat(items, ",") .. ";#" .. #e.data.list .. ";#" .. #e.data
  return true
end)

filter("nulls", function(e)
  local d = e.data
  e.headers["X-Null"] = table.concat({
    tostring(d.n == tide.null), tostring(d.missing == nil), tostring(d.n ~= nil),
    tostring(d.n), tostring(d.list[2] == tide.null), tostring(tide.null == nil),
  }, ",")
  d.set_null = tide.null
  return true
end)

filter("ints", function(e)
  local d = e.data
  e.headers["X-Types"] = table.concat({
    math.type(d.amount), math.type(d.small), math.type(d.float_one), math.type(d.big),
    string.format("%.17g", d.big),
  }, ",")
  d.amount = d.amount + 0
  d.next = d.amount + 1
  d.product = d.small * 3
  return true
end)

filter("assign", function(e)
  e.data.t = { b = 1, a = 2, c = { z = 1, y = {}, x = tide.array() }, list = { 3, 2, 1 } }
  e.data.empty_array = tide.array {}
  e.data.empty_object = {}
  e.data.filled = tide.array { "a" }
  e.data.floats = { 0.1, 2.0, 1 / 3, 1e300, -0.5 }
  e.data.copy = e.data.src
  e.data.copy.inner = "changed"
  return true
end)

filter("codec", function(e)
  local dec, err = tide.json.decode("{bad")
  local ok_nan = pcall(tide.json.encode, 0 / 0)
  local ok_inf = pcall(tide.json.encode, math.huge)
  local v = tide.json.decode('{"b":[1,{"c":null}],"a":1.50}')
  e.headers["X-Codec"] = table.concat({
    tide.json.encode({ b = 1, a = { 1, "two", false } }),
    tide.json.encode({}), tide.json.encode(tide.array()), tide.json.encode(tide.null),
    tostring(dec), tostring(err), tostring(ok_nan), tostring(ok_inf),
    tostring(v), tostring(v.a), tostring(#v),
  }, " | ")
  return true
end)

filter("decode.nested", function(e)
  local v = tide.json.decode('{"b":[1,{"c":null,"d":[true]}],"a":{"k":"v"}}')
  local b, a = v.b, v.a
  e.headers["X-Nested"] = table.concat({
    type(b), type(a), tostring(b and #b), tostring(b and b[2] and b[2].c == tide.null),
    tostring(b and b[2] and b[2].d[1]), tostring(a and a.k),
  }, ",")
  return true
end)

filter("stale", function(e)
  local obj, list, first = e.data.obj, e.data.list, e.data.list[1]
  e.data.obj = 1     -- replaced
  e.data.list = nil  -- removed
  local r = { tostring(obj.k), tostring(obj), tostring(first.q), tostring(list[2]), tostring(#list) }
  local whole = e.data
  e.data = { z = 1 } -- all of data replaced
  r[#r + 1] = tostring(whole.n) .. "/" .. tostring(whole.obj)
  e.headers["X-Stale"] = table.concat(r, ",")
  return true
end)

-- Values read from the payload's bytes (before any write), then a write.
filter("view.follow", function(e)
  local d = e.data
  local obj, list = d.obj, d.list
  local before = obj.k
  local r = { before, tostring(#list), tostring(#obj), tostring(list[3]), tostring(list[4]), tostring(d["a\0b"]) }
  e.data.obj.k = "new" -- the first write builds the tree; views read before follow it
  r[#r + 1] = obj.k
  r[#r + 1] = d.obj.k
  r[#r + 1] = tostring(list[2])
  list[1] = 10
  r[#r + 1] = tostring(e.data.list[1])
  e.headers["X-View"] = table.concat(r, ",")
  return true
end)

-- Writes strings that need escapes next to the payload's own (printed as
-- written), over an existing key, as a new key and as a copied subtree.
filter("view.mix", function(e)
  local d = e.data
  d.k = 'q"b\\\n\1/\195\169'
  d.list[2] = "t\tab"
  d['n"k'] = "v"
  d.copy = d.obj
  return true
end)

filter("view.read", function(e)
  local d = e.data
  local keys, sum = {}, 0
  for k, v in pairs(d) do keys[#keys + 1] = k end
  for _, v in pairs(d.big) do sum = sum + v end
  e.headers["X-Read"] = table.concat({ table.concat(keys, " "), tostring(#d.big), tostring(sum),
    tostring(d.big[100]), tostring(d.big[101]), tostring(d.esc), tostring(d.abc), tostring(d.dup),
    tostring(d.neg), math.type(d.neg), tostring(d.long), math.type(d.long), tostring(d["\u{e9}t\u{e9}"]),
    tostring(d.s), tostring(e.type), tostring(e.version), tostring(e.id) }, "|")
  return true
end)

filter("view.raw", function(e)
  e.headers["X-Raw"] = table.concat({ tostring(e.data), type(e.data), tostring(e.type), tostring(e.version),
    tostring(#e.raw) }, "|")
  return true
end)

-- What a rule is handed for a payload: e.data's type and JSON text, e.type, the bytes.
filter("strict", function(e)
  local d = e.data
  local text = d == nil and "nil" or tide.json.encode(d)
  e.headers["X-Seen"] = table.concat({ type(d), text, tostring(e.type), tostring(#e.raw) }, "|")
  return true
end)
filter("strict.bin", function(e)
  local d = e.data
  local text = type(d) == "string" and d:gsub("%z", "\\0") or tide.json.encode(d)
  e.headers["X-Seen"] = table.concat({ type(d), text, tostring(e.type), tostring(#e.raw) }, "|")
  return true
end)

filter("strict.decode", function(e)
  local r = {}
  for _, s in ipairs { '"a\tb"', '"a\0b"', "012", "2.", "-.5", "1e", "+1", ".5", "0.e1", "1.5e+", "-01",
      "\f1", "[1,\0 2]", "[1] x", "\239\187\191 7", '"\\uZZZZ"', '"\\udc00"', '"\\ud800"',
      '"\\ud800\\u0041"', '"\255"', '"\192\175"', '"\237\160\128"', '"\244\144\128\128"' } do
    local v, err = tide.json.decode(s)
    r[#r + 1] = tostring(v) .. "/" .. tostring(err)
  end
  for _, s in ipairs { '"\\u0000"', " [ 0, -0, 1e5, 1E+5, -1.5e-3 ]\r\n", '"\240\159\152\128\127"' } do
    local v = tide.json.decode(s)
    r[#r + 1] = tide.json.encode(v)
  end
  e.headers["X-Decode"] = table.concat(r, " ")
  return true
end)

-- A raw event that becomes an envelope: its bytes are the data.
filter("raw.promote", function(e)
  e.id = "p-1"
  return true
end)

-- Strings holding NUL (as \u0000), in values and keys: read, copied, written.
filter("nul.use", function(e)
  local d = e.data
  local s, keys = d.s, {}
  for k, v in pairs(d.obj) do keys[#keys + 1] = #k .. ":" .. tide.json.encode(k) .. "=" .. tide.json.encode(v) end
  e.headers["X-Nul"] = table.concat({ #s, tostring(s == "a\0b"), tide.json.encode(s), tide.json.encode(d.obj["k\0ey"]),
    tostring(d.obj.k), tostring(d.obj["k\0"]), table.concat(keys, " "), tostring(d.obj), tostring(#d.obj) }, ",")
  d.copy = s
  d.obj_copy = d.obj
  d.lua = "x\0y"
  d.t = { ["n\0k"] = "v\0w" }
  d.obj["new\0"] = 0
  return true
end)

-- Duplicate keys: each pair once, with its own value; e.data.k is the first.
local function dup_report(e)
  local r = {}
  for k, v in pairs(e.data) do r[#r + 1] = k .. "=" .. tostring(v) end
  return table.concat(r, ",") .. ";" .. tostring(e.data.k) .. ";" .. #e.data
end
filter("dup.read", function(e)
  e.headers["X-Dup"] = dup_report(e)
  return true
end)
filter("dup.other", function(e)
  e.data.x = 1
  e.headers["X-Dup"] = dup_report(e)
  return true
end)
filter("dup.set", function(e)
  e.data.k = 5
  e.headers["X-Dup"] = dup_report(e)
  return true
end)
filter("dup.decode", function(e)
  local d, r = tide.json.decode(e.raw), {}
  for k, v in pairs(d.data) do r[#r + 1] = k .. "=" .. tostring(v) end
  e.headers["X-Dup"] = table.concat(r, ",") .. ";" .. tostring(d.data.k) .. ";" .. #d.data
  return true
end)
filter("dup.unset", function(e)
  e.data.k = nil
  e.headers["X-Dup"] = dup_report(e)
  return true
end)

filter("lazy.subject", function(e)
  return e.subject == "lazy.subject" and e.headers["X-Keep"] == "yes" and e.reply == nil
end)
filter("lazy.data", function(e) return e.data.keep == true end)
]==]

local srv

local function listener(...)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  for i, s in ipairs { ... } do c:sub(s, tostring(i)) end
  assert(c:until_pong())
  return c
end

local function publish(subject, payload, headers)
  local c = h.connect(srv.port)
  if headers then c:hpub(subject, headers, payload) else c:pub(subject, payload) end
  assert(c:until_pong())
  c:close()
end

-- Publishes one event on subject and returns the one message delivered for it.
local function roundtrip(subject, payload, headers)
  local c = listener(subject)
  publish(subject, payload, headers)
  local msgs = assert(c:until_pong())
  c:close()
  assert.are.equal(1, #msgs, "expected one delivery on " .. subject)
  return msgs[1]
end

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

-- A document with every form that a re-encoding could lose.
local DOC = '{\n  "specversion" : "1.0",\t"id":"j-1",\n  "data": {\n' ..
  '    "zeta": 1.10, "alpha": null, "empty_a": [ ], "empty_o": { },\n' ..
  '    "big": 12345678901234567890, "min": -9223372036854775808, "max": 9223372036854775807,\n' ..
  '    "huge": 1e400, "tiny": -1E-400, "exp": 2.5E-3, "frac": 0.000100, "int_float": 100.0,\n' ..
  '    "u": "caf\\u00e9 \\ud83d\\ude00 \\u0000 \\/ \\"q\\"", "utf8": "été",\n' ..
  '    "nested": [ {"b": 1, "a": [ {}, [] ]}, {"c": [1.0, true, false, null]} ],\n' ..
  '    "x": 0\n  }\n}\n'

setup(function()
  srv = h.start_scripted(RULES)
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("an unchanged event", function()
  it("is delivered with exactly the published bytes", function()
    local m = roundtrip("same.doc", DOC)
    assert.are.equal(DOC, m.payload)
  end)

  it("keeps its headers and bytes exactly, also for top-level arrays and scalars", function()
    local hdr = "NATS/1.0\r\nX-Any: 1\r\nx-any: two\r\nTrace:  spaced  \r\n\r\n"
    local m = roundtrip("same.hdr", DOC, hdr)
    assert.are.equal(hdr, m.headers)
    assert.are.equal(DOC, m.payload)
    for _, p in ipairs { "[ 1.10, {}, [] , null ]", " 12345678901234567890 ", '"\\u00e9"', "null", "-0", "1e400" } do
      assert.are.equal(p, roundtrip("same.scalar", p).payload)
    end
  end)
end)

describe("a changed event", function()
  it("keeps the untouched parts exact: key order, number text, null, [] vs {}, big integers", function()
    local doc = '{\n  "specversion" : "1.0", "id":"j-1",\n  "data": {\n' ..
      '    "zeta": 1.10, "alpha": null, "empty_a": [ ], "empty_o": { },\n' ..
      '    "big": 12345678901234567890, "min": -9223372036854775808, "max": 9223372036854775807,\n' ..
      '    "huge": 1e400, "tiny": -1E-400, "exp": 2.5E-3, "frac": 0.000100, "int_float": 100.0,\n' ..
      '    "s": "tab\\tq\\"uote", "nested": [ {"b": 1, "a": [ {}, [] ]}, {"c": [1.0, true, false, null]} ],\n' ..
      '    "x": 0, "last": "end"\n  }\n}\n'
    local m = roundtrip("change.doc", doc)
    assert.are.equal('{"specversion":"1.0","id":"j-1","data":{' ..
      '"zeta":1.10,"alpha":null,"empty_a":[],"empty_o":{},' ..
      '"big":12345678901234567890,"min":-9223372036854775808,"max":9223372036854775807,' ..
      '"huge":1e400,"tiny":-1E-400,"exp":2.5E-3,"frac":0.000100,"int_float":100.0,' ..
      '"s":"tab\\tq\\"uote","nested":[{"b":1,"a":[{},[]]},{"c":[1.0,true,false,null]}],' ..
      '"x":1,"last":"end"}}', m.payload)
  end)

  it("adds a new key after the existing ones", function()
    local m = roundtrip("change.add", '{"data":{"b":2,"a":1}}')
    assert.are.equal('{"data":{"b":2,"a":1,"x":1}}', m.payload)
  end)

  it("keeps unicode text (escaped or not) as the same characters", function()
    local m = roundtrip("change.u", '{"data":{"u":"caf\\u00e9 \\ud83d\\ude00","r":"été"}}')
    local env = json.decode(m.payload)
    assert.are.equal("café 😀", env.data.u)
    assert.are.equal("été", env.data.r)
    assert.are.equal(1, env.data.x)
  end)

  it("keeps a string holding \\u0000 whole, read and written back", function()
    local m = roundtrip("change.nul", '{"data":{"s":"a\\u0000b","x":0}}')
    assert.are.equal("3", header(m, "X-Len"))
    local env = json.decode(m.payload)
    assert.are.equal("a\0b", env.data.s)
    assert.are.equal(1, env.data.x)
    assert.are.equal('{"data":{"s":"a\\u0000b","x":1}}', m.payload)
  end)

  it("reads integers outside 64 bits as floats and writes them back exactly when untouched", function()
    local m = roundtrip("change.range", '{"data":{"past_u64":123456789012345678901234567890,' ..
      '"below_i64":-9223372036854775809,"x":0}}')
    assert.are.equal("float 1.2345678901234568e+29 float -9.2233720368547758e+18", header(m, "X-Read"))
    assert.are.equal('{"data":{"past_u64":123456789012345678901234567890,' ..
      '"below_i64":-9223372036854775809,"x":1}}', m.payload)
  end)

  it("keeps the text of -0", function()
    local m = roundtrip("change.negzero", '{"data":{"z":-0,"x":0}}')
    assert.are.equal('{"data":{"z":-0,"x":1}}', m.payload)
  end)
end)

describe("JSON values in Lua", function()
  it("iterate objects in document order; arrays by index", function()
    local m = roundtrip("order", '{"data":{"zeta":1,"alpha":2,"mid":3,"list":["c","a","b"]}}')
    assert.are.equal("zeta,alpha,mid,list", header(m, "X-Keys"))
    assert.are.equal("1=c,2=a,3=b;#3;#4", header(m, "X-Items"))
    -- nothing written: the bytes are the original ones
    assert.are.equal('{"data":{"zeta":1,"alpha":2,"mid":3,"list":["c","a","b"]}}', m.payload)
  end)

  it("make null tide.null, distinct from a missing key", function()
    local m = roundtrip("nulls", '{"data":{"n":null,"list":[1,null]}}')
    assert.are.equal("true,true,true,null,true,false", header(m, "X-Null"))
    assert.are.equal('{"data":{"n":null,"list":[1,null],"set_null":null}}', m.payload)
  end)

  it("keep integers integers, 64 bits exact through arithmetic", function()
    local m = roundtrip("ints", '{"data":{"amount":9007199254740993,"small":7,"float_one":1.0,' ..
      '"big":12345678901234567890}}')
    assert.are.equal("integer,integer,float,float,1.2345678901234567e+19", header(m, "X-Types"))
    assert.are.equal('{"data":{"amount":9007199254740993,"small":7,"float_one":1.0,' ..
      '"big":12345678901234567890,"next":9007199254740994,"product":21}}', m.payload)
  end)

  it("write Lua tables with sorted keys, tide.array{} as [], {} as {}, shortest floats", function()
    local m = roundtrip("assign", '{"data":{"src":{"inner":"orig","k":[1]}}}')
    assert.are.equal('{"data":{"src":{"inner":"orig","k":[1]},' ..
      '"t":{"a":2,"b":1,"c":{"x":[],"y":{},"z":1},"list":[3,2,1]},' ..
      '"empty_array":[],"empty_object":{},"filled":["a"],' ..
      '"floats":[0.1,2.0,0.3333333333333333,1e+300,-0.5],' ..
      '"copy":{"inner":"changed","k":[1]}}}', m.payload)
  end)

  it("keep values read before they were replaced or removed readable until the event ends", function()
    local m = roundtrip("stale", '{"data":{"obj":{"k":"v"},"list":[{"q":1},2],"n":1}}')
    assert.are.equal('v,{"k":"v"},1,2,2,1/1', header(m, "X-Stale"))
    assert.are.equal('{"data":{"z":1}}', m.payload)
  end)

  it("tide.json encodes and decodes with the same rules", function()
    local m = roundtrip("codec", "x")
    assert.are.equal(table.concat({
      '{"a":[1,"two",false],"b":1}', "{}", "[]", "null",
      "nil", "invalid JSON", "false", "false",
      '{"b":[1,{"c":null}],"a":1.50}', "1.5", "2",
    }, " | "), header(m, "X-Codec"))
  end)

  it("refuses values JSON cannot hold without leaking what it built", function()
    local s = h.start_scripted([[
filter("enc.fail", function(e)
  local cyc = {}
  cyc.self = cyc
  local r = {}
  for i = 1, 150 do
    r[1] = select(2, pcall(tide.json.encode, cyc))
    r[2] = select(2, pcall(tide.json.encode, { a = { b = { c = 0 / 0 } } }))
    r[3] = select(2, pcall(tide.json.encode, { list = { 1, 2, print } }))
    r[4] = select(2, pcall(function() e.data = { x = { y = math.huge } } end))
  end
  e.headers["X-Errors"] = table.concat(r, " | ")
  return true
end)
]])
    local function rss_kb()
      local f = io.open("/proc/" .. s.pid .. "/status")
      if not f then return nil end
      local text = f:read("a")
      f:close()
      return tonumber(text:match("VmRSS:%s*(%d+)"))
    end
    local ok, err = pcall(function()
      local c = h.connect(s.port)
      c:send('CONNECT {"headers":true}\r\n')
      c:sub("enc.fail", "1")
      assert(c:until_pong())
      c:pub("enc.fail", "warm-up")
      local m = c:collect(1, 5)[1]
      assert(m, "the rule failed: " .. s:log():sub(-500))
      local errors = header(m, "X-Errors")
      assert.matches("nesting deeper than 64", errors)
      assert.matches("NaN", errors)
      assert.matches("cannot encode a function", errors)
      assert.matches("infinity", errors)
      local before = rss_kb()
      for _ = 1, 8 do c:pub("enc.fail", "again") end
      assert.are.equal(8, #c:collect(8, 20))
      local grown = rss_kb() - before
      -- Under ASan freed memory sits in quarantine; there the leak check at exit decides.
      if os.getenv("TIDE_PASS") ~= "asan" then
        assert.is_true(grown < 16 * 1024, ("the server grew by %d KB over 8 events"):format(grown))
      end
      c:close()
    end)
    local st, code = s:stop()
    h.remove_tmpdir(s.dir)
    assert(ok, err)
    assert.are.equal("exited", st)
    assert.are.equal(0, code, "exit code (99: leaks reported by LeakSanitizer)")
  end)

  it("tide.json.decode gives values whose nested objects and arrays can be read", function()
    local m = roundtrip("decode.nested", "x")
    assert.are.equal("userdata,userdata,2,true,true,v", header(m, "X-Nested"))
  end)
end)

describe("values read from the payload's bytes", function()
  it("follow the event once a write gives it a tree", function()
    local m = roundtrip("view.follow", '{"data":{"obj":{"k":"old","j":2},"list":[1,2,"x",null],"a":1}}')
    -- d["a\0b"] is not d.a: keys compare in full, NULs included
    assert.are.equal('old,4,2,x,' .. "null" .. ',nil,new,new,2,10', header(m, "X-View"))
    assert.are.equal('{"data":{"obj":{"k":"new","j":2},"list":[10,2,"x",null],"a":1}}', m.payload)
  end)

  it("read members by escaped keys, in document order, and large documents", function()
    local big = {}
    for i = 1, 100 do big[i] = tostring(i) end
    local payload = '{"type":"t.v","version":3,"id":"i-1","data":{"big":[' .. table.concat(big, ",") ..
      '], "e\\u0073c":"a\\"b\\/", "a\\u0062c" : 1, "dup":1, "dup":2, "neg":-0, "long":' ..
      '123456789012345678901234567890123456789012345678901234567890123456789012, "\\u00e9t\\u00e9":"u",' ..
      ' "s":"\\ud83d\\ude00"}}'
    local m = roundtrip("view.read", payload)
    assert.are.equal('big esc abc dup dup neg long été s|100|5050|100|nil|a"b/|1|1|0|integer|' ..
      '1.2345678901235e+71|float|u|😀|t.v|3|i-1', header(m, "X-Read"))
    assert.are.equal(payload, m.payload)
  end)

  it("print the payload's strings as written and escape those a rule wrote", function()
    local m = roundtrip("view.mix",
      '{"data":{"k":"old","obj":{"\195\169":"\195\169t\195\169","b\\u0041":"x\\/y"},"list":[1,"two"],"z":"keep"}}')
    assert.are.equal('{"data":{"k":"q\\"b\\\\\\n\\u0001/\195\169","obj":{"\195\169":"\195\169t\195\169",' ..
      '"b\\u0041":"x\\/y"},"list":[1,"t\\tab"],"z":"keep","n\\"k":"v",' ..
      '"copy":{"\195\169":"\195\169t\195\169","b\\u0041":"x\\/y"}}}', m.payload)
  end)

  it("leave a payload that is not JSON raw, whatever it starts with", function()
    for _, p in ipairs { '{"data":1} x', '[1,]', '{"a":01x}', '"\\q"', '-', '{"a" 1}', '\1{}' } do
      local m = roundtrip("view.raw", p)
      assert.are.equal("nil|nil|view.raw|1|" .. #p, header(m, "X-Raw"), p)
      assert.are.equal(p, m.payload)
    end
    -- RFC 8259 decides what is JSON: these are not (cJSON took them)
    for _, p in ipairs { '-.5', '1.', '\239\187\191 7', '"\\uZZZZ"', '\0 1' } do
      local m = roundtrip("view.raw", p)
      assert.are.equal("nil|nil|view.raw|1|" .. #p, header(m, "X-Raw"), p)
    end
    local m = roundtrip("view.raw", '\t [ ]\r\n')
    assert.are.equal("[]|userdata|view.raw|1|7", header(m, "X-Raw"))
  end)
end)

describe("lazy decoding", function()
  it("does not parse the payload for a rule that reads only the subject and headers", function()
    local c = listener("lazy.>")
    local before = h.stats(srv.port).scripts
    for i = 1, 5 do
      publish("lazy.subject", '{"data":{"n":' .. i .. '}}', { { "X-Keep", i == 3 and "no" or "yes" } })
    end
    local msgs = assert(c:until_pong())
    assert.are.equal(4, #msgs)
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.events + 5, after.events)
    assert.are.equal(before.decodes, after.decodes)
    c:close()
  end)

  it("parses it once per event for a rule that reads e.data", function()
    local c = listener("lazy.>")
    local before = h.stats(srv.port).scripts
    publish("lazy.data", '{"data":{"keep":true}}')
    publish("lazy.data", '{"data":{"keep":false}}')
    publish("lazy.data", '{"data":{"keep":true}}')
    local msgs = assert(c:until_pong())
    assert.are.equal(2, #msgs)
    assert.are.equal('{"data":{"keep":true}}', msgs[1].payload)
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.decodes + 3, after.decodes)
    c:close()
  end)
end)

-- Publishes each payload on subject (with headers when given) over one
-- connection and returns the messages delivered for them, in order.
local function roundtrip_all(subject, payloads, headers)
  local c = listener(subject)
  local p = h.connect(srv.port)
  p:send('CONNECT {"headers":true}\r\n')
  for _, pl in ipairs(payloads) do
    if headers then p:hpub(subject, headers, pl) else p:pub(subject, pl) end
  end
  assert(p:until_pong())
  p:close()
  local msgs = c:collect(#payloads, 10)
  c:close()
  assert.are.equal(#payloads, #msgs, "deliveries on " .. subject .. "; log: " .. srv:log():sub(-600))
  return msgs
end

local function nest(n, inner)
  return ("["):rep(n) .. (inner or "") .. ("]"):rep(n)
end

-- Not JSON by RFC 8259; each is also tried as the data of an envelope.
local NOT_JSON_VALUES = {
  -- control characters (any byte below 0x20) raw inside a string
  '"a\tb"', '"a\nb"', '"\1"', '"a\0b"', '"\31"',
  -- \u escapes: bad hex, lone low surrogate, high surrogate without a low one
  '"\\uZZZZ"', '"\\u12"', '"\\u00g0"', '"\\udc00"', '"\\ud800"', '"\\ud800x"', '"\\ud800\\u0041"',
  '"\\ud800\\ud800"', '"\\udbff\\n"', '"\\x"', '"\\U0041"',
  -- numbers outside the grammar
  '012', '-01', '2.', '-.5', '0.e1', '+1', '1e', '.5', '1.5e+', '-', '1.e5', '0x10', '1e+', 'NaN',
  '-Infinity', '00', '1.5E', '--1', '1..2', '1ee2',
  -- invalid UTF-8 inside a string: a bad lead byte, a lone continuation, an
  -- overlong form, a surrogate, past U+10FFFF, cut short
  '"\255"', '"\128"', '"\192\175"', '"\224\128\128"', '"\237\160\128"', '"\244\144\128\128"', '"\226\130"',
  '"\248\136\128\128\128"', '"\240\144\128"',
}

-- Not JSON as whole texts: bytes between tokens, NUL, trailing garbage, a BOM.
local NOT_JSON_TEXTS = {
  '\f1', '\v[]', '[1,\0 2]', '\0 1', '1 \0', '[1\31]', '{"a":\0 1}', '[1]\0', '\0',
  '{} x', '[1] ]', '1 2', 'nullx', 'true false', '{"data":1}}', '"a" "b"', '[1,]', '{"a":1,}',
  '\239\187\191 7', '\239\187\191{"data":1}', '\239\187\191',
  nest(1001), '{"data":' .. nest(1000) .. '}',
}

describe("reading strictly by RFC 8259", function()
  it("leaves every text that is not JSON raw: the rule gets no decoded data, the bytes travel as sent", function()
    local payloads = {}
    for _, v in ipairs(NOT_JSON_VALUES) do
      payloads[#payloads + 1] = v
      payloads[#payloads + 1] = '{"specversion":"1.0","data":' .. v .. '}'
      payloads[#payloads + 1] = '[' .. v .. ']'
    end
    for _, t in ipairs(NOT_JSON_TEXTS) do payloads[#payloads + 1] = t end
    local msgs = roundtrip_all("strict", payloads)
    for i, p in ipairs(payloads) do
      assert.are.equal("nil|nil|strict|" .. #p, header(msgs[i], "X-Seen"), ("%q"):format(p))
      assert.are.equal(p, msgs[i].payload)
    end
  end)

  it("decodes every valid text, at the edges of each rule", function()
    local cases = { -- payload, e.data's type, tide.json.encode(e.data)
      { '[0,-0,1e5,1E+5,-1.5e-3,10,0.5,0E0,-0.0e-0,123456789012345678901234567890]', "userdata",
        '[0,-0,1e5,1E+5,-1.5e-3,10,0.5,0E0,-0.0e-0,123456789012345678901234567890]' },
      { ' \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ "a" : 2 } ] \t\r\n', "userdata", '[1,{"a":2}]' },
      -- DEL, U+FFFF, U+10FFFF, the first of each UTF-8 length, pairs of surrogates
      { '"\127 \239\191\191 \244\143\191\191 \194\128 \224\160\128 \240\144\128\128 \\ud83d\\ude00 \\uDBFF\\uDFFF"',
        "string",
        '"\127 \239\191\191 \244\143\191\191 \194\128 \224\160\128 \240\144\128\128 \240\159\152\128 \244\143\191\191"' },
      { '"\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0041 \\u00e9 \\uFFFF"', "string",
        '"\\" \\\\ / \\b \\f \\n \\r \\t A \195\169 \239\191\191"' },
      { nest(1000), "userdata", nest(1000) },
      { '{"data":' .. nest(999) .. '}', "userdata", nest(999) },
      { '""', "string", '""' }, { '0', "number", '0' }, { '-0.5e+7', "number", '-5000000.0' },
      { 'null', "table", 'null' }, { 'true', "boolean", 'true' },
    }
    local payloads = {}
    for i, c in ipairs(cases) do payloads[i] = c[1] end
    local msgs = roundtrip_all("strict", payloads)
    for i, c in ipairs(cases) do
      assert.are.equal(c[2] .. "|" .. c[3] .. "|strict|" .. #c[1], header(msgs[i], "X-Seen"), ("%q"):format(c[1]))
      assert.are.equal(c[1], msgs[i].payload)
    end
  end)

  it("takes a binary-mode payload that is not JSON as a string of its bytes", function()
    local hdr = { { "ce-specversion", "1.0" }, { "ce-type", "t" }, { "ce-id", "1" } }
    local payloads = { '{"a":01}', '"a\tb"', '[1,]', '{"a":1}', 'a\0b' }
    local msgs = roundtrip_all("strict.bin", payloads, hdr)
    assert.are.equal('string|{"a":01}|t|8', header(msgs[1], "X-Seen"))
    assert.are.equal('string|"a\tb"|t|5', header(msgs[2], "X-Seen"))
    assert.are.equal('string|[1,]|t|4', header(msgs[3], "X-Seen"))
    assert.are.equal('userdata|{"a":1}|t|7', header(msgs[4], "X-Seen"))
    assert.are.equal('string|a\\0b|t|3', header(msgs[5], "X-Seen")) -- the NUL kept
  end)

  it("makes a raw payload that is not JSON the data string of the envelope a rule turns it into", function()
    local m = roundtrip("raw.promote", 'a\0b')
    assert.are.equal('{"specversion":"1.0","type":"raw.promote","data":"a\\u0000b","id":"p-1"}', m.payload)
  end)

  it("makes tide.json.decode refuse what is not JSON and decode what is", function()
    local m = roundtrip("strict.decode", "x")
    local want = {}
    for _ = 1, 23 do want[#want + 1] = "nil/invalid JSON" end
    want[#want + 1] = '"\\u0000"'
    want[#want + 1] = "[0,-0,1e5,1E+5,-1.5e-3]"
    want[#want + 1] = '"\240\159\152\128\127"'
    assert.are.equal(table.concat(want, " "), header(m, "X-Decode"))
  end)
end)

describe("an exact round trip through a rule that changes another field", function()
  it("keeps NULs, big integers, unicode escapes as written, escaped keys and deep nesting", function()
    local doc = '{"specversion":"1.0","data":{"n":"a\\u0000b","big":123456789012345678901234567890,' ..
      '"neg":-9223372036854775809,"u":"caf\\u00e9 \\ud83d\\ude00 \\u00E9\\/\\u0041","k\\u00e9y":1,' ..
      '"e\\u0073c\\"":"\\t\\u001f","a\\u0000b":[1.50,"\\u0000"],"deep":' .. nest(998, '"\\u0000"') ..
      ',"x":0,"utf8":"\240\159\152\128"}}'
    local m = roundtrip("change.exact", doc)
    assert.are.equal((doc:gsub('"x":0', '"x":1')), m.payload)
    -- and one level deeper is not JSON: the rule's write fails, nothing is delivered
    local c = listener("change.deep")
    publish("change.deep", '{"data":{"deep":' .. nest(999) .. ',"x":0}}')
    assert.are.equal(0, #assert(c:until_pong()))
    c:close()
  end)

  it("keeps NULs when a rule reads, copies and writes strings and keys holding them", function()
    local m = roundtrip("nul.use", '{"data":{"s":"a\\u0000b","obj":{"k\\u0000ey":"\\u0000","k":2}}}')
    assert.are.equal(table.concat({ "3", "true", '"a\\u0000b"', '"\\u0000"', "2", "nil",
      '4:"k\\u0000ey"="\\u0000" 1:"k"=2', '{"k\\u0000ey":"\\u0000","k":2}', "2" }, ","),
      header(m, "X-Nul"))
    assert.are.equal('{"data":{"s":"a\\u0000b","obj":{"k\\u0000ey":"\\u0000","k":2,"new\\u0000":0},' ..
      '"copy":"a\\u0000b","obj_copy":{"k\\u0000ey":"\\u0000","k":2},"lua":"x\\u0000y","t":{"n\\u0000k":"v\\u0000w"}}}',
      m.payload)
  end)
end)

describe("duplicate keys", function()
  local doc = '{"data":{"k":1,"z":3,"k":2}}'

  it("go out as sent and pairs() gives each pair once, with its own value; e.data.k is the first", function()
    local m = roundtrip("dup.read", doc)
    assert.are.equal("k=1,z=3,k=2;1;3", header(m, "X-Dup"))
    assert.are.equal(doc, m.payload)
  end)

  it("read the same way in a document from tide.json.decode", function()
    local m = roundtrip("dup.decode", doc)
    assert.are.equal("k=1,z=3,k=2;1;3", header(m, "X-Dup"))
  end)

  it("stay both on the wire when another field changes", function()
    local m = roundtrip("dup.other", doc)
    assert.are.equal("k=1,z=3,k=2,x=1;1;4", header(m, "X-Dup"))
    assert.are.equal('{"data":{"k":1,"z":3,"k":2,"x":1}}', m.payload)
  end)

  it("become one pair, the first, when the key is written; none when it is set to nil", function()
    local m = roundtrip("dup.set", doc)
    assert.are.equal("k=5,z=3;5;2", header(m, "X-Dup"))
    assert.are.equal('{"data":{"k":5,"z":3}}', m.payload)
    m = roundtrip("dup.unset", doc)
    assert.are.equal("z=3;nil;1", header(m, "X-Dup"))
    assert.are.equal('{"data":{"z":3}}', m.payload)
  end)
end)
