-- tide repl with streams: the flow's streams, consumers and durable Lua
-- handlers run at the prompt as under tide serve; streams() shows them and
-- replay() runs stored events through today's rules without storing them
-- again.  Interactive sessions run in a real terminal (tmux), scripted ones
-- from a file (each line's durable work is done before the next).
local h = require "helpers"
local json = require "dkjson"

local sh = h.sh

local has_tmux = os.execute("command -v tmux >/dev/null 2>&1")

-- A durable handler that publishes: total.updated for every order.created.
-- (No deduplication: an event stored again would be stored, not refused as
-- a duplicate, so the tests see that replay() stores nothing.)
local FLOW = [[
stream "orders" { subjects = { "order.>" }, dedup_window = 0 }
consumer "totals" { stream = "orders", filter = "order.created" }
on("order.created", { consumer = "totals" }, function(e, ctx, meta)
  tide.kv.incr("total", e.data.amount)
  ctx.publish("total.updated", { seq = meta.seq, total = tide.kv.get("total") })
end)
]]

-- A tide repl in a tmux session of its own.  t.keys(line) types a line,
-- t.wait(pattern) waits for it on the screen (wrapped lines joined),
-- t.close() leaves with Ctrl-D and checks the exit code and standard error
-- (where the sanitizers report, in the ASan pass).
local function terminal(dir, args)
  local t = { name = "tide-rs-" .. h.free_port() }
  os.remove(dir .. "/repl-rc")
  assert(os.execute(("tmux new-session -d -s %s -x 200 -y 50 "
    .. "'cd %s && TIDE_HISTORY=%s/history %s repl %s 2>repl-stderr; echo $? >repl-rc'")
    :format(t.name, dir, dir, h.bin, args)))
  function t.keys(s)
    os.execute(("tmux send-keys -t %s -l %q"):format(t.name, s))
    os.execute(("tmux send-keys -t %s Enter"):format(t.name))
  end
  function t.screen()
    local f = io.popen(("tmux capture-pane -p -J -S -1000 -t %s"):format(t.name))
    local s = f:read("a")
    f:close()
    return s
  end
  function t.wait(pattern, timeout)
    local found = h.wait_until(function() return t.screen():match(pattern) end, timeout or 5)
    assert(found, ("%q not on the screen:\n%s"):format(pattern, t.screen()))
    return found
  end
  function t.close(check)
    os.execute(("tmux send-keys -t %s C-d"):format(t.name))
    h.wait_until(function() return not os.execute(("tmux has-session -t %s 2>/dev/null"):format(t.name)) end, 10)
    os.execute(("tmux kill-session -t %s 2>/dev/null"):format(t.name))
    if check ~= false then
      local rc = h.read_file(dir .. "/repl-rc")
      local err = h.read_file(dir .. "/repl-stderr") or ""
      assert.are.equal("0\n", rc, "tide repl did not exit 0:\n" .. err)
      assert.not_matches("Sanitizer", err)
      assert.not_matches("runtime error", err)
    end
  end
  return t
end

-- Runs `tide repl <args>` on a file of lines; returns exit code and output.
local function script(dir, args, lines)
  h.write_file(dir .. "/input.txt", table.concat(lines, "\n") .. "\n")
  return sh(("cd %s && TIDE_HISTORY=%s/history timeout 60 %s repl %s < input.txt"):format(dir, dir, h.bin, args))
end

local function count(s, plain)
  local n, i = 0, 1
  while true do
    local a, b = s:find(plain, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

describe("tide repl with streams (terminal)", function()
  local dir, t
  before_each(function()
    assert.is_truthy(has_tmux, "tmux is needed (make deps installs it)")
    dir = h.make_tmpdir("repl-streams")
    h.write_file(dir .. "/flow.lua", FLOW)
  end)
  after_each(function()
    if t then t.close(false) end
    t = nil
    h.remove_tmpdir(dir)
  end)

  it("runs durable handlers at the prompt, shows the streams, and removes its temporary data at exit", function()
    t = terminal(dir, "-c flow.lua")
    local tmp = t.wait("streams: orders %(0 messages%) in (%S+), a temporary directory removed at exit")
    assert.is_truthy(io.open(tmp .. "/streams/orders"), "no stream directory in " .. tmp)
    t.keys('sub("total.>")')
    t.wait("watching total%.>")
    t.keys('pub("order.created", { amount = 5 })')
    -- the handler ran from the loop, after the event was stored, and its event was delivered
    local line = t.wait("<%- %[total%.>%] total%.updated  ([^\n]+)")
    local ev = assert(json.decode(line))
    assert.are.same({ seq = 1, total = 5 }, ev.data)
    t.keys('pub("order.created", { amount = 7 })')
    t.wait('"total":12')
    t.keys("streams()")
    local shown = t.wait("\n  (orders = {.-\n  })")
    assert.matches('name = "orders"', shown)
    assert.matches('subjects = {\n      "order.>"\n    }', shown, 1, true)
    assert.matches("messages = 2,", shown, 1, true)
    assert.matches("first_seq = 1,", shown, 1, true)
    assert.matches("last_seq = 2,", shown, 1, true)
    assert.matches('totals = {', shown, 1, true)
    assert.matches("handlers = true,", shown, 1, true)
    assert.matches("acked = 2,", shown, 1, true)
    assert.matches("next_seq = 3,", shown, 1, true)
    assert.matches('filter = "order.created",', shown, 1, true)
    t.close()
    t = nil
    assert.is_nil(io.open(tmp .. "/streams/orders"), tmp .. " is still there after exit")
  end)

  it("replays stored events through a rule loaded at the prompt, storing nothing", function()
    t = terminal(dir, "-c flow.lua")
    t.wait("streams: orders")
    t.keys('sub("total.>")')
    t.keys('pub("order.created", { amount = 5 })')
    t.keys('pub("order.created", { amount = 50 })')
    t.wait('"total":55')
    t.keys('print("before=" .. streams().orders.messages)')
    t.wait("\nbefore=2\n")
    -- The changed rule: big orders go to order.flagged (which the stream
    -- captures too: only the paused capture keeps it out).
    t.keys('route("order.created", function(e) if e.data.amount > 10 then return "order.flagged" end end)')
    t.keys('sub("order.flagged")')
    t.wait("watching order%.flagged")
    t.keys("trace()")
    t.wait("trace on")
    t.keys('replay("orders", 1)')
    t.wait("replayed 2 events of orders %(sequences 1%.%.2%); nothing was stored")
    local s = t.screen()
    assert.matches("route%s+order%.created%s+prompt:1%s+%-> order%.flagged", s)
    assert.are.equal(1, count(s, "<- [order.flagged] order.flagged"), s)
    assert.matches('<%- %[order%.flagged%] order%.flagged  [^\n]*"amount":50', s)
    -- The stream and its consumer are where they were: nothing stored,
    -- nothing handed to the durable handler again.
    t.keys('print("after=" .. streams().orders.messages .. " delivered=" .. streams().orders.consumers.totals.delivered .. " total=" .. tide.kv.get("total"))')
    t.wait("\nafter=2 delivered=2 total=55\n")
    -- New events go through the new rule and are stored as usual: under
    -- the subject the route chose, which the consumer's filter leaves out.
    t.keys('pub("order.created", { amount = 70 })')
    t.keys('print("now=" .. streams().orders.messages .. " last=" .. streams().orders.last_seq .. " total=" .. tide.kv.get("total"))')
    t.wait("\nnow=3 last=3 total=55\n")
    t.close()
    t = nil
  end)

  it("replays the copied data directory of a serving node (--data)", function()
    local data = dir .. "/node-data"
    local srv = h.start_server { args = { "--no-http", "-c", dir .. "/flow.lua", "--data", data } }
    local ok, err = pcall(function()
      for i, amount in ipairs { 10, 20, 30 } do
        local m = assert(h.request(srv.port, "order.created", json.encode {
          specversion = "1.0", id = "o" .. i, source = "shop", type = "order.created", data = { amount = amount } }))
        assert.are.same({ stream = "orders", seq = i }, json.decode(m.payload))
      end
      assert(h.wait_until(function()
        local m = h.request(srv.port, "$TIDE.ADMIN.CONSUMER.INFO", "totals")
        return m and json.decode(m.payload).acked == 3
      end, 10), "the node's handler did not catch up")
    end)
    srv:stop()
    assert(ok, err)
    local copy = dir .. "/copy"
    assert(os.execute(("cp -r '%s' '%s'"):format(data, copy)))
    t = terminal(dir, "-c flow.lua --data copy")
    -- (KV_tide: the bucket `tide` that tide.kv is)
    t.wait("streams: KV_tide %(1 message%), orders %(3 messages%) in copy %(%-%-data%)")
    t.keys('print("total=" .. tide.kv.get("total"))')
    t.wait("\ntotal=60\n") -- the node's tide.kv came along
    t.keys('filter("order.created", function(e) return e.data.amount ~= 20 end)')
    t.keys('sub("order.>")')
    t.keys('replay("orders", 2)')
    t.wait("replayed 2 events of orders %(sequences 2%.%.3%); nothing was stored")
    local s = t.screen()
    assert.are.equal(0, count(s, '"amount":20}'), s) -- dropped by the new filter
    assert.are.equal(1, count(s, '"amount":30}'), s)
    t.close()
    t = nil
    -- The copy still holds three events; the node's own directory was not touched.
    local rc, out = script(dir, "-c flow.lua --data copy", { 'print("n=" .. streams().orders.messages)' })
    assert.are.equal(0, rc, out)
    assert.matches("\nn=3\n", out)
    rc, out = script(dir, "-c flow.lua --data node-data", { 'c = streams().orders.consumers.totals',
      'print("n=" .. streams().orders.messages .. " next=" .. c.next_seq .. " pending=" .. c.pending .. " total=" .. tide.kv.get("total"))' })
    assert.are.equal(0, rc, out)
    assert.matches("\nn=3 next=4 pending=0 total=60\n", out)
  end)
end)

describe("tide repl with streams (scripted)", function()
  local dir
  before_each(function() dir = h.make_tmpdir("repl-streams") end)
  after_each(function() h.remove_tmpdir(dir) end)

  it("finishes each line's durable work before the next line", function()
    h.write_file(dir .. "/flow.lua", FLOW)
    local rc, out = script(dir, "-c flow.lua", {
      'sub("total.>")',
      'pub("order.created", { amount = 5 })',
      'print("acked=" .. streams().orders.consumers.totals.acked)',
      'pub("order.created", { amount = 6 }) pub("order.created", { amount = 7 })',
      'print("acked=" .. streams().orders.consumers.totals.acked .. " total=" .. tide.kv.get("total"))',
    })
    assert.are.equal(0, rc, out)
    assert.matches('<%- %[total%.>%] total%.updated  [^\n]*"total":5[,}][^\n]*\nacked=1\n', out)
    assert.matches('"total":18[,}][^\n]*\nacked=3 total=18\n', out)
  end)

  it("binds a durable handler typed at the prompt, and replays to a consumer's handlers", function()
    h.write_file(dir .. "/flow.lua", [[
stream "orders" { subjects = { "order.>" }, dedup_window = 0 }
consumer "audit" { stream = "orders", filter = "order.created" }
]])
    local rc, out = script(dir, "-c flow.lua", {
      'sub("order.audited")',
      'pub("order.created", { amount = 1 }) pub("order.paid", { amount = 1 })',
      'print("bound=" .. tostring(streams().orders.consumers.audit.handlers))',
      'on("order.*", { consumer = "audit" }, function(e, ctx, meta)',
      '  ctx.publish("order.audited", { seq = meta.seq, n = meta.deliveries })',
      '  if e.data.amount > 1 then return tide.term("too much") end',
      'end)',
      'print("bound=" .. tostring(streams().orders.consumers.audit.handlers) .. " acked=" .. streams().orders.consumers.audit.acked)',
      'pub("order.created", { amount = 2 })',
      'replay("orders", 1, nil, { consumer = "audit" })',
      'print("acked=" .. streams().orders.consumers.audit.acked .. " delivered=" .. streams().orders.consumers.audit.delivered .. " messages=" .. streams().orders.messages)',
      'replay("orders", 1, nil, { consumer = "nope" })',
      'on("x", { consumer = "undeclared" }, function() end)',
    })
    assert.are.equal(0, rc, out)
    assert.matches("\nbound=false\n", out)
    -- bound as soon as it is typed: the waiting event goes to it
    assert.matches('<%- %[order%.audited%] order%.audited  [^\n]*"seq":1[,}][^\n]*\nbound=true acked=1\n', out)
    -- the replay calls the handler for each stored event its filter takes,
    -- says what it answered, and leaves the consumer's counts alone
    assert.matches("  audit seq 1  order.created  ack\n", out, 1, true)
    assert.matches("  audit seq 4  order.created  term: too much\n", out, 1, true)
    assert.matches("replayed 2 events of orders (sequences 1..5) to the handlers of audit, 3 outside its filter; nothing was stored",
      out, 1, true)
    -- (order.created 1, order.paid, the handler's order.audited, order.created 2 and its order.audited;
    -- not the two order.audited the handler published again during the replay)
    assert.matches("\nacked=1 delivered=2 messages=5\n", out)
    assert.matches("error: prompt:1: replay: stream 'orders' has no consumer 'nope'", out)
    assert.matches("on%(...%) names consumer 'undeclared', which is not declared", out)
  end)

  it("keeps the streams in storage { dir } when the flow names one, and --data overrides it", function()
    h.write_file(dir .. "/flow.lua", 'storage { dir = "kept" }\n' .. FLOW)
    local rc, out = script(dir, "-c flow.lua", { 'pub("order.created", { amount = 4 })' })
    assert.are.equal(0, rc, out)
    assert.matches("streams: orders %(0 messages%) in [^\n]*/kept %(storage { dir }%)", out)
    rc, out = script(dir, "-c flow.lua", { 'print("n=" .. streams().orders.messages .. " total=" .. tide.kv.get("total"))' })
    assert.are.equal(0, rc, out)
    assert.matches("streams: KV_tide %(1 message%), orders %(1 message%) in", out)
    assert.matches("\nn=1 total=4\n", out)
    rc, out = script(dir, "-c flow.lua --data other", { 'print("n=" .. streams().orders.messages)' })
    assert.are.equal(0, rc, out)
    assert.matches("streams: orders %(0 messages%) in other %(%-%-data%)", out)
    assert.is_truthy(io.open(dir .. "/other/streams/orders"))
  end)

  it("says once that the streams stay busy, and does not wait for them on every line", function()
    h.write_file(dir .. "/flow.lua", [[
stream "s" { subjects = { "job.>" } }
consumer "slow" { stream = "s" }
on("job.*", { consumer = "slow" }, function(e) return tide.nak("3600s") end)
]])
    local t0 = h.proc.now()
    local rc, out = script(dir, "-c flow.lua", { 'pub("job.a", "{}")', "print('a')", "print('b')", "print('c')" })
    local took = h.proc.now() - t0
    assert.are.equal(0, rc, out)
    assert.are.equal(1, count(out, "(the streams are still busy: consumer slow: 0 to deliver, 1 in flight)"), out)
    assert.matches("\na\nb\nc\n", out)
    assert.is_true(took < 9, "took " .. took .. " s")
  end)

  it("explains replay()'s arguments", function()
    h.write_file(dir .. "/flow.lua", FLOW)
    local rc, out = script(dir, "-c flow.lua", {
      'replay("nope", 1)',
      'replay("orders", 0)',
      'replay("orders", 5, 2)',
      'replay("orders", 1)',
    })
    assert.are.equal(0, rc, out)
    assert.matches("error: prompt:1: replay: no stream 'nope' %(streams%(%) lists them%)", out)
    assert.matches("error: prompt:1: replay: sequences from 1 on, and to >= from", out)
    assert.matches("\nreplayed 0 events of orders; nothing was stored\n", out)
  end)
end)
