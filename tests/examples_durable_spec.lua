-- The durable examples (examples/projection, examples/saga) on a real tide:
-- their stream, consumers and Lua handlers, restarts included.  Each runs
-- the example's own tide.lua with the data directory in a temporary place.
local h = require "helpers"
local json = require "dkjson"

local function start(example, data)
  return h.start_server { args = { "--no-http", "-c", h.root .. "/examples/" .. example .. "/tide.lua",
                                   "--data", data } }
end

local function ce(id, typ, data)
  return json.encode { specversion = "1.0", id = id, source = "spec", type = typ, data = data }
end

-- Publishes and returns the PubAck, decoded.
local function publish(port, subject, payload)
  local m = assert(h.request(port, subject, payload))
  return assert(json.decode(m.payload), m.payload)
end

-- The data of a reply event from one of the examples' query handlers.
local function ask(port, subject)
  local m = h.request(port, subject, "", { timeout = 2 })
  return m and json.decode(m.payload).data
end

local function events(port, stream)
  local m = assert(h.request(port, "$TIDE.ADMIN.STREAM.EVENTS", json.encode { stream = stream, limit = 1000 }))
  return assert(json.decode(m.payload), m.payload).events
end

-- For n = 1, 2, ...: starts the example with TIDE_FAULT crash:write:n (the
-- process dies just before its n-th write, and what it wrote stays, as
-- after a kill -9), runs work(port) on it unless it died starting, waits
-- until it dies or until finished(port) says the work is done, then starts
-- it again without the fault and calls check(port, n), which resends what
-- may be missing and checks the outcome.  Stops at the first n the run
-- needs fewer than n writes for; returns how many runs died.
local function at_every_write(example, work, finished, check)
  local cuts, n, whole = 0, 0, false
  repeat
    n = n + 1
    whole = false
    local dir = h.make_tmpdir("crash-" .. example)
    local function serve(fault)
      local port = h.free_port()
      local cmd = { "serve", "-a", "127.0.0.1", "-p", tostring(port), "--no-http",
                    "-c", h.root .. "/examples/" .. example .. "/tide.lua", "--data", dir }
      if fault then
        table.insert(cmd, 1, h.bin)
        table.insert(cmd, 1, "TIDE_FAULT=" .. fault)
      end
      return h.start_server { bin = fault and "/usr/bin/env" or nil, cmd = cmd, port = port }
    end
    local started, srv = pcall(serve, "crash:write:" .. n) -- (else it died at a start-up write)
    if started then
      pcall(work, srv.port)
      h.wait_until(function()
        if not srv:alive() then return true end
        local ok, done = pcall(finished, srv.port)
        whole = ok and done
        return whole
      end, 5)
      if whole then
        srv:stop()
      else
        local alive = srv:alive()
        if alive then srv:stop() end
        assert.is_false(alive, "write " .. n .. ": the work neither ended nor died")
        assert.equals(98, srv.code)
        cuts = cuts + 1
      end
    end
    srv = serve(nil)
    local ok, err = pcall(check, srv.port, n)
    srv:stop()
    h.remove_tmpdir(dir)
    assert(ok, err)
  until whole or n == 300
  assert.is_true(whole, "still dying after 300 writes")
  return cuts
end

describe("examples/projection", function()
  local data, srv
  before_each(function() data = h.make_tmpdir("proj") end)
  after_each(function()
    if srv then srv:stop() end
    h.remove_tmpdir(data)
  end)

  it("keeps balances in tide.kv and gives the same ones when rebuilt by replaying the stream", function()
    srv = start("projection", data)
    local want, last_seq, n = {}, {}, 0
    local accounts = { "A-1", "B-2", "C-3" }
    for _, a in ipairs(accounts) do
      n = n + 1
      last_seq[a] = publish(srv.port, "account." .. a .. ".opened", ce("o" .. n, "account.opened", { account = a })).seq
      want[a] = 0
    end
    math.randomseed(7)
    for i = 1, 60 do
      local a = accounts[math.random(#accounts)]
      local amount = math.random(1, 50)
      local kind = (i % 3 == 0) and "withdrawn" or "deposited"
      local ack = publish(srv.port, ("account.%s.%s"):format(a, kind), ce("e" .. i, "account." .. kind,
        { account = a, amount = amount }))
      assert.is_nil(ack.error)
      last_seq[a] = ack.seq
      want[a] = want[a] + (kind == "deposited" and amount or -amount)
    end
    local function caught_up()
      for _, a in ipairs(accounts) do
        local r = ask(srv.port, "balance.get." .. a)
        if not r or r.applied ~= last_seq[a] then return false end
      end
      return true
    end
    assert.truthy(h.wait_until(caught_up, 10), "the projection did not catch up")
    local before = {}
    for _, a in ipairs(accounts) do
      before[a] = ask(srv.port, "balance.get." .. a).balance
      assert.equals(want[a], before[a])
    end

    -- Throw the read model away; the consumer starts over at sequence 1.
    srv:stop()
    -- (tide.kv is the bucket `tide`: the stream KV_tide, made through the JetStream API)
    assert(os.execute("rm -rf '" .. data .. "/streams/KV_tide' '" .. data .. "/jsapi/streams/KV_tide.json' '" .. data ..
      "/consumers/balances'"))
    srv = start("projection", data)
    assert.truthy(h.wait_until(caught_up, 10), "the rebuilt projection did not catch up")
    for _, a in ipairs(accounts) do
      assert.equals(before[a], ask(srv.port, "balance.get." .. a).balance)
    end
  end)

  it("does not apply an event twice when it is redelivered after a kill -9", function()
    srv = start("projection", data)
    publish(srv.port, "account.K.opened", ce("k0", "account.opened", { account = "K" }))
    local last
    for i = 1, 30 do
      last = publish(srv.port, "account.K.deposited", ce("k" .. i, "account.deposited", { account = "K", amount = 1 })).seq
    end
    srv:kill()
    srv = start("projection", data)
    assert.truthy(h.wait_until(function()
      local r = ask(srv.port, "balance.get.K")
      return r and r.applied == last
    end, 10))
    assert.equals(30, ask(srv.port, "balance.get.K").balance)
  end)

  -- The server dies before each of the writes a few events make, start-up
  -- included; after a restart (and the events sent again: the stream drops
  -- the ones it has by their CloudEvents source and id) the balance counts
  -- each event once.
  it("counts each event once whatever write the server dies at", function()
    local evs = { { "account.K.opened", ce("k0", "account.opened", { account = "K" }) } }
    for i = 1, 3 do
      evs[#evs + 1] = { "account.K.deposited", ce("k" .. i, "account.deposited", { account = "K", amount = 10 * i }) }
    end
    local function send(port)
      for _, e in ipairs(evs) do h.request(port, e[1], e[2], { timeout = 2 }) end
    end
    local function balance_at(port, seq)
      local r = ask(port, "balance.get.K")
      return r and r.applied == seq and r.balance
    end
    local cuts = at_every_write("projection", send,
      function(port) return balance_at(port, 4) == 60 end,
      function(port, n)
        for _, e in ipairs(evs) do publish(port, e[1], e[2]) end
        assert.truthy(h.wait_until(function() return balance_at(port, 4) end, 5), "write " .. n .. ": not all applied")
        assert.equals(60, balance_at(port, 4), "write " .. n)
        assert.equals(4, #events(port, "accounts"), "write " .. n)
      end)
    assert.is_true(cuts >= 10, cuts .. " cuts")
  end)
end)

describe("examples/saga", function()
  local data, srv
  before_each(function() data = h.make_tmpdir("saga") end)
  after_each(function()
    if srv then srv:stop() end
    h.remove_tmpdir(data)
  end)

  -- The subjects of one order's events, in stream order.
  local function story(evs, order)
    local out = {}
    for _, e in ipairs(evs) do
      local d = e.data and e.data.data
      if d and d.order_id == order then out[#out + 1] = e.subject end
    end
    return table.concat(out, " ")
  end

  it("completes, compensates and cancels, each step once", function()
    srv = start("saga", data)
    publish(srv.port, "order.placed", ce("o1", "order.placed", { order_id = "O-1", item = "book", qty = 2, amount = 40 }))
    publish(srv.port, "order.placed", ce("o2", "order.placed", { order_id = "O-2", item = "book", qty = 1, amount = 5000 }))
    publish(srv.port, "order.placed", ce("o3", "order.placed", { order_id = "O-3", item = "lamp", qty = 1, amount = 20 }))
    assert.truthy(h.wait_until(function() return #events(srv.port, "orders") >= 12 end, 10))
    local evs = events(srv.port, "orders")
    assert.equals(12, #evs)
    assert.equals("order.placed inventory.reserved payment.charged shipping.scheduled order.completed", story(evs, "O-1"))
    assert.equals("order.placed inventory.reserved payment.failed inventory.released order.cancelled", story(evs, "O-2"))
    assert.equals("order.placed order.cancelled", story(evs, "O-3"))
    assert.equals(8, ask(srv.port, "stock.book").left)
  end)

  it("resumes a saga interrupted by a kill -9 without repeating a step", function()
    srv = start("saga", data)
    -- Five orders in one burst; the server is killed as soon as the first
    -- is acknowledged, while the others' steps are still on their way.
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("_INBOX.acks", "1")
    for i = 1, 5 do
      c:pub("order.placed", ce("p" .. i, "order.placed", { order_id = "P-" .. i, item = "book", qty = 1, amount = 10 }),
        "_INBOX.acks")
    end
    local acks = c:collect(1, 5)
    assert.equals(1, #acks)
    srv:kill()
    c:close()
    srv = start("saga", data)
    -- The orders not acknowledged before the kill may or may not have been
    -- stored; those that were run to the end.
    local stored = 0
    for _, e in ipairs(events(srv.port, "orders")) do
      if e.subject == "order.placed" then stored = stored + 1 end
    end
    assert.is_true(stored >= 1)
    for i = stored + 1, 5 do
      publish(srv.port, "order.placed", ce("p" .. i, "order.placed", { order_id = "P-" .. i, item = "book", qty = 1, amount = 10 }))
    end
    assert.truthy(h.wait_until(function() return #events(srv.port, "orders") >= 25 end, 10))
    local evs = events(srv.port, "orders")
    assert.equals(25, #evs)
    for i = 1, 5 do
      assert.equals("order.placed inventory.reserved payment.charged shipping.scheduled order.completed",
        story(evs, "P-" .. i))
    end
    assert.equals(5, ask(srv.port, "stock.book").left)
  end)

  -- The server dies before each of the writes one saga makes, start-up
  -- included; after a restart (and the order sent again if its PubAck never
  -- came) the saga ends once, with the stock taken once.
  it("takes the stock once whatever write the server dies at", function()
    local order = ce("c1", "order.placed", { order_id = "C-1", item = "book", qty = 2, amount = 40 })
    local done = "order.placed inventory.reserved payment.charged shipping.scheduled order.completed"
    local cuts = at_every_write("saga",
      function(port) h.request(port, "order.placed", order, { timeout = 2 }) end,
      function(port) return story(events(port, "orders"), "C-1") == done end,
      function(port, n)
        publish(port, "order.placed", order) -- stored now, or a duplicate of the stored one
        assert.truthy(h.wait_until(function() return story(events(port, "orders"), "C-1") == done end, 5),
          "write " .. n .. ": the saga did not end: " .. story(events(port, "orders"), "C-1"))
        assert.equals(8, ask(port, "stock.book").left, "write " .. n)
      end)
    assert.is_true(cuts >= 10, cuts .. " cuts")
  end)
end)
