-- The Lua pipeline (docs/scripting.md): upgraders, filters, routes, delivery
-- and handlers, each stage's contract, over a real `tide serve -c`.
local h = require "helpers"
local json = require "dkjson"

-- The rules every test below talks to.  Line numbers matter only where a
-- test says so (it then finds them with line_of).
local MAIN = [==[
scripting { emit_depth = 3 }

-- Registration order across files: this file, then mods/first.lua, then
-- this file again, then mods/second/init.lua.
local function trail(name)
  return function(e)
    local t = e.headers["X-Trail"]
    e.headers["X-Trail"] = (t and (t .. ",") or "") .. name
    return true
  end
end
local function handled(name)
  return function(e, ctx)
    tide.kv.set("order." .. e.subject, (tide.kv.get("order." .. e.subject) or "") .. name .. ";")
  end
end
filter("multi.>", trail("main-before"))
on("multi.>", handled("main-before"))
require "mods.first"
filter("multi.>", trail("main-between"))
on("multi.>", handled("main-between"))
require "mods.second"
require "mods.first" -- loaded once: its rules are not registered again
filter("multi.>", trail("main-after"))
on("multi.>", handled("main-after"))

-- upgraders --------------------------------------------------------------
upgrade("user.created", 1, function(e)             -- v1 -> v2
  local first, last = e.data.name:match("^(%S+)%s*(.*)$")
  e.data = { firstName = first, lastName = last, email = e.data.email }
  return e
end)
upgrade("doc.saved", 1, function(e)                -- v1 -> v2, returns nothing
  e.data.body = e.data.text
  e.data.text = nil
end)
upgrade("doc.saved", 2, function(e)                -- v2 -> v3
  local n = 0
  for _ in e.data.body:gmatch("%S+") do n = n + 1 end
  e.data.words = n
  return e
end)
upgrade("jump.ahead", 1, function(e)               -- sets the version itself
  e.version = 7
  return e
end)
upgrade("bad.upgrade", 1, function(e) return { not_the_event = true } end)
upgrade("old.name", 1, function(e) e.type = "new.name" end) -- renames: the chain goes on as new.name
upgrade("new.name", 2, function(e) e.data = "renamed" end)
upgrade("raw.thing", 1, function(e) e.data = { seen = true } end) -- a raw event: its type is the subject

-- filters ------------------------------------------------------------------
filter("order.created", function(e) return e.data.amount > 100 end)
filter("falsy.check", function(e)
  local want = e.headers["X-Return"]
  if want == "nil" then return nil
  elseif want == "false" then return false
  elseif want == "zero" then return 0
  elseif want == "empty" then return ""
  end
  return true
end)
filter("chain.>", trail("zeta"))
filter("chain.*", trail("alpha"))
filter("chain.a", trail("mid"))
filter("chain.*.b", trail("beta"))
filter("chain.a.b", function(e) return e.headers["X-Drop"] == nil end)
filter("chain.a.b", trail("after-drop-point"))

-- routes -------------------------------------------------------------------
route("rt.rename", function(e) return "rt.renamed" end)
route("rt.fan", function(e) return { "rt.fan", "rt.fan.a", "rt.fan.b" } end)
route("rt.drop", function(e) return false end)
route("rt.empty", function(e) return {} end)
route("rt.keep", function(e) return nil end)
route("rt.first", function(e) tide.kv.incr("route.first.1") return nil end)
route("rt.first", function(e) tide.kv.incr("route.first.2") return "rt.first.second" end)
route("rt.first", function(e) tide.kv.incr("route.first.3") return "rt.first.third" end)
route("rt.invalid", function(e) return "not a subject" end)
route("rt.badtype", function(e) return 42 end)

-- handlers -----------------------------------------------------------------
on("hd.after", function(e, ctx)
  -- Delivery already happened: changing e now reaches no subscriber.
  e.data.v = 999
  ctx.publish("hd.after.done", { v = e.data.v })
end)
route("hd.r", function(e) return { "hd.r.one", "hd.r.two" } end)
on("hd.r", function(e, ctx) ctx.publish("hd.saw", "original subject handler ran") end)
on("hd.r.*", function(e, ctx) ctx.publish("hd.saw", e.subject) end)
on("hd.fail", function(e, ctx) ctx.publish("hd.fail.first", "1") end)
on("hd.fail", function(e, ctx) error("handler-two-breaks") end)
on("hd.fail", function(e, ctx) ctx.publish("hd.fail.third", "3") end)

on("cor.start", function(e, ctx) assert(ctx.publish("cor.mid", { step = 1 })) end)
on("cor.mid", function(e, ctx) assert(ctx.publish("cor.end", { step = e.data.step + 1 })) end)
on("raw.start", function(e, ctx)
  assert(ctx.publish("raw.out", "\0bytes\255 as they are\r\n", { ["X-Extra"] = "yes" }))
end)
on("fwd.in", function(e, ctx) assert(ctx.publish("fwd.out", e, { ["X-Hop"] = "2" })) end)
-- an event's tokens outlive the events its handler publishes (small tapes
-- are recycled blocks, big ones Lua objects)
on("tape.outer", function(e, ctx)
  local before = e.data.v
  assert(ctx.publish("tape.inner", { w = before + 1, list = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 } }))
  local list = e.data.list
  ctx.publish("tape.result", { v = e.data.v, before = before, n = list and #list or 0,
                               last = list and list[#list] or 0, k = e.data.k })
end)
on("tape.inner", function(e, ctx) ctx.publish("tape.result", { w = e.data.w, n = #e.data.list }) end)
on("svc.echo", function(e, ctx) ctx.reply({ echo = e.data.msg, n = e.data.n * 2 }) end)
on("svc.noreply", function(e, ctx) ctx.reply({ x = 1 }) end)

-- the loop guard: scripting.emit_depth is 3 above
on("loop.self", function(e, ctx)
  local n = (e.data and e.data.n or 0) + 1
  local ok, why = ctx.publish("loop.self", { n = n })
  tide.kv.set("loop.result." .. n, ok and "ok" or ("refused: " .. tostring(why)))
end)

-- reading what the scripts stored: routed back to the requester as a JSON string
route("kv.get", function(e)
  local key = e.raw
  e.data = tostring(tide.kv.get(key))
  return e.reply
end)

-- event fields ---------------------------------------------------------------
filter("meta.>", function(e)
  e.headers["X-Type"] = tostring(e.type)
  e.headers["X-Version"] = tostring(e.version) .. ":" .. tostring(math.type(e.version))
  e.headers["X-Data"] = tostring(e.data)
  e.headers["X-Id"] = tostring(e.id)
  e.headers["X-Raw-Len"] = tostring(#e.raw)
  return true
end)
filter("bin.in", function(e) return e.data == nil and e.type == "bin.in" end)
route("bin.in", function(e)
  if e.raw:byte(1) == 0 and e.raw:sub(-3) == "\255\r\n" then return "bin.zero" end
  return "bin.other"
end)

-- headers and renames
filter("hdr.read", function(e)
  local v = e.headers["X-Multi"]
  e.headers["X-Seen"] = type(v) .. ":" .. (type(v) == "table" and table.concat(v, "+") or tostring(v)) ..
    ":" .. tostring(e.headers["Other"]) .. ":" .. tostring(e.headers["Missing"])
  e.headers["X-List"] = { "a", "b" }
  e.headers["X-Num"] = 42
  e.headers["X-Multi"] = nil
  return true
end)
filter("hdr.clear", function(e)
  for k in pairs(e.headers) do e.headers[k] = nil end
  return true
end)
filter("hdr.inject", function(e)
  e.headers["X-Bad"] = "a\r\nInjected: 1"
  return true
end)
filter("ren.a", function(e)
  e.subject = "ren.b"
  return true
end)
on("ren.b", function(e, ctx) ctx.publish("ren.seen", e.subject) end)
on("ren.a", function(e, ctx) ctx.publish("ren.seen", "handler of ren.a") end)

-- keeping e past its pipeline: what each of fns does ("ok", "ended" when it
-- raised that the pipeline has ended, else the error)
local function outcomes(fns)
  local r = {}
  for _, f in ipairs(fns) do
    local ok, err = pcall(f)
    r[#r + 1] = ok and "ok" or (tostring(err):find("pipeline has ended", 1, true) and "ended" or tostring(err))
  end
  return r
end
filter("keep.first", function(e)
  KEPT_E, KEPT_D, KEPT_L, KEPT_H = e, e.data, e.data.list, e.headers
  KEPT_DOC = tide.json.decode('{"a":[1]}')
  return true
end)
filter("keep.second", function(e)
  local r = outcomes {
    function() return KEPT_E.subject end, function() return KEPT_E.raw end, function() KEPT_E.data = 1 end,
    function() return KEPT_H.X end, function() return KEPT_D.a end, function() KEPT_D.a = 2 end,
    function() return KEPT_L[1] end, function() return #KEPT_L end,
    function() for _ in pairs(KEPT_D) do end end, function() return tostring(KEPT_D) end,
  }
  r[#r + 1] = tostring(KEPT_DOC.a[1])
  e.headers["X-Kept"] = table.concat(r, ",")
  return true
end)
local function err_text(f)
  local ok, err = pcall(f)
  return ok and "ok" or (tostring(err):gsub("^[^:]*:%d+: ", ""))
end
filter("handle.props", function(e)
  local r = { tostring(e == e), tostring(e.data == e.data), tostring(e.data.list == e.data.list),
    tostring(e.data.list == e.data), type(e), type(e.data), tostring(getmetatable(e)) }
  r[#r + 1] = err_text(function() return #e end)
  r[#r + 1] = err_text(function() for _ in pairs(e) do end end)
  r[#r + 1] = err_text(function() return tide.json.encode(e) end)
  r[#r + 1] = tide.json.encode(e.data)
  r[#r + 1] = tostring(e)
  HANDLE_E = e
  e.headers["X-Props"] = table.concat(r, "|")
  return true
end)
on("handle.after", function(e, ctx)
  ctx.publish("handle.out", table.concat({ tostring(HANDLE_E), tostring(HANDLE_E == e),
    err_text(function() ctx.publish("handle.out", HANDLE_E) end) }, "|"))
end)
filter("keep.written", function(e)
  -- views from before and after the first write (which builds the tree)
  local list = e.data.list
  e.data.b = 2
  KEPT_W = { list, e.data.list, e.data, e.data.list }
  return true
end)
filter("keep.after", function(e)
  local r = outcomes {
    function() return KEPT_W[1][1] end, function() return #KEPT_W[2] end, function() return KEPT_W[3].a end,
    function() KEPT_W[4][1] = 3 end, function() return tostring(KEPT_W[1]) end,
    function() return tide.json.encode(KEPT_W[3]) end, function() e.data = KEPT_W[2] end,
  }
  e.headers["X-Kept"] = table.concat(r, ",")
  return true
end)

-- CloudEvents binary mode
filter("ce.>", function(e)
  local d = e.data
  local k = d ~= nil and type(d) ~= "string" and d.k or nil
  e.headers["X-Seen"] = table.concat({ tostring(e.id), tostring(e.type), tostring(e.source),
    tostring(e.specversion), tostring(e.datacontenttype), tostring(k) }, "|")
  return true
end)
route("ce.change", function(e)
  e.source = "/changed"
  e.region = "eu"
end)
]==]

local FIRST = [==[
local function trail(name)
  return function(e)
    local t = e.headers["X-Trail"]
    e.headers["X-Trail"] = (t and (t .. ",") or "") .. name
    return true
  end
end
filter("multi.>", trail("first"))
on("multi.>", function(e) tide.kv.set("order." .. e.subject, (tide.kv.get("order." .. e.subject) or "") .. "first;") end)
return { loaded = true }
]==]

local SECOND = [==[
filter("multi.>", function(e)
  e.headers["X-Trail"] = (e.headers["X-Trail"] or "") .. ",second"
  return true
end)
on("multi.>", function(e) tide.kv.set("order." .. e.subject, (tide.kv.get("order." .. e.subject) or "") .. "second;") end)
]==]

local srv

-- The line of the first line of MAIN containing `text` (for Tide-Script).
local function line_of(text)
  local n = 0
  for line in (MAIN .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(text, 1, true) then return n end
  end
  error("no line with " .. text)
end

-- A client that understands headers and listens on the given subjects.
local function listener(...)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  for i, s in ipairs { ... } do c:sub(s, tostring(i)) end
  assert(c:until_pong())
  return c
end

-- Publishes through a fresh connection and waits until the server has
-- processed it (the PONG comes after the whole pipeline, handlers included).
local function publish(subject, payload, headers, reply)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  if headers then c:hpub(subject, headers, payload, reply) else c:pub(subject, payload, reply) end
  assert(c:until_pong())
  c:close()
end

-- Everything the listener got so far.
local function received(c)
  return assert(c:until_pong())
end

local function subjects_of(msgs)
  local s = {}
  for i, m in ipairs(msgs) do s[i] = m.subject end
  return s
end

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

local function kv(key)
  local m = assert(h.request(srv.port, "kv.get", key))
  return (json.decode(m.payload))
end

-- Asserts that s contains text (plain, no patterns).
local function contains(text, s)
  assert(type(s) == "string" and s:find(text, 1, true), ("expected %q in %q"):format(text, tostring(s)))
end

setup(function()
  srv = h.start_scripted {
    ["tide.lua"] = MAIN,
    ["mods/first.lua"] = FIRST,
    ["mods/second/init.lua"] = SECOND,
  }
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("upgraders", function()
  it("upgrade user.created v1 {name,email} to v2 {firstName,lastName,email}", function()
    local c = listener("user.created", "$TIDE.DEAD.>")
    publish("user.created", '{"specversion":"1.0","id":"u-1","type":"user.created","source":"signup",' ..
      '"version":1,"data":{"name":"Ada King Lovelace","email":"ada@example.com"}}')
    local msgs = received(c)
    assert.are.equal(1, #msgs)
    assert.are.equal("user.created", msgs[1].subject)
    -- version replaced in place, data written with sorted keys
    assert.are.equal('{"specversion":"1.0","id":"u-1","type":"user.created","source":"signup",' ..
      '"version":2,"data":{"email":"ada@example.com","firstName":"Ada","lastName":"King Lovelace"}}',
      msgs[1].payload)
    c:close()
  end)

  it("set the version automatically, also when the envelope had none (1 assumed)", function()
    local c = listener("user.created")
    publish("user.created", '{"id":"u-2","type":"user.created","data":{"name":"Grace Hopper","email":"g@h"}}')
    local m = received(c)[1]
    assert.are.equal('{"id":"u-2","type":"user.created","data":{"email":"g@h","firstName":"Grace",' ..
      '"lastName":"Hopper"},"version":2}', m.payload)
    c:close()
  end)

  it("leave an event at a version no upgrader knows untouched, byte for byte", function()
    local c = listener("user.created")
    local v2 = '{ "id" : "u-3", "type":"user.created", "version": 2, "data":{"firstName":"A"} }'
    publish("user.created", v2)
    assert.are.equal(v2, received(c)[1].payload)
    c:close()
  end)

  it("chain v1 -> v2 -> v3, selected by the event type whatever the subject", function()
    local c = listener("docs.>")
    publish("docs.incoming", '{"type":"doc.saved","id":"d-1","data":{"text":"one two  three","keep":[]}}')
    local m = received(c)[1]
    local env = json.decode(m.payload)
    assert.are.equal(3, env.version)
    assert.are.equal("one two  three", env.data.body)
    assert.is_nil(env.data.text)
    assert.are.equal(3, env.data.words)
    assert.are.equal('{"type":"doc.saved","id":"d-1","data":{"keep":[],"body":"one two  three","words":3},' ..
      '"version":3}', m.payload)
    -- an event already at v2 runs only the second step
    publish("docs.incoming", '{"type":"doc.saved","version":2,"data":{"body":"a b"}}')
    m = received(c)[1]
    assert.are.equal('{"type":"doc.saved","version":3,"data":{"body":"a b","words":2}}', m.payload)
    c:close()
  end)

  it("upgrade a binary-mode event by its ce-type, writing the version back as ce-version", function()
    local c = listener("users.>")
    local function ce(extra)
      local t = { { "ce-specversion", "1.0" }, { "ce-id", "b-9" }, { "ce-type", "user.created" }, { "ce-source", "/s" } }
      for _, kv in ipairs(extra) do t[#t + 1] = kv end
      return t
    end
    publish("users.in", '{"name":"Ada Lovelace","email":"a@b"}', ce { { "content-type", "application/json" } })
    local v2hdr = h.header_block(ce { { "ce-version", "2" } })
    publish("users.in", '{"firstName":"x"}', v2hdr)
    local msgs = received(c)
    assert.are.equal(2, #msgs)
    assert.are.equal('{"email":"a@b","firstName":"Ada","lastName":"Lovelace"}', msgs[1].payload)
    local _, t = h.parse_headers(msgs[1].headers)
    assert.are.equal("2", t["ce-version"])
    assert.are.equal("b-9", t["ce-id"])
    assert.are.equal("application/json", t["content-type"])
    -- already at v2: untouched
    assert.are.equal(v2hdr, msgs[2].headers)
    assert.are.equal('{"firstName":"x"}', msgs[2].payload)
    c:close()
  end)

  it("follow a type an upgrader renamed, and take the subject for a raw event or a type that is no string", function()
    local c = listener("old.name", "raw.thing")
    publish("old.name", '{"type":"old.name","data":1}')
    publish("old.name", '{"type":5,"version":1,"data":1}')
    publish("raw.thing", "plain text")
    local msgs = received(c)
    assert.are.equal(3, #msgs)
    assert.are.equal('{"type":"new.name","data":"renamed","version":3}', msgs[1].payload)
    assert.are.equal('{"type":"new.name","version":3,"data":"renamed"}', msgs[2].payload)
    assert.are.equal('{"specversion":"1.0","type":"raw.thing","data":{"seen":true},"version":2}', msgs[3].payload)
    c:close()
  end)

  it("keep a version the upgrader set itself", function()
    local c = listener("jump.ahead")
    publish("jump.ahead", '{"type":"jump.ahead","data":1}')
    assert.are.equal(7, json.decode(received(c)[1].payload).version)
    c:close()
  end)

  it("dead-letter the event when an upgrader returns something other than e", function()
    local c = listener("bad.upgrade", "$TIDE.DEAD.>")
    local payload = '{"type":"bad.upgrade","version":1,"data":{"a":1}}'
    publish("bad.upgrade", payload)
    local msgs = received(c)
    assert.same({ "$TIDE.DEAD.bad.upgrade" }, subjects_of(msgs))
    assert.are.equal(payload, msgs[1].payload)
    assert.are.equal("upgrade", header(msgs[1], "Tide-Stage"))
    assert.matches("tide%.lua:" .. line_of('upgrade("bad.upgrade"') .. "$", header(msgs[1], "Tide-Script"))
    contains("must return the event", header(msgs[1], "Tide-Error"))
    c:close()
  end)

  it("refuse a second upgrader for the same (type, version) at load time", function()
    local s = h.start_scripted([[
upgrade("t.x", 1, function(e) return e end)
upgrade("t.x", 1, function(e) return e end)
]], { wait = false })
    local st, code = h.proc.wait(s.pid, 10)
    h.remove_tmpdir(s.dir)
    assert.are.equal("exited", st)
    assert.are_not.equal(0, code)
    assert.matches("tide%.lua:2:.*already registered at .*tide%.lua:1", s:log())
  end)
end)

describe("filters", function()
  it("keep order.created only when data.amount > 100", function()
    local c = listener("order.created")
    local pub = h.connect(srv.port)
    for _, amount in ipairs { 50, 150, 100, 101, -5, 100000 } do
      pub:pub("order.created", ('{"type":"order.created","data":{"amount":%d}}'):format(amount))
    end
    assert(pub:until_pong())
    local got = {}
    for _, m in ipairs(received(c)) do got[#got + 1] = json.decode(m.payload).data.amount end
    assert.same({ 150, 101, 100000 }, got)
    pub:close()
    c:close()
  end)

  it("drop on false and nil only (0 and \"\" are true in Lua), counting drops", function()
    local before = h.stats(srv.port).scripts.dropped
    local c = listener("falsy.check")
    for _, ret in ipairs { "nil", "false", "zero", "empty", "true" } do
      publish("falsy.check", ret, { { "X-Return", ret } })
    end
    local got = {}
    for _, m in ipairs(received(c)) do got[#got + 1] = m.payload end
    assert.same({ "zero", "empty", "true" }, got)
    assert.are.equal(before + 2, h.stats(srv.port).scripts.dropped)
    -- and per filter, in $TIDE.ADMIN.RULES
    local rules = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RULES", "")).payload)
    local found
    for _, r in ipairs(rules) do
      if r.kind == "filter" and r.pattern == "falsy.check" then found = r end
    end
    assert.is_table(found)
    assert.are.equal(2, found.dropped)
    assert.are.equal(5, found.calls)
    assert.matches("tide%.lua:" .. line_of('filter("falsy.check"') .. "$", found.where)
    c:close()
  end)

  it("run every matching filter, wildcards included, in registration order", function()
    local c = listener("chain.>")
    publish("chain.a", "x")
    publish("chain.z", "x")
    publish("chain.a.b", "x")
    publish("chain.q.b", "x")
    publish("chain.a.b.c", "x")
    local trails = {}
    for _, m in ipairs(received(c)) do trails[m.subject] = header(m, "X-Trail") end
    assert.same({
      ["chain.a"] = "zeta,alpha,mid",
      ["chain.z"] = "zeta,alpha",
      ["chain.a.b"] = "zeta,beta,after-drop-point",
      ["chain.q.b"] = "zeta,beta",
      ["chain.a.b.c"] = "zeta",
    }, trails)
    c:close()
  end)

  it("stop the pipeline at the first filter that drops", function()
    local c = listener("chain.>")
    publish("chain.a.b", "x", { { "X-Drop", "1" } })
    assert.same({}, received(c))
    c:close()
  end)

  it("follow require order across files for the same pattern", function()
    local c = listener("multi.>")
    publish("multi.x", "payload")
    local msgs = received(c)
    assert.are.equal(1, #msgs)
    assert.are.equal("main-before,first,main-between,second,main-after", header(msgs[1], "X-Trail"))
    assert.are.equal("payload", msgs[1].payload)
    -- handlers too
    assert.are.equal("main-before;first;main-between;second;main-after;", kv("order.multi.x"))
    c:close()
  end)
end)

describe("routes", function()
  it("rename on a string, keep on nil, drop on false or an empty list", function()
    local c = listener("rt.>")
    publish("rt.rename", "1")
    publish("rt.keep", "2")
    publish("rt.drop", "3")
    publish("rt.empty", "4")
    local msgs = received(c)
    assert.same({ "rt.renamed", "rt.keep" }, subjects_of(msgs))
    assert.are.equal("1", msgs[1].payload)
    assert.are.equal("2", msgs[2].payload)
    c:close()
  end)

  it("fan out to every subject of a list, once each", function()
    local c = listener("rt.>")
    local other = listener("rt.fan.a")
    publish("rt.fan", "fan")
    local got = subjects_of(received(c))
    table.sort(got)
    assert.same({ "rt.fan", "rt.fan.a", "rt.fan.b" }, got)
    assert.same({ "rt.fan.a" }, subjects_of(received(other)))
    c:close()
    other:close()
  end)

  it("let the first route that answers decide; later ones are not asked", function()
    local c = listener("rt.>")
    publish("rt.first", "f")
    assert.same({ "rt.first.second" }, subjects_of(received(c)))
    assert.are.equal("1", kv("route.first.1"))
    assert.are.equal("1", kv("route.first.2"))
    assert.are.equal("nil", kv("route.first.3"))
    c:close()
  end)

  it("dead-letter an event whose route returns an invalid subject or a wrong type", function()
    local c = listener("rt.>", "$TIDE.DEAD.>")
    publish("rt.invalid", "inv")
    publish("rt.badtype", "bt")
    local msgs = received(c)
    assert.same({ "$TIDE.DEAD.rt.invalid", "$TIDE.DEAD.rt.badtype" }, subjects_of(msgs))
    assert.are.equal("route", header(msgs[1], "Tide-Stage"))
    contains("invalid subject: not a subject", header(msgs[1], "Tide-Error"))
    assert.matches("tide%.lua:" .. line_of('route("rt.invalid"') .. "$", header(msgs[1], "Tide-Script"))
    assert.are.equal("rt.invalid", header(msgs[1], "Tide-Original-Subject"))
    assert.are.equal("inv", msgs[1].payload)
    assert.are.equal("route", header(msgs[2], "Tide-Stage"))
    assert.matches("number", header(msgs[2], "Tide-Error"))
    c:close()
  end)
end)

describe("handlers", function()
  it("run after delivery: what they change is not delivered", function()
    local c = listener("hd.>")
    publish("hd.after", '{"data":{"v":1}}')
    local msgs = received(c)
    assert.same({ "hd.after", "hd.after.done" }, subjects_of(msgs))
    assert.are.equal('{"data":{"v":1}}', msgs[1].payload)
    assert.are.equal(999, json.decode(msgs[2].payload).data.v)
    c:close()
  end)

  it("run once per destination subject, seeing that subject", function()
    local c = listener("hd.saw")
    publish("hd.r", "x")
    local seen = {}
    for _, m in ipairs(received(c)) do seen[#seen + 1] = m.payload end
    table.sort(seen)
    assert.same({ "hd.r.one", "hd.r.two" }, seen)
    c:close()
  end)

  it("fail alone: the other handlers still run and the failure is dead-lettered", function()
    local c = listener("hd.>", "$TIDE.DEAD.>")
    publish("hd.fail", "payload-f")
    local msgs = received(c)
    local subj = subjects_of(msgs)
    assert.same({ "hd.fail", "$TIDE.DEAD.hd.fail", "hd.fail.first", "hd.fail.third" }, subj)
    assert.are.equal("handler", header(msgs[2], "Tide-Stage"))
    contains("handler-two-breaks", header(msgs[2], "Tide-Error"))
    assert.are.equal("payload-f", msgs[2].payload)
    c:close()
  end)

  it("ctx.publish(table) builds a CloudEvents envelope; correlation carries over two hops", function()
    local c = listener("cor.>")
    local t0 = os.time()
    publish("cor.start", '{"specversion":"1.0","id":"root-1","type":"cor.start","source":"spec","data":{}}')
    local msgs = received(c)
    assert.same({ "cor.start", "cor.mid", "cor.end" }, subjects_of(msgs))
    local mid, fin = json.decode(msgs[2].payload), json.decode(msgs[3].payload)
    for _, env in ipairs { mid, fin } do
      assert.are.equal("1.0", env.specversion)
      assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", env.id)
      assert.are.equal(36, #env.id)
      assert.are.equal("tide", env.source)
      local y, mo, d, hh, mm, ss = env.time:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)[%.%d]*Z$")
      assert.is_not_nil(y, "time is not RFC 3339 UTC: " .. tostring(env.time))
      local utc = os.time { year = y, month = mo, day = d, hour = hh, min = mm, sec = ss, isdst = false }
      local offset = os.time() - os.time(os.date("!*t"))
      assert.is_true(math.abs(utc + offset - t0) <= 5, "time far from now: " .. env.time)
    end
    assert.are.equal("cor.mid", mid.type)
    assert.are.equal("cor.end", fin.type)
    assert.same({ step = 1 }, mid.data)
    assert.same({ step = 2 }, fin.data)
    assert.are_not.equal(mid.id, fin.id)
    -- hop 1: caused by the client's event, correlated by its id
    assert.are.equal("root-1", mid.correlationid)
    assert.are.equal("root-1", mid.causationid)
    assert.are.equal("root-1", header(msgs[2], "Tide-Correlation-Id"))
    assert.are.equal("root-1", header(msgs[2], "Tide-Causation-Id"))
    -- hop 2: same correlation, caused by the hop-1 event
    assert.are.equal("root-1", fin.correlationid)
    assert.are.equal(mid.id, fin.causationid)
    assert.are.equal("root-1", header(msgs[3], "Tide-Correlation-Id"))
    assert.are.equal(mid.id, header(msgs[3], "Tide-Causation-Id"))
    c:close()
  end)

  it("carry an existing correlation id (header first, then envelope) instead of the id", function()
    local c = listener("cor.mid")
    publish("cor.start", '{"id":"e-7","correlationid":"corr-env","data":{}}')
    publish("cor.start", '{"id":"e-8","correlationid":"corr-env","data":{}}', { { "Tide-Correlation-Id", "corr-hdr" } })
    local msgs = received(c)
    assert.are.equal(2, #msgs)
    assert.are.equal("corr-env", json.decode(msgs[1].payload).correlationid)
    assert.are.equal("e-7", json.decode(msgs[1].payload).causationid)
    assert.are.equal("corr-hdr", json.decode(msgs[2].payload).correlationid)
    assert.are.equal("corr-hdr", header(msgs[2], "Tide-Correlation-Id"))
    assert.are.equal("e-8", header(msgs[2], "Tide-Causation-Id"))
    c:close()
  end)

  it("ctx.publish(string) sends the raw bytes, with extra headers", function()
    local c = listener("raw.out")
    publish("raw.start", '{"id":"r-1","data":null}')
    local m = received(c)[1]
    assert.are.equal("\0bytes\255 as they are\r\n", m.payload)
    assert.are.equal("yes", header(m, "X-Extra"))
    assert.are.equal("r-1", header(m, "Tide-Causation-Id"))
    assert.are.equal("r-1", header(m, "Tide-Correlation-Id"))
    c:close()
  end)

  it("ctx.publish(e) forwards the event's bytes and headers", function()
    local c = listener("fwd.out")
    local body = '{ "id" : "f-1", "data" : [1.0, {}] }'
    publish("fwd.in", body, { { "X-Orig", "o" } })
    local m = received(c)[1]
    assert.are.equal(body, m.payload)
    local _, t = h.parse_headers(m.headers)
    assert.are.equal("o", t["X-Orig"])
    assert.are.equal("2", t["X-Hop"])
    assert.are.equal("f-1", t["Tide-Causation-Id"])
    assert.are.equal("f-1", t["Tide-Correlation-Id"])
    c:close()
  end)

  it("read an event's payload after its handler published others, small and big payloads", function()
    local c = listener("tape.result")
    publish("tape.outer", '{"data":{"v":5,"k":"small"}}')
    local big = {}
    for i = 1, 300 do big[i] = tostring(i * 3) end -- more tokens than a recycled block holds
    publish("tape.outer", '{"data":{"v":7,"list":[' .. table.concat(big, ",") .. '],"k":"big"}}')
    local msgs = received(c)
    assert.are.equal(4, #msgs)
    local got = {}
    for i, m in ipairs(msgs) do got[i] = json.decode(m.payload).data end
    -- handlers run breadth first: each outer event's result, then the inner one's
    local outer, inner = {}, {}
    for _, d in ipairs(got) do
      if d.w then inner[#inner + 1] = d else outer[#outer + 1] = d end
    end
    assert.same({ { v = 5, before = 5, n = 0, last = 0, k = "small" },
                  { v = 7, before = 7, n = 300, last = 900, k = "big" } }, outer)
    assert.same({ { w = 6, n = 10 }, { w = 8, n = 10 } }, inner)
    c:close()
  end)

  it("ctx.reply answers a request on its reply subject", function()
    local m = assert(h.request(srv.port, "svc.echo", '{"id":"q-1","data":{"msg":"hi","n":21}}', { timeout = 2 }))
    local env = json.decode(m.payload)
    assert.same({ echo = "hi", n = 42 }, env.data)
    assert.are.equal("q-1", env.causationid)
    assert.are.equal("q-1", header(m, "Tide-Causation-Id"))
  end)

  it("ctx.reply without a reply subject is a handler error", function()
    local c = listener("$TIDE.DEAD.>")
    publish("svc.noreply", "x")
    local m = received(c)[1]
    assert.are.equal("$TIDE.DEAD.svc.noreply", m.subject)
    assert.are.equal("handler", header(m, "Tide-Stage"))
    contains("no reply subject", header(m, "Tide-Error"))
    c:close()
  end)
end)

describe("the loop guard", function()
  it("stops a handler that republishes to its own subject at emit_depth", function()
    local before = h.stats(srv.port).scripts.loops_stopped
    local c = listener("loop.self")
    publish("loop.self", "start")
    local msgs = received(c)
    -- the client's event, then depths 1, 2 and 3 (emit_depth = 3)
    assert.are.equal(4, #msgs)
    assert.are.equal("start", msgs[1].payload)
    for i = 2, 4 do assert.are.equal(i - 1, json.decode(msgs[i].payload).data.n) end
    assert.same({}, received(c)) -- and nothing later
    assert.are.equal(before + 1, h.stats(srv.port).scripts.loops_stopped)
    assert.are.equal("ok", kv("loop.result.3"))
    assert.matches("^refused: .*emit_depth", kv("loop.result.4"))
    assert.matches("emit chain stopped at loop.self", srv:log())
    c:close()
  end)

  it("stops at emit_max events caused by one client event", function()
    local s = h.start_scripted([[
scripting { emit_max = 5 }
on("burst.go", function(e, ctx)
  local ok_count = 0
  for i = 1, 8 do
    if ctx.publish("burst.out", tostring(i)) then ok_count = ok_count + 1 end
  end
  tide.kv.set("ok_count", ok_count)
end)
route("kv.get", function(e)
  local key = e.raw
  e.data = tostring(tide.kv.get(key))
  return e.reply
end)
]])
    local c = h.connect(s.port)
    c:sub("burst.out", "1")
    assert(c:until_pong())
    local p = h.connect(s.port)
    p:pub("burst.go", "")
    assert(p:until_pong())
    local msgs = assert(c:until_pong())
    local got = {}
    for i, m in ipairs(msgs) do got[i] = m.payload end
    assert.same({ "1", "2", "3", "4", "5" }, got)
    assert.are.equal('"5"', assert(h.request(s.port, "kv.get", "ok_count")).payload)
    assert.are.equal(3, h.stats(s.port).scripts.loops_stopped)
    s:stop()
    h.remove_tmpdir(s.dir)
  end)
end)

describe("events and fields", function()
  it("deliver events no rule matches untouched, counted as bypassed, never decoded", function()
    local before = h.stats(srv.port).scripts
    local c = listener("plain.>")
    local hdr = "NATS/1.0\r\nX-A: 1\r\nX-A: 2\r\nce-specversion: 1.0\r\n\r\n"
    local body = '{ "type" : "some.type", "data" : {"name":"x y"} , "n": 1.50 }'
    publish("plain.untouched", body, hdr)
    publish("plain.other", "not json at all")
    local msgs = received(c)
    assert.are.equal(2, #msgs)
    assert.are.equal(hdr, msgs[1].headers)
    assert.are.equal(body, msgs[1].payload)
    assert.are.equal("not json at all", msgs[2].payload)
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.events + 2, after.events)
    assert.are.equal(before.bypassed + 2, after.bypassed)
    assert.are.equal(before.decodes, after.decodes)
    c:close()
  end)

  it("default e.type to the subject and e.version to 1 for non-envelope payloads", function()
    local c = listener("meta.>")
    publish("meta.array", "[1, 2]")
    publish("meta.text", "plain text")
    publish("meta.env", '{"type":"custom.t","id":"m-1","version":4,"data":"d"}')
    local msgs = received(c)
    assert.are.equal(3, #msgs)
    assert.are.equal("meta.array", header(msgs[1], "X-Type"))
    assert.are.equal("1:integer", header(msgs[1], "X-Version"))
    assert.are.equal("[1,2]", header(msgs[1], "X-Data"))
    assert.are.equal("nil", header(msgs[1], "X-Id"))
    assert.are.equal("[1, 2]", msgs[1].payload) -- headers changed, payload did not
    assert.are.equal("meta.text", header(msgs[2], "X-Type"))
    assert.are.equal("nil", header(msgs[2], "X-Data"))
    assert.are.equal("10", header(msgs[2], "X-Raw-Len"))
    assert.are.equal("plain text", msgs[2].payload)
    assert.are.equal("custom.t", header(msgs[3], "X-Type"))
    assert.are.equal("4:integer", header(msgs[3], "X-Version"))
    assert.are.equal("m-1", header(msgs[3], "X-Id"))
    assert.are.equal("d", header(msgs[3], "X-Data"))
    c:close()
  end)

  it("route non-JSON payloads by e.raw, delivering the bytes unchanged", function()
    local c = listener("bin.>")
    local bytes = "\0\1\2 PUB x 1\r\n\255\r\n"
    publish("bin.in", bytes)
    publish("bin.in", "text")
    local msgs = received(c)
    assert.same({ "bin.zero", "bin.other" }, subjects_of(msgs))
    assert.are.equal(bytes, msgs[1].payload)
    assert.are.equal("text", msgs[2].payload)
    c:close()
  end)
end)

describe("headers and subjects", function()
  it("read repeated headers as a list; write lists, numbers and removals", function()
    local c = listener("hdr.>")
    publish("hdr.read", "body", { { "X-Multi", "1" }, { "X-Multi", "2" }, { "Other", "o" } })
    local m = received(c)[1]
    local _, t = h.parse_headers(m.headers)
    assert.same({
      ["X-Seen"] = "table:1+2:o:nil", ["X-List"] = { "a", "b" }, ["X-Num"] = "42", Other = "o",
    }, t)
    assert.are.equal("body", m.payload)
    c:close()
  end)

  it("deliver an event whose headers were all removed without headers", function()
    local c = listener("hdr.>")
    publish("hdr.clear", "body2", { { "A", "1" } })
    local m = received(c)[1]
    assert.are.equal("MSG", m.op)
    assert.are.equal("body2", m.payload)
    c:close()
  end)

  it("never let a header value carry CR/LF into the message", function()
    local c = listener("hdr.>", "$TIDE.DEAD.>")
    publish("hdr.inject", "b")
    local msgs = received(c)
    assert.same({ "$TIDE.DEAD.hdr.inject" }, subjects_of(msgs))
    assert.is_nil(header(msgs[1], "Injected"))
    contains("CR or LF", header(msgs[1], "Tide-Error"))
    -- refused where it was set: the dead letter names the rule
    assert.are.equal("filter", header(msgs[1], "Tide-Stage"))
    assert.matches("^tide%.lua:%d+$", header(msgs[1], "Tide-Script"))
    c:close()
  end)

  it("rename the event when a rule assigns e.subject; handlers follow the new subject", function()
    local c = listener("ren.>")
    publish("ren.a", "r")
    local msgs = received(c)
    assert.same({ "ren.b", "ren.seen" }, subjects_of(msgs))
    assert.are.equal("r", msgs[1].payload)
    assert.are.equal("ren.b", msgs[2].payload)
    c:close()
  end)
end)

describe("an event kept past its pipeline", function()
  it("raises on every later access instead of reading freed memory", function()
    local c = listener("keep.>")
    publish("keep.first", '{"data":{"a":1,"list":[5,6]}}', { { "X", "1" } })
    publish("keep.second", "x")
    local msgs = received(c)
    assert.are.equal(2, #msgs)
    assert.are.equal('{"data":{"a":1,"list":[5,6]}}', msgs[1].payload)
    assert.are.equal("ended,ended,ended,ended,ended,ended,ended,ended,ended,ended,1", header(msgs[2], "X-Kept"))
    c:close()
  end)

  it("hands out the event and its JSON values as handles that compare equal, end with it and are not JSON", function()
    local c = listener("handle.>")
    publish("handle.props", '{"data":{"list":[1]}}')
    publish("handle.after", "x")
    local msgs = received(c)
    assert.are.equal(3, #msgs)
    assert.are.equal("true|true|true|false|userdata|userdata|false|attempt to get length of an event|" ..
      "an event cannot be iterated (its data and headers can)|" ..
      "cannot encode an event as JSON (its data or raw bytes can be)|" .. '{"list":[1]}|' ..
      'event(handle.props) {"data":{"list":[1]}}',
      header(msgs[1], "X-Props"))
    assert.are.equal("handle.out", msgs[3].subject)
    assert.are.equal("event(expired)|false|this event's pipeline has ended; copy what you need from it while handling it",
      msgs[3].payload)
    c:close()
  end)

  it("raises for values read before and after a write gave the event a tree", function()
    local c = listener("keep.>")
    publish("keep.written", '{"data":{"a":1,"list":[5,6]}}')
    publish("keep.after", '{"data":{}}')
    local msgs = received(c)
    assert.are.equal(2, #msgs)
    assert.are.equal('{"data":{"a":1,"list":[5,6],"b":2}}', msgs[1].payload)
    assert.are.equal("ended,ended,ended,ended,ended,ended,ended", header(msgs[2], "X-Kept"))
    assert.are.equal('{"data":{}}', msgs[2].payload)
    c:close()
  end)
end)

describe("CloudEvents binary mode", function()
  local function ce_headers(case)
    local function n(s) return case == "upper" and (s:gsub("^%l", string.upper):gsub("%-%l", string.upper)) or s end
    return {
      { n "ce-specversion", "1.0" }, { n "ce-id", "b-1" }, { n "ce-type", "com.example.thing" },
      { n "ce-source", "/src" }, { n "content-type", "application/json" },
    }
  end
  local STRUCTURED = '{"specversion":"1.0","id":"b-1","type":"com.example.thing","source":"/src",' ..
    '"datacontenttype":"application/json","data":{"k":1}}'

  it("shows a ce-* headers event with a JSON object body like a structured envelope", function()
    local c = listener("ce.>")
    publish("ce.struct", STRUCTURED)
    publish("ce.bin", '{"k":1}', ce_headers())
    local msgs = received(c)
    assert.same({ "ce.struct", "ce.bin" }, subjects_of(msgs))
    assert.are.equal("b-1|com.example.thing|/src|1.0|application/json|1", header(msgs[1], "X-Seen"))
    assert.are.equal(header(msgs[1], "X-Seen"), header(msgs[2], "X-Seen"))
    assert.are.equal('{"k":1}', msgs[2].payload)
    c:close()
  end)

  it("reads the attributes of a binary event with a non-object body", function()
    local c = listener("ce.>")
    publish("ce.bin", '[{"k":1}]', ce_headers())
    local m = received(c)[1]
    assert.are.equal("b-1|com.example.thing|/src|1.0|application/json|nil", header(m, "X-Seen"))
    assert.are.equal('[{"k":1}]', m.payload)
    c:close()
  end)

  it("writes a changed attribute back as a ce-* header, body unchanged", function()
    local c = listener("ce.>")
    publish("ce.change", '["body",1.50]', ce_headers())
    local m = received(c)[1]
    local _, t = h.parse_headers(m.headers)
    assert.are.equal("/changed", t["ce-source"])
    assert.are.equal("eu", t["ce-region"])
    assert.are.equal("b-1", t["ce-id"])
    assert.are.equal("com.example.thing", t["ce-type"])
    assert.are.equal("1.0", t["ce-specversion"])
    assert.are.equal("application/json", t["content-type"])
    assert.is_nil(t["ce-datacontenttype"])
    assert.are.equal('["body",1.50]', m.payload)
    c:close()
  end)

  it("replaces an attribute header whatever the case of its name", function()
    local c = listener("ce.>")
    publish("ce.change", '["body"]', ce_headers("upper"))
    local m = received(c)[1]
    assert.are.equal("b-1|com.example.thing|/src|1.0|application/json|nil", header(m, "X-Seen"))
    local values = {}
    for line in m.headers:gmatch("([^\r\n]+)") do
      local k, v = line:match("^([^:]+):%s*(.*)$")
      if k and k:lower() == "ce-source" then values[#values + 1] = v end
    end
    assert.same({ "/changed" }, values)
    c:close()
  end)
end)
