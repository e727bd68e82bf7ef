-- tide repl: driven through a pipe (the evaluation) and through a real
-- terminal in tmux (readline, multi-line prompts, history).
local h = require "helpers"

local sh = h.sh

-- Runs a session from a string of lines; returns exit code and output.
local function session(dir, lines)
  local input = dir .. "/input.txt"
  h.write_file(input, lines)
  return sh(("cd %s && TIDE_HISTORY=%s/history %s repl < %s"):format(dir, dir, h.bin, input))
end

describe("tide repl (piped)", function()
  local dir
  before_each(function() dir = h.make_tmpdir() end)
  after_each(function() h.remove_tmpdir(dir) end)

  it("evaluates expressions and statements, across lines, and pretty-prints", function()
    local rc, out = session(dir, table.concat({
      "1 +",
      "  41",
      "local t = {}",
      "function add(a,",
      "             b)",
      "  return a + b",
      "end",
      "add(2, 3)",
      "{b = 'x', a = {1, true}, [3] = tide.null}",
    }, "\n") .. "\n")
    assert.are.equal(0, rc, out)
    assert.matches("\n42\n", out)
    assert.matches("\n5\n", out)
    assert.matches('{\n  %[3%] = null,\n  a = {\n    1,\n    true\n  },\n  b = "x"\n}', out)
  end)

  it("shows errors with their location and keeps going", function()
    local rc, out = session(dir, "error('boom')\nlocal x = nil; x.y = 1\nreturn 'still here'\n")
    assert.are.equal(0, rc, out)
    assert.matches("error: prompt:1: boom", out)
    assert.matches("error: prompt:1: attempt to index a nil value %(local 'x'%)", out)
    assert.matches('"still here"', out)
  end)

  it("stops a runaway line with the budgets, and the prompt survives", function()
    local rc, out = session(dir, "while true do end\n'after'\n")
    assert.are.equal(0, rc, out)
    -- The instruction budget, or on a loaded machine the time budget.
    assert.matches("error: %a+ budget exceeded", out)
    assert.matches('"after"', out)
  end)

  it("traces an event through every stage with timings", function()
    local rc, out = session(dir, table.concat({
      'upgrade("user.created", 1, function(e) e.data = { first = e.data.name } return e end)',
      'filter("user.created", function(e) return e.data.first ~= nil end)',
      'route("user.created", function(e) return { "user.created", "audit.user" } end)',
      'on("audit.user", function(e, ctx) ctx.publish("audit.logged", { who = e.data.first }) end)',
      'filter("drop.me", function(e) return false end)',
      'filter("bad.one", function(e) return e.data.nope.nope end)',
      "trace()",
      'pub("user.created", { name = "Ada" })',
      'pub("drop.me", "x")',
      'pub("bad.one", {})',
      'pub("nobody.cares", "y")',
    }, "\n") .. "\n")
    assert.are.equal(0, rc, out)
    assert.matches("event user.created  %(type user.created v1", out)
    assert.matches("  upgrade  user.created v1 %-> v2   prompt:1   [%d.]+ ms", out)
    assert.matches("  filter   user.created   prompt:1   kept", out)
    assert.matches("  route    user.created   prompt:1   %-> user.created, audit.user", out)
    assert.matches("  deliver  audit.user   0 subscribers", out) -- the prompt's own watcher does not count
    assert.matches("  on       audit.user   prompt:1   ok   published audit.logged", out)
    assert.matches("\n    event audit.logged  %(no rule matches%)\n      deliver  audit.logged   0 subscribers", out)
    assert.matches("  filter   drop.me   prompt:1   DROPPED", out)
    assert.matches("  ERROR    filter at prompt:1: prompt:1: attempt to index a nil value.- %-> %$TIDE.DEAD.bad.one", out)
    assert.matches("event nobody.cares  %(no rule matches%)", out)
  end)

  it("turns a session into a regression test: record + expect, then tide run", function()
    h.write_file(dir .. "/flow.lua",
      'on("order.paid", function(e, ctx) ctx.publish("inventory.reserved", { order_id = e.data.order_id }) end)\n' ..
      'route("order.paid", function(e) return { "order.paid", "order.audit" } end)\n')
    local rc, out = session(dir, table.concat({
      'load "flow.lua"',
      'record("order.>", "in.jsonl")',
      'pub("order.paid", { order_id = 7 })',
      'pub("order.paid", { order_id = 8 })',
      'expect("out.jsonl")',
      'rules()',
    }, "\n") .. "\n")
    assert.are.equal(0, rc, out)
    assert.matches("wrote 6 deliveries to out.jsonl", out)
    assert.matches("on%s+order.paid%s+flow.lua:1%s+calls 2, errors 0", out)
    -- record() keeps what was published, before the route fanned it out
    local recorded = h.read_file(dir .. "/in.jsonl")
    local n = 0
    for line in recorded:gmatch("[^\n]+") do
      n = n + 1
      assert.matches('^{"subject":"order%.paid"', line)
    end
    assert.are.equal(2, n, recorded)
    rc, out = sh(("cd %s && %s run flow.lua --events in.jsonl --expect out.jsonl"):format(dir, h.bin))
    assert.are.equal(0, rc, out)
    assert.matches("ok: 6 deliveries match out.jsonl", out)
    -- and a changed flow no longer matches
    h.write_file(dir .. "/flow.lua",
      'on("order.paid", function(e, ctx) ctx.publish("inventory.reserved", { order_id = 0 }) end)\n')
    rc, out = sh(("cd %s && %s run flow.lua --events in.jsonl --expect out.jsonl"):format(dir, h.bin))
    assert.are.equal(1, rc, out)
    assert.matches("differ", out)
  end)

  it("lists the stream helpers, and says when the flow has no streams", function()
    h.write_file(dir .. "/flow.lua", 'filter("x", function(e) return true end)\n')
    local input = dir .. "/input.txt"
    h.write_file(input, 'help()\nstreams()\nreplay("orders", 1)\n')
    local rc, out = sh(("cd %s && TIDE_HISTORY=%s/history %s repl -c flow.lua < %s"):format(dir, dir, h.bin, input))
    assert.are.equal(0, rc, out)
    assert.matches("streams    streams%(%) %(messages, sequences, consumers%)   replay%(stream, from %[, to%]%)", out)
    assert.matches("no streams: declare them in the flow", out)
    assert.matches("error: prompt:1: replay: no stream 'orders' %(this flow declares none%)", out)
    assert.not_matches("streams:", out:match("^[^\n]*\n[^\n]*") or "") -- no streams line in the banner
  end)

  it("reload() rebuilds from the entry file and keeps tide.kv", function()
    h.write_file(dir .. "/flow.lua", 'filter("x", function(e) return true end)\n')
    local input = dir .. "/input.txt"
    h.write_file(input, "tide.kv.set('k', 41)\nG = 1\nreload()\nreturn G, tide.kv.incr('k'), #tide.json.decode('[1,2]')\n")
    local rc, out = sh(("cd %s && TIDE_HISTORY=%s/history %s repl -c flow.lua < %s"):format(dir, dir, h.bin, input))
    assert.are.equal(0, rc, out)
    assert.matches("reloaded", out)
    assert.matches("nil\t42\t2", out)
  end)
end)

describe("tide repl (terminal)", function()
  local has_tmux = os.execute("command -v tmux >/dev/null 2>&1")

  it("edits lines with readline, continues unfinished statements, writes history", function()
    assert.is_truthy(has_tmux, "tmux is needed (make deps installs it)")
    local dir = h.make_tmpdir()
    local name = "tide-repl-" .. h.free_port()
    local hist = dir .. "/history"
    assert(os.execute(("tmux new-session -d -s %s -x 120 -y 40 'cd %s && TIDE_HISTORY=%s %s repl'")
      :format(name, dir, hist, h.bin)))
    local function keys(s) os.execute(("tmux send-keys -t %s %q Enter"):format(name, s)) end
    local function screen()
      local f = io.popen(("tmux capture-pane -p -t %s"):format(name))
      local s = f:read("a")
      f:close()
      return s
    end
    local ok, err = pcall(function()
      assert(h.wait_until(function() return screen():match("\n>") end, 5),
        "no prompt:\n" .. screen())
      keys("function sq(x)")
      assert(h.wait_until(function() return screen():match("\n>>") end, 5), "no continuation prompt:\n" .. screen())
      keys("return x * x end")
      keys("sq(12)")
      assert(h.wait_until(function() return screen():match("\n144\n") end, 5), screen())
      keys("error('oops')")
      assert(h.wait_until(function() return screen():match("error: prompt:1: oops") end, 5), screen())
      keys("sq(3) + 1")
      assert(h.wait_until(function() return screen():match("\n10\n") end, 5), "prompt died after an error:\n" .. screen())
    end)
    os.execute(("tmux send-keys -t %s C-d; sleep 0.3; tmux kill-session -t %s 2>/dev/null"):format(name, name))
    local f = io.open(hist)
    local history = f and f:read("a") or ""
    if f then f:close() end
    h.remove_tmpdir(dir)
    assert(ok, err)
    assert.matches("sq%(12%)", history)
    assert.matches("function sq%(x%)", history)
  end)

  it("keeps its helpers when the rules file changes under it", function()
    assert.is_truthy(has_tmux, "tmux is needed (make deps installs it)")
    local dir = h.make_tmpdir()
    local name = "tide-repl-" .. h.free_port()
    h.write_file(dir .. "/flow.lua", 'filter("a.>", function(e) return true end)\n')
    assert(os.execute(("tmux new-session -d -s %s -x 150 -y 40 'cd %s && TIDE_HISTORY=%s/h %s repl -c flow.lua'")
      :format(name, dir, dir, h.bin)))
    local function keys(s) os.execute(("tmux send-keys -t %s %q Enter"):format(name, s)) end
    local function screen()
      local f = io.popen(("tmux capture-pane -p -S -100 -t %s"):format(name))
      local s = f:read("a")
      f:close()
      return s
    end
    local ok, err = pcall(function()
      assert(h.wait_until(function() return screen():match("\n>") end, 5), "no prompt:\n" .. screen())
      h.write_file(dir .. "/flow.lua", 'route("a.>", function(e) return "b.moved" end)\n')
      assert(h.wait_until(function() return screen():match("rules reloaded") end, 5), "no reload:\n" .. screen())
      keys("rules()")
      assert(h.wait_until(function() return screen():match("route%s+a%.>%s+flow%.lua:1") end, 5), screen())
      keys("trace() pub('a.x', 'hi')")
      assert(h.wait_until(function() return screen():match("%-> b%.moved") end, 5), "helpers gone after reload:\n" .. screen())
    end)
    os.execute(("tmux kill-session -t %s 2>/dev/null"):format(name))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

describe("tide repl --listen", function()
  it("serves NATS clients while the prompt waits for input", function()
    local dir = h.make_tmpdir()
    local port = h.free_port()
    local pid = h.proc.spawn({ "/bin/sh", "-c",
      ("(printf 'sub(\"live.>\")\\n'; sleep 1.5; printf 'stats().deliveries\\n') | %s repl --listen 127.0.0.1:%d")
        :format(h.bin, port) }, dir .. "/out.txt")
    local c
    assert(h.wait_until(function()
      local ok, conn = pcall(h.connect, port)
      if ok then c = conn end
      return ok
    end, 5), "the prompt's router did not listen")
    c:send("SUB live.> 1\r\nPUB live.one 2\r\nhi\r\n")
    assert.are.equal("hi", assert(c:msg()).payload) -- a real client is served
    c:close()
    local st, code = h.proc.wait(pid, 10)
    local out = h.read_file(dir .. "/out.txt") or ""
    h.remove_tmpdir(dir)
    assert.are.equal("exited", st, out)
    assert.are.equal(0, code, out)
    assert.matches("<%- %[live%.>%] live%.one  hi", out) -- and the prompt saw it as it happened
    assert.matches("\n1\n", out)                        -- one delivery to a client
  end)
end)
