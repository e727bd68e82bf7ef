-- Failures and budgets (docs/scripting.md, "Failures" and "The sandbox"):
-- a script's error or runaway costs one event, never the server.
local h = require "helpers"

-- Budgets kept small so that each runaway below ends quickly; the time
-- budget is long enough never to be the one that stops them.
local RULES = [==[
scripting { instructions = 5000000, memory = "16MB", time = "3s" }

filter("boom.>", function(e)
  local t = nil
  return t.field
end)

local bombs = {
  loop = function() while true do end end,
  pcall_loop = function()
    while true do pcall(function() while true do end end) end
  end,
  xpcall_loop = function()
    while true do xpcall(function() while true do end end, function(m) return m end) end
  end,
  table_bomb = function()
    local t, i = {}, 0
    while true do
      i = i + 1
      t[i] = { i, i, i, i, i, i, i, i, i, i, i, i, i, i, i, i }
    end
  end,
  string_doubling = function()
    local s = "x"
    while true do s = s .. s end
  end,
  rep_huge = function() return string.rep("x", 1e9) end,
  rep_method = function() return ("xy"):rep(3e9) end,
  pattern = function() return (("a"):rep(100000)):find(".-.-.-b") end,
}

-- work.*: a runaway only when the event asks for one
filter("work.*", function(e)
  local b = e.data and e.data.bomb
  if b then bombs[b]() end
  return true
end)

filter("rl.>", function(e) error("ratelimit-marker " .. e.subject) end)

filter("say.hi", function(e)
  print("print-marker", 42, nil)
  log("log-marker-info")
  log("warn", "log-marker-warn")
  tide.log("error", "tide-log-marker")
  require("speaker").speak()
  return true
end)

filter("sandbox.check", function(e)
  local r = {}
  local function check(name, v) r[#r + 1] = name .. "=" .. tostring(v) end
  check("io", type(io))
  check("os.execute", type(os.execute))
  check("os.exit", type(os.exit))
  check("os.getenv", type(os.getenv))
  check("os.remove", type(os.remove))
  check("os.time", type(os.time))
  check("os.clock", type(os.clock))
  check("debug", type(debug))
  check("dofile", type(dofile))
  check("loadfile", type(loadfile))
  check("package", type(package))
  check("collectgarbage", type(collectgarbage))
  check("string.dump", type(string.dump))
  check("method.dump", type(("").dump))
  local smt = getmetatable("")
  check("meta.dump", type(type(smt) == "table" and smt.__index.dump or nil))
  check("meta.locked", type(smt))
  local ok, err = pcall(load, "\27Lua\84\0\25\147\13\10\26\10", nil, "b")
  check("load.b", tostring(ok) .. ":" .. tostring(tostring(err):find("binary chunks are not allowed", 1, true) ~= nil))
  ok, err = pcall(load, "\27Lua\84\0\25\147\13\10\26\10", nil, "bt")
  check("load.bt", tostring(ok))
  local f, lerr = load("\27Lua\84\0\25\147\13\10\26\10")
  check("load.default", tostring(f) .. ":" .. tostring(lerr ~= nil))
  local g = load("return 1 + 1")
  check("load.text", g and g())
  local envless = load("return io, os.execute, tide ~= nil")
  local a, b, c = envless()
  check("load.env", tostring(a) .. "," .. tostring(b) .. "," .. tostring(c))
  ok, err = pcall(require, "../outside")
  check("require.dotdot", tostring(ok) .. ":" .. tostring(tostring(err):find("not allowed", 1, true) ~= nil))
  ok, err = pcall(require, "/etc/passwd")
  check("require.abs", tostring(ok))
  ok, err = pcall(require, "no_such_module")
  check("require.missing", tostring(ok) .. ":" .. tostring(tostring(err):find("not found", 1, true) ~= nil))
  check("require.ok", require("speaker").name)
  e.headers["X-Sandbox"] = table.concat(r, " ")
  return true
end)
]==]

local SPEAKER = [==[
local M = { name = "speaker" }
function M.speak() print("module-marker") end
return M
]==]

local srv

local function line_of(text)
  local n = 0
  for line in (RULES .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find(text, 1, true) then return n end
  end
  error("no line with " .. text)
end

local function contains(text, s)
  assert(type(s) == "string" and s:find(text, 1, true), ("expected %q in %q"):format(text, tostring(s)))
end

local function count_lines(log, text)
  local n = 0
  for line in log:gmatch("[^\n]+") do
    if line:find(text, 1, true) then n = n + 1 end
  end
  return n
end

local function listener(server, ...)
  local c = h.connect(server.port)
  c:send('CONNECT {"headers":true}\r\n')
  for i, s in ipairs { ... } do c:sub(s, tostring(i)) end
  assert(c:until_pong())
  return c
end

-- Publishes and waits (at most `timeout` seconds) until the server is done with it.
local function publish(server, subject, payload, headers, timeout)
  local c = h.connect(server.port)
  if headers then c:hpub(subject, headers, payload) else c:pub(subject, payload) end
  local ok, err = c:until_pong(timeout or 10)
  c:close()
  return ok, err
end

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

-- A new client can subscribe and receive a message right now.
local function assert_serving(server)
  local sub = h.connect(server.port, { timeout = 3 })
  sub:sub("health.check", "1")
  assert(sub:until_pong(3), "server did not answer PING")
  local pub = h.connect(server.port, { timeout = 3 })
  pub:pub("health.check", "alive")
  local m = sub:collect(1, 3)[1]
  assert.is_not_nil(m, "no delivery on health.check")
  assert.are.equal("alive", m.payload)
  sub:close()
  pub:close()
end

setup(function()
  srv = h.start_scripted { ["tide.lua"] = RULES, ["speaker.lua"] = SPEAKER }
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("a runtime error", function()
  it("dead-letters the event with stage, script, error, original subject and payload", function()
    local c = listener(srv, "boom.>", "$TIDE.DEAD.>")
    local before = h.stats(srv.port).scripts
    publish(srv, "boom.one", '{"data":{"a":1}}', { { "X-Orig", "kept" } }, 5)
    local msgs = assert(c:until_pong())
    assert.are.equal(1, #msgs)
    local m = msgs[1]
    assert.are.equal("$TIDE.DEAD.boom.one", m.subject)
    assert.are.equal('{"data":{"a":1}}', m.payload)
    assert.are.equal("filter", header(m, "Tide-Stage"))
    assert.matches("tide%.lua:" .. line_of('filter("boom.>"') .. "$", header(m, "Tide-Script"))
    assert.matches("tide%.lua:" .. line_of("return t.field") .. ": attempt to index a nil value",
      header(m, "Tide-Error"))
    assert.are.equal("boom.one", header(m, "Tide-Original-Subject"))
    assert.are.equal("kept", header(m, "X-Orig"))
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.errors + 1, after.errors)
    assert.are.equal(before.dead_letters + 1, after.dead_letters)
    c:close()
  end)

  it("goes to the prefix set with scripting{dead_letter}", function()
    local s = h.start_scripted([[
scripting { dead_letter = "dlq" }
filter("fail.>", function(e) error("dlq-test") end)
]])
    local c = listener(s, ">")
    publish(s, "fail.x", "payload-1", nil, 5)
    local msgs = assert(c:until_pong())
    assert.are.equal(1, #msgs)
    assert.are.equal("dlq.fail.x", msgs[1].subject)
    assert.are.equal("payload-1", msgs[1].payload)
    contains("dlq-test", header(msgs[1], "Tide-Error"))
    c:close()
    s:stop()
    h.remove_tmpdir(s.dir)
  end)
end)

describe("a runaway script", function()
  local cases = {
    { "loop", "instruction budget exceeded (5000000 instructions)" },
    { "pcall_loop", "instruction budget exceeded" },
    { "xpcall_loop", "instruction budget exceeded" },
    { "table_bomb", "memory budget exceeded (16777216 bytes)" },
    { "string_doubling", "memory budget exceeded" },
    { "rep_huge", "over the memory budget" },
    { "rep_method", "over the memory budget" },
    { "pattern", "instruction budget exceeded (5000000 instructions)" },
  }
  for _, case in ipairs(cases) do
    local bomb, message = case[1], case[2]
    it(bomb .. " is dead-lettered and the server serves on", function()
      local c = listener(srv, "work.*", "$TIDE.DEAD.>")
      local t0 = h.proc.now()
      local payload = '{"data":{"bomb":"' .. bomb .. '","n":1}}'
      assert(publish(srv, "work.item", payload, nil, 10))
      assert.is_true(h.proc.now() - t0 < 5, "took " .. (h.proc.now() - t0) .. " s")
      local msgs = assert(c:until_pong())
      assert.are.equal(1, #msgs)
      assert.are.equal("$TIDE.DEAD.work.item", msgs[1].subject)
      assert.are.equal(payload, msgs[1].payload)
      assert.are.equal("filter", header(msgs[1], "Tide-Stage"))
      contains(message, header(msgs[1], "Tide-Error"))
      -- the same rule handles the next event normally
      assert(publish(srv, "work.item", '{"data":{"bomb":false,"n":2}}', nil, 5))
      msgs = assert(c:until_pong())
      assert.are.equal(1, #msgs)
      assert.are.equal("work.item", msgs[1].subject)
      assert.are.equal('{"data":{"bomb":false,"n":2}}', msgs[1].payload)
      assert_serving(srv)
      -- what the runaway built was given back
      assert.is_true(h.stats(srv.port).scripts.memory < 4 * 1024 * 1024)
      c:close()
    end)
  end

  it("is stopped by the time budget", function()
    local s = h.start_scripted([[
scripting { instructions = 1000000000000, time = "200ms" }
filter("slow", function(e) local x = 0 while true do x = x + 1 end end)
]])
    local c = listener(s, ">")
    local t0 = h.proc.now()
    assert(publish(s, "slow", "s", nil, 10))
    local took = h.proc.now() - t0
    local msgs = assert(c:until_pong())
    assert.are.equal(1, #msgs)
    contains("time budget exceeded (200 ms)", header(msgs[1], "Tide-Error"))
    assert.is_true(took >= 0.15 and took < 3, "took " .. took .. " s")
    assert_serving(s)
    c:close()
    s:stop()
    h.remove_tmpdir(s.dir)
  end)

  -- Each of these runs on a server of its own, killed afterwards: a runaway
  -- that escapes the budgets would stall every later test.  steps: the
  -- payloads published to "esc" in turn, each with what must become of it
  -- ("dead": dead-lettered, "either": delivered or dead-lettered).
  local escapes = {
    { "pcall loop inside a coroutine", [[
filter("esc", function(e)
  coroutine.wrap(function()
    while true do pcall(function() while true do end end) end
  end)()
  return true
end)]] },
    { "__gc finalizer that loops", [[
filter("esc", function(e)
  setmetatable({}, { __gc = function() while true do end end })
  while true do end
end)]] },
    { "__gc finalizer put on the metatable tide.array() shares", [[
filter("esc", function(e)
  if e.raw == "set" then
    local ok = pcall(function()
      getmetatable(tide.array()).__gc = function() while true do end end
    end)
    local kept = tide.array()
    return true
  end
  while true do end
end)]], steps = { { "set", "either" }, { "loop", "dead" }, { "after", "dead" } } },
    { "pattern of many optional items", [[
filter("esc", function(e)
  local n = 30
  local found = (("a"):rep(n)):find(("a?"):rep(n) .. ("a"):rep(n))
  return found == 1
end)]], steps = { { "x", "either" } } },
    { "a loop of pattern calls, each under the bound on pattern work", [[
filter("esc", function(e)
  local s = ("a"):rep(700)
  for i = 1, 1000 do s:find(".-.-b") end
  return true
end)]] },
    { "string.rep of an empty string a huge number of times", [[
filter("esc", function(e)
  return #string.rep("", 1e12) == 0
end)]], steps = { { "x", "either" } } },
    { "table.move over a huge empty range", [[
filter("esc", function(e)
  table.move({}, 1, 1e12, 2)
  return true
end)]], steps = { { "x", "either" } } },
    { "a loop of table.move calls, each under the instruction budget", [[
filter("esc", function(e)
  local t = {}
  for i = 1, 100000 do table.move(t, 1, 4000000, 2) end
  return true
end)]] },
  }
  for _, case in ipairs(escapes) do
    it("(" .. case[1] .. ") cannot stall the server", function()
      local s = h.start_scripted("scripting { instructions = 5000000, time = \"500ms\" }\n" .. case[2])
      local ok, err = pcall(function()
        local c = listener(s, ">")
        for _, step in ipairs(case.steps or { { "x", "dead" } }) do
          local payload, fate = step[1], step[2]
          local t0 = h.proc.now()
          local done = publish(s, "esc", payload, nil, 3)
          assert.is_truthy(done, ("the server stalled for over 3 s on %q (still busy after %.1f s)"):format(
            payload, h.proc.now() - t0))
          local msgs = assert(c:until_pong(3))
          assert.are.equal(1, #msgs)
          assert.are.equal(payload, msgs[1].payload)
          if fate == "dead" or msgs[1].subject ~= "esc" then
            assert.are.equal("$TIDE.DEAD.esc", msgs[1].subject)
            assert.is_true(#(header(msgs[1], "Tide-Error") or "") > 0)
          end
        end
        assert_serving(s)
        c:close()
      end)
      s:kill()
      h.remove_tmpdir(s.dir)
      assert(ok, err)
    end)
  end
end)

describe("the sandbox", function()
  it("leaves out io, os.execute/exit/getenv, debug, dofile, loadfile, string.dump, binary chunks", function()
    local c = listener(srv, "sandbox.check")
    publish(srv, "sandbox.check", "x")
    local m = assert(c:until_pong())[1]
    assert.is_not_nil(m, "the check rule failed: " .. srv:log():sub(-600))
    local got = {}
    for kv in header(m, "X-Sandbox"):gmatch("%S+") do
      local k, v = kv:match("^([^=]+)=(.*)$")
      got[k] = v
    end
    assert.same({
      io = "nil", ["os.execute"] = "nil", ["os.exit"] = "nil", ["os.getenv"] = "nil", ["os.remove"] = "nil",
      ["os.time"] = "function", ["os.clock"] = "function",
      debug = "nil", dofile = "nil", loadfile = "nil", package = "nil", collectgarbage = "nil",
      ["string.dump"] = "nil", ["method.dump"] = "nil", ["meta.dump"] = "nil", ["meta.locked"] = "string",
      ["load.b"] = "false:true", ["load.bt"] = "false", ["load.default"] = "nil:true",
      ["load.text"] = "2", ["load.env"] = "nil,nil,true",
      ["require.dotdot"] = "false:true", ["require.abs"] = "false", ["require.missing"] = "false:true",
      ["require.ok"] = "speaker",
    }, got)
    c:close()
  end)

  it("sends print and log to the server log with the script's name", function()
    assert(publish(srv, "say.hi", "x"))
    local log = srv:log()
    assert.matches("%[INF%] %[tide%.lua%] print%-marker\t42\tnil\n", log)
    assert.matches("%[INF%] %[tide%.lua%] log%-marker%-info\n", log)
    assert.matches("%[WRN%] %[tide%.lua%] log%-marker%-warn\n", log)
    assert.matches("%[ERR%] %[tide%.lua%] tide%-log%-marker\n", log)
    assert.matches("%[INF%] %[speaker%.lua%] module%-marker\n", log)
  end)

  it("logs a repeated error once, not once per event", function()
    local c = listener(srv, "$TIDE.DEAD.rl.>")
    local before = h.stats(srv.port).scripts
    local pub = h.connect(srv.port)
    local batch = {}
    for i = 1, 50 do batch[i] = ("PUB rl.same %d\r\n%d\r\n"):format(#tostring(i), i) end
    pub:send(table.concat(batch))
    pub:pub("rl.other", "x")
    assert(pub:until_pong())
    local msgs = assert(c:until_pong())
    assert.are.equal(51, #msgs)
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.errors + 51, after.errors)
    assert.are.equal(before.dead_letters + 51, after.dead_letters)
    local log = srv:log()
    assert.are.equal(1, count_lines(log, "ratelimit-marker rl.same"))
    assert.are.equal(1, count_lines(log, "ratelimit-marker rl.other"))
    pub:close()
    c:close()
  end)
end)

describe("a broken entry file at start-up", function()
  local function fails(files, expect)
    local s = h.start_scripted(files, { wait = false })
    local st, code = h.proc.wait(s.pid, 10)
    if not st then s:kill() end
    local log = s:log()
    h.remove_tmpdir(s.dir)
    assert.are.equal("exited", st)
    assert.are.equal(1, code)
    for _, pattern in ipairs(expect) do assert.matches(pattern, log) end
    assert.is_nil(log:find("Server is ready", 1, true))
    return log
  end

  it("is refused when missing", function()
    local s = h.start_server { wait = false, args = { "-c", h.tmpdir .. "/no-such-dir-xyz/tide.lua" } }
    local st, code = h.proc.wait(s.pid, 10)
    assert.are.equal("exited", st)
    assert.are.equal(1, code)
    assert.matches("cannot open .*no%-such%-dir%-xyz/tide%.lua", s:log())
  end)

  it("is refused on a syntax error, naming file and line", function()
    fails("-- settings\nlocal x = 1\nlocal y = = 2\n", { "tide%.lua:3:" })
  end)

  it("is refused on a runtime error while loading, naming file and line", function()
    fails('local ok = true\nerror("startup-boom")\n', { "tide%.lua:2: startup%-boom" })
  end)

  it("is refused on an unknown settings key", function()
    fails('-- limits\nlimits { max_paylod = "1MB" }\n', { "tide%.lua:2:.*unknown setting 'max_paylod'" })
    fails('scripting { emit_dept = 3 }\n', { "tide%.lua:1:.*unknown setting 'emit_dept'" })
  end)

  it("is refused on an error in a required file, naming that file", function()
    fails({ ["tide.lua"] = 'require "lib.bad"\n', ["lib/bad.lua"] = "local a = 1\nlocal b = nil + a\n" },
      { "bad%.lua:2:" })
  end)

  it("is refused when loading runs away", function()
    fails("while true do end\n", { "budget exceeded" })
  end)
end)
