-- Rules registered while events flow (docs/scripting.md): a handler, an
-- upgrader, a filter or a route may call upgrade(), filter(), route() or
-- on(); the event in the pipeline goes on with the rules it started with,
-- and the next events see the new ones.  (Registering used to free the
-- match tables the pipeline was going through: the sanitizer pass caught
-- the reads.)
local h = require "helpers"

local RULES = [==[
on("rt.add", function(e, ctx)
  filter("rt.later", function(e) e.headers["X-Added"] = "filter" return true end)
  on("rt.add", function(e, ctx) ctx.publish("rt.second", "the handler added by the first") end)
end)
on("rt.add", function(e, ctx) ctx.publish("rt.after", "the handler after the one that registers") end)
filter("rt.filter", function(e)
  route("rt.later", function(e) return "rt.routed" end)
  return true
end)
route("rt.filter", function(e) return "rt.filtered" end)
upgrade("rt.up", 1, function(e)
  filter("rt.up", function(e) e.headers["X-Up"] = "later" return true end)
  e.data.up = true
end)
filter("rt.up", function(e) e.headers["X-First"] = tostring(e.data.up) return true end)
]==]

local srv

local function roundtrip(subject, payload, ...)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  for i, s in ipairs { subject, ... } do c:sub(s, tostring(i)) end
  assert(c:until_pong())
  local p = h.connect(srv.port)
  p:pub(subject, payload)
  assert(p:until_pong())
  p:close()
  local msgs = assert(c:until_pong())
  c:close()
  return msgs
end

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

setup(function()
  srv = h.start_scripted(RULES)
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("rules registered while an event is in the pipeline", function()
  it("leave the event its handlers, and the next events get the new rules", function()
    local msgs = roundtrip("rt.add", "1", "rt.after", "rt.second")
    local subjects = {}
    for i, m in ipairs(msgs) do subjects[i] = m.subject end
    assert.same({ "rt.add", "rt.after" }, subjects)
    msgs = roundtrip("rt.add", "2", "rt.after", "rt.second")
    subjects = {}
    for i, m in ipairs(msgs) do subjects[i] = m.subject end
    table.sort(subjects)
    -- (this event's first handler adds another: the third event would see it)
    assert.same({ "rt.add", "rt.after", "rt.second" }, subjects)
    local m = roundtrip("rt.later", "x")[1]
    assert.are.equal("filter", header(m, "X-Added"))
  end)

  it("leave the event its filters and routes when a filter or an upgrader registers", function()
    local m = roundtrip("rt.filter", "x", "rt.filtered")[1]
    assert.are.equal("rt.filtered", m.subject)
    m = roundtrip("rt.later", "y", "rt.routed")[1]
    assert.are.equal("rt.routed", m.subject)
    m = roundtrip("rt.up", '{"type":"rt.up","data":{}}')[1]
    assert.are.equal("true", header(m, "X-First"))
    assert.is_nil(header(m, "X-Up"))
    m = roundtrip("rt.up", '{"type":"rt.up","data":{}}')[1]
    assert.are.equal("later", header(m, "X-Up"))
  end)
end)
