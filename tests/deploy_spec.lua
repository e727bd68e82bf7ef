-- Safe deploys (docs/deploys.md): the rule history and rollback, through
-- the CLI (tide rules history / rollback) and the admin subjects
-- ($TIDE.ADMIN.RULES.HISTORY / .ROLLBACK).
local h = require "helpers"
local json = require "dkjson"

local out_dir

-- Runs build/tide with args (a list) against srv; returns exit code,
-- stdout, stderr.
local function tide(srv, args)
  local cmd = h.bin
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  cmd = cmd .. " -s 127.0.0.1:" .. srv.port
  local o, e = out_dir .. "/out", out_dir .. "/err"
  local rc = h.sh(("{ timeout 20 %s > %s 2> %s; }"):format(cmd, o, e))
  return rc, h.read_file(o) or "", h.read_file(e) or ""
end

local function admin(srv, verb, payload)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN." .. verb, payload or ""))
  return assert(json.decode(m.payload), m.payload)
end

-- A filter that keeps events whose data.amount is at least min.
local function rules(min)
  return ([[
local lib = require "lib.limits"
filter("order.>", function(e) return e.data.amount >= lib.min end)
]]), ("return { min = %d }\n"):format(min)
end

local function write_rules(dir, min)
  local entry, lib = rules(min)
  h.write_file(dir .. "/lib/limits.lua", lib)
  h.write_file(dir .. "/tide.lua", entry)
end

-- Publishes order.x with amount and says whether it was delivered.
local function kept(srv, amount)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub("order.>", "1")
  c:pub("order.x", json.encode { specversion = "1.0", id = "o" .. amount, source = "spec", type = "order",
                                 data = { amount = amount } })
  local got = c:collect(1, 0.5)
  c:close()
  return #got == 1
end

-- The history, once the live revision is want (polls: file changes reload
-- after a debounce).
local function history_at(srv, want)
  local hist
  assert(h.wait_until(function()
    hist = admin(srv, "RULES.HISTORY")
    return hist.live == want
  end, 5), "live never became rev " .. want .. ": " .. json.encode(hist))
  return hist
end

local function start(dir, extra)
  local args = { "-c", dir .. "/tide.lua" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return h.start_server { args = args }
end

describe("rule history", function()
  local dir, srv

  before_each(function()
    dir = h.make_tmpdir("tide-deploy")
    out_dir = dir
  end)

  after_each(function()
    if srv then srv:stop() end
    srv = nil
    h.remove_tmpdir(dir)
  end)

  it("records each revision loaded and rolls back to the previous one through the CLI", function()
    write_rules(dir, 10)
    srv = start(dir)
    assert.is_true(kept(srv, 50))
    write_rules(dir, 100) -- the change drops what the first kept
    local hist = history_at(srv, 2)
    assert.is_false(kept(srv, 50))

    local rc, out, err = tide(srv, { "rules", "history", "--json" })
    assert.are.equal(0, rc, err)
    local j = assert(json.decode(out), out)
    assert.are.equal(2, j.live)
    assert.are.equal(2, #j.revisions)
    local r2, r1 = j.revisions[1], j.revisions[2] -- newest first
    assert.are.equal(2, r2.rev)
    assert.are.equal("live", r2.state)
    assert.are.equal(1, r1.rev)
    assert.are.equal("replaced", r1.state)
    assert.truthy(r1.reason:find("replaced by rev 2", 1, true), r1.reason)
    assert.are_not.equal(r1.hash, r2.hash)
    assert.truthy(r1.at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d"), r1.at)
    local files = { table.unpack(r2.files) }
    table.sort(files)
    assert.are.same({ dir .. "/lib/limits.lua", dir .. "/tide.lua" }, files)
    assert.are.same(hist.revisions, j.revisions)

    rc, out = tide(srv, { "rules", "history" })
    assert.are.equal(0, rc)
    assert.truthy(out:find("REV%s+HASH%s+STATE"), out)
    assert.truthy(out:find("%*2%s+" .. r2.hash .. "%s+live"), out)

    rc, out, err = tide(srv, { "rules", "rollback" })
    assert.are.equal(0, rc, err)
    assert.are.equal("rev 1 is live again (rev 2 rolled back)\n", out)
    assert.is_true(kept(srv, 50))
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal(1, j.live)
    assert.are.equal("rolled back", j.revisions[1].state)
    assert.are.equal("rolled back to rev 1", j.revisions[1].reason)
    assert.are.equal("live", j.revisions[2].state)

    -- Nothing before rev 1: an error, and rev 1 stays live.
    rc, out, err = tide(srv, { "rules", "rollback" })
    assert.are.equal(1, rc)
    assert.truthy(err:find("no revision before the live one (rev 1)", 1, true), err)
    assert.is_true(kept(srv, 50))
  end)

  it("rolls back through $TIDE.ADMIN.RULES.ROLLBACK from the stored files, not the disk", function()
    write_rules(dir, 10)
    srv = start(dir)
    write_rules(dir, 100)
    history_at(srv, 2)
    -- The module rev 1 required is gone from the disk, and tide.lua changed.
    os.remove(dir .. "/lib/limits.lua")
    h.write_file(dir .. "/tide.lua", "error('broken on disk')\n")
    local r = admin(srv, "RULES.ROLLBACK", json.encode { rev = 1 })
    assert.are.same({ ok = true, live = 1, from = 2 }, r)
    assert.is_true(kept(srv, 50))
    assert.is_false(kept(srv, 5))

    r = admin(srv, "RULES.ROLLBACK", json.encode { rev = 7 })
    assert.is_false(r.ok)
    assert.truthy(r.error:find("no rev 7 in the history", 1, true), r.error)
    r = admin(srv, "RULES.ROLLBACK", json.encode { rev = 1 })
    assert.are.same({ ok = false, error = "rev 1 is already live" }, r)
    r = admin(srv, "RULES.ROLLBACK", "[1]")
    assert.is_false(r.ok)
  end)

  it("survives a restart in the data directory and rolls back to a revision from before it", function()
    write_rules(dir, 10)
    srv = start(dir, { "--data", dir .. "/data" })
    write_rules(dir, 100)
    local before = history_at(srv, 2)
    srv:stop()
    -- The same files again: no new revision.
    srv = start(dir, { "--data", dir .. "/data" })
    local j = admin(srv, "RULES.HISTORY")
    assert.are.same(before, j)
    srv:stop()
    write_rules(dir, 1000)
    srv = start(dir, { "--data", dir .. "/data" })
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal(3, j.live)
    assert.are.equal("start", j.revisions[1].cause)
    assert.are.equal("replaced by rev 3 (start)", j.revisions[2].reason)
    assert.is_false(kept(srv, 500))
    os.remove(dir .. "/lib/limits.lua")
    local rc, out, err = tide(srv, { "rules", "rollback", "1" })
    assert.are.equal(0, rc, err)
    assert.are.equal("rev 1 is live again (rev 3 rolled back)\n", out)
    assert.is_true(kept(srv, 50))
  end)

  it("keeps the last 64 revisions, on disk too", function()
    write_rules(dir, 0)
    srv = start(dir, { "--data", dir .. "/data" })
    for i = 1, 66 do
      write_rules(dir, i)
      local r = admin(srv, "RELOAD")
      assert.is_true(r.ok, json.encode(r))
    end
    -- The file watcher also reloads what the loop wrote (10 ms after each
    -- change); on a loaded machine the last of those can come after the
    -- loop.  Let it settle, so that the rollback below is the last word.
    local gen, same = nil, 0
    assert(h.wait_until(function()
      local g = h.stats(srv.port).scripts.generation
      same = g == gen and same + 1 or 0
      gen = g
      return same >= 3
    end, 10, 0.1), "the rules kept reloading")
    local j = history_at(srv, 67)
    assert.are.equal(64, #j.revisions)
    assert.are.equal(67, j.revisions[1].rev)
    assert.are.equal(4, j.revisions[64].rev)
    local _, ls = h.sh("ls " .. dir .. "/data/rules")
    local n = 0
    for name in ls:gmatch("rev%-%d+%.json") do n = n + 1 end
    assert.are.equal(64, n, ls)
    assert.falsy(ls:find("rev-3.json", 1, true), ls)
    assert.truthy(ls:find("rev-4.json", 1, true), ls)
    local r = admin(srv, "RULES.ROLLBACK", json.encode { rev = 4 }) -- loaded with min = 3
    assert.is_true(r.ok, json.encode(r))
    assert.is_true(kept(srv, 3))
    assert.is_false(kept(srv, 2))
  end)

  it("says who asked for a reload and a rollback (the admin identity)", function()
    local auth = '\nauth { users = { { user = "ops", password = "opspw", admin = true } } }\n'
    write_rules(dir, 10)
    h.write_file(dir .. "/tide.lua", rules(10) .. auth)
    srv = start(dir)
    h.write_file(dir .. "/lib/limits.lua", select(2, rules(100)))
    local function as_ops(args)
      for _, a in ipairs { "--user", "ops", "--password", "opspw" } do args[#args + 1] = a end
      return tide(srv, args)
    end
    local function history()
      local rc, out, err = as_ops { "rules", "history", "--json" }
      assert.are.equal(0, rc, err)
      return assert(json.decode(out), out)
    end
    assert(h.wait_until(function() return history().live == 2 end, 5))
    local rc, out, err = as_ops { "rules", "rollback" }
    assert.are.equal(0, rc, err)
    local j = history()
    assert.are.equal("rolled back to rev 1 by ops", j.revisions[1].reason)
    -- Reloading the files on disk (rev 2's content) is a new revision, by ops.
    rc, out, err = as_ops { "req", "$TIDE.ADMIN.RELOAD", "" }
    assert.are.equal(0, rc, err)
    j = history()
    assert.are.equal(3, j.live)
    assert.are.equal("ops", j.revisions[1].by)
    assert.are.equal("admin request", j.revisions[1].cause)
    assert.are.equal("", j.revisions[2].by)
    -- A shadow: who started it, and who stopped it.
    rc, out, err = as_ops { "rules", "shadow", dir .. "/tide.lua" }
    assert.are.equal(0, rc, err)
    rc, out, err = as_ops { "rules", "stop" }
    assert.are.equal(0, rc, err)
    j = history()
    assert.are.equal("ops", j.revisions[1].by)
    assert.are.equal("stopped", j.revisions[1].state)
    assert.are.equal("shadow stopped by ops", j.revisions[1].reason)
    -- Without the admin permission: refused.
    rc = tide(srv, { "rules", "history" })
    assert.are_not.equal(0, rc)
  end)
end)

-- An event envelope for order.* with data.
local function envelope(id, data)
  return json.encode { specversion = "1.0", id = id, source = "spec", type = "order", data = data }
end

-- Subscribes to everything, publishes each {subject, payload}, and returns
-- what was delivered (after a PING round trip, so the deliveries are in).
local function publish_all(srv, events)
  local c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\n')
  c:sub(">", "1")
  for _, e in ipairs(events) do c:pub(e[1], e[2]) end
  local got = c:collect(1000, 1)
  c:close()
  return got
end

describe("shadow", function()
  local dir, srv

  before_each(function()
    dir = h.make_tmpdir("tide-shadow")
    out_dir = dir
  end)

  after_each(function()
    if srv then srv:stop() end
    srv = nil
    h.remove_tmpdir(dir)
  end)

  it("compares a candidate with a threshold typo and promotes the fix, through the CLI", function()
    write_rules(dir, 100)
    h.write_file(dir .. "/candidate/lib/limits.lua", "return { min = 1000 }\n") -- the typo
    srv = start(dir)
    local rc, out, err = tide(srv, { "rules", "shadow", dir .. "/candidate" })
    assert.are.equal(0, rc, err)
    local events = {}
    for i, amount in ipairs { 50, 150, 500, 5000, 99 } do
      events[i] = { "order.created", envelope("o" .. i, { amount = amount }) }
    end
    local got = publish_all(srv, events)
    -- Live traffic is the live rules' alone: 150, 500 and 5000.
    assert.are.equal(3, #got)
    rc, out, err = tide(srv, { "rules", "diff", "--json" })
    assert.are.equal(0, rc, err)
    local d = assert(json.decode(out), out)
    assert.are.equal(5, d.events)
    assert.are.equal(2, d.differ)
    assert.are.same({ kept = 2, routed = 0, data = 0, emitted = 0, errors = 0, kv = 0, acks = 0 }, d.kinds)
    assert.are.same({ ["candidate tide.lua:2"] = 2 }, d.rules)
    assert.are.equal(2, #d.samples)
    assert.are.same({ "kept" }, d.samples[1].kinds)
    assert.are.equal("order.created", d.samples[1].subject)
    assert.truthy(d.samples[1].live[1]:find('^deliver order.created {.*"amount":150'), d.samples[1].live[1])
    assert.are.same({ "dropped by tide.lua:2" }, d.samples[1].candidate)
    rc, out = tide(srv, { "rules", "diff" })
    assert.are.equal(0, rc)
    assert.truthy(out:find("5 events, 2 differ", 1, true), out)
    assert.truthy(out:find("candidate  dropped by tide.lua:2", 1, true), out)

    -- The fix: a new shadow replaces the old one and starts counting anew.
    h.write_file(dir .. "/candidate/lib/limits.lua", "return { min = 200 }\n")
    rc, out, err = tide(srv, { "rules", "shadow", dir .. "/candidate" })
    assert.are.equal(0, rc, err)
    publish_all(srv, events)
    rc, out = tide(srv, { "rules", "diff", "--json" })
    d = json.decode(out)
    assert.are.equal(5, d.events)
    assert.are.equal(1, d.differ) -- 150
    rc, out, err = tide(srv, { "rules", "promote" })
    assert.are.equal(0, rc, err)
    assert.are.equal("the candidate is live\n", out)
    assert.is_false(kept(srv, 150))
    assert.is_true(kept(srv, 250))
    -- Each shadow is an entry (revs 2 and 3); the promoted rules are rev 4.
    local hist = admin(srv, "RULES.HISTORY")
    assert.are.equal(4, hist.live)
    assert.are.equal("shadow promote", hist.revisions[1].cause)
    rc, out, err = tide(srv, { "rules", "diff" })
    assert.are.equal(1, rc)
    assert.truthy(err:find("no shadow is running", 1, true), err)
    -- The promoted text is what a rollback goes back from.
    assert.are.same({ ok = true, live = 1, from = 4 }, admin(srv, "RULES.ROLLBACK"))
    assert.is_true(kept(srv, 150))
  end)

  it("records each shadow in the history: shadow, then stopped or promoted, with why", function()
    write_rules(dir, 100)
    h.write_file(dir .. "/candidate/lib/limits.lua", "return { min = 1000 }\n")
    h.write_file(dir .. "/cand2.lua", "filter(\"order.>\", function(e) return e.data.amount >= 200 end)\n")
    srv = start(dir, { "--data", dir .. "/data" })
    local rc, out, err = tide(srv, { "rules", "shadow", dir .. "/candidate" })
    assert.are.equal(0, rc, err)
    rc, out, err = tide(srv, { "rules", "history", "--json" })
    assert.are.equal(0, rc, err)
    local j = assert(json.decode(out), out)
    assert.are.equal(1, j.live)
    local e = j.revisions[1]
    assert.are.equal(2, e.rev)
    assert.are.equal("shadow", e.state)
    assert.are.equal("shadow", e.cause)
    assert.are.same({ dir .. "/candidate" }, e.files)
    assert.matches("^%x+$", e.hash)
    assert.are.equal(16, #e.hash)
    rc, out = tide(srv, { "rules", "history" })
    assert.are.equal(0, rc)
    assert.truthy(out:find("\n2 +%x+ +shadow "), out)

    -- Stopped through the CLI: its state and why.
    rc, out, err = tide(srv, { "rules", "stop" })
    assert.are.equal(0, rc, err)
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal("stopped", j.revisions[1].state)
    assert.are.equal("shadow stopped", j.revisions[1].reason)
    assert.are.equal(1, j.live)

    -- A second one through the admin subject, replaced by a third.
    local r = admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/candidate" })
    assert.is_true(r.ok)
    r = admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/cand2.lua" })
    assert.is_true(r.ok)
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal("shadow", j.revisions[1].state)
    assert.are.same({ dir .. "/cand2.lua" }, j.revisions[1].files)
    assert.are.equal("stopped", j.revisions[2].state)
    assert.are.equal("replaced by another candidate", j.revisions[2].reason)
    -- A file and a directory with other text hash differently.
    assert.are_not.equal(j.revisions[1].hash, j.revisions[2].hash)

    -- Promoted: the entry says so and names the live revision it became.
    r = admin(srv, "RULES.PROMOTE")
    assert.is_true(r.ok)
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal(5, j.live)
    assert.are.equal("live", j.revisions[1].state)
    assert.are.equal("shadow promote", j.revisions[1].cause)
    assert.are.equal(4, j.revisions[2].rev)
    assert.are.equal("promoted", j.revisions[2].state)
    assert.are.equal("shadow promoted: rev 5 is live", j.revisions[2].reason)
    assert.are.equal("replaced", j.revisions[5].state)
    assert.are.equal("replaced by rev 5 (shadow promote)", j.revisions[5].reason)
    assert.is_false(kept(srv, 150))

    -- A rollback goes to the live revision before, never to a shadow's entry.
    rc, out, err = tide(srv, { "rules", "rollback" })
    assert.are.equal(0, rc, err)
    assert.are.equal("rev 1 is live again (rev 5 rolled back)\n", out)
    r = admin(srv, "RULES.ROLLBACK", json.encode { rev = 3 })
    assert.is_false(r.ok)

    -- A shadow running when the node stops ends with the process.
    admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/cand2.lua" })
    assert.are.equal("shadow", admin(srv, "RULES.HISTORY").revisions[1].state)
    srv:stop()
    srv = start(dir, { "--data", dir .. "/data" })
    j = admin(srv, "RULES.HISTORY")
    assert.are.equal(6, j.revisions[1].rev)
    assert.are.equal("stopped", j.revisions[1].state)
    assert.are.equal("the node stopped while it ran", j.revisions[1].reason)
  end)

  it("captures the candidate's publishes, kv writes and dead letters, never doing them", function()
    h.write_file(dir .. "/tide.lua", [[
filter("order.>", function(e)
  e.headers["X-Count"] = tostring(tide.kv.get("count"))
  return true
end)
on("order.>", function(e, ctx) end)
]])
    h.write_file(dir .. "/cand.lua", [[
filter("order.>", function(e)
  if e.data.boom then error("candidate fails") end
  return true
end)
on("order.>", function(e, ctx)
  local n = tide.kv.incr("count")
  ctx.publish("audit.seen", { n = n })
end)
]])
    srv = start(dir)
    local r = admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/cand.lua" })
    assert.are.same({ ok = true, path = dir .. "/cand.lua" }, r)
    local got = publish_all(srv, {
      { "order.a", envelope("a1", { n = 1 }) },
      { "order.a", envelope("a2", { n = 2 }) },
      { "order.b", envelope("b1", { boom = true }) },
    })
    -- Only the three live deliveries: no audit.seen, no dead letter; the
    -- live kv never saw the candidate's incr.
    assert.are.equal(3, #got)
    for _, m in ipairs(got) do
      assert.truthy(m.subject:match("^order%."), m.subject)
      local _, hd = h.parse_headers(m.headers)
      assert.are.equal("nil", hd["X-Count"])
    end
    local d = admin(srv, "RULES.DIFF")
    assert.are.equal(3, d.events)
    assert.are.equal(3, d.differ)
    assert.are.equal(1, d.kinds.kept) -- b1: dead-lettered instead of delivered
    assert.are.equal(1, d.kinds.errors)
    assert.are.equal(2, d.kinds.emitted)
    assert.are.equal(2, d.kinds.kv)
    local s1, s2, s3 = d.samples[1], d.samples[2], d.samples[3]
    assert.are.same({ "emitted", "kv" }, s1.kinds)
    assert.are.equal("kv incr count", s1.candidate[2])
    assert.truthy(s1.candidate[3]:find('^publish audit.seen {.*"n":1'), s1.candidate[3])
    -- The scratch store: the candidate reads its own writes.
    assert.truthy(s2.candidate[3]:find('^publish audit.seen {.*"n":2'), s2.candidate[3])
    -- The candidate's rules are named by the file they stand in for.
    assert.are.equal("dead letter (filter at tide.lua:1): tide.lua:2: candidate fails", s3.candidate[1])
    assert.are.same({ "kept", "errors" }, s3.kinds)
    assert.are.equal(1, d.rules["candidate tide.lua:1"])
    assert.are.same({ ok = true }, admin(srv, "RULES.STOP"))
    assert.is_false(admin(srv, "RULES.DIFF").ok)
    assert.are.equal(0, h.stats(srv.port).scripts.dead_letters)
  end)

  it("captures the verdicts of the candidate's handlers on a durable consumer, never acking", function()
    local stream = 'stream "orders" { subjects = { "order.>" } }\nconsumer "c" { stream = "orders" }\n'
    h.write_file(dir .. "/tide.lua", stream .. [[
on("order.*", { consumer = "c" }, function(e, ctx) end)
]])
    h.write_file(dir .. "/cand.lua", stream .. [[
on("order.*", { consumer = "c" }, function(e, ctx)
  ctx.publish("cand.seen", { id = e.id })
  return tide.nak(0.1)
end)
]])
    srv = start(dir, { "--data", dir .. "/data" })
    assert.is_true(admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/cand.lua" }).ok)
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("cand.seen", "1")
    for i = 1, 3 do
      local m = assert(h.request(srv.port, "order.created", envelope("d" .. i, { n = i })))
      assert.truthy(json.decode(m.payload).seq, m.payload)
    end
    local function consumer()
      local m = assert(h.request(srv.port, "$TIDE.ADMIN.CONSUMER.INFO", "c"))
      return (json.decode(m.payload))
    end
    assert.truthy(h.wait_until(function() return consumer().acked == 3 end), json.encode(consumer()))
    h.proc.sleep(0.3) -- a nak of 0.1 s would have redelivered by now
    local info = consumer()
    assert.are.equal(0, info.redelivered)
    assert.are.equal(0, info.num_ack_pending)
    assert.are.equal(0, #c:collect(1, 0.2)) -- the candidate's publish was not delivered
    c:close()
    local d = admin(srv, "RULES.DIFF")
    assert.is_true(d.kinds.acks >= 1, json.encode(d))
    assert.are.equal(d.differ, d.kinds.acks)
    assert.are.equal(d.kinds.acks, d.kinds.emitted)
    local sm = d.samples[1]
    assert.are.equal("ack order.created", sm.live[1])
    local text = table.concat(sm.candidate, "\n")
    assert.truthy(text:find("publish cand.seen", 1, true), text)
    assert.truthy(text:find("nak order.created", 1, true), text)
  end)

  it("captures the candidate's writes to a JetStream KV bucket, storing none", function()
    h.write_file(dir .. "/tide.lua", [[
on("kv.probe", function(e, ctx) ctx.reply(tostring(tide.kv.bucket("app").get("n"))) end)
on("kv.seed", function(e, ctx) tide.kv.bucket("app").set("n", 1) ctx.reply("ok") end)
on("order.>", function(e, ctx) end)
]])
    h.write_file(dir .. "/cand.lua", [[
on("order.>", function(e, ctx) tide.kv.bucket("app").incr("n", 10) end)
]])
    srv = start(dir, { "--data", dir .. "/data" })
    assert.are.equal("ok", assert(h.request(srv.port, "kv.seed", "")).payload)
    assert.is_true(admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/cand.lua" }).ok)
    publish_all(srv, { { "order.a", envelope("k1", {}) }, { "order.a", envelope("k2", {}) } })
    assert.are.equal("1", assert(h.request(srv.port, "kv.probe", "")).payload)
    local d = admin(srv, "RULES.DIFF")
    assert.are.equal(2, d.kinds.kv)
    assert.are.equal("kv put $KV.app.n", d.samples[1].candidate[2])
    assert.are.equal(1, #d.samples[1].live) -- the delivery alone
  end)

  it("refuses a candidate that does not load, and keeps no shadow", function()
    write_rules(dir, 100)
    h.write_file(dir .. "/bad.lua", "filter('x', function( end)\n")
    srv = start(dir)
    local r = admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/bad.lua" })
    assert.is_false(r.ok)
    assert.truthy(r.error:find("bad.lua", 1, true) or r.error:find("tide.lua", 1, true), r.error)
    assert.is_false(admin(srv, "RULES.DIFF").ok)
    r = admin(srv, "RULES.SHADOW", json.encode { path = dir .. "/missing.lua" })
    assert.is_false(r.ok)
    assert.truthy(r.error:find("cannot open", 1, true), r.error)
    assert.is_false(admin(srv, "RULES.PROMOTE").ok)
  end)
end)

describe("canary", function()
  local dir, srv

  -- Rules that stamp which side handled an event.
  local function side_rules(side, fail)
    return ([[
filter("order.>", function(e)
  %s
  e.headers["X-Side"] = %q
  return true
end)
]]):format(fail and 'error("candidate broken")' or "", side)
  end

  before_each(function()
    dir = h.make_tmpdir("tide-canary")
    out_dir = dir
    h.write_file(dir .. "/tide.lua", side_rules("live"))
    h.write_file(dir .. "/cand.lua", side_rules("candidate"))
  end)

  after_each(function()
    if srv then srv:stop() end
    srv = nil
    h.remove_tmpdir(dir)
  end)

  -- Publishes `per` events for each of n customers; returns key -> {side = count}.
  local function sides(n, per)
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("order.>", "1")
    for round = 1, per do
      for i = 1, n do
        c:pub("order.created", envelope(("e%d-%d"):format(i, round), { customer_id = "c" .. i }))
      end
    end
    local got = c:collect(n * per, 10)
    c:close()
    assert.are.equal(n * per, #got)
    local by = {}
    for _, m in ipairs(got) do
      local body = json.decode(m.payload)
      local _, hd = h.parse_headers(m.headers)
      local k = body.data.customer_id
      by[k] = by[k] or {}
      by[k][hd["X-Side"]] = (by[k][hd["X-Side"]] or 0) + 1
    end
    return by
  end

  it("sends about 10% of 1,000 keys to the candidate, each key always to one side, across a restart", function()
    srv = start(dir)
    local rc, out, err = tide(srv, { "rules", "canary", dir .. "/cand.lua", "--percent", "10", "--key",
                                     "data.customer_id", "--window", "60s" })
    assert.are.equal(0, rc, err)
    assert.truthy(out:find("10% of the events by data.customer_id", 1, true), out)
    local by = sides(1000, 2)
    local cand, first = 0, {}
    for k, t in pairs(by) do
      local n = 0
      for side, count in pairs(t) do
        n = n + 1
        assert.are.equal(2, count, k)
        first[k] = side
      end
      assert.are.equal(1, n, "key " .. k .. " went to both sides")
      if t.candidate then cand = cand + 1 end
    end
    assert.is_true(cand >= 70 and cand <= 130, "keys on the candidate: " .. cand)
    rc, out = tide(srv, { "rules", "diff" })
    assert.are.equal(0, rc)
    assert.truthy(out:find(("10%% by data.customer_id; live %d events, 0 dead letters; candidate %d events, 0 dead letters")
                             :format(2000 - 2 * cand, 2 * cand), 1, true), out)
    local d = admin(srv, "RULES.DIFF")
    assert.are.equal("canary", d.mode)
    assert.are.equal(2000, d.events)
    assert.are.equal(cand * 2, d.candidate.events)

    -- The same keys go to the same sides after a restart.
    srv:stop()
    srv = start(dir)
    assert.is_true(admin(srv, "RULES.CANARY", json.encode { path = dir .. "/cand.lua", percent = 10,
                                                          key = "data.customer_id" }).ok ~= false)
    by = sides(1000, 1)
    for k, t in pairs(by) do
      assert.are.equal(1, t[first[k]], k)
    end
  end)

  it("rolls back by itself within a window of failing, losing and repeating no event", function()
    h.write_file(dir .. "/cand.lua", side_rules("candidate", true))
    srv = start(dir)
    local r = admin(srv, "RULES.CANARY", json.encode { path = dir .. "/cand.lua", percent = 50, window = 0.5,
                                                      max_error_rate = 0.01 })
    assert.are.equal("canary", r.mode)
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("order.>", "1")
    c:sub("$TIDE.DEAD.>", "2")
    local N, t0 = 0, h.proc.now()
    while h.proc.now() - t0 < 1.5 do
      N = N + 1
      c:pub("order.created", envelope("e" .. N, { customer_id = "c" .. N }))
      h.proc.sleep(0.01)
    end
    local got = c:collect(N, 10)
    c:close()
    -- Each event exactly once: delivered by the live rules, or dead-lettered by the candidate.
    local seen, dead = {}, 0
    for _, m in ipairs(got) do
      local id = json.decode(m.payload).id
      assert.is_nil(seen[id], "twice: " .. tostring(id))
      seen[id] = true
      if m.subject:find("^%$TIDE%.DEAD") then dead = dead + 1 end
    end
    assert.are.equal(N, #got)
    assert.is_true(dead > 0)
    local d = admin(srv, "RULES.DIFF")
    assert.is_false(d.ok) -- the canary is gone
    local hist = admin(srv, "RULES.HISTORY")
    local entry = hist.revisions[1]
    assert.are.equal("canary", entry.cause)
    assert.are.equal("rolled back", entry.state)
    assert.truthy(entry.reason:find("^canary rolled back: dead%-letter rate 100%.0%%"), entry.reason)
    assert.are.equal(1, hist.live)
    -- At 100 events/s for half a second, the candidate's first window has at
    -- most about 50 events on its side: it failed them, and no more.
    assert.is_true(dead <= 40, "dead letters: " .. dead)
    assert.truthy(srv:log():find("canary rolled back", 1, true))
  end)

  it("runs what a side's handlers publish through that side, never the candidate's through the live rules", function()
    local function rules(side)
      return ([[
filter("order.>", function(e) e.headers["X-Side"] = %q return true end)
filter("audit.>", function(e) e.headers["X-Side"] = %q return true end)
on("order.created", function(e, ctx) ctx.publish("audit." .. e.data.customer_id, { n = 1 }) end)
]]):format(side, side)
    end
    h.write_file(dir .. "/tide.lua", rules("live"))
    h.write_file(dir .. "/cand.lua", rules("candidate"))
    srv = start(dir)
    local r = admin(srv, "RULES.CANARY", json.encode { path = dir .. "/cand.lua", percent = 50,
                                                      key = "data.customer_id" })
    assert.are.equal("canary", r.mode)
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("order.>", "1")
    c:sub("audit.>", "2")
    local n = 40
    for i = 1, n do c:pub("order.created", envelope("e" .. i, { customer_id = "c" .. i })) end
    local got = c:collect(2 * n, 10)
    c:close()
    assert.are.equal(2 * n, #got)
    local order_side, audit_side = {}, {}
    for _, m in ipairs(got) do
      local _, hd = h.parse_headers(m.headers)
      local cust = m.subject:match("^audit%.(.+)$")
      if cust then
        audit_side[cust] = hd["X-Side"]
      else
        order_side[json.decode(m.payload).data.customer_id] = hd["X-Side"]
      end
    end
    local count = { live = 0, candidate = 0 }
    for i = 1, n do
      local k = "c" .. i
      assert.is_not_nil(order_side[k], k)
      -- The audit event a side's handler published went through that side.
      assert.are.equal(order_side[k], audit_side[k], k)
      count[order_side[k]] = count[order_side[k]] + 1
    end
    assert.is_true(count.live > 0 and count.candidate > 0, json.encode(count))
    -- Each side counts the events its handlers published as its own.
    local d = admin(srv, "RULES.DIFF")
    assert.are.equal(2 * count.candidate, d.candidate.events)
    assert.are.equal(2 * count.live, d.live.events)
  end)

  it("finishes at --percent 100: the candidate becomes the live rules", function()
    srv = start(dir)
    local rc, out, err = tide(srv, { "rules", "canary", dir .. "/cand.lua", "--percent", "5" })
    assert.are.equal(0, rc, err)
    rc, out, err = tide(srv, { "rules", "canary", "--percent", "100" })
    assert.are.equal(0, rc, err)
    assert.are.equal("the canary is finished: the candidate is live\n", out)
    local by = sides(20, 1)
    for _, t in pairs(by) do assert.are.equal(1, t.candidate) end
    local hist = admin(srv, "RULES.HISTORY")
    assert.are.equal(3, hist.live)
    assert.are.equal("canary finished", hist.revisions[1].cause)
    assert.are.equal("promoted", hist.revisions[2].state)
    assert.are.equal("canary", hist.revisions[2].cause)
  end)
end)

describe("the prompt's deploy helpers", function()
  it("shadow(), diff() and promote(), with both decisions in the trace", function()
    local dir = h.make_tmpdir("tide-repl-deploy")
    h.write_file(dir .. "/flow.lua", 'filter("order.>", function(e) return e.data.amount > 100 end)\n')
    h.write_file(dir .. "/cand.lua", 'filter("order.>", function(e) return e.data.amount > 1000 end)\n')
    h.write_file(dir .. "/input.txt", table.concat({
      'shadow("cand.lua")',
      "trace()",
      'pub("order.x", { amount = 500 })',
      "trace(false)",
      'pub("order.x", { amount = 5000 })',
      "diff()",
      "promote()",
      "diff()",
      "trace()",
      'pub("order.x", { amount = 500 })',
    }, "\n") .. "\n")
    local rc, out = h.sh(("cd %s && TIDE_HISTORY=%s/history %s repl -c flow.lua < %s/input.txt"):format(dir, dir,
                                                                                                        h.bin, dir))
    h.remove_tmpdir(dir)
    assert.are.equal(0, rc, out)
    assert.matches("shadow of cand.lua: every event also goes through it", out, 1, true)
    -- The trace: the live decision, then the candidate's.
    assert.matches("  filter   order.>   flow.lua:1   kept[^\n]*\n[^\n]*deliver  order.x[^\n]*\n  shadow candidate:\n"
                   .. "event order.x[^\n]*\n  filter   order.>   flow.lua:1   DROPPED", out)
    assert.matches("shadow [^\n]*cand.lua: 2 events, 1 differ\n  kept 1 routed 0", out)
    assert.matches("    live       deliver order.x [^\n]*\"amount\":500", out)
    assert.matches("    candidate  dropped by flow.lua:1", out, 1, true)
    assert.matches("promoted: the candidate is the live rules", out, 1, true)
    assert.matches("diff: no shadow is running", out, 1, true)
    assert.matches("  filter   order.>   flow.lua:1   DROPPED", out:match("promoted.*$"))
  end)
end)
