-- Hot reload (docs/scripting.md, "Reloading"): file changes, SIGHUP and
-- $TIDE.ADMIN.RELOAD swap in a new state only when it loaded cleanly, and
-- every event is handled wholly by one state, exactly once.
local h = require "helpers"
local json = require "dkjson"

-- The entry file, stamping each event with what handled it.
local function main_file(version, extra)
  return ([==[
VERSION = %q
local load_no = tide.kv.incr("loads")
local lib = require "lib.tag"
filter("ver.>", function(e)
  calls = (calls or 0) + 1
  e.headers["X-Version"] = VERSION
  e.headers["X-Load"] = tostring(load_no)
  e.headers["X-Global"] = tostring(calls)
  e.headers["X-KV"] = tostring(tide.kv.incr("kv.calls"))
  e.headers["X-Lib"] = lib.tag
  e.headers["X-Lazy"] = require("lazy.late").tag
  return true
end)
]==]):format(version) .. (extra or "")
end

local function lib_file(tag)
  return ("return { tag = %q }\n"):format(tag)
end

local srv

local function header(m, name)
  local _, t = h.parse_headers(m.headers)
  return t[name]
end

-- Publishes one ver.* event and returns the stamped delivery.
local function stamp()
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub("ver.>", "1")
  c:pub("ver.probe", "p")
  local m = c:collect(1, 5)[1]
  c:close()
  assert(m, "no delivery on ver.probe")
  local _, t = h.parse_headers(m.headers)
  return t
end

-- Polls until the stamp satisfies fn (at most 5 s); returns the stamp.
local function wait_stamp(fn, what)
  local last
  local got = h.wait_until(function()
    last = stamp()
    return fn(last) and last
  end, 5, 0.05)
  assert(got, "timed out waiting for " .. what .. "; last stamp: " .. json.encode(last))
  return got
end

local function admin_reload(port)
  local m = assert(h.request(port or srv.port, "$TIDE.ADMIN.RELOAD", ""))
  return json.decode(m.payload), m.payload
end

local function write(name, text)
  h.write_file(srv.dir .. "/" .. name, text)
end

setup(function()
  srv = h.start_scripted {
    ["tide.lua"] = main_file("v1"),
    ["lib/tag.lua"] = lib_file("lib1"),
    ["lazy/late.lua"] = lib_file("late1"),
  }
end)

teardown(function()
  local st, code = srv:stop()
  h.remove_tmpdir(srv.dir)
  assert.are.equal("exited", st)
  assert.are.equal(0, code)
end)

describe("reloading", function()
  it("picks up a changed entry file", function()
    assert.are.equal("v1", stamp()["X-Version"])
    local gen = h.stats(srv.port).scripts.generation
    write("tide.lua", main_file("v2"))
    wait_stamp(function(t) return t["X-Version"] == "v2" end, "v2")
    local st = h.stats(srv.port).scripts
    assert.are.equal(gen + 1, st.generation)
    assert.are.equal("ok", st.last_reload)
    assert.matches("Reloaded scripts %(a script file changed%)", srv:log())
  end)

  it("picks up a changed required file", function()
    assert.are.equal("lib1", stamp()["X-Lib"])
    write("lib/tag.lua", lib_file("lib2"))
    wait_stamp(function(t) return t["X-Lib"] == "lib2" end, "lib2")
  end)

  it("picks up a changed file first required inside a rule", function()
    assert.are.equal("late1", stamp()["X-Lazy"])
    write("lazy/late.lua", lib_file("late2"))
    wait_stamp(function(t) return t["X-Lazy"] == "late2" end, "late2")
  end)

  it("picks up a changed file found through scripting{path}, outside the entry file's directory", function()
    local s = h.start_scripted({
      ["node/tide.lua"] = 'scripting { path = ".." }\nlocal shared = require "shared.tag"\n'
        .. 'filter("sp.>", function(e) e.headers["X-Lib"] = shared.tag; return true end)\n',
      ["shared/tag.lua"] = lib_file("outside1"),
    }, { entry = "node/tide.lua" })
    local function tag()
      local c = h.connect(s.port)
      c:send('CONNECT {"headers":true}\r\n')
      c:sub("sp.>", "1")
      c:pub("sp.probe", "p")
      local m = c:collect(1, 5)[1]
      c:close()
      return m and header(m, "X-Lib")
    end
    assert.are.equal("outside1", tag())
    h.write_file(s.dir .. "/shared/tag.lua", lib_file("outside2"))
    assert(h.wait_until(function() return tag() == "outside2" end, 5, 0.05), "no reload after editing shared/tag.lua")
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(s.dir)
  end)

  it("reloads on SIGHUP", function()
    local load_no = tonumber(stamp()["X-Load"])
    local before = h.stats(srv.port).scripts
    assert(h.proc.kill(srv.pid, "HUP"))
    wait_stamp(function(t) return tonumber(t["X-Load"]) == load_no + 1 end, "the SIGHUP reload")
    local after = h.stats(srv.port).scripts
    assert.are.equal(before.generation + 1, after.generation)
    assert.are.equal(before.reloads + 1, after.reloads)
    assert.matches("Reloaded scripts %(SIGHUP%)", srv:log())
  end)

  it("reloads on a $TIDE.ADMIN.RELOAD request", function()
    local load_no = tonumber(stamp()["X-Load"])
    local gen = h.stats(srv.port).scripts.generation
    local reply, text = admin_reload()
    assert.matches('^{"ok":true,"generation":%d+,"rules":%d+}$', text)
    assert.are.equal(gen + 1, reply.generation)
    assert.are.equal(1, reply.rules)
    assert.are.equal(load_no + 1, tonumber(stamp()["X-Load"]))
  end)

  it("resets Lua globals but keeps tide.kv", function()
    stamp()
    local t = stamp()
    local global, kv = tonumber(t["X-Global"]), tonumber(t["X-KV"])
    assert.is_true(global >= 2)
    assert.is_true(admin_reload().ok)
    t = stamp()
    assert.are.equal("1", t["X-Global"])
    assert.are.equal(kv + 1, tonumber(t["X-KV"]))
  end)
end)

describe("a failed reload", function()
  local bad_files = {
    { "a syntax error", main_file("bad") .. "local x = = 1\n", "tide%.lua:14:" },
    { "a runtime error while loading", main_file("bad") .. 'error("load-time-failure")\n',
      "tide%.lua:14: load%-time%-failure" },
    { "selfcheck() returning false", main_file("bad", "function selfcheck() return false end\n"),
      "selfcheck%(%) returned false" },
    { "selfcheck() raising", main_file("bad", 'function selfcheck() error("not-ready") end\n'),
      "selfcheck failed: .*tide%.lua:14: not%-ready" },
    { "an unknown settings key", main_file("bad", "scripting { instructionz = 5 }\n"),
      "tide%.lua:14:.*unknown setting 'instructionz'" },
  }
  for i, case in ipairs(bad_files) do
    it("(" .. case[1] .. ") keeps the old version serving and says why", function()
      assert(admin_reload().ok)
      local good = stamp()
      local before = h.stats(srv.port).scripts
      write("tide.lua", case[2])
      -- the file watcher tries first and fails
      local st = h.wait_until(function()
        local s = h.stats(srv.port).scripts
        return s.reload_failures > before.reload_failures and s
      end, 5, 0.02)
      assert(st, "the changed file did not cause a reload attempt")
      assert.matches(case[3], st.last_reload)
      -- then an admin request, with the error in the reply
      local reply, text = admin_reload()
      assert.is_false(reply.ok, text)
      assert.matches(case[3], reply.error)
      assert.matches('^{"ok":false,"error":".*"}$', text)
      local after = h.stats(srv.port).scripts
      assert.are.equal(st.reload_failures + 1, after.reload_failures)
      assert.are.equal(before.generation, after.generation)
      assert.are.equal(before.reloads, after.reloads)
      assert.matches(case[3], after.last_reload)
      -- the old state still serves, its globals intact
      local t = stamp()
      assert.are.equal(good["X-Version"], t["X-Version"])
      assert.are.equal(good["X-Load"], t["X-Load"])
      assert.are.equal(tonumber(good["X-Global"]) + 1, tonumber(t["X-Global"]))
      assert.matches("Reload %(admin request%) failed, the previous scripts keep serving", srv:log())
      -- and a good file is taken again
      local v = "v3-" .. i
      write("tide.lua", main_file(v))
      wait_stamp(function(s) return s["X-Version"] == v end, v .. " after the failure")
      assert.are.equal("ok", h.stats(srv.port).scripts.last_reload)
    end)
  end
end)

describe("reloading under load", function()
  local RULES = [==[
local GEN = tide.kv.incr("gen")
filter("load.>", function(e)
  e.headers["X-Gen"] = tostring(GEN)
  return true
end)
on("load.>", function(e)
  tide.kv.incr("seen." .. e.raw)
  tide.kv.set("gen." .. e.raw, GEN)
end)
route("check.seen", function(e)
  local n = tonumber(e.raw)
  local bad = {}
  for i = 1, n do
    local v = tide.kv.get("seen." .. i)
    if v ~= 1 then
      bad[#bad + 1] = i .. "=" .. tostring(v)
      if #bad >= 20 then break end
    end
  end
  e.data = { keys = #tide.kv.keys("seen."), bad = table.concat(bad, " "), gen = GEN }
  return e.reply
end)
route("check.gen", function(e)
  local n = tonumber(e.raw)
  local out = {}
  for i = 1, n do out[i] = tide.kv.get("gen." .. i) end
  e.data = out
  return e.reply
end)
]==]

  it("handles and delivers every event exactly once, each by one version", function()
    -- make soak runs it with TIDE_SOAK_EVENTS (default 5,000 here)
    local N, BATCH = tonumber(os.getenv("TIDE_SOAK_EVENTS") or "5000"), 200
    local s = h.start_scripted(RULES)
    local sub = h.connect(s.port)
    sub:send('CONNECT {"headers":true}\r\n')
    sub:sub("load.>", "1")
    assert(sub:until_pong())
    local pub = h.connect(s.port)
    local admin = h.connect(s.port)
    admin:sub("_INBOX.reload", "9")
    assert(admin:until_pong())
    -- Each batch is followed at once by a reload request from the other
    -- connection, so reloads land while the batch is being processed; the
    -- next batch goes out once that reload is done.
    local reloads, gens = 0, {}
    for first = 1, N, BATCH do
      local out = {}
      for i = first, math.min(first + BATCH - 1, N) do
        local p = tostring(i)
        out[#out + 1] = ("PUB load.n %d\r\n%s\r\n"):format(#p, p)
      end
      assert(pub:send(table.concat(out)))
      assert(admin:pub("$TIDE.ADMIN.RELOAD", "", "_INBOX.reload"))
      reloads = reloads + 1
      local r = admin:collect(1, 10)[1]
      assert(r, "no reply to reload " .. reloads)
      local rep = json.decode(r.payload)
      assert.is_true(rep.ok, r.payload)
      gens[reloads] = rep.generation
      if reloads > 1 then assert.are.equal(gens[reloads - 1] + 1, gens[reloads]) end
    end
    assert(pub:until_pong(20))

    local msgs = sub:collect(N, 30)
    assert.are.equal(N, #msgs)
    local seen, versions, last_gen = {}, {}, 0
    for i, m in ipairs(msgs) do
      local n = tonumber(m.payload)
      assert.is_nil(seen[n], "event " .. m.payload .. " delivered twice")
      seen[n] = true
      assert.are.equal(i, n, "events out of order")
      local g = header(m, "X-Gen")
      assert.are.equal("string", type(g), "one version stamp per event")
      g = tonumber(g)
      assert.is_true(g >= last_gen, "an event stamped by an older version after a newer one")
      -- batch b went out after reload b - 1 had answered: generation b or later
      local b = (n - 1) // BATCH + 1
      assert.is_true(g >= b, ("event %d (batch %d) handled by generation %d"):format(n, b, g))
      last_gen = g
      versions[g] = true
    end
    assert.same({}, sub:until_pong()) -- nothing more
    local distinct = 0
    for _ in pairs(versions) do distinct = distinct + 1 end
    assert.is_true(distinct >= reloads // 2, "reloads did not interleave with the stream (" .. distinct .. " versions)")

    -- handled exactly once each, by the version that delivered it
    local check = json.decode(assert(h.request(s.port, "check.seen", tostring(N))).payload)
    assert.are.equal("", check.bad)
    assert.are.equal(N, check.keys)
    assert.are.equal(1 + reloads, check.gen)
    local handled_by = json.decode(assert(h.request(s.port, "check.gen", tostring(N))).payload)
    for i, m in ipairs(msgs) do
      assert.are.equal(tonumber(header(m, "X-Gen")), handled_by[i], "event " .. i .. " handled by another version")
    end
    local st = h.stats(s.port).scripts
    assert.are.equal(reloads, st.reloads)
    assert.are.equal(0, st.reload_failures)
    sub:close()
    pub:close()
    admin:close()
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(s.dir)
  end)
end)
