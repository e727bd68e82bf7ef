-- Cluster mode (docs/cluster.md, "Buckets in cluster mode"): tide.kv and
-- tide.kv.bucket are the cluster's JetStream KV buckets.  Each node keeps a
-- replica fed by a watch; writes go to JetStream; update() is queued per
-- bucket and written with an expected sequence, so two nodes incrementing
-- one counter lose nothing.  Three routed nats-servers with JetStream and
-- two tide nodes, all on loopback.
local h = require "helpers"
local cs = require "cluster_support"
local json = require "dkjson"
local client_kv = cs.client_kv

-- NAME is the node's name.
local RULES = [[
local counts = tide.kv.bucket("counts")
on("count.>", function(e)
  counts:update("n", function(v) return (v or 0) + 1 end)
end)
on("setkv.NAME", function(e)
  tide.kv.bucket(e.data.bucket):set(e.data.key, e.data.value)
end)
on("setdel.NAME", function(e)
  local b = tide.kv.bucket(e.data.bucket)
  b:set(e.data.key, e.data.value)
  if e.data.by_update then b:update(e.data.key, function() return nil end) else b:del(e.data.key) end
end)
on("hit.NAME", function(e)
  tide.kv.bucket("hits"):update("n", function(v) return (v or 0) + 1 end)
end)
on("settide.NAME", function(e)
  tide.kv.set(e.data.key, e.data.value)
end)
on("probe.NAME", function(e, ctx)
  local v = tide.kv.bucket(e.data.bucket):get(e.data.key)
  ctx.publish("seen.NAME", { id = e.data.id, value = v, type = type(v) })
end)
]]

-- An event with data d, as an envelope.
local function event(d)
  return json.encode { specversion = "1.0", id = tostring(math.random(1e9)), source = "spec", type = "t", data = d }
end

-- The payload's data: ctx.publish wraps it in an envelope.
local function data_of(m)
  local o = json.decode(m.payload)
  return o and (o.data or o)
end

describe("cluster mode: kv buckets", function()
  local t, ns, a, b, dir = cs.new(), nil, nil, nil, nil

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-kv")
    ns = t:start_cluster(dir, "tidekv", true)
    a = t:start_node("a", { ns[1].port, ns[2].port }, (RULES:gsub("NAME", "a")))
    b = t:start_node("b", { ns[3].port }, (RULES:gsub("NAME", "b")))
    cs.wait_ready({ a, b })
    -- the bucket the rules name is made (JetStream elects its leaders
    -- first) and each node's replica of it loaded
    assert(h.wait_until(function()
      return a:log():find("bucket counts: replica loaded", 1, true) and
        b:log():find("bucket counts: replica loaded", 1, true)
    end, 30), "the bucket was not made and watched:\n" .. a:log() .. b:log())
  end)

  teardown(function()
    t:stop_all()
    h.remove_tmpdir(dir)
  end)

  -- Asks node's Lua (through a handler there) for key of bucket until
  -- want(value) holds; returns the last answer.
  local probes = 0
  local function lua_get(node, name, bucket, key, want, timeout)
    local c = cs.client(node.port)
    c:sub("seen." .. name, "1")
    assert(c:ping())
    local last
    h.wait_until(function()
      probes = probes + 1
      c:pub("probe." .. name, event { bucket = bucket, key = key, id = probes })
      local deadline = os.time() + 2
      while os.time() <= deadline do
        local f = c:frame(0.5)
        if f and (f.op == "MSG" or f.op == "HMSG") then
          local d = data_of(f)
          if d and d.id == probes then
            last = d
            break
          end
        end
      end
      return last and want(last.value)
    end, timeout or 20, 0.2)
    c:close()
    return last
  end

  it("shows a client's kv.put to Lua on both nodes", function()
    client_kv(ns[2].port, "counts", "put", "from.client", "hello")
    local got = lua_get(a, "a", "counts", "from.client", function(v) return v == "hello" end)
    assert.equal("hello", got and got.value, "node a:\n" .. a:log())
    got = lua_get(b, "b", "counts", "from.client", function(v) return v == "hello" end)
    assert.equal("hello", got and got.value, "node b:\n" .. b:log())
  end)

  it("shows a Lua put on node A to get on node B, with its type", function()
    local c = cs.client(a.port)
    c:pub("setkv.a", event { bucket = "shared", key = "colour", value = { r = 1, name = "red" } })
    c:pub("setkv.a", event { bucket = "shared", key = "size", value = 42 })
    assert(c:ping())
    c:close()
    local got = lua_get(b, "b", "shared", "size", function(v) return v == 42 end)
    assert.equal(42, got and got.value, b:log())
    assert.equal("number", got.type)
    got = lua_get(b, "b", "shared", "colour", function(v) return type(v) == "table" end)
    assert.same({ r = 1, name = "red" }, got and got.value)
    local seen = client_kv(ns[1].port, "shared", "read", "size")
    assert.equal("42", seen.size and seen.size.value)
  end)

  it("deletes a key its own handler just set, with del and with an update returning nil", function()
    -- the set has not come back through the watch when the del or the
    -- update runs: they must act on this node's writes all the same
    local c = cs.client(a.port)
    c:pub("setkv.a", event { bucket = "shared", key = "marker", value = "m" })
    c:pub("setdel.a", event { bucket = "shared", key = "gone1", value = "x" })
    c:pub("setdel.a", event { bucket = "shared", key = "gone2", value = "y", by_update = true })
    c:pub("setkv.a", event { bucket = "shared", key = "marker", value = "done" })
    assert(c:ping())
    c:close()
    -- a's puts arrive in order: once b sees the last, it has seen the set
    -- and the del of gone1 (the update of gone2 may come after it)
    assert.equal("done", (lua_get(b, "b", "shared", "marker", function(v) return v == "done" end) or {}).value)
    assert.is_nil(lua_get(b, "b", "shared", "gone1", function(v) return v == nil end).value)
    assert.is_nil(lua_get(b, "b", "shared", "gone2", function(v) return v == nil end).value)
    local seen = client_kv(ns[1].port, "shared", "read", "gone1", "gone2")
    assert.equal("DEL", seen.gone1 and seen.gone1.operation, a:log())
    assert.equal("DEL", seen.gone2 and seen.gone2.operation, a:log())
  end)

  it("makes tide.kv the cluster's bucket tide, keys encoded as on one node", function()
    local c = cs.client(b.port)
    c:pub("settide.b", event { key = "user 42", value = { visits = 3 } })
    assert(c:ping())
    c:close()
    local got = lua_get(a, "a", "tide", "user 42", function(v) return type(v) == "table" end)
    assert.same({ visits = 3 }, got and got.value, a:log())
    local seen = client_kv(ns[1].port, "tide", "read", "=dXNlciA0Mg")
    assert.equal('{"visits":3}', seen["=dXNlciA0Mg"] and seen["=dXNlciA0Mg"].value)
  end)

  it("runs the updates queued before a reload with the functions that queued them", function()
    local N = 500
    local c = cs.client(a.port)
    local parts = {}
    for i = 1, N do
      local body = event { i = i }
      parts[i] = ("PUB hit.a %d\r\n%s\r\n"):format(#body, body)
    end
    assert(c:send(table.concat(parts)))
    assert(c:ping(30))
    c:close()
    local reloads = select(2, a:log():gsub("Reloaded scripts", ""))
    h.proc.kill(a.pid, "HUP")
    assert(h.wait_until(function() return select(2, a:log():gsub("Reloaded scripts", "")) > reloads end, 10),
      "no reload:\n" .. a:log())
    local last, since = nil, os.time()
    h.wait_until(function()
      local ok, seen = pcall(client_kv, ns[2].port, "hits", "read", "n") -- the bucket may not be there yet
      local v = ok and seen.n and tonumber(seen.n.value)
      if v ~= last then last, since = v, os.time() end
      return v == N or os.time() - since >= 15
    end, 90, 0.5)
    assert.equal(N, last, a:log())
  end)

  it("counts 2,000 updates from two nodes exactly", function()
    local N = 1000
    local pa, pb = cs.client(a.port), cs.client(b.port)
    local parts = {}
    for i = 1, N do
      local body = event { i = i }
      parts[i] = ("PUB count.x %d\r\n%s\r\n"):format(#body, body)
    end
    local batch = table.concat(parts)
    local logged = { a = #a:log(), b = #b:log() }
    assert(pa:send(batch))
    assert(pb:send(batch))
    assert(pa:ping(30) and pb:ping(30))
    pa:close()
    pb:close()
    -- the nodes write in the background: wait until the count stops moving
    local last, since = nil, os.time()
    h.wait_until(function()
      local seen = client_kv(ns[2].port, "counts", "read", "n")
      local v = seen.n and tonumber(seen.n.value)
      if v ~= last then last, since = v, os.time() end
      return v == 2 * N or os.time() - since >= 10
    end, 180, 0.5)
    local seen = client_kv(ns[3].port, "counts", "read", "n")
    -- each node's own account of its updates (tide cluster status --json)
    local rc, out = h.sh(("%s cluster status -s 127.0.0.1:%d --json"):format(h.bin, ns[1].port))
    local updates, conflicts = {}, 0
    for _, node in ipairs(rc == 0 and json.decode(out) or {}) do
      for _, bk in ipairs(node.buckets or {}) do
        if bk.name == "counts" then
          updates[node.name] = bk.updates
          conflicts = conflicts + bk.conflicts
        end
      end
    end
    print(("\n  counts: %s; updates a=%s b=%s; conflicts %d"):format(seen.n and seen.n.value, tostring(updates.a),
      tostring(updates.b), conflicts))
    assert.equal(tostring(2 * N), seen.n and seen.n.value,
      "the count through the cluster\n--- a ---\n" .. a:log() .. "\n--- b ---\n" .. b:log())
    assert.equal(N, updates.a, out)
    assert.equal(N, updates.b, out)
    -- a conflict retries as soon as the node's copy holds the sequence the
    -- refusal names: no update waited out the catch-up time
    for name, node in pairs({ a = a, b = b }) do
      local since = node:log():sub(logged[name] + 1)
      assert.is_nil(since:match("[^\n]*did not reach sequence[^\n]*"), "node " .. name .. " waited for its copy:\n" .. since)
    end
  end)

  it("acks a handler's event only once the bucket updates it queued are stored (kill -9 right after)", function()
    local c = t:start_node("c", { ns[2].port }, [[
stream "jobs" { subjects = { "jobs.>" }, backend = "jetstream", replicas = 3 }
consumer "tally" { stream = "jobs", filter = "jobs.>", ack_wait = "30s" }
local tallies = tide.kv.bucket("tallies")
on("jobs.>", { consumer = "tally" }, function(e)
  tallies:update("done", function(v) return (v or 0) + 1 end)
end)
]])
    cs.wait_ready({ c })
    assert(h.wait_until(function() return c:log():find("bucket tallies: replica loaded", 1, true) end, 30), c:log())
    local N = 300
    local pub = cs.client(ns[1].port)
    local parts = {}
    for i = 1, N do
      local body = event { i = i }
      parts[i] = ("PUB jobs.x %d\r\n%s\r\n"):format(#body, body)
    end
    assert(pub:send(table.concat(parts)))
    assert(pub:ping())
    pub:close()
    -- the moment JetStream has every event acked, the node dies
    local floor = 0
    h.wait_until(function()
      local m = h.request(ns[1].port, "$JS.API.CONSUMER.INFO.jobs.tally", "")
      local info = m and json.decode(m.payload)
      floor = info and info.ack_floor and info.ack_floor.consumer_seq or floor
      return floor >= N
    end, 60, 0)
    c:kill()
    assert.equal(N, floor, c:log())
    local seen = client_kv(ns[3].port, "tallies", "read", "done")
    assert.equal(tostring(N), seen.done and seen.done.value, c:log())
  end)
end)
