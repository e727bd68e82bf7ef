-- The command-line clients: tide pub, sub, req, stats, against a live
-- server and against no server.
local h = require "helpers"
local json = require "dkjson"

local sh = h.sh

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

describe("command-line clients", function()
  local srv, addr, dir
  setup(function()
    dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
on("svc.upper", function(e, ctx) ctx.reply(string.upper(e.raw)) end)
]])
    srv = h.start_server { args = { "-c", dir .. "/tide.lua" } }
    addr = "127.0.0.1:" .. srv.port
  end)
  teardown(function()
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
  end)

  it("sub receives what pub sends, with headers, and stops after --count", function()
    local out = dir .. "/sub.out"
    local pid = h.proc.spawn({ h.bin, "sub", "cli.>", "--count", "2", "--json", "-s", addr }, out)
    -- wait until the subscription is in place: the server counts it
    -- (the stats request itself holds one subscription, its inbox)
    assert(h.wait_until(function() return h.stats(srv.port).subscriptions >= 2 end, 5))
    local rc, o = sh(("%s pub cli.one '{\"n\":1}' -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    assert.matches("published 7 bytes to cli.one", o)
    rc, o = sh(("%s pub cli.two plain -H 'X-Trace: abc' -H 'X-Other:2' -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    local st, code = h.proc.wait(pid, 5)
    assert.are.equal("exited", st)
    assert.are.equal(0, code)
    local lines = {}
    for l in read(out):gmatch("[^\n]+") do
      if l:sub(1, 1) == "{" then lines[#lines + 1] = json.decode(l) end
    end
    assert.are.equal(2, #lines)
    assert.are.equal("cli.one", lines[1].subject)
    assert.are.equal(1, lines[1].data.n)
    assert.are.equal("cli.two", lines[2].subject)
    assert.are.equal("plain", lines[2].payload)
    assert.are.equal("abc", lines[2].headers["X-Trace"])
    assert.are.equal("2", lines[2].headers["X-Other"])
  end)

  it("req gets the reply of a handler", function()
    local rc, o = sh(("%s req svc.upper hello --json -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    local m = json.decode(o:match("{.*}"))
    assert.are.equal("HELLO", m.payload)
  end)

  it("req says when nobody answers", function()
    local rc, o = sh(("%s req nobody.home x --timeout 1 -s %s"):format(h.bin, addr))
    assert.are.equal(1, rc)
    assert.matches("no responders for nobody.home", o)
  end)

  it("stats prints the server's counters as a table, or as JSON with --json", function()
    local rc, o = sh(("%s stats --json -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    assert.matches("^{[^\n]*}\n$", o) -- the answer as it came: one line
    local st = json.decode(o)
    assert.is_number(st.in_msgs)
    assert.is_true(st.scripts.loaded)
    rc, o = sh(("%s stats -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    assert.is_nil(o:match("[{}\"]"), o) -- no JSON
    assert.matches("\nin_msgs +%d+\n", o)
    assert.matches("\nsubscriptions +%d+\n", o)
    assert.matches("\nscripts\n  loaded +true\n", o)
    assert.matches("\n  rules +1\n", o)
    assert.matches("\n  last_reload +ok\n", o)
    -- the server's counters first, aligned in one column with the scripts'
    local col = o:match("\n(in_msgs +)%d")
    assert.are.equal(#col, #o:match("\n(  rules +)%d"))
  end)

  it("fails clearly when no server is there", function()
    local port = h.free_port()
    for _, cmd in ipairs { "pub x y", "sub x --count 1", "req x y", "stats", "rules" } do
      local rc, o = sh(("%s %s -s 127.0.0.1:%d"):format(h.bin, cmd, port))
      assert.are.equal(1, rc, cmd)
      assert.matches("cannot connect to 127.0.0.1:" .. port .. ".-is tide serve running", o)
    end
  end)

  it("rejects bad usage with exit code 2", function()
    local rc, o = sh(h.bin .. " pub")
    assert.are.equal(2, rc)
    assert.matches("usage: tide pub", o)
    rc, o = sh(h.bin .. " sub x --bogus")
    assert.are.equal(2, rc)
    assert.matches("unknown option '%-%-bogus'", o)
    rc, o = sh(h.bin .. " pub x y -H novalue -s " .. addr)
    assert.are.equal(2, rc)
    assert.matches("not NAME:VALUE", o)
  end)

  it("reads DATA from standard input with '-'", function()
    local rc, o = sh(("printf 'from stdin' | %s pub cli.stdin - -s %s"):format(h.bin, addr))
    assert.are.equal(0, rc, o)
    assert.matches("published 10 bytes to cli.stdin", o)
  end)

  it("refuses a message over the server's max_payload before sending it", function()
    local big = dir .. "/big"
    local rc, o = sh(("head -c 1100000 /dev/zero | %s pub x - -s %s"):format(h.bin, addr))
    assert.are.equal(1, rc)
    assert.matches("over the server's max_payload", o)
    os.remove(big)
  end)
end)

describe("tide rules", function()
  it("lists the rules as a table with their last errors, or as JSON with --json", function()
    local srv = h.start_scripted([[
filter("rx.>", function(e) return e.data.keep end)
route("rx.in", function(e) return "rx.out" end)
upgrade("rx.user", 1, function(e) return e end)
on("rx.fail", function(e) error("no stock") end)
]])
    local addr = "127.0.0.1:" .. srv.port
    local ok, err = pcall(function()
      local c = h.connect(srv.port)
      for _, ev in ipairs { { "rx.in", "true" }, { "rx.in", "false" }, { "rx.fail", "true" } } do
        local p = ('{"specversion":"1.0","id":"%s","source":"t","type":"%s","data":{"keep":%s}}')
          :format(ev[1] .. ev[2], ev[1], ev[2])
        c:send(("PUB %s %d\r\n%s\r\n"):format(ev[1], #p, p))
      end
      assert(c:ping())
      c:close()
      local rc, o = sh(("%s rules -s %s"):format(h.bin, addr))
      assert.are.equal(0, rc, o)
      assert.matches("^KIND +RULE +WHERE +CALLS +ERRORS +DROPPED +ROUTED\n", o)
      assert.matches("\nfilter +rx%.> +tide%.lua:1 +3 +0 +1 +%-\n", o)
      assert.matches("\nroute +rx%.in +tide%.lua:2 +1 +0 +0 +1\n", o)
      assert.matches("\nupgrade +rx%.user v1%->v2 +tide%.lua:3 +0 +0 +%- +%-\n", o)
      assert.matches("\non +rx%.fail +tide%.lua:4 +1 +1 +%- +%-\n", o)
      assert.matches("\nlast error of on rx%.fail %(tide%.lua:4%), [%d%-]+T[%d:.]+Z, raised at tide%.lua:4: "
        .. "tide%.lua:4: no stock\n", o)
      rc, o = sh(("%s rules --json -s %s"):format(h.bin, addr))
      assert.are.equal(0, rc, o)
      local rules = json.decode(o)
      assert.are.equal(4, #rules)
      assert.are.equal("filter", rules[1].kind)
      assert.are.equal(1, rules[1].dropped)
      assert.are.equal("no stock", rules[4].last_error.message:match("no stock"))
      rc, o = sh(("%s rules extra -s %s"):format(h.bin, addr))
      assert.are.equal(2, rc, o)
      assert.matches("usage: tide pub", o)
    end)
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
    assert(ok, err)
  end)

  it("says so when the server runs no rules", function()
    local srv = h.start_server()
    local rc, o = sh(("%s rules -s 127.0.0.1:%d"):format(h.bin, srv.port))
    assert.are.equal("exited", (srv:stop()))
    assert.are.equal(0, rc, o)
    assert.are.equal("no rules loaded\n", o)
  end)
end)
