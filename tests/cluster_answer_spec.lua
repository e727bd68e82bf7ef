-- Cluster mode (docs/cluster.md): a request that something on the node
-- answers (a local stream's PubAck, a rule's handler) gets that answer
-- and nothing else, although the message also goes to the cluster, whose
-- server says "503 no responders" when nobody there subscribes.  A request
-- nobody answers still gets the 503, as from nats-server.  Three routed
-- nats-servers and one tide node, on loopback.
local h = require "helpers"
local cs = require "cluster_support"
local json = require "dkjson"

local RULES = [[
stream "loc" { subjects = { "loc.>" } }
on("svc.echo", function(e, ctx) ctx.reply({ got = e.data }) end)
]]

-- Everything that reaches c within secs.
local function drain(c, secs)
  local got, deadline = {}, h.proc.now() + secs
  while h.proc.now() < deadline do
    local f = c:frame(math.max(0.01, deadline - h.proc.now()))
    if f and (f.op == "MSG" or f.op == "HMSG") then got[#got + 1] = f end
  end
  return got
end

local function is_503(f)
  return f.op == "HMSG" and f.headers:match("^NATS/1.0 503") ~= nil
end

local function describe_all(got)
  local out = {}
  for _, f in ipairs(got) do out[#out + 1] = f.op .. " " .. f.subject .. " " .. (f.headers or "") .. f.payload end
  return table.concat(out, " | ")
end

describe("cluster mode: answers made on the node", function()
  local t, ns, a, dir = cs.new(), nil, nil, nil

  setup(function()
    dir = h.make_tmpdir("cluster-answer")
    ns = t:start_cluster(dir, "tideans", false)
    a = t:start_node("a", { ns[1].port }, RULES)
    cs.wait_ready({ a })
  end)

  teardown(function()
    t:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("a publish with a reply to a local stream gets its PubAck and no 503", function()
    local c = cs.client(a.port)
    c:sub("_INBOX.ans.*", "1")
    assert(c:ping())
    for i = 1, 5 do c:pub("loc.x", '{"n":' .. i .. '}', "_INBOX.ans." .. i) end
    local got = drain(c, 1.5)
    c:close()
    local acks, others = 0, {}
    for _, f in ipairs(got) do
      local o = not is_503(f) and json.decode(f.payload)
      if o and o.stream == "loc" and o.seq then acks = acks + 1 else others[#others + 1] = f end
    end
    assert.equal(5, acks, describe_all(got))
    assert.same({}, others, "more than the PubAcks: " .. describe_all(others))
  end)

  it("a request a rule's handler answers gets that answer and no 503", function()
    local c = cs.client(a.port)
    c:sub("_INBOX.svc.*", "1")
    assert(c:ping())
    c:pub("svc.echo", json.encode { specversion = "1.0", id = "r1", source = "spec", type = "t", data = { k = 1 } },
      "_INBOX.svc.1")
    local got = drain(c, 1.5)
    c:close()
    assert.equal(1, #got, describe_all(got))
    assert.is_false(is_503(got[1]), describe_all(got))
    assert.truthy(got[1].payload:find('"got"', 1, true), describe_all(got))
  end)

  it("a request nobody answers gets the cluster's 503, as from nats-server", function()
    for _, port in ipairs({ a.port, ns[2].port }) do
      local c = cs.client(port)
      c:sub("_INBOX.none.*", "1")
      assert(c:ping())
      c:pub("nobody.here", "{}", "_INBOX.none.1")
      local got = drain(c, 1.5)
      c:close()
      assert.equal(1, #got, ("through port %d: %s"):format(port, describe_all(got)))
      assert.truthy(is_503(got[1]), ("through port %d: %s"):format(port, describe_all(got)))
    end
  end)
end)
