-- Cluster mode and reloads (docs/cluster.md): a reload that changes
-- `upstream` connects to the new servers; `tide cluster status --node
-- NAME`.  Three routed nats-servers with JetStream and two tide nodes,
-- all on loopback.
local h = require "helpers"
local json = require "dkjson"

local cs = require("cluster_support").new() -- every process a test starts, stopped in teardown

-- `tide cluster status` through port with more arguments: exit code, output.
local function status(port, args)
  return h.sh(("'%s' cluster status -s 127.0.0.1:%d %s"):format(h.bin, port, args))
end

-- The JSON status of the node called name, asked through port; nil when
-- it does not answer.
local function node_status(port, name)
  local rc, out = status(port, "--json --timeout 1")
  if rc ~= 0 then return nil end
  for _, o in ipairs(json.decode(out) or {}) do
    if o.name == name then return o end
  end
end

-- A JetStream API request straight to a nats-server: the answer, decoded.
local function js_api(port, subject, body)
  local m = assert(h.request(port, subject, body or ""))
  return assert(json.decode(m.payload), m.payload)
end

-- Waits until sub (subscribed to `subject`.>) gets what `from` publishes
-- on subject.probe; raises after 15 s.
local function wait_route(from, sub, subject, what)
  assert(h.wait_until(function()
    from:pub(subject .. ".probe", "{}")
    local f = sub:frame(0.2)
    return f and f.op == "MSG"
  end, 15, 0), what)
  while sub:frame(0.3) do end
end

-- True when sub receives nothing within secs seconds.
local function quiet(sub, secs)
  local f = sub:frame(secs)
  return f == nil, f
end

describe("cluster mode, reloads and one node's status", function()
  local ns, a, b, dir
  local A_RULES = 'stream "lv" { subjects = { "lv.>" }, backend = "jetstream", replicas = 3 }\n'

  setup(function()
    dir = h.make_tmpdir("cluster-reload")
    ns = cs:start_cluster(dir, "rl", true)
    a = cs:start_node("a", { ns[1].port }, A_RULES)
    b = cs:start_node("b", { ns[2].port }, "-- b\n")
    cs.wait_ready({ a, b }, 30)
  end)

  teardown(function()
    cs:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("tide cluster status --node shows that node alone, and exits 1 when no node of that name answers", function()
    local rc, out
    assert(h.wait_until(function()
      rc, out = status(ns[3].port, "--node b --timeout 3")
      return rc == 0
    end, 10), out)
    assert.truthy(out:match("^NAME%s+ADDRESS%s+UPSTREAM"), out)
    assert.truthy(out:match("\nb%s+127%.0%.0%.1:" .. b.port), out)
    assert.falsy(out:match("\na%s"), out)
    rc, out = status(ns[3].port, "--node a --json --timeout 3")
    assert.equal(0, rc, out)
    local t = json.decode(out)
    assert.equal(1, #t, out)
    assert.equal("a", t[1].name)
    -- every node, as before
    rc, out = status(ns[3].port, "--timeout 1")
    assert.equal(0, rc, out)
    assert.truthy(out:match("\na%s") and out:match("\nb%s"), out)
    rc, out = status(ns[3].port, "--node nosuch --timeout 1")
    assert.equal(1, rc, out)
    assert.truthy(out:find("no tide node called nosuch answered", 1, true), out)
  end)

  it("connects to the servers of a reloaded upstream and routes through them", function()
    local st = assert(node_status(ns[3].port, "b"))
    assert.equal("nats://127.0.0.1:" .. ns[2].port, st.upstream)
    h.write_file(b.config, cs.cluster_block("b", { ns[3].port }) .. "-- b, upstream moved\n")
    assert(h.wait_until(function()
      st = node_status(ns[1].port, "b")
      return st and st.upstream == "nats://127.0.0.1:" .. ns[3].port and st.connected
    end, 15), json.encode(st or {}) .. "\n" .. b:log())
    -- both ways between a and b, through the new server
    local sa, sb = cs.client(a.port), cs.client(b.port)
    sa:sub("mv.>", "1")
    sb:sub("mv.>", "1")
    assert(sa:ping() and sb:ping())
    wait_route(sa, sb, "mv", "a's publish never reached b after the upstream changed:\n" .. b:log())
    wait_route(sb, sa, "mv", "b's publish never reached a after the upstream changed:\n" .. b:log())
    sa:close()
    sb:close()
    assert.equal(200, (cs.get(b.hport, "/readyz")))
  end)
end)
