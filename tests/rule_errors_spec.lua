-- A rule's error with its location: the log has a Lua traceback (each
-- frame's file:line), and $TIDE.ADMIN.RULES, GET /v1/rules, rules() at the
-- prompt and trace() show the rule's last error and where it was raised.
local h = require "helpers"
local json = require "dkjson"

-- The number of the first line of text containing needle (plain).
local function line_of(text, needle)
  local n = 0
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if l:find(needle, 1, true) then return n end
  end
  error("no line with " .. needle)
end

local CHECKS = [[
local M = {}
local function require_amount(e)
  if type(e.data) ~= "table" or not e.data.amount then
    error("amount missing on " .. e.subject)
  end
  return true
end
function M.check(e)
  local ok = require_amount(e)
  return ok
end
return M
]]

local MAIN = [[
local checks = require "lib.checks"
filter("order.>", function(e)
  local ok = checks.check(e)
  return ok
end)
on("pay.>", function(e)
  error({ code = 7 }) -- an error value with no position in it
end)
route("ship.>", function(e)
  return 42
end)
filter("spin.>", function(e)
  local n = 0
  while true do n = n + 1 end
end)
filter("fine.>", function(e) return true end)
]]

describe("a rule's error", function()
  local srv, hport

  setup(function()
    hport = h.free_port()
    srv = h.start_scripted({
      ["tide.lua"] = ('listen { http = "127.0.0.1:%d" }\nscripting { instructions = 100000 }\n'):format(hport) .. MAIN,
      ["lib/checks.lua"] = CHECKS,
    })
    local c = h.connect(srv.port)
    c:send("CONNECT {}\r\n")
    for _, s in ipairs { "order.created", "pay.now", "ship.it", "spin.x", "fine.x" } do c:pub(s, "{}") end
    assert(c:ping())
    c:close()
  end)

  teardown(function()
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
  end)

  local ofs = 2 -- the lines the spec puts before MAIN in tide.lua
  local function main_line(needle) return line_of(MAIN, needle) + ofs end

  it("is logged with a traceback of file:line frames", function()
    local log = srv:log()
    local raise, call = line_of(CHECKS, 'error("amount missing'), line_of(CHECKS, "local ok = require_amount(e)")
    local want = table.concat({
      ("filter at tide.lua:%d: lib/checks.lua:%d: amount missing on order.created (event on order.created)")
        :format(main_line('filter("order.>"'), raise),
      "    stack traceback:",
      ("        lib/checks.lua:%d: in upvalue 'require_amount'"):format(raise),
      ("        lib/checks.lua:%d: in field 'check'"):format(call),
      ("        tide.lua:%d: in function <tide.lua:%d>"):format(main_line("checks.check(e)"),
        main_line('filter("order.>"')),
    }, "\n")
    assert.matches(want, log, 1, true)
    assert.matches(("handler at tide.lua:%d: %%(error object is a table value%%) %%(event on pay.now%%)\n    stack "
                    .. "traceback:\n        tide.lua:%d: in function <tide.lua:%d>"):format(main_line('on("pay.>"'),
                    main_line("error({ code"), main_line('on("pay.>"')), log)
  end)

  it("is shown by $TIDE.ADMIN.RULES and GET /v1/rules with where it was raised", function()
    local m = assert(h.request(srv.port, "$TIDE.ADMIN.RULES", ""))
    local rc, body = h.sh(("curl -s --max-time 5 http://127.0.0.1:%d/v1/rules"):format(hport))
    assert.are.equal(0, rc, body)
    for _, text in ipairs { m.payload, body } do
      local rules = assert(json.decode(text), text)
      local by = {}
      for _, r in ipairs(rules) do by[r.pattern] = r end
      local e = by["order.>"].last_error
      assert.are.equal("lib/checks.lua:" .. line_of(CHECKS, 'error("amount missing'), e.at)
      assert.matches("amount missing on order.created$", e.message)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", e.time)
      assert.are.equal(3, #e.traceback)
      assert.are.equal(("tide.lua:%d: in function <tide.lua:%d>"):format(main_line("checks.check(e)"),
        main_line('filter("order.>"')), e.traceback[3])
      -- no position in the message: the location still says where
      assert.are.equal("tide.lua:" .. main_line("error({ code"), by["pay.>"].last_error.at)
      assert.are.equal("(error object is a table value)", by["pay.>"].last_error.message)
      -- a bad answer was not raised in Lua: the rule's own line
      assert.are.equal("tide.lua:" .. main_line('route("ship.>"'), by["ship.>"].last_error.at)
      assert.matches("route returned a number", by["ship.>"].last_error.message)
      assert.are.equal(1, by["ship.>"].errors)
      -- a budget stop: where the script was when it was stopped
      assert.are.equal("tide.lua:" .. main_line("while true do"), by["spin.>"].last_error.at)
      assert.matches("^instruction budget exceeded", by["spin.>"].last_error.message)
      assert.is_nil(by["fine.>"].last_error)
    end
  end)
end)

describe("at the prompt", function()
  it("rules() and trace() show a rule's last error and where it was raised", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/input.txt", table.concat({
      'filter("bad.>", function(e)',
      "  local t = nil",
      "  return t.x",
      "end)",
      "trace()",
      'pub("bad.one", {})',
      "trace(false)",
      "rules()",
    }, "\n") .. "\n")
    local rc, out = h.sh(("cd %s && TIDE_HISTORY=%s/history %s repl < %s/input.txt"):format(dir, dir, h.bin, dir))
    h.remove_tmpdir(dir)
    assert.are.equal(0, rc, out)
    assert.matches("  ERROR    filter at prompt:1: prompt:3: attempt to index a nil value (local 't'), raised at "
                   .. "prompt:3   -> $TIDE.DEAD.bad.one", out, 1, true)
    assert.matches("  filter   bad.>  +prompt:1  +calls 1, errors 1, dropped 0\n           last error, raised at "
                   .. "prompt:3: prompt:3: attempt to index a nil value %(local 't'%)\n", out)
  end)
end)
