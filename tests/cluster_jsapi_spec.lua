-- Cluster mode (docs/cluster.md, "The JetStream API on a node"): a stock
-- JetStream client connected to a tide node sees the cluster's JetStream
-- for every stream the node does not keep itself, and the node's local
-- streams beside them.  npm "nats" (v2) connected to a tide node and to a
-- nats-server of the same cluster must read the same things.  Three routed
-- nats-servers with JetStream and two tide nodes (one with a local
-- stream, one with none), all on loopback.  HTTP posts to a
-- jetstream-backed stream's subjects are answered with JetStream's PubAck.
local h = require "helpers"
local cs = require "cluster_support"
local js = require "js_support"
local json = require "dkjson"

local RULES_A = [[
stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }
stream "loc" { subjects = { "loc.>" } }
http { ack_timeout = "1500ms" }
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

-- POST /v1/publish/<subject> on a node's HTTP port with a JSON body and
-- more curl arguments; the status code and the body decoded.
local function post(node, subject, body, more)
  local rc, out = h.sh(("curl -s -m 20 -w '\\n%%{http_code}' -X POST -H 'Content-Type: application/json' %s " ..
    "'http://127.0.0.1:%d/v1/publish/%s' -d %s"):format(more or "", node.hport, subject, js.q(body)))
  local text, code = out:match("^(.*)\n(%d+)$")
  assert(rc == 0 and code, "curl: " .. tostring(out))
  return tonumber(code), json.decode(text)
end

-- A JetStream API request straight to a server at port, its answer decoded.
local function js_request(port, subject, body)
  local m = assert(h.request(port, subject, body or ""))
  return assert(json.decode(m.payload), m.payload)
end

describe("cluster mode: the JetStream API on a node", function()
  local t, ns, a, b, dir = cs.new(), nil, nil, nil, nil

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    dir = h.make_tmpdir("cluster-jsapi")
    ns = t:start_cluster(dir, "tidejsapi", true)
    a = t:start_node("a", { ns[1].port }, RULES_A)
    -- b keeps no stream itself (no local JetStream API): "orders" is the cluster's
    b = t:start_node("b", { ns[2].port }, 'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n')
    cs.wait_ready({ a, b }, 30)
    -- the rules bucket the nodes make, so that the lists of streams hold still
    assert(h.wait_until(function()
      local m = h.request(ns[3].port, "$JS.API.STREAM.INFO.KV_TIDE_RULES", "")
      return m and not json.decode(m.payload).error
    end, 20), "the rules bucket was not made")
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
    -- pages: the local streams first, then the cluster's, offset and total counting both
    local theirs = js_request(ns[3].port, "$JS.API.STREAM.NAMES", "{}")
    local first = js_request(a.port, "$JS.API.STREAM.NAMES", "{}")
    assert.same({ "loc", table.unpack(theirs.streams) }, first.streams)
    assert.same({ theirs.total + 1, 0 }, { first.total, first.offset })
    local second = js_request(a.port, "$JS.API.STREAM.NAMES", '{"offset":1}')
    assert.same(theirs.streams, second.streams)
    assert.same({ theirs.total + 1, 1 }, { second.total, second.offset })
    local filtered = js_request(a.port, "$JS.API.STREAM.NAMES", '{"subject":"loc.x"}')
    assert.same({ { "loc" }, 1 }, { filtered.streams, filtered.total })
    -- a node without local streams shows the cluster's alone, and says it has JetStream
    local info = json.decode(h.connect(b.port).info)
    assert.is_true(info.jetstream)
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
    -- and so through a node without a JetStream API of its own
    assert.same(ref, jsfwd(b.port, "pull", "viab").pull)
  end)

  it("puts into a KV bucket of the cluster through a node", function()
    for i, node in ipairs({ a, b }) do
      local got = jsfwd(node.port, "kvput", "size", "L" .. i).kvput
      assert.are.equal("L" .. i, got.value)
      assert.are.equal(got.put, got.revision)
      assert.same({ value = "L" .. i, revision = got.put }, jsfwd(ns[3].port, "kvget", "size").kvget)
    end
  end)

  it("puts into an object store of the cluster through a node", function()
    assert.are.equal("first", jsfwd(b.port, "objput", "a.txt", "first").objput)
    assert.are.equal("first", jsfwd(ns[1].port, "objget", "a.txt").objget)
    assert.are.equal("second", jsfwd(a.port, "objput", "b.txt", "second").objput)
    assert.are.equal("second", jsfwd(ns[2].port, "objget", "b.txt").objget)
  end)

  it("makes a stream a client creates through the node in the cluster", function()
    assert.same({ name = "made", subjects = { "made.>" } }, jsfwd(b.port, "create", "made").create)
    assert.same({ name = "made", subjects = { "made.>" } }, jsfwd(ns[1].port, "info", "made").info)
  end)

  it("updates a jetstream-backed stream whose config differs, and reports a refused update with its reason", function()
    -- made by a client on the cluster: one subject, one replica, no limits
    assert.same({ name = "upd", subjects = { "upd.>" } }, jsfwd(ns[1].port, "create", "upd").create)
    -- memory storage: not a stream tide makes, so not updated
    assert.is_nil(js_request(ns[1].port, "$JS.API.STREAM.CREATE.mem",
      '{"name":"mem","subjects":["mem.>"],"storage":"memory"}').error)
    local c = t:start_node("c", { ns[3].port },
      'stream "upd" { subjects = { "upd.>", "upd2.>" }, backend = "jetstream", replicas = 3, max_msgs = 100 }\n' ..
      'stream "mem" { subjects = { "mem.>", "mem2.>" }, backend = "jetstream" }\n')
    assert(h.wait_until(function()
      return c:log():find("stream 'upd' updated to the declared config", 1, true) and
        c:log():find("stream 'mem' (", 1, true)
    end, 20), c:log())
    local info = js_request(ns[2].port, "$JS.API.STREAM.INFO.upd")
    assert.same({ { "upd.>", "upd2.>" }, 3, 100 }, { info.config.subjects, info.config.num_replicas, info.config.max_msgs })
    assert.truthy(c:log():find("not updated, not bound", 1, true), c:log())
    assert.same({ "mem.>" }, js_request(ns[2].port, "$JS.API.STREAM.INFO.mem").config.subjects)
    cs.stop(c)
    -- an update JetStream refuses (5 replicas on 3 servers): reported, the stream left as it is
    local d = t:start_node("d", { ns[2].port },
      'stream "upd" { subjects = { "upd.>", "upd2.>" }, backend = "jetstream", replicas = 5, max_msgs = 100 }\n')
    assert(h.wait_until(function() return d:log():find("the cluster refused to update it", 1, true) end, 20), d:log())
    local code, body = cs.get(d.hport, "/readyz")
    assert.are.equal(503, code)
    assert.truthy(body:find("jetstream stream 'upd' is not bound yet (failed): the cluster refused to update it", 1, true),
      body)
    local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json"):format(h.bin, d.port))
    assert.are.equal(0, rc, out)
    local mine
    for _, st in ipairs(assert(json.decode(out), out)) do if st.name == "d" then mine = st end end
    assert.are.equal("failed", mine.streams[1].state)
    assert.truthy(mine.streams[1].error:find("refused to update", 1, true), mine.streams[1].error)
    assert.are.equal(3, js_request(ns[1].port, "$JS.API.STREAM.INFO.upd").config.num_replicas)
    cs.stop(d)
  end)

  it("answers an HTTP post to a jetstream-backed stream with JetStream's PubAck, its refusal, or 504", function()
    local code, ack = post(a, "orders.http", '{"n":1}')
    assert.are.equal(201, code)
    assert.are.equal("orders", ack.stream)
    assert.is_true(math.type(ack.seq) == "integer" and ack.seq > 3, "seq " .. tostring(ack.seq))
    -- the sequence is JetStream's: the stream's last, read on a server of the cluster
    local ref = jsfwd(ns[3].port, "read")
    assert.are.equal(ack.seq, ref.stream.last_seq)
    -- a node without local streams waits for it as well
    code, ack = post(b, "orders.http", '{"n":2}')
    assert.are.same({ 201, "orders", ref.stream.last_seq + 1 }, { code, ack.stream, ack.seq })
    -- JetStream's refusal, answered as a local stream's (the HTTP status in the error's code)
    code, ack = post(a, "orders.http", '{"n":3}', "-H 'Nats-Expected-Last-Sequence: 1'")
    assert.are.equal(409, code)
    assert.are.same({ 409, 10071 }, { ack.error.code, ack.error.err_code })
    -- a subject no stream captures: 202 as before
    code, ack = post(a, "other.http", '{"n":4}')
    assert.are.same({ 202, { accepted = 1 } }, { code, ack })
    -- the upstream paused: no PubAck within http { ack_timeout }
    assert(h.proc.kill(ns[1].pid, "STOP"))
    local ok, err = pcall(function()
      code, ack = post(a, "orders.http", '{"n":5}')
      assert.are.equal(504, code)
      assert.matches("no PubAck within 1.5 s", ack.error.description, 1, true)
    end)
    assert(h.proc.kill(ns[1].pid, "CONT"))
    assert(ok, err)
  end)

  it("follows a node that joins or leaves the cluster on a reload: the JetStream API and HTTP posts", function()
    local hport = h.free_port()
    local e = t:keep(h.start_scripted("-- alone\n", { args = { "--http", "127.0.0.1:" .. hport } }))
    e.hport = hport
    assert.are.equal(202, (post(e, "orders.alone", '{"n":1}')))
    h.write_file(e.config, cs.cluster_block("e", { ns[2].port }) ..
      'stream "orders" { subjects = { "orders.>" }, backend = "jetstream", replicas = 3 }\n')
    local code, ack
    assert(h.wait_until(function()
      code, ack = post(e, "orders.joined", '{"n":2}')
      return code == 201
    end, 20, 0.5), tostring(code) .. "\n" .. e:log())
    assert.are.equal("orders", ack.stream)
    assert.same({ name = "orders", subjects = { "orders.>" } }, jsfwd(e.port, "info", "orders").info)
    h.write_file(e.config, "-- alone again\n")
    assert(h.wait_until(function()
      code = post(e, "orders.left", '{"n":3}')
      return code == 202
    end, 20, 0.5), tostring(code) .. "\n" .. e:log())
    assert.is_true(e:alive(), e:log())
    assert.are.equal(202, (post(e, "orders.left", '{"n":4}')))
    cs.stop(e)
  end)
end)
