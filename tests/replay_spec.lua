-- tide check FLOW --replay DATADIR:STREAM (docs/deploys.md): a candidate's
-- decisions beside the live rules' over a stopped node's stored events.
local h = require "helpers"
local json = require "dkjson"

local root = h.root
local candidate = root .. "/examples/order-filter/candidate"
local amounts = { 40, 250, 100, 100.5, 1000, 1500, 5000 }

-- Runs build/tide check with args; exit code, stdout, stderr.
local function check(dir, args)
  local cmd = h.bin .. " check"
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  local o, e = dir .. "/out", dir .. "/err"
  local rc = h.sh(("{ timeout 20 %s > %s 2> %s; }"):format(cmd, o, e))
  return rc, h.read_file(o) or "", h.read_file(e) or ""
end

-- A digest of every file under dir (names, sizes and contents).
local function digest(dir)
  local p = io.popen(("cd '%s' && find . -type f -print0 | sort -z | xargs -0 sha256sum"):format(dir))
  local s = p:read("a")
  p:close()
  return s
end

describe("tide check --replay", function()
  local dir, data, times

  setup(function()
    dir = h.make_tmpdir("tide-replay")
    data = dir .. "/data"
    h.write_file(dir .. "/rules.lua", h.read_file(root .. "/examples/order-filter/rules.lua"))
    h.write_file(dir .. "/tide.lua", [[
storage { dir = "data" }
stream "orders" { subjects = { "order.>" } }
require "rules"
]])
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua" } }
    times = {}
    local ok, err = pcall(function()
      local c = h.connect(srv.port)
      for i, a in ipairs(amounts) do
        times[i] = os.time()
        c:pub("order.created", json.encode { specversion = "1.0", id = "o" .. i, source = "spec",
                                             type = "order.created", data = { amount = a } })
        c:ping()
        if i == 4 then h.sh("sleep 1.1") end -- the last three a second later than the first
      end
      c:close()
    end)
    srv:stop()
    assert(ok, err)
  end)

  teardown(function() h.remove_tmpdir(dir) end)

  it("shows what the wrong candidate would have done to the stored orders", function()
    local before = digest(data)
    local rc, out, err = check(dir, { candidate, "--replay", data .. ":orders", "--json" })
    assert.are.equal(0, rc, err)
    local d = assert(json.decode(out), out)
    -- The filter kept 250, 100.5, 1000, 1500 and 5000 (stored); the
    -- candidate's threshold typo drops 250, 100.5 and 1000.
    assert.are.equal(5, d.events)
    assert.are.equal(3, d.differ)
    assert.are.equal(3, d.kinds.kept)
    assert.are.equal(0, d.kinds.routed)
    assert.are.equal(3, #d.samples)
    assert.matches('"amount":250', d.samples[1].live[1], 1, true)
    assert.matches("^dropped by rules.lua:", d.samples[1].candidate[1])
    assert.are.equal(3, d.rules[next(d.rules)])
    assert.are.equal(before, digest(data))
    rc, out = check(dir, { candidate, "--replay", data .. ":orders" })
    assert.are.equal(0, rc)
    assert.matches("5 events, 3 differ", out, 1, true)
    assert.are.equal(before, digest(data))
  end)

  it("takes the range by sequence, --to inclusive", function()
    local rc, out, err = check(dir, { candidate, "--replay", data .. ":orders", "--json", "--from", "2", "--to", "3" })
    assert.are.equal(0, rc, err)
    local d = json.decode(out)
    assert.are.equal(2, d.events)
    assert.are.equal(2, d.differ)
    assert.matches('"amount":100.5', d.samples[1].live[1], 1, true)
    rc, out = check(dir, { candidate, "--replay", data .. ":orders", "--json", "--from", "4" })
    d = json.decode(out)
    assert.are.equal(2, d.events)
    assert.are.equal(0, d.differ)
  end)

  it("takes the range by RFC 3339 time", function()
    -- Orders 5..7 (stored as 3..5) came at least a second after order 4.
    local at = os.date("!%Y-%m-%dT%H:%M:%SZ", times[5])
    local rc, out, err = check(dir, { candidate, "--replay", data .. ":orders", "--json", "--from", at })
    assert.are.equal(0, rc, err)
    local d = json.decode(out)
    assert.are.equal(3, d.events)
    assert.are.equal(1, d.differ) -- 1000
    local before = os.date("!%Y-%m-%dT%H:%M:%SZ", times[4] + 1) -- after order 4, before order 5
    rc, out, err = check(dir, { candidate, "--replay", data .. ":orders", "--json", "--to", before })
    assert.are.equal(0, rc, err)
    d = json.decode(out)
    assert.are.equal(2, d.events)
    assert.are.equal(2, d.differ)
  end)

  it("compares against other rules with --against", function()
    -- The candidate against itself: nothing differs.
    local rc, out, err = check(dir, { candidate, "--replay", data .. ":orders", "--json",
                                      "--against", candidate .. "/rules.lua" })
    assert.are.equal(0, rc, err)
    local d = json.decode(out)
    assert.are.equal(5, d.events)
    assert.are.equal(0, d.differ)
  end)

  it("says what is wrong with bad arguments", function()
    local rc, _, err = check(dir, { candidate, "--replay", data .. ":nope" })
    assert.are.equal(2, rc)
    assert.matches("no stream nope in", err, 1, true)
    rc, _, err = check(dir, { candidate, "--replay", dir .. "/missing:orders" })
    assert.are.equal(2, rc)
    assert.matches("no data directory", err, 1, true)
    rc, _, err = check(dir, { candidate, "--replay", data .. ":orders", "--from", "4", "--to", "2" })
    assert.are.equal(2, rc)
    assert.matches("bad range", err, 1, true)
    rc, _, err = check(dir, { candidate, "--replay", data .. ":orders", "--from", "yesterday" })
    assert.are.equal(2, rc)
    assert.matches("bad range", err, 1, true)
    rc, _, err = check(dir, { candidate, "--replay", data })
    assert.are.equal(2, rc)
    assert.matches("usage", err, 1, true)
  end)
end)

describe("tide check --replay with the node's state", function()
  local dir, data

  before_each(function()
    dir = h.make_tmpdir("tide-replay-kv")
    data = dir .. "/data"
    -- The live rules keep orders over 100; a handler keeps settings in tide.kv.
    h.write_file(dir .. "/tide.lua", [[
storage { dir = "data" }
stream "orders" { subjects = { "order.>" } }
filter("order.>", function(e) return e.data.amount > 100 end)
filter("mord.>", function(e) return e.data.amount > 100 end)
on("config.set", function(e)
  tide.kv.set("threshold", e.data.threshold)
  tide.kv.set("cfg a/b", { ok = true })
  tide.kv.set("gone", 1)
  tide.kv.del("gone")
end)
]])
    -- The candidate takes its threshold from tide.kv, and insists on the
    -- rest of what the handler left there.
    h.write_file(dir .. "/cand.lua", [[
local function keep(e)
  local cfg = tide.kv.get("cfg a/b")
  assert(cfg and cfg.ok == true, "no cfg a/b in tide.kv")
  assert(tide.kv.get("gone") == nil, "gone is back")
  return e.data.amount > (tide.kv.get("threshold") or 0)
end
filter("order.>", keep)
filter("mord.>", keep)
]])
  end)

  after_each(function() h.remove_tmpdir(dir) end)

  local function publish_orders(c, subject)
    for i, a in ipairs(amounts) do
      c:pub(subject, json.encode { specversion = "1.0", id = "o" .. i, source = "spec", type = "order.created",
                                   data = { amount = a } })
    end
    c:ping()
  end

  it("starts tide.kv as the data directory's, so a rule reading it decides as on the node", function()
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua" } }
    local ok, err = pcall(function()
      local c = h.connect(srv.port)
      c:pub("config.set", json.encode { specversion = "1.0", id = "cfg", source = "spec", type = "config",
                                        data = { threshold = 1000 } })
      c:ping()
      publish_orders(c, "order.created")
      c:close()
    end)
    srv:stop()
    assert(ok, err)
    local before = digest(data)
    local rc, out, err2 = check(dir, { dir .. "/cand.lua", "--replay", data .. ":orders", "--json" })
    assert.are.equal(0, rc, err2)
    local d = assert(json.decode(out), out)
    -- Stored: 250, 100.5, 1000, 1500, 5000.  With the node's threshold of
    -- 1000 the candidate drops 250, 100.5 and 1000 and fails none.
    assert.are.equal(5, d.events)
    assert.are.equal(3, d.differ)
    assert.are.equal(3, d.kinds.kept)
    assert.are.equal(0, d.kinds.errors)
    assert.matches('"amount":250', d.samples[1].live[1], 1, true)
    -- The node's tide.kv was read from a copy: the data directory is as it was.
    assert.are.equal(before, digest(data))
  end)

  it("reads a memory stream of a running node", function()
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua" } }
    local ok, err = pcall(function()
      local m = assert(h.request(srv.port, "$JS.API.STREAM.CREATE.mem",
                                 json.encode { name = "mem", subjects = { "mord.>" }, storage = "memory" }))
      assert.is_nil(json.decode(m.payload).error, m.payload)
      local c = h.connect(srv.port)
      c:pub("config.set", json.encode { specversion = "1.0", id = "cfg", source = "spec", type = "config",
                                        data = { threshold = 1000 } })
      publish_orders(c, "mord.created")
      c:close()
      assert(h.wait_until(function() return h.sh("ls " .. data .. "/memory/mem/*.seg >/dev/null 2>&1") == 0 end, 5))
      local rc, out, err2 = check(dir, { dir .. "/cand.lua", "--replay", data .. ":mem", "--json",
                                         "--against", dir .. "/tide.lua" })
      assert.are.equal(0, rc, err2)
      local d = assert(json.decode(out), out)
      -- The running node's memory stream and tide.kv: 3 of the 5 stored differ.
      assert.are.equal(5, d.events)
      assert.are.equal(3, d.differ)
      assert.are.equal(3, d.kinds.kept)
      assert.are.equal(0, d.kinds.errors)
    end)
    srv:stop()
    assert(ok, err)
  end)
end)
