-- Cluster mode on a cluster whose answers come slowly (docs/cluster.md):
-- the node asks the JetStream API again when an answer is late, and an
-- answer that comes after that still counts, so a bucket gets made and
-- watched although every answer takes longer than the node's first wait.
-- A proxy between the node and its server holds what the server sends for
-- 3.5 s once the connection is 3 s old.  Three routed nats-servers with
-- JetStream and one tide node, on loopback.
local h = require "helpers"
local cs = require "cluster_support"
local js = require "js_support"

local RULES = [[
on("open.late", function(e) tide.kv.bucket("late"):set("k", "v") end)
]]

describe("cluster mode: JetStream answers slower than the node's wait", function()
  local t, ns, a, proxy, dir = cs.new(), nil, nil, nil, nil

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-slow")
    ns = t:start_cluster(dir, "tideslow", true)
    local pport = h.free_port()
    proxy = t:keep(h.start_server { bin = select(2, h.sh("command -v node")):match("[^\n]+"), port = pport, wait = false,
      cmd = { js.NODE_DIR .. "/delay_proxy.mjs", tostring(pport), tostring(ns[1].port), "3500", "3000" } })
    assert(h.wait_until(function() return proxy:log():find("ready", 1, true) end, 10), proxy:log())
    a = t:start_node("a", { pport }, RULES)
    cs.wait_ready({ a }, 20)
  end)

  teardown(function()
    t:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("makes and watches a bucket, and stores what was put before it was there", function()
    h.proc.sleep(3.5) -- past the connection's quick start
    local c = cs.client(a.port)
    c:pub("open.late", '{"specversion":"1.0","id":"o1","source":"spec","type":"t","data":{}}')
    assert(c:ping())
    c:close()
    local loaded = h.wait_until(function() return a:log():find("bucket late: replica loaded", 1, true) end, 60, 0.5)
    assert(loaded, "the bucket was not made and watched:\n" .. a:log())
    local seen = assert(h.wait_until(function()
      local ok, v = pcall(cs.client_kv, ns[2].port, "late", "read", "k")
      return ok and v.k and v
    end, 30, 1), "the put before the bucket was there was not stored")
    assert.equal("v", seen.k.value)
    assert.is_nil(a:log():find("disconnected from the upstream", 1, true), a:log())
  end)

  it("binds a jetstream-backed stream and its handlers' consumer that a reload adds", function()
    local rules = h.read_file(a.config)
    h.write_file(a.config, rules .. [[
stream "slowjs" { subjects = { "slowjs.>" }, backend = "jetstream", replicas = 3 }
consumer "slowc" { stream = "slowjs", filter = "slowjs.>" }
on("slowjs.>", { consumer = "slowc" }, function(e) end)
]])
    local ready = h.wait_until(function()
      local log = a:log()
      return log:find("stream 'slowjs' %a+ in the cluster's JetStream")
        and log:find("consumer 'slowc' on stream 'slowjs' ready", 1, true)
    end, 60, 0.5)
    assert(ready, "the stream and its consumer were not made:\n" .. a:log())
    local info = js.api(ns[3].port, "$JS.API.CONSUMER.INFO.slowjs.slowc", nil, 5)
    assert.equal("slowc", info and info.name)
  end)
end)
