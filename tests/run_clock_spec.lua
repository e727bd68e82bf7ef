-- tide run --clock virtual: time in the flow is the input events' own time.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local sh = h.sh

-- ms since the epoch of a UTC date, as tide.now() gives it.
local function ms(y, mo, d, hh, mi, ss)
  local days = os.time({ year = y, month = mo, day = d, hour = 12 }) // 86400 -- (noon: any zone gives the day)
  return (days * 86400 + hh * 3600 + mi * 60 + ss) * 1000
end

describe("tide run --clock virtual", function()
  local dir
  before_each(function()
    dir = h.make_tmpdir("run-clock")
    h.write_file(dir .. "/tmp/.keep", "")
  end)
  after_each(function() h.remove_tmpdir(dir) end)

  -- Runs flow on the lines; returns rc, stdout, stderr, the decoded lines
  -- and the wall time the run took.
  local function run(flow, lines, extra)
    h.write_file(dir .. "/flow.lua", flow)
    h.write_file(dir .. "/in.jsonl", table.concat(lines, "\n") .. "\n")
    local t0 = socket.gettime()
    local rc, out = sh(("(cd %s && TMPDIR=%s/tmp %s run flow.lua --events in.jsonl %s 2>err)"):format(
      dir, dir, h.bin, extra or "--clock virtual"))
    local took = socket.gettime() - t0
    local err = h.read_file(dir .. "/err") or ""
    local got = {}
    for l in out:gmatch("[^\n]+") do got[#got + 1] = assert(json.decode(l), l) end
    return rc, out, err, got, took
  end

  -- The deliveries on subjects starting with prefix.
  local function only(got, prefix)
    local out = {}
    for _, d in ipairs(got) do
      if d.subject:sub(1, #prefix) == prefix then out[#out + 1] = d end
    end
    return out
  end

  it("redelivers after an ack_wait of an hour at the right virtual time, in well under a second", function()
    local rc, out, err, got, took = run([[
stream "orders" { subjects = { "order.>" } }
consumer "work" { stream = "orders", ack_wait = "1h" }
on("order.*", { consumer = "work" }, function(e, ctx, meta)
  if meta.deliveries == 1 then return tide.progress() end -- never answers: ack_wait runs out
  ctx.publish("done." .. e.data.n, { deliveries = meta.deliveries, now = tide.now() })
end)
]], {
      '{"subject": "order.a", "data": {"n": 1}, "time": "2026-01-01T00:00:00Z"}',
      '{"subject": "order.a", "data": {"n": 2}, "time": "2026-01-01T00:30:00Z"}',
      '{"subject": "order.a", "data": {"n": 3}, "time": "2026-01-01T02:00:00Z"}',
    })
    assert.are.equal(0, rc, out .. err)
    assert.are.equal("", err)
    local order = {}
    for _, d in ipairs(got) do order[#order + 1] = d.subject end
    -- done.1 falls due at 01:00, between line 2 (00:30) and line 3 (02:00);
    -- done.2 at 01:30, also before line 3; done.3 at 03:00, after the input.
    assert.are.same({ "order.a", "order.a", "done.1", "done.2", "order.a", "done.3" }, order)
    local done = only(got, "done.")
    assert.are.same({ "2026-01-01T01:00:00.000Z", "2026-01-01T01:30:00.000Z", "2026-01-01T03:00:00.000Z" },
      { done[1].event.time, done[2].event.time, done[3].event.time })
    for i, d in ipairs(done) do
      assert.are.equal(2, d.event.data.deliveries)
      assert.are.equal(ms(2026, 1, 1, ({ 1, 1, 3 })[i], ({ 0, 30, 0 })[i], 0), d.event.data.now)
    end
    assert.is_true(took < 1, ("the run took %.2f s"):format(took))
  end)

  it("steps through the backoff, then dead-letters after max_deliver, by virtual time", function()
    local rc, out, err, got = run([[
stream "orders" { subjects = { "order.>" } }
stream "dead" { subjects = { "dlq.>" } }
consumer "work" { stream = "orders", backoff = { "1m", "10m" }, max_deliver = 4, dead_letter = "dlq.work" }
on("order.*", { consumer = "work" }, function(e, ctx, meta)
  ctx.publish("try", { deliveries = meta.deliveries })
  error("boom")
end)
]], { '{"subject": "order.a", "data": {"n": 1}, "time": "2026-01-01T00:00:00Z"}' })
    assert.are.equal(0, rc, out .. err)
    local times = {}
    for _, d in ipairs(only(got, "try")) do times[#times + 1] = d.event.time end
    -- 1m, then 10m, the last step repeating
    assert.are.same({ "2026-01-01T00:00:00.000Z", "2026-01-01T00:01:00.000Z", "2026-01-01T00:11:00.000Z",
      "2026-01-01T00:21:00.000Z" }, times)
    local dl = only(got, "dlq.work")
    assert.are.equal(1, #dl)
    assert.are.equal("max_deliver", dl[1].headers["tide-reason"])
    assert.are.equal("4", dl[1].headers["tide-deliveries"])
    assert.are.equal("dlq.work", got[#got].subject)
  end)

  it("runs a batch when its wait runs out and a NAK after its delay, between lines and after the input", function()
    local rc, out, err, got = run([[
stream "orders" { subjects = { "order.>" } }
consumer "batch" { stream = "orders", filter = "order.b" }
consumer "later" { stream = "orders", filter = "order.n" }
on("order.b", { consumer = "batch", batch = 10, wait = "2s" }, function(events, ctx, metas)
  ctx.publish("batch", { size = #events })
end)
on("order.n", { consumer = "later" }, function(e, ctx, meta)
  ctx.publish("n", { deliveries = meta.deliveries })
  if meta.deliveries == 1 then return tide.nak("5m") end
end)
]], {
      '{"subject": "order.b", "data": {}, "time": "2026-01-01T00:00:00Z"}',
      '{"subject": "order.b", "data": {}, "time": "2026-01-01T00:00:01Z"}',
      '{"subject": "order.n", "data": {}, "time": "2026-01-01T00:00:01.500Z"}',
      '{"subject": "order.b", "data": {}, "time": "2026-01-01T00:00:03Z"}',
    })
    assert.are.equal(0, rc, out .. err)
    local seen = {}
    for _, d in ipairs(got) do
      local data = d.event.data
      seen[#seen + 1] = table.concat({ d.subject, d.event.time, tostring(data.size or data.deliveries or "") }, " ")
    end
    assert.are.same({
      "order.b 2026-01-01T00:00:00Z ",
      "order.b 2026-01-01T00:00:01Z ",
      "order.n 2026-01-01T00:00:01.500Z ",
      "n 2026-01-01T00:00:01.500Z 1",
      "batch 2026-01-01T00:00:02.000Z 2", -- the first event's wait ran out before line 4
      "order.b 2026-01-01T00:00:03Z ",
      "batch 2026-01-01T00:00:05.000Z 1",
      "n 2026-01-01T00:05:01.500Z 2",
    }, seen)
  end)

  it("keeps the duplicate window by the events' times", function()
    local rc, out, err, got = run([[
stream "orders" { subjects = { "order.>" }, dedup_window = "2m" }
consumer "work" { stream = "orders" }
on("order.*", { consumer = "work" }, function(e, ctx, meta)
  ctx.publish("stored", { n = e.data.n })
end)
]], {
      '{"subject": "order.a", "data": {"n": 1}, "headers": {"Nats-Msg-Id": "m1"}, "time": "2026-01-01T00:00:00Z"}',
      '{"subject": "order.a", "data": {"n": 2}, "headers": {"Nats-Msg-Id": "m1"}, "time": "2026-01-01T00:01:59Z"}',
      '{"subject": "order.a", "data": {"n": 3}, "headers": {"Nats-Msg-Id": "m1"}, "time": "2026-01-01T00:04:00Z"}',
    })
    assert.are.equal(0, rc, out .. err)
    local ns = {}
    for _, d in ipairs(only(got, "stored")) do ns[#ns + 1] = d.event.data.n end
    -- 2 is within 2 minutes of 1: dropped; 3 is 4 minutes later: kept
    assert.are.same({ 1, 3 }, ns)
  end)

  it("gives rules tide.now() at the event's time; a line without a time keeps the clock", function()
    local rc, out, err, got = run([[
on("tick", function(e, ctx) ctx.publish("now", { now = tide.now() }) end)
]], {
      '{"subject": "tick", "data": {}, "time": "2026-03-04T05:06:07.250Z"}',
      '{"subject": "tick", "data": {}}',
      '{"subject": "tick", "event": {"specversion": "1.0", "id": "x", "source": "s", "type": "tick", ' ..
        '"time": "2026-03-04T07:00:00+01:00", "data": {}}}',
      '{"subject": "tick", "data": {}, "time": "2026-03-04T05:00:00Z"}',
    })
    assert.are.equal(0, rc, out .. err)
    local now = only(got, "now")
    local t = ms(2026, 3, 4, 5, 6, 7) + 250
    local six = ms(2026, 3, 4, 6, 0, 0)
    -- the last line's time is before the clock's: the clock stays
    assert.are.same({ t, t, six, six },
      { now[1].event.data.now, now[2].event.data.now, now[3].event.data.now, now[4].event.data.now })
    assert.are.equal("2026-03-04T05:06:07.250Z", now[1].event.time)
    assert.are.equal("2026-03-04T05:06:07.250Z", now[2].event.time)
    assert.are.equal("2026-03-04T06:00:00.000Z", now[3].event.time)
    -- the input line's time is its event's
    assert.are.equal("2026-03-04T05:06:07.250Z", got[1].event.time)
  end)

  it("gives tide.now() as the wall clock's ms under the real clock, the default", function()
    local before = math.floor(socket.gettime() * 1000)
    local rc, out, err, got = run([[
on("tick", function(e, ctx) ctx.publish("now", { now = tide.now(), type = math.type(tide.now()) }) end)
]], { '{"subject": "tick", "data": {}, "time": "2026-03-04T05:06:07.250Z"}' }, "")
    local after = math.ceil(socket.gettime() * 1000)
    assert.are.equal(0, rc, out .. err)
    local now = only(got, "now")[1].event.data
    assert.are.equal("integer", now.type)
    assert.is_true(now.now >= before and now.now <= after, ("%d not in %d..%d"):format(now.now, before, after))
  end)

  it("gives byte-identical output for the same input, ids and times included", function()
    local FLOW = [[
stream "orders" { subjects = { "order.>" } }
consumer "work" { stream = "orders", backoff = { "5m" }, max_deliver = 3 }
on("order.*", { consumer = "work" }, function(e, ctx, meta)
  ctx.publish("seen", { n = e.data.n, deliveries = meta.deliveries })
  if e.data.n == 2 then error("fails") end
end)
filter("bad", function(e) error("a pipeline failure") end)
]]
    local lines = {
      '{"subject": "order.a", "data": {"n": 1}, "time": "2026-01-01T00:00:00Z"}',
      '{"subject": "order.a", "data": {"n": 2}, "time": "2026-01-01T00:01:00Z"}',
      '{"subject": "bad", "data": {}, "time": "2026-01-01T00:02:00Z"}',
      '{"subject": "order.a", "data": {"n": 3}}',
    }
    local rc1, out1, err1, got = run(FLOW, lines)
    assert.are.equal(0, rc1, out1 .. err1)
    local rc2, out2 = run(FLOW, lines)
    assert.are.equal(0, rc2)
    assert.are.equal(out1, out2)
    -- what makes them so: every id tide made is derived from the input
    -- line and the count of ids since it (the pipeline's dead letter too)
    local ids = 0
    for _, d in ipairs(got) do
      if d.subject == "seen" then
        assert.matches("^%x%x%x%x%x%x%x%x%-0000%-4000%-8000%-%x+$", d.event.id)
        ids = ids + 1
      end
    end
    assert.are.equal(5, ids) -- n = 1, n = 2 three times, n = 3
    local dead = only(got, "$TIDE.DEAD.bad")
    assert.are.equal(1, #dead)
    assert.matches("^00000003%-0000%-4000%-8000%-", dead[1].headers["tide-dead-letter-id"])
    -- under the real clock the ids are random: two runs differ
    local _, real1 = run(FLOW, lines, "--clock real --settle 0")
    local _, real2 = run(FLOW, lines, "--clock real --settle 0")
    assert.are_not.equal(real1, real2)
  end)

  it("stops a flow whose work never ends after a bounded number of steps, saying so", function()
    local rc, out, err, got, took = run([[
stream "orders" { subjects = { "order.>" } }
consumer "work" { stream = "orders", backoff = { "1s" } }
on("order.*", { consumer = "work" }, function(e, ctx, meta) return tide.nak() end)
]], { '{"subject": "order.a", "data": {}, "time": "2026-01-01T00:00:00Z"}' })
    assert.are.equal(0, rc, out .. err)
    assert.matches("at the end of the input: stopped after 100000 steps of the virtual clock, with consumer work "
      .. "due again at 2026%-01%-02T03:46:41", err)
    assert.are.equal(1, #got)
    assert.is_true(took < 10, ("the run took %.2f s"):format(took))
  end)

  it("moves the clock to a line's time even when the step bound runs out before it", function()
    local rc, out, err, got = run([[
stream "orders" { subjects = { "order.>" } }
consumer "work" { stream = "orders", backoff = { "1s" }, max_deliver = 100010 }
on("order.*", { consumer = "work" }, function(e, ctx, meta)
  if e.data.n == 1 then return tide.nak() end
  ctx.publish("got", { now = tide.now() })
end)
]], {
      '{"subject": "order.a", "data": {"n": 1}, "time": "2026-01-01T00:00:00Z"}',
      '{"subject": "order.a", "data": {"n": 2}, "time": "2026-01-03T00:00:00Z"}',
    })
    assert.are.equal(0, rc, out .. err)
    assert.matches("in.jsonl:2: before this line: stopped after 100000 steps of the virtual clock", err)
    local got2 = only(got, "got")
    assert.are.equal(1, #got2)
    assert.are.equal("2026-01-03T00:00:00.000Z", got2[1].event.time)
    assert.are.equal(ms(2026, 1, 3, 0, 0, 0), got2[1].event.data.now)
  end)

  it("refuses a bad --clock or time with exit 2 and a clear error", function()
    local rc, _, err = run('on("x", function() end)\n', { '{"subject": "x", "data": 1}' }, "--clock wall")
    assert.are.equal(2, rc)
    assert.matches("tide run: %-%-clock wants 'real' or 'virtual', not 'wall'", err)
    rc, _, err = run('on("x", function() end)\n', { '{"subject": "x", "data": 1}' }, "--clock")
    assert.are.equal(2, rc)
    assert.matches("tide run: %-%-clock wants 'real' or 'virtual'", err)
    rc, _, err = run('on("x", function() end)\n', { '{"subject": "x", "data": 1, "time": "yesterday"}' })
    assert.are.equal(2, rc)
    assert.matches("in.jsonl:1: 'time' is not an RFC 3339 time: yesterday", err)
    rc, _, err = run('on("x", function() end)\n', { '{"subject": "x", "data": 1, "time": 12}' })
    assert.are.equal(2, rc)
    assert.matches("line 1: 'time' is an RFC 3339 string", err)
  end)
end)
