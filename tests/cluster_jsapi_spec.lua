-- Cluster mode (docs/cluster.md, "The JetStream API on a node"): a stock
-- JetStream client connected to a tide node sees the cluster's JetStream
-- for every stream the node does not keep itself, and the node's local
-- streams beside them.  npm "nats" (v2) connected to a tide node and to a
-- nats-server of the same cluster must read the same things.  Three routed
-- nats-servers with JetStream and two tide nodes (one with a local
-- stream, one with none), all on loopback.
local h = require "helpers"
local cs = require "cluster_support"
local js = require "js_support"
local json = require "dkjson"

local RULES_A = [[
stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }
stream "loc" { subjects = { "loc.>" } }
]]

-- Runs tests/interop/node/jsfwd.mjs against port with the words in ...;
-- returns its answer, decoded.
local function jsfwd(port, ...)
  local args = {}
  for i, v in ipairs({ ... }) do args[i] = js.q(v) end
  local rc, out = h.sh(("cd %s && timeout -k 5 60 node jsfwd.mjs %d %s"):format(js.q(js.NODE_DIR), port,
    table.concat(args, " ")))
  local v = rc == 0 and json.decode(out:match("([^\n]+)\n?$") or "")
  assert(v, ("jsfwd.mjs %s ended with %s:\n%s"):format(table.concat(args, " "), tostring(rc), out))
  return v
end

describe("cluster mode: the JetStream API on a node", function()
  local t, ns, a, b, dir = cs.new(), nil, nil, nil, nil

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-jsapi")
    ns = t:start_cluster(dir, "tidejsapi", true)
    a = t:start_node("a", { ns[1].port }, RULES_A)
    b = t:start_node("b", { ns[2].port }, "-- no streams of its own\n")
    cs.wait_ready({ a, b }, 30)
    jsfwd(ns[3].port, "setup")
  end)

  teardown(function()
    t:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("answers stream info, consumer info, a stored message and a KV get as the cluster does", function()
    local ref = jsfwd(ns[3].port, "read")
    assert.same({ name = "orders", subjects = { "orders.>" }, num_replicas = 3, messages = 3, last_seq = 3 }, ref.stream)
    assert.same({ value = "blue", revision = 1 }, ref.kv)
    for _, node in ipairs({ a, b }) do
      local got = jsfwd(node.port, "read")
      for _, k in ipairs({ "stream", "consumer", "msg", "kv" }) do
        assert.are.equal(js.canon(ref[k]), js.canon(got[k]), k .. " through node " .. node.port)
      end
    end
  end)

  it("lists the cluster's streams with the node's local ones", function()
    local ref = jsfwd(ns[3].port, "read")
    local want = { "loc" }
    for _, n in ipairs(ref.names) do want[#want + 1] = n end
    table.sort(want)
    local got = jsfwd(a.port, "read")
    assert.same(want, got.names)
    assert.same(want, got.list)
    assert.are.equal(ref.account + 1, got.account)
    -- a node without local streams shows the cluster's alone
    local only = jsfwd(b.port, "read")
    assert.same(ref.names, only.names)
    assert.are.equal(ref.account, only.account)
    -- the local stream is the node's: answered there, unknown to the cluster
    assert.same({ name = "loc", subjects = { "loc.>" } }, jsfwd(a.port, "info", "loc").info)
    assert.same({ error = 10059 }, jsfwd(ns[1].port, "info", "loc").info)
  end)

  it("fetches from a pull consumer on a jetstream-backed stream and acks through the node", function()
    local got = jsfwd(a.port, "pull", "viatide").pull
    assert.same({ data = { "1", "2", "3" }, num_ack_pending = 0, num_pending = 0, delivered = 3, ack_floor = 3 }, got)
    -- the consumer is the cluster's
    local ref = jsfwd(ns[2].port, "pull", "direct").pull
    assert.same(ref, got)
  end)

  it("makes a stream a client creates through the node in the cluster", function()
    assert.same({ name = "made", subjects = { "made.>" } }, jsfwd(b.port, "create", "made").create)
    assert.same({ name = "made", subjects = { "made.>" } }, jsfwd(ns[1].port, "info", "made").info)
  end)
end)
