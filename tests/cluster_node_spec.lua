-- Cluster mode: requests addressed to one node, $TIDE.NODE.<name>.<rest>
-- (docs/cluster.md).  Three routed nats-servers and two tide nodes, a
-- (with auth { }) and b, all on loopback: the node called <name> answers
-- as it answers $TIDE.<rest>, whichever node or server the request
-- entered through, and the entering node checks its client for both
-- subjects.
local h = require "helpers"
local json = require "dkjson"

local cs = require("cluster_support").new() -- every process a test starts, stopped in teardown

-- The rules of node b, with a comment that makes another revision.
local function b_extra(note)
  return ("filter(\"twice.>\", function(e) return false end)\n-- %s\n"):format(note)
end
local function b_rules(ports, note) return cs.cluster_block("b", ports) .. b_extra(note) end

-- Connects to port (as user/pass when given) with headers and no
-- responders, subscribes to an inbox of its own and sends subject as a
-- request.  Returns the first frame that answers: a MSG/HMSG, or -ERR.
local seq = 0
local function ask(port, subject, user, pass, payload)
  local c = h.connect(port)
  local connect = { verbose = false, headers = true, no_responders = true, user = user, pass = pass }
  c:send("CONNECT " .. json.encode(connect) .. "\r\n")
  assert(c:ping())
  seq = seq + 1
  local inbox = "_INBOX.node" .. seq
  c:sub(inbox .. ".*", "1")
  assert(c:ping())
  c:pub(subject, payload or "", inbox .. ".1")
  local f
  repeat f = c:frame(5) until not f or f.op ~= "PONG"
  c:close()
  return f
end

-- ask, with the answer's JSON decoded (raises when there is none).
local function answer(port, subject, user, pass, payload)
  local f = ask(port, subject, user, pass, payload)
  assert(f and (f.op == "MSG" or f.op == "HMSG"), "no answer to " .. subject .. ": " .. json.encode(f or {}))
  return (assert(json.decode(f.payload), f.payload))
end

describe("cluster mode, requests addressed to one node", function()
  local ns, a, b, dir

  setup(function()
    dir = h.make_tmpdir("cluster-node")
    ns = cs:start_cluster(dir, "nd", false)
    a = cs:start_node("a", { ns[1].port }, [[
auth { users = {
  { user = "ops", password = "opspw", admin = true },
  { user = "plain", password = "pw" },
  { user = "wide", password = "pw", permissions = { publish = { allow = { ">" }, deny = { "$TIDE.ADMIN.>" } } } },
  { user = "nonode", password = "pw", admin = true,
    permissions = { publish = { allow = { ">" }, deny = { "$TIDE.NODE.>" } } } },
} }
]])
    b = cs:start_node("b", { ns[3].port }, b_extra("v1"))
    -- both nodes have their subscriptions in the cluster once each answers through it
    assert(h.wait_until(function()
      local f1 = ask(ns[2].port, "$TIDE.NODE.a.CLUSTER.STATUS")
      local f2 = ask(ns[2].port, "$TIDE.NODE.b.CLUSTER.STATUS")
      return f1 and f1.op == "MSG" and f2 and f2.op == "MSG"
    end, 15, 0.2), "the nodes never answered through the cluster:\n" .. a:log() .. b:log())
  end)

  teardown(function()
    cs:stop_all()
    h.remove_tmpdir(dir)
  end)

  it("answers a client on node a with node b's status and stats", function()
    local st = answer(a.port, "$TIDE.NODE.b.CLUSTER.STATUS", "ops", "opspw")
    assert.are.equal("b", st.name)
    local stats = answer(a.port, "$TIDE.NODE.b.ADMIN.STATS", "ops", "opspw")
    assert.are.equal(h.stats(b.port).server_id, stats.server_id)
    -- a's own name is answered by a itself
    local own = answer(a.port, "$TIDE.NODE.a.ADMIN.STATS", "ops", "opspw")
    assert.are_not.equal(stats.server_id, own.server_id)
    assert.are.equal("a", answer(a.port, "$TIDE.NODE.a.CLUSTER.STATUS", "ops", "opspw").name)
  end)

  it("answers a client straight on a nats-server of the cluster", function()
    assert.are.equal("b", answer(ns[1].port, "$TIDE.NODE.b.CLUSTER.STATUS").name)
    local stats = answer(ns[2].port, "$TIDE.NODE.b.ADMIN.STATS")
    assert.are.equal(h.stats(b.port).server_id, stats.server_id)
    assert.are.equal("a", answer(ns[3].port, "$TIDE.NODE.a.CLUSTER.STATUS").name)
  end)

  it("sends b's answer back through the cluster even when a client on b subscribes to its subject", function()
    local listener = cs.client(b.port)
    listener:sub("_INBOX.>", "1")
    assert(listener:ping())
    -- the listener's interest is in b's server list only once b has mirrored it; a probe shows that
    local probe = cs.client(ns[3].port)
    assert(h.wait_until(function()
      probe:pub("_INBOX.probe", "x")
      local f = listener:frame(0.2)
      return f and f.op == "MSG"
    end, 10, 0))
    probe:close()
    while listener:frame(0.3) do end
    local st = answer(a.port, "$TIDE.NODE.b.CLUSTER.STATUS", "ops", "opspw")
    assert.are.equal("b", st.name)
    local stats = answer(ns[1].port, "$TIDE.NODE.b.ADMIN.STATS")
    assert.are.equal(h.stats(b.port).server_id, stats.server_id)
    listener:close()
  end)

  it("refuses, on node a, a user who may not send $TIDE.<rest> there", function()
    for _, who in ipairs({ "plain", "wide" }) do
      local f = ask(a.port, "$TIDE.NODE.b.ADMIN.STATS", who, "pw")
      assert.are.equal("-ERR", f and f.op, who .. ": " .. json.encode(f or {}))
      assert.truthy(f.text:find("Permissions Violation for Publish to \"$TIDE.NODE.b.ADMIN.STATS\"", 1, true), f.text)
      -- nor its own node's admin verbs through its own name
      f = ask(a.port, "$TIDE.NODE.a.ADMIN.STATS", who, "pw")
      assert.are.equal("-ERR", f and f.op, who .. ": " .. json.encode(f or {}))
    end
    -- the list must allow $TIDE.NODE.> itself too, admin or not
    local f = ask(a.port, "$TIDE.NODE.b.ADMIN.STATS", "nonode", "pw")
    assert.are.equal("-ERR", f and f.op, json.encode(f or {}))
    -- and a reply subject under $TIDE.NODE. is refused as an admin one is
    local c = h.connect(a.port)
    c:send('CONNECT {"verbose":false,"user":"ops","pass":"opspw"}\r\n')
    c:pub("anything", "", "$TIDE.NODE.b.ADMIN.RELOAD")
    f = c:frame(5)
    c:close()
    assert.are.equal("-ERR", f and f.op, json.encode(f or {}))
    assert.truthy(f.text:find("reply subject", 1, true), f.text)
  end)

  it("reloads b's rules only, asked through a, and b's history says who asked", function()
    local a_before = answer(a.port, "$TIDE.ADMIN.RULES.HISTORY", "ops", "opspw")
    local function b_history() return answer(b.port, "$TIDE.ADMIN.RULES.HISTORY") end
    local before = b_history()
    local start, rev = before.live, before.next
    -- a change on disk reloads b by itself (nobody asked); rolled back through a, then reloaded through a
    h.write_file(b.config, b_rules({ ns[3].port }, "v2"))
    assert(h.wait_until(function() return b_history().live == rev end, 5), json.encode(b_history()))
    local rb = answer(a.port, "$TIDE.NODE.b.ADMIN.RULES.ROLLBACK", "ops", "opspw")
    assert.is_true(rb.ok, json.encode(rb))
    local hist = b_history()
    assert.are.equal(start, hist.live)
    assert.are.equal(("rolled back to rev %d by ops@a"):format(start), hist.revisions[1].reason)
    local rl = answer(a.port, "$TIDE.NODE.b.ADMIN.RELOAD", "ops", "opspw")
    assert.is_true(rl.ok, json.encode(rl))
    hist = b_history()
    assert.are.equal(rev + 1, hist.live)
    assert.are.equal("ops@a", hist.revisions[1].by)
    assert.are.equal("admin request", hist.revisions[1].cause)
    -- straight from a server of the cluster: nobody named
    h.write_file(b.config, b_rules({ ns[3].port }, "v3"))
    assert(h.wait_until(function() return b_history().live == rev + 2 end, 5), json.encode(b_history()))
    assert.is_true(answer(ns[2].port, "$TIDE.NODE.b.ADMIN.RULES.ROLLBACK").ok)
    assert.are.equal(("rolled back to rev %d"):format(rev + 1), b_history().revisions[1].reason)
    -- a's rules did not move
    assert.are.same(a_before, answer(a.port, "$TIDE.ADMIN.RULES.HISTORY", "ops", "opspw"))
  end)

  it("does not let a client of a pass for another user with a Tide-By header", function()
    local function b_history() return answer(b.port, "$TIDE.ADMIN.RULES.HISTORY") end
    local before = b_history()
    h.write_file(b.config, b_rules({ ns[3].port }, "forged"))
    assert(h.wait_until(function() return b_history().live == before.next end, 5), json.encode(b_history()))
    local c = h.connect(a.port)
    c:send('CONNECT {"verbose":false,"headers":true,"user":"ops","pass":"opspw"}\r\n')
    c:sub("_INBOX.forge.*", "1")
    assert(c:ping())
    c:hpub("$TIDE.NODE.b.ADMIN.RULES.ROLLBACK", { { "Tide-By", "root" } }, "", "_INBOX.forge.1")
    local f = c:frame(5)
    c:close()
    assert(f and f.op:match("MSG"), json.encode(f or {}))
    assert.is_true(json.decode(f.payload).ok, f.payload)
    local reason = b_history().revisions[1].reason
    assert.truthy(reason:match("^rolled back to rev %d+ by ops@a$"), reason)
  end)

  it("gives no responders for a node nobody is called", function()
    local f = ask(a.port, "$TIDE.NODE.nobody.ADMIN.STATS", "ops", "opspw")
    assert.are.equal("HMSG", f and f.op, json.encode(f or {}))
    assert.truthy(f.headers:find("503", 1, true), f.headers)
    f = ask(ns[1].port, "$TIDE.NODE.nobody.ADMIN.STATS")
    assert.are.equal("HMSG", f and f.op, json.encode(f or {}))
    assert.truthy(f.headers:find("503", 1, true), f.headers)
  end)

  it("lets tide stats, rules, rules history and rules reload ask one node with --node", function()
    local function tide(port, args)
      local cmd = h.bin
      for _, x in ipairs(args) do cmd = cmd .. " '" .. x .. "'" end
      local o, e = dir .. "/cli.out", dir .. "/cli.err"
      local rc = h.sh(("{ timeout 20 %s -s 127.0.0.1:%d > %s 2> %s; }"):format(cmd, port, o, e))
      return rc, h.read_file(o) or "", h.read_file(e) or ""
    end
    local rc, out, err = tide(a.port, { "stats", "--node", "b", "--json", "--user", "ops", "--password", "opspw" })
    assert.are.equal(0, rc, err)
    assert.are.equal(h.stats(b.port).server_id, json.decode(out).server_id)
    rc, out, err = tide(ns[2].port, { "rules", "history", "--node", "b", "--json" })
    assert.are.equal(0, rc, err)
    assert.are.same(answer(b.port, "$TIDE.ADMIN.RULES.HISTORY"), json.decode(out))
    rc, out, err = tide(a.port, { "rules", "--node", "b", "--user", "plain", "--password", "pw" })
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("Permissions Violation", 1, true), err)
    -- a reload of one node, asked through another
    local gen, gen_a = answer(b.port, "$TIDE.ADMIN.STATS", "ops", "opspw").scripts.generation, answer(a.port, "$TIDE.ADMIN.STATS", "ops", "opspw").scripts.generation
    rc, out, err = tide(a.port, { "rules", "reload", "--node", "b", "--json", "--user", "ops", "--password", "opspw" })
    assert.are.equal(0, rc, err)
    assert.are.equal(gen + 1, json.decode(out).generation)
    assert.are.equal(gen + 1, answer(b.port, "$TIDE.ADMIN.STATS", "ops", "opspw").scripts.generation)
    assert.are.equal(gen_a, answer(a.port, "$TIDE.ADMIN.STATS", "ops", "opspw").scripts.generation, "the node asked through reloaded too")
    rc, out, err = tide(ns[1].port, { "stats", "--node", "nobody" })
    assert.are_not.equal(0, rc)
    assert.truthy(err:find("no responders", 1, true), err)
  end)

  it("moves b's requests to its new name when a reload renames it", function()
    local function named(port, name)
      local f = ask(port, "$TIDE.NODE." .. name .. ".CLUSTER.STATUS")
      return f and f.op == "MSG" and json.decode(f.payload).name == name
    end
    local function gone(port, name)
      local f = ask(port, "$TIDE.NODE." .. name .. ".CLUSTER.STATUS")
      return f and f.op == "HMSG" and f.headers:find("503", 1, true) ~= nil
    end
    h.write_file(b.config, cs.cluster_block("b2", { ns[3].port }) .. b_extra("renamed"))
    assert(h.wait_until(function() return named(ns[1].port, "b2") end, 10), b:log())
    assert(h.wait_until(function() return gone(ns[1].port, "b") end, 10), b:log())
    h.write_file(b.config, b_rules({ ns[3].port }, "named b again"))
    assert(h.wait_until(function() return named(ns[1].port, "b") end, 10), b:log())
  end)
end)
