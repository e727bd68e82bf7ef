-- Rules deployed once to every node of a cluster (docs/cluster.md,
-- "Deploying rules"): tide deploy stores a bundle of rule files in the
-- cluster's replicated bucket TIDE_RULES; every node loads each new
-- revision after its own entry file, refuses one that does not load (and
-- keeps serving what it had), and a node that starts later loads the latest.
local h = require "helpers"
local json = require "dkjson"

local cs = require("cluster_support").new()

-- Runs `tide deploy` with args (a list of words); exit code, stdout, stderr.
local function deploy(args, out_dir)
  local cmd = "'" .. h.bin .. "' deploy"
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  local o, e = out_dir .. "/out", out_dir .. "/err"
  local rc = h.sh(("{ timeout 30 %s > %s 2> %s; }"):format(cmd, o, e))
  return rc, h.read_file(o) or "", h.read_file(e) or ""
end

-- Writes files = { [path] = text } into a new directory; returns it.
local function bundle(files)
  local dir = h.make_tmpdir("deploy-bundle")
  for name, text in pairs(files) do
    local sub = (dir .. "/" .. name):match("^(.*)/[^/]+$")
    os.execute("mkdir -p '" .. sub .. "'")
    h.write_file(dir .. "/" .. name, text)
  end
  return dir
end

-- `tide cluster status --json` through port: the nodes by name.
local function status(port)
  local rc, out = h.sh(("'%s' cluster status -s 127.0.0.1:%d --json --timeout 1"):format(h.bin, port))
  if rc ~= 0 then return {} end
  local by = {}
  for _, n in ipairs(json.decode(out) or {}) do by[n.name] = n end
  return by
end

-- Waits until every named node's status satisfies fn; returns the statuses.
local function wait_status(port, names, fn, what)
  local st
  local ok = h.wait_until(function()
    st = status(port)
    for _, name in ipairs(names) do
      if not st[name] or not fn(st[name]) then return false end
    end
    return true
  end, 20, 0.2)
  assert(ok, what .. ": " .. json.encode(st))
  return st
end

-- Publishes each subject of `subjects` through node `via`, then says which
-- of them a subscriber to "t.>" on node `at` received (subject list, in order).
local function seen(via, at, subjects)
  local pub, sub = cs.client(via.port), cs.client(at.port)
  sub:sub("t.>", "1")
  -- the subscription has reached the cluster once a probe comes back
  local n = 0
  assert(h.wait_until(function()
    n = n + 1
    pub:pub("t.probe", tostring(n))
    local f = sub:frame(0.2)
    return f and (f.op == "MSG" or f.op == "HMSG")
  end, 10, 0), "the subscription never reached the cluster")
  while sub:frame(0.3) do end
  for _, s in ipairs(subjects) do pub:pub(s, "{}") end
  pub:pub("t.end", "{}")
  local got = {}
  for _, m in ipairs(sub:collect(#subjects + 1, 5)) do
    if m.subject == "t.end" then break end
    got[#got + 1] = m.subject
  end
  pub:close()
  sub:close()
  return got
end

describe("tide deploy", function()
  local ns, a, b, dir, out_dir = {}, nil, nil, nil, nil
  local revs = {}

  setup(function()
    dir = h.make_tmpdir("cluster-deploy")
    out_dir = h.make_tmpdir("cluster-deploy-out")
    ns = cs:start_cluster(dir, "dep", true)
    -- the nodes' own files: cluster { } and nothing else
    a = cs:start_node("a", { ns[1].port })
    b = cs:start_node("b", { ns[2].port })
    assert(h.wait_until(function()
      return cs.get(a.hport, "/readyz") == 200 and cs.get(b.hport, "/readyz") == 200
    end, 20), "the nodes did not get ready:\n" .. a:log() .. b:log())
    -- A node whose JetStream does not answer yet (a new cluster electing its
    -- leaders) is ready with its own rules and keeps asking: wait for the bucket.
    wait_status(a.port, { "a", "b" }, function(n) return n.rules_state == "none" and n.rules_error == "" end,
      "the nodes never watched the rules bucket")
  end)

  teardown(function()
    cs:stop_all()
    h.remove_tmpdir(dir)
    h.remove_tmpdir(out_dir)
  end)

  it("stores a revision through node A and every node runs it", function()
    -- before: the nodes' own rules drop nothing
    assert.same({ "t.drop.0", "t.keep.0" }, seen(a, b, { "t.drop.0", "t.keep.0" }))
    local src = bundle {
      ["tide.lua"] = 'local lib = require "lib.names"\nfilter(lib.dropped, function(e) return false end)\n',
      ["lib/names.lua"] = 'return { dropped = "t.drop.>" }\n',
    }
    local rc, out, err = deploy({ src, "-s", "127.0.0.1:" .. a.port, "--json" }, out_dir)
    assert.equal(0, rc, err)
    local ans = assert(json.decode(out), out)
    assert.is_true(ans.rev > 0, out)
    assert.matches("^%x+$", ans.hash)
    revs[1], revs.hash1 = ans.rev, ans.hash
    local st = wait_status(a.port, { "a", "b" }, function(n) return n.rules_revision == ans.rev end,
      "the nodes did not load rev " .. ans.rev)
    for _, name in ipairs({ "a", "b" }) do
      assert.equal("loaded", st[name].rules_state)
      assert.equal(ans.hash, st[name].rules_hash)
    end
    -- the filter runs where the event enters: on A and on B
    assert.same({ "t.keep.1" }, seen(a, b, { "t.drop.1", "t.keep.1" }))
    assert.same({ "t.keep.2" }, seen(b, a, { "t.drop.2", "t.keep.2" }))
    h.remove_tmpdir(src)
  end)

  it("reaches every node with the next revision", function()
    local src = bundle {
      ["tide.lua"] = 'route("t.in.>", function(e) return "t.out." .. e.subject:sub(6) end)\n',
    }
    local rc, out, err = deploy({ src, "-s", "127.0.0.1:" .. b.port }, out_dir)
    assert.equal(0, rc, err)
    local rev = tonumber(out:match("deployed rev (%d+)"))
    assert.is_true(rev > revs[1], out)
    revs[2] = rev
    wait_status(a.port, { "a", "b" }, function(n) return n.rules_revision == rev and n.rules_state == "loaded" end,
      "the nodes did not load rev " .. rev)
    -- the filter of the revision before is gone, the route is there
    assert.same({ "t.drop.3", "t.out.x" }, seen(a, b, { "t.drop.3", "t.in.x" }))
    assert.same({ "t.drop.4", "t.out.y" }, seen(b, a, { "t.drop.4", "t.in.y" }))
    -- the rule history of each node has it, with who deployed it (user@host)
    local host = io.popen("hostname"):read("l")
    local user = os.getenv("USER")
    local wanted_by = (user and user ~= "") and (user .. "@" .. host) or host
    for _, srv in ipairs({ a, b }) do
      local m = assert(h.request(srv.port, "$TIDE.ADMIN.RULES.HISTORY", ""))
      local hist = assert(json.decode(m.payload), m.payload)
      assert.equal("deploy rev " .. rev, hist.revisions[1].cause)
      assert.equal(wanted_by, hist.revisions[1].by)
    end
    h.remove_tmpdir(src)
  end)

  it("refuses a broken revision on every node, which keep serving the one before", function()
    local src = bundle { ["tide.lua"] = 'filter("t.>", function(e) return false end)\nerror("broken on purpose")\n' }
    -- checked here first: refused without reaching the cluster
    local rc, out, err = deploy({ src, "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc, out)
    assert.matches("tide.lua:2: broken on purpose", err, 1, true)
    assert.equal(revs[2], status(a.port).a.rules_revision)
    -- sent anyway: every node refuses it
    rc, out, err = deploy({ src, "-s", "127.0.0.1:" .. a.port, "--no-check", "--json" }, out_dir)
    assert.equal(0, rc, err)
    local bad = json.decode(out).rev
    local st = wait_status(a.port, { "a", "b" }, function(n) return n.rules_failed_revision == bad end,
      "the nodes did not refuse rev " .. tostring(bad))
    for _, name in ipairs({ "a", "b" }) do
      assert.equal("failed", st[name].rules_state)
      assert.equal(revs[2], st[name].rules_revision)
      assert.matches("deployed/" .. bad .. "/tide.lua:2: broken on purpose", st[name].rules_error, 1, true)
    end
    -- the table says so too
    local _, table_out = h.sh(("'%s' cluster status -s 127.0.0.1:%d"):format(h.bin, b.port))
    assert.matches("rules: rev " .. bad .. " refused", table_out, 1, true)
    -- both still run the revision before, and are ready
    assert.same({ "t.out.z" }, seen(a, b, { "t.in.z" }))
    assert.same({ "t.out.w" }, seen(b, a, { "t.in.w" }))
    assert.equal(200, (cs.get(a.hport, "/readyz")))
    assert.equal(200, (cs.get(b.hport, "/readyz")))
    h.remove_tmpdir(src)
  end)

  it("refuses deployed rules that set node settings", function()
    local src = bundle { ["tide.lua"] = 'listen { nats = "127.0.0.1:1" }\n' }
    local rc, _, err = deploy({ src, "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc)
    assert.matches("listen { } is a node setting", err, 1, true)
    rc, _, err = deploy({ src, "-s", "127.0.0.1:" .. a.port, "--no-check" }, out_dir)
    assert.equal(0, rc, err)
    local st = wait_status(a.port, { "a", "b" }, function(n)
      return n.rules_error:find("listen { } is a node setting", 1, true) ~= nil
    end, "the nodes did not refuse the node settings")
    assert.equal(revs[2], st.a.rules_revision)
    h.remove_tmpdir(src)
  end)

  it("deploys the same way through a nats-server of the cluster", function()
    local src = bundle { ["tide.lua"] = 'route("t.in.>", function(e) return "t.fixed." .. e.subject:sub(6) end)\n' }
    local rc, out, err = deploy({ src, "-s", "nats://127.0.0.1:" .. ns[3].port, "--json" }, out_dir)
    assert.equal(0, rc, err)
    local rev = json.decode(out).rev
    revs[3] = rev
    local st = wait_status(a.port, { "a", "b" }, function(n) return n.rules_revision == rev end,
      "the nodes did not load rev " .. rev)
    assert.equal("loaded", st.a.rules_state)
    assert.equal("", st.b.rules_error)
    assert.same({ "t.fixed.v" }, seen(b, a, { "t.in.v" }))
    h.remove_tmpdir(src)
  end)

  it("gives a node that starts later the latest revision", function()
    local c = cs:start_node("c", { ns[3].port })
    assert(h.wait_until(function() return cs.get(c.hport, "/readyz") == 200 end, 20), c:log())
    local st = wait_status(c.port, { "c" }, function(n) return n.rules_revision == revs[3] end,
      "the late node did not load rev " .. revs[3])
    assert.equal("loaded", st.c.rules_state)
    assert.same({ "t.fixed.u" }, seen(c, a, { "t.in.u" }))
    cs.stop(c)
  end)

  it("rolls back by storing an earlier revision's files again", function()
    local rc, out, err = deploy({ "--rollback", tostring(revs[1]), "-s", "127.0.0.1:" .. b.port, "--json" }, out_dir)
    assert.equal(0, rc, err)
    local ans = assert(json.decode(out), out)
    assert.equal(revs[1], ans.rollback_of)
    assert.equal(revs.hash1, ans.hash)
    assert.is_true(ans.rev > revs[3])
    revs[4] = ans.rev
    wait_status(a.port, { "a", "b" }, function(n) return n.rules_revision == ans.rev and n.rules_state == "loaded" end,
      "the nodes did not load rev " .. ans.rev)
    -- rev 1's filter again, and rev 3's route gone
    assert.same({ "t.keep.5", "t.in.t" }, seen(b, a, { "t.drop.5", "t.keep.5", "t.in.t" }))
    rc, _, err = deploy({ "--rollback", "9999", "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc)
    assert.matches("no rev 9999 in the rules bucket", err, 1, true)
  end)

  it("says what is wrong with bad input", function()
    local rc, _, err = deploy({ dir .. "/no-such-dir", "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc)
    assert.matches("cannot read .*no%-such%-dir: No such file or directory", err)
    local src = bundle { ["rules.lua"] = "-- no tide.lua here\n" }
    rc, _, err = deploy({ src, "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc)
    assert.matches("no entry file tide.lua in", err, 1, true)
    -- over the cluster's max_payload (1 MB by default)
    h.write_file(src .. "/tide.lua", "-- " .. ("x"):rep(1100 * 1000) .. "\n")
    rc, _, err = deploy({ src, "-s", "127.0.0.1:" .. a.port }, out_dir)
    assert.equal(1, rc)
    assert.matches("the bundle is %d+ bytes; the cluster takes at most %d+ in one message", err)
    h.remove_tmpdir(src)
    -- none of these reached the nodes
    local st = status(a.port)
    assert.equal(revs[4], st.a.rules_revision)
    assert.equal(revs[4], st.b.rules_revision)
  end)
end)
