-- Identities and subject permissions on the NATS listener (docs/security.md).
--
-- Every protocol case runs against tide and against nats-server (2.9) with
-- the equivalent configuration, and must get the very same answers; each
-- also states the answer it expects, so two servers wrong in the same way
-- would not pass either.  Real clients (nats.js, and libnats through
-- tests/interop/auth_c.c) must see their usual errors.  Then what only tide does: the admin subjects, rules and streams
-- never seeing a refused event, reloads that revoke, and password checks
-- that keep the loop free.
local h = require "helpers"
local json = require "dkjson"

local NODE_DIR = h.root .. "/tests/interop/node"


-- The reference server: NATS_SERVER_BIN, else where Debian puts it.

-- A bcrypt hash of pw made by `tide passwd` (cost 4 unless said: the
-- protocol cases need the check, not its cost).
local function hash(pw, cost)
  local rc, out = h.sh(("printf '%%s\\n' '%s' | '%s' passwd --cost %d"):format(pw, h.bin, cost or 4))
  assert(rc == 0, out)
  return assert(out:match("(%$2b%$%d%d%$%S+)"), out)
end

local SHOP_HASH, RESP_HASH = hash("shoppw"), hash("resppw")

-- build/auth_c, the libnats client (plain build, whatever the suite's flavour).
local function build_auth_c()
  local rc, out = h.sh(("make -s -C '%s' BUILD=build SAN= build/auth_c"):format(h.root))
  assert(rc == 0, "building build/auth_c failed:\n" .. out)
end

-- The same configuration for both servers.
local TIDE_CONF = ([[
auth {
  timeout = "1s",
  users = {
    { user = "shop", password = %q,
      permissions = {
        publish = { allow = { "orders.>" }, deny = { "orders.internal.>" } },
        subscribe = { allow = { "_INBOX.>", "orders.*", "audit.>" }, deny = { "audit.secret.>" } },
      } },
    { user = "all", password = "allpw" },
    { user = "resp", password = %q,
      permissions = { subscribe = { allow = { "svc.>" } }, allow_responses = true } },
    { user = "guest", password = "guestpw",
      permissions = { publish = { allow = { "public.>" } }, subscribe = { allow = { "public.>" } } } },
    { user = "ops", password = "opspw", admin = true },
  },
  no_auth_user = "guest",
}
limits { max_subscriptions = 4 }
]]):format(SHOP_HASH, RESP_HASH)

local NATS_CONF = ([[
authorization {
  timeout: 1
  users = [
    {user: shop, password: "%s", permissions: {
       publish: {allow: ["orders.>"], deny: ["orders.internal.>"]},
       subscribe: {allow: ["_INBOX.>", "orders.*", "audit.>"], deny: ["audit.secret.>"]}}}
    {user: all, password: "allpw"}
    {user: resp, password: "%s", permissions: {subscribe: {allow: ["svc.>"]}, allow_responses: true}}
    {user: guest, password: "guestpw", permissions: {publish: {allow: ["public.>"]}, subscribe: {allow: ["public.>"]}}}
    {user: ops, password: "opspw"}
  ]
}
no_auth_user: guest
max_subscriptions: 4
]]):format(SHOP_HASH, RESP_HASH)

local function start_nats(conf)
  local dir = h.make_tmpdir("nats-auth")
  h.write_file(dir .. "/nats.conf", conf)
  local port = h.free_port()
  local srv = h.start_server({ bin = h.nats_server_bin(), port = port,
    cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/nats.conf" } })
  srv.dir = dir
  return srv
end

local function stop_all(list)
  for _, srv in ipairs(list) do
    srv:stop(srv.argv[1] == h.bin and "TERM" or "INT") -- nats-server 2.9 exits 0 on SIGINT
    h.remove_tmpdir(srv.dir)
  end
end

-- CONNECT with user and password.
local function creds(user, pass)
  return json.encode({ verbose = false, pedantic = false, user = user, pass = pass })
end

-- What c receives until the PONG of a PING sent now, or until it is
-- closed: "-ERR ..." lines, "MSG subject payload", "<closed>".
local function answers(c, timeout)
  local out = {}
  c:send("PING\r\n")
  while true do
    local f, err = c:frame(timeout or 3)
    if not f then
      out[#out + 1] = "<" .. tostring(err) .. ">"
      return out
    end
    if f.op == "PONG" then return out end
    if f.op == "MSG" or f.op == "HMSG" then
      out[#out + 1] = ("MSG %s %s"):format(f.subject, f.payload)
    else
      out[#out + 1] = f.text or f.op
    end
  end
end

-- A client logged in as user (nil: no CONNECT sent), its answers so far
-- checked to be none.
local function login(port, user, pass)
  local c = h.connect(port)
  if user then c:send("CONNECT " .. creds(user, pass) .. "\r\n") end
  assert.are.same({}, answers(c))
  return c
end

-- The protocol cases: each takes a port and returns what the clients saw.
local CASES = {
  { name = "INFO: with a no_auth_user, auth is not required", expect = { "nil" },
    run = function(port)
      local c = h.connect(port)
      c:close()
      return { tostring(json.decode(c.info).auth_required) }
    end },
  { name = "a bcrypt password that matches", expect = {},
    run = function(port)
      local c = h.connect(port)
      c:send("CONNECT " .. creds("shop", "shoppw") .. "\r\n")
      return answers(c)
    end },
  { name = "a wrong password", expect = { "-ERR 'Authorization Violation'", "<closed>" },
    run = function(port)
      local c = h.connect(port)
      c:send("CONNECT " .. creds("shop", "nope") .. "\r\nPUB orders.a 1\r\nx\r\n")
      return answers(c)
    end },
  { name = "an unknown user", expect = { "-ERR 'Authorization Violation'", "<closed>" },
    run = function(port)
      local c = h.connect(port)
      c:send("CONNECT " .. creds("nobody", "shoppw") .. "\r\n")
      return answers(c)
    end },
  { name = "a plain-text password, right then wrong",
    expect = { "-ERR 'Authorization Violation'", "<closed>" },
    run = function(port)
      login(port, "all", "allpw"):close()
      local c = h.connect(port)
      c:send("CONNECT " .. creds("all", "allpw ") .. "\r\n")
      return answers(c)
    end },
  { name = "no credentials: the no_auth_user, with its permissions",
    expect = { "MSG public.a 1", "-ERR 'Permissions Violation for Publish to \"orders.a\"'" },
    run = function(port)
      local c = h.connect(port)
      c:send("CONNECT {\"verbose\":false}\r\nSUB public.> 1\r\nPUB public.a 1\r\n1\r\nPUB orders.a 1\r\n2\r\n")
      return answers(c)
    end },
  { name = "no CONNECT at all: the no_auth_user too",
    expect = { "MSG public.b x", "-ERR 'Permissions Violation for Publish to \"orders.a\"'" },
    run = function(port)
      local c = h.connect(port)
      c:send("SUB public.> 1\r\nPUB public.b 1\r\nx\r\nPUB orders.a 0\r\n\r\n")
      -- nats-server takes a client that sent no CONNECT as verbose (+OK
      -- after each command); tide never has, with or without auth.
      local out = {}
      for _, l in ipairs(answers(c)) do
        if l ~= "+OK" then out[#out + 1] = l end
      end
      return out
    end },
  { name = "publish: allow, deny wins, outside the allow list; the connection stays",
    expect = { "-ERR 'Permissions Violation for Publish to \"orders.internal.x\"'",
               "-ERR 'Permissions Violation for Publish to \"shipping.a\"'", "MSG orders.b 3" },
    run = function(port)
      local all = login(port, "all", "allpw")
      all:sub("orders.>", "1")
      assert.are.same({}, answers(all))
      local c = login(port, "shop", "shoppw")
      c:send("PUB orders.a 1\r\n1\r\nPUB orders.internal.x 1\r\n2\r\nPUB shipping.a 1\r\nx\r\nPUB orders.b 1\r\n3\r\n")
      local out = answers(c)
      local seen = answers(all)
      assert.are.same({ "MSG orders.a 1", "MSG orders.b 3" }, seen)
      out[#out + 1] = seen[2]
      all:close()
      return out
    end },
  { name = "subscribe: allowed, not allowed, denied, with a queue",
    expect = { "-ERR 'Permissions Violation for Subscription to \"orders.a.b\"'",
               "-ERR 'Permissions Violation for Subscription to \"audit.secret.x\"'",
               "-ERR 'Permissions Violation for Subscription to \"shipping.a\" using queue \"q\"'",
               "MSG orders.a 1" },
    run = function(port)
      local c = login(port, "shop", "shoppw")
      c:send("SUB orders.* 1\r\nSUB orders.a.b 2\r\nSUB audit.secret.x 3\r\nSUB shipping.a q 4\r\n")
      local out = answers(c)
      local all = login(port, "all", "allpw")
      all:send("PUB orders.a 1\r\n1\r\nPUB orders.a.b 1\r\n2\r\nPUB audit.secret.x 1\r\n3\r\n")
      assert.are.same({}, answers(all))
      for _, l in ipairs(answers(c)) do out[#out + 1] = l end
      all:close()
      return out
    end },
  { name = "a wildcard subscription does not receive what its deny covers",
    expect = { "MSG audit.open.k 2" },
    run = function(port)
      local c = login(port, "shop", "shoppw")
      c:sub("audit.>", "1")
      assert.are.same({}, answers(c))
      local all = login(port, "all", "allpw")
      all:send("PUB audit.secret.k 1\r\n1\r\nPUB audit.open.k 1\r\n2\r\nPUB audit.secret.j 1\r\n3\r\n")
      assert.are.same({}, answers(all))
      all:close()
      return answers(c)
    end },
  { name = "allow_responses: one answer to a request received, nothing else",
    expect = { "-ERR 'Permissions Violation for Publish to \"_INBOX.req1\"'",
               "-ERR 'Permissions Violation for Publish to \"svc.other\"'", "MSG _INBOX.req1 one" },
    run = function(port)
      local svc = login(port, "resp", "resppw")
      svc:sub("svc.>", "1")
      assert.are.same({}, answers(svc))
      local asker = login(port, "all", "allpw")
      asker:sub("_INBOX.req1", "1")
      asker:pub("svc.a", "q", "_INBOX.req1")
      assert.are.same({}, answers(asker))
      local m = assert(svc:msg())
      assert.are.equal("_INBOX.req1", m.reply)
      svc:send("PUB _INBOX.req1 3\r\none\r\nPUB _INBOX.req1 3\r\ntwo\r\nPUB svc.other 0\r\n\r\n")
      local out = answers(svc)
      for _, l in ipairs(answers(asker)) do out[#out + 1] = l end
      asker:close()
      return out
    end },
  { name = "max_subscriptions: at the limit, then one past it",
    expect = { "-ERR 'maximum subscriptions exceeded'", "MSG s.4 x" },
    run = function(port)
      local c = login(port, "all", "allpw")
      c:send("SUB s.1 1\r\nSUB s.2 2\r\nSUB s.3 3\r\nSUB s.4 4\r\n")
      assert.are.same({}, answers(c)) -- four: exactly the limit
      c:send("SUB s.5 5\r\nPUB s.5 1\r\nx\r\nPUB s.4 1\r\nx\r\n")
      return answers(c)
    end },
  { name = "no CONNECT before the timeout", expect = { "-ERR 'Authentication Timeout'", "<closed>" },
    run = function(port)
      local c = h.connect(port)
      local out = {}
      for _ = 1, 2 do
        local l, err = c:line(3)
        out[#out + 1] = l or ("<" .. err .. ">")
      end
      return out
    end },
}

describe("auth, against nats-server with the same configuration", function()
  local tide, nats
  setup(function()
    tide = h.start_scripted(TIDE_CONF)
    nats = start_nats(NATS_CONF)
  end)
  teardown(function()
    stop_all({ tide, nats })
  end)

  for _, case in ipairs(CASES) do
    it(case.name, function()
      local want = case.run(nats.port)
      local got = case.run(tide.port)
      assert.are.same(case.expect, want, "nats-server answered otherwise than this test expects")
      assert.are.same(want, got)
    end)
  end

  it("gives nats.js its usual errors", function()
    local ok, npm_out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(npm_out))
    local function node(port, spec)
      local rc, out = h.sh(("cd '%s' && timeout 20 node auth.mjs %d '%s'"):format(NODE_DIR, port, json.encode(spec)))
      assert(rc == 0, out)
      return out
    end
    local runs = {
      { { opts = { user = "shop", pass = "shoppw" } }, "connected\nclosed\n" },
      { { opts = { user = "shop", pass = "wrong" } }, "error AUTHORIZATION_VIOLATION\n" },
      { { opts = { user = "ghost", pass = "shoppw" } }, "error AUTHORIZATION_VIOLATION\n" },
      { { opts = { user = "shop", pass = "shoppw" }, sub = "shipping.a" },
        "connected\nsub error PERMISSIONS_VIOLATION\nstatus error PERMISSIONS_VIOLATION\nclosed\n" },
      { { opts = { user = "shop", pass = "shoppw" }, pub = "orders.internal.a" },
        "connected\nstatus error PERMISSIONS_VIOLATION\nclosed\n" },
    }
    for _, r in ipairs(runs) do
      assert.are.equal(r[2], node(nats.port, r[1]), "nats-server: " .. json.encode(r[1]))
      assert.are.equal(r[2], node(tide.port, r[1]), "tide: " .. json.encode(r[1]))
    end
  end)

  it("gives libnats its usual errors", function()
    build_auth_c()
    local function c_client(port, args)
      local code, text = h.sh(("timeout 20 '%s/build/auth_c' %d %s"):format(h.root, port, args))
      assert(code == 0, text)
      return text
    end
    local runs = {
      { "user shoppw shop", "connected\n" },
      { "user wrong shop", "error Authentication Violation\n" },
      { "user shoppw ghost", "error Authentication Violation\n" },
      { "user shoppw shop shipping.a",
        'connected\nasync Not Permitted: Permissions Violation for Subscription to "shipping.a"\n' },
    }
    for _, r in ipairs(runs) do
      assert.are.equal(r[2], c_client(nats.port, r[1]), "nats-server: " .. r[1])
      assert.are.equal(r[2], c_client(tide.port, r[1]), "tide: " .. r[1])
    end
  end)
end)

describe("auth with one shared token, against nats-server", function()
  it("lets the token in, refuses another or none, with nats.js's errors", function()
    local ok, npm_out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(npm_out))
    build_auth_c()
    local tide = h.start_scripted([[ auth { token = "s3cret-t0ken" } ]])
    local nats = start_nats([[ authorization { token: "s3cret-t0ken" } ]])
    local ok2, err = pcall(function()
      for _, srv in ipairs({ nats, tide }) do
        local function node(spec)
          local _, out = h.sh(("cd '%s' && timeout 20 node auth.mjs %d '%s'"):format(NODE_DIR, srv.port,
            json.encode(spec)))
          return out
        end
        local c = h.connect(srv.port)
        c:close()
        assert.is_true(json.decode(c.info).auth_required)
        assert.are.equal("connected\nclosed\n", node({ opts = { token = "s3cret-t0ken" } }))
        assert.are.equal("error AUTHORIZATION_VIOLATION\n", node({ opts = { token = "s3cret-t0keN" } }))
        assert.are.equal("error AUTHORIZATION_VIOLATION\n", node({ opts = {} }))
        assert.are.equal("error AUTHORIZATION_VIOLATION\n", node({ opts = { user = "a", pass = "b" } }))
        local function c_client(args)
          local _, text = h.sh(("timeout 20 '%s/build/auth_c' %d %s"):format(h.root, srv.port, args))
          return text
        end
        assert.are.equal("connected\n", c_client("token s3cret-t0ken"))
        assert.are.equal("error Authentication Violation\n", c_client("token wrong"))
        assert.are.equal("error Authentication Violation\n", c_client("none"))
      end
    end)
    stop_all({ tide, nats })
    assert(ok2, err)
  end)
end)

-- A fresh user key pair from `tide nkey gen`: its seed file, public key.
local function nkey_pair(dir, name)
  local rc, out = h.sh(("'%s' nkey gen"):format(h.bin))
  assert(rc == 0, out)
  local seed, pub = out:match("^(SU%w+)\n(U%w+)\n$")
  assert(seed, out)
  local path = dir .. "/" .. name .. ".nk"
  h.write_file(path, seed .. "\n")
  return { seed = seed, pub = pub, file = path }
end

-- The signature of nonce by the seed in file, from `tide nkey sign`.
local function nkey_sign(file, nonce)
  local rc, out = h.sh(("'%s' nkey sign '%s' '%s'"):format(h.bin, file, nonce))
  assert(rc == 0, out)
  return (out:gsub("%s+$", ""))
end

describe("nkey login, against nats-server with the same configuration", function()
  local dir, alice, bob, tide, nats
  setup(function()
    dir = h.make_tmpdir("nkey-auth")
    alice, bob = nkey_pair(dir, "alice"), nkey_pair(dir, "bob")
    -- A .creds file as `nsc` writes it; neither server is in operator
    -- mode, so the JWT in it is sent but not looked at.
    h.write_file(dir .. "/alice.creds", table.concat({
      "-----BEGIN NATS USER JWT-----", "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln",
      "------END NATS USER JWT------", "", "-----BEGIN USER NKEY SEED-----", alice.seed,
      "------END USER NKEY SEED------", "" }, "\n"))
    tide = h.start_scripted(([[
auth { users = {
  { nkey = %q, permissions = { publish = { allow = { "orders.>" } } } },
  { user = "u", password = "p" },
} }
]]):format(alice.pub))
    nats = start_nats(([[
authorization { users = [
  { nkey: %s, permissions: { publish: { allow: ["orders.>"] } } }
  { user: u, password: p }
] }
]]):format(alice.pub))
  end)
  teardown(function()
    stop_all({ tide, nats })
    h.remove_tmpdir(dir)
  end)

  -- What a client that logs in with CONNECT fields made by sign(nonce) sees.
  local function nkey_case(port, fields, after)
    local c = h.connect(port)
    local nonce = json.decode(c.info).nonce
    local msg = { verbose = false }
    for k, v in pairs(fields(nonce)) do msg[k] = v end
    c:send("CONNECT " .. json.encode(msg) .. "\r\n" .. (after or ""))
    return answers(c)
  end

  local cases = {
    { name = "the nonce signed by a configured key; its permissions hold",
      expect = { "-ERR 'Permissions Violation for Publish to \"shipping.a\"'" },
      fields = function(nonce) return { nkey = alice.pub, sig = nkey_sign(alice.file, nonce) } end,
      after = "PUB orders.a 1\r\nx\r\nPUB shipping.a 1\r\nx\r\n" },
    { name = "a nonce of another connection", expect = { "-ERR 'Authorization Violation'", "<closed>" },
      fields = function() return { nkey = alice.pub, sig = nkey_sign(alice.file, "AAAAAAAAAAAAAAA") } end },
    { name = "a key that is not configured, signing right",
      expect = { "-ERR 'Authorization Violation'", "<closed>" },
      fields = function(nonce) return { nkey = bob.pub, sig = nkey_sign(bob.file, nonce) } end },
    { name = "the configured key, signed by another seed",
      expect = { "-ERR 'Authorization Violation'", "<closed>" },
      fields = function(nonce) return { nkey = alice.pub, sig = nkey_sign(bob.file, nonce) } end },
    { name = "the configured key, no signature", expect = { "-ERR 'Authorization Violation'", "<closed>" },
      fields = function() return { nkey = alice.pub } end },
    { name = "a password user beside nkey users", expect = {},
      fields = function() return { user = "u", pass = "p" } end },
  }
  for _, case in ipairs(cases) do
    it(case.name, function()
      local want = nkey_case(nats.port, case.fields, case.after)
      local got = nkey_case(tide.port, case.fields, case.after)
      assert.are.same(case.expect, want, "nats-server answered otherwise than this test expects")
      assert.are.same(want, got)
    end)
  end

  it("sends each connection its own nonce of 15 characters", function()
    for _, srv in ipairs({ nats, tide }) do
      local a, b = h.connect(srv.port), h.connect(srv.port)
      local na, nb = json.decode(a.info).nonce, json.decode(b.info).nonce
      a:close()
      b:close()
      assert.are.equal(15, #na)
      assert.are.equal(15, #nb)
      assert.are_not.equal(na, nb)
    end
    -- Without nkey users there is nothing to sign.
    local plain = h.start_scripted([[ auth { users = { { user = "u", password = "p" } } } ]])
    local d = h.connect(plain.port)
    d:close()
    stop_all({ plain })
    assert.is_nil(json.decode(d.info).nonce)
  end)

  it("lets nats.js in with nkeyAuthenticator and credsAuthenticator, refuses a wrong seed", function()
    local ok, npm_out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(npm_out))
    local runs = {
      { { nkeySeed = alice.seed }, "connected\nclosed\n" },
      { { credsFile = dir .. "/alice.creds" }, "connected\nclosed\n" },
      { { nkeySeed = alice.seed, pub = "shipping.a" }, "connected\nstatus error PERMISSIONS_VIOLATION\nclosed\n" },
      { { nkeySeed = bob.seed }, "error AUTHORIZATION_VIOLATION\n" },
    }
    for _, r in ipairs(runs) do
      for _, srv in ipairs({ nats, tide }) do
        local rc, out = h.sh(("cd '%s' && timeout 20 node auth.mjs %d '%s'"):format(NODE_DIR, srv.port,
          json.encode(r[1])))
        assert(rc == 0, out)
        assert.are.equal(r[2], out, (srv == tide and "tide: " or "nats-server: ") .. json.encode(r[1]))
      end
    end
  end)

  it("shows rules the public key as e.client.user; a reload that removes the key closes its client", function()
    local conf = [[
auth { users = { %s { user = "w", password = "w" } } }
on("who.>", function(e, ctx) ctx.publish("saw.who", { user = e.client.user }) end)
]]
    local srv = h.start_scripted(conf:format(("{ nkey = %q },"):format(alice.pub)))
    local ok, err = pcall(function()
      local watch = login(srv.port, "w", "w")
      watch:sub("saw.who", "1")
      assert.are.same({}, answers(watch))
      local c = h.connect(srv.port)
      local nonce = json.decode(c.info).nonce
      c:send("CONNECT " .. json.encode({ nkey = alice.pub, sig = nkey_sign(alice.file, nonce) }) .. "\r\n")
      c:send("PUB who.a 2\r\n{}\r\n")
      assert.are.same({}, answers(c))
      local m = assert(watch:msg())
      assert.are.equal(alice.pub, json.decode(m.payload).data.user)
      local before = select(2, srv:log():gsub("Reloaded scripts", ""))
      h.write_file(srv.config, conf:format(""))
      assert(h.wait_until(function() return select(2, srv:log():gsub("Reloaded scripts", "")) > before end, 10))
      assert.are.same({ "-ERR 'Authorization Violation'", "<closed>" }, answers(c))
      assert.are.same({}, answers(watch))
    end)
    stop_all({ srv })
    assert(ok, err)
  end)

  it("lets libnats in with natsOptions_SetNKeyFromSeed, refuses a wrong seed", function()
    build_auth_c()
    local runs = {
      { ("nkey %s %s"):format(alice.pub, alice.file), "connected\n" },
      { ("nkey %s %s"):format(alice.pub, bob.file), "error Authentication Violation\n" },
      { ("nkey %s %s"):format(bob.pub, bob.file), "error Authentication Violation\n" },
    }
    for _, r in ipairs(runs) do
      for _, srv in ipairs({ nats, tide }) do
        local _, out = h.sh(("timeout 20 '%s/build/auth_c' %d %s"):format(h.root, srv.port, r[1]))
        assert.are.equal(r[2], out, (srv == tide and "tide: " or "nats-server: ") .. r[1])
      end
    end
  end)
end)

describe("the command-line clients with auth", function()
  local dir, ops_key, srv, tok
  setup(function()
    dir = h.make_tmpdir("cli-auth")
    ops_key = nkey_pair(dir, "ops")
    srv = h.start_scripted(([[
admin { eval = true }
auth { users = {
  { user = "ops", password = %q, admin = true },
  { nkey = %q, admin = true },
  { user = "shop", password = "shop pw", permissions = { publish = { allow = { "orders.>" } } } },
} }
]]):format(hash("ops:pw@1"), ops_key.pub))
    tok = h.start_scripted([[ auth { token = "t0k" } ]])
  end)
  teardown(function()
    stop_all({ srv, tok })
    h.remove_tmpdir(dir)
  end)

  local function tide(args)
    local rc, out = h.sh(("timeout 20 '%s' %s 2>&1"):format(h.bin, args))
    return rc, out
  end

  it("tide stats: as admin by password, URL or nkey; refused clearly otherwise, exit 1", function()
    local addr = "127.0.0.1:" .. srv.port
    for _, how in ipairs({ "-s " .. addr .. " --user ops --password 'ops:pw@1'",
                           "-s nats://ops:ops%3Apw%401@" .. addr,
                           "-s " .. addr .. " --nkey '" .. ops_key.file .. "'" }) do
      local rc, out = tide("stats " .. how)
      assert.are.equal(0, rc, how .. "\n" .. out)
      assert.truthy(out:find("server_id", 1, true), out)
    end
    local rc, out = tide(("stats -s %s --user shop --password 'shop pw'"):format(addr))
    assert.are.equal(1, rc)
    assert.truthy(out:find([[Permissions Violation for Publish to "$TIDE.ADMIN.STATS"]], 1, true), out)
    assert.truthy(out:find("admin = true", 1, true), out)
    for _, how in ipairs({ "", "--user ops --password wrong", "--user ghost --password x" }) do
      rc, out = tide(("stats -s %s %s"):format(addr, how))
      assert.are.equal(1, rc, how)
      assert.truthy(out:find("'Authorization Violation'", 1, true), out)
      assert.truthy(out:find("--user U --password P", 1, true), out)
    end
    -- A token client is in (it gets as far as the admin check: a token
    -- has no admin user), a wrong token is not.
    for _, how in ipairs({ "-s nats://t0k@127.0.0.1:" .. tok.port, "-s 127.0.0.1:" .. tok.port .. " --token t0k" }) do
      rc, out = tide(("pub %s x.y 1"):format(how))
      assert.are.equal(0, rc, out)
      rc, out = tide(("stats %s"):format(how))
      assert.are.equal(1, rc, out)
      assert.truthy(out:find("admin = true", 1, true), out)
    end
    rc, out = tide(("pub -s 127.0.0.1:%d --token nope x.y 1"):format(tok.port))
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("'Authorization Violation'", 1, true), out)
  end)

  it("tide pub, rules and stream: a user's permissions, with the server's words", function()
    local addr = "127.0.0.1:" .. srv.port
    local rc, out = tide(("pub -s %s --user shop --password 'shop pw' orders.a x"):format(addr))
    assert.are.equal(0, rc, out)
    rc, out = tide(("pub -s %s --user shop --password 'shop pw' shipping.a x"):format(addr))
    assert.are.equal(1, rc, out)
    assert.truthy(out:find([[not permitted: 'Permissions Violation for Publish to "shipping.a"']], 1, true), out)
    rc, out = tide(("rules -s %s --nkey '%s'"):format(addr, ops_key.file))
    assert.are.equal(0, rc, out)
    rc, out = tide(("stream ls -s %s --user shop --password 'shop pw'"):format(addr))
    assert.are.equal(1, rc, out)
    assert.truthy(out:find([[Publish to "$TIDE.ADMIN.STREAM.LS"]], 1, true), out)
    rc, out = tide(("stream ls -s %s --nkey '%s'"):format(addr, dir .. "/missing.nk"))
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("missing.nk", 1, true), out)
  end)

  it("tide repl --connect: as admin it runs lines on the node; without credentials it is refused", function()
    h.write_file(dir .. "/in.txt", "20 + 22\n")
    local rc, out = tide(("repl --connect 127.0.0.1:%d --user ops --password 'ops:pw@1' < '%s'"):format(srv.port,
      dir .. "/in.txt"))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("42", 1, true), out)
    rc, out = tide(("repl --nkey '%s' --connect 127.0.0.1:%d < '%s'"):format(ops_key.file, srv.port, dir .. "/in.txt"))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("42", 1, true), out)
    rc, out = tide(("repl --connect 127.0.0.1:%d < '%s'"):format(srv.port, dir .. "/in.txt"))
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("'Authorization Violation'", 1, true), out)
    assert.falsy(out:find("42", 1, true), out)
  end)
end)

describe("the HTTP listener with auth", function()
  local srv, tok, hport, tport, watch
  local SLOW_HASH -- cost 13: a check takes long enough to tell a remembered one
  setup(function()
    SLOW_HASH = hash("slow pw", 13)
    hport, tport = h.free_port(), h.free_port()
    srv = h.start_scripted(([[
auth { users = {
  { user = "ops", password = "opspw", admin = true },
  { user = "shop", password = %q,
    permissions = { publish = { allow = { "orders.>" } }, subscribe = { allow = { "orders.>" }, deny = { "orders.secret.>" } } } },
  { user = "slow", password = %q },
  { user = "all", password = "allpw" },
} }
]]):format(SHOP_HASH, SLOW_HASH), { args = { "--http", "127.0.0.1:" .. hport } })
    tok = h.start_scripted([[ auth { token = "t0k" } ]], { args = { "--http", "127.0.0.1:" .. tport } })
    watch = login(srv.port, "all", "allpw")
    watch:sub(">", "1")
    assert.are.same({}, answers(watch))
  end)
  teardown(function()
    watch:close()
    stop_all({ srv, tok })
  end)

  -- status, body and the WWW-Authenticate header of one request.
  local function req(port, path, args)
    local rc, out = h.sh(("curl -s -i --max-time 20 %s 'http://127.0.0.1:%d%s'"):format(args or "", port, path))
    assert(rc == 0 or rc == 28, out)
    local code = tonumber(out:match("^HTTP/1%.1 (%d+)"))
    return code, out:match("\r\n\r\n(.*)$") or "", out:match("\r\n[Ww][Ww][Ww]%-[Aa]uthenticate: ([^\r]*)")
  end
  local function publish(user_pass, subject)
    return req(hport, "/v1/publish/" .. subject,
      ("-u '%s' -X POST -H 'Content-Type: application/json' -d '{\"n\":1}'"):format(user_pass))
  end

  it("wants a user for everything but GET /healthz: 401 with a Basic challenge", function()
    assert.are.equal(200, (req(hport, "/healthz")))
    for _, path in ipairs({ "/metrics", "/readyz", "/v1/stats", "/v1/rules", "/v1/tail?subject=orders.a" }) do
      local code, body, challenge = req(hport, path)
      assert.are.equal(401, code, path)
      assert.are.equal('Basic realm="tide"', challenge, path)
      assert.truthy(body:find("Authorization Violation", 1, true), body)
    end
    for _, how in ipairs({ "-u ops:wrong", "-u ghost:opspw", "-H 'Authorization: Bearer opspw'",
                           "-H 'Authorization: Basic !!!!'" }) do
      assert.are.equal(401, (req(hport, "/metrics", how)), how)
    end
    assert.are.equal(401, (publish("shop:wrong", "orders.a")))
    assert.are.equal(200, (req(hport, "/metrics", "-u ops:opspw")))
    assert.are.equal(200, (req(hport, "/metrics", "-u 'shop:shoppw'")))
    assert.are.equal(200, (req(hport, "/readyz", "-u all:allpw")))
  end)

  it("keeps the views of admin requests for admin users", function()
    for _, path in ipairs({ "/v1/stats", "/v1/rules", "/v1/streams", "/v1/consumers" }) do
      assert.are.equal(200, (req(hport, path, "-u ops:opspw")), path)
      local code, body = req(hport, path, "-u all:allpw")
      assert.are.equal(403, code, path)
      assert.truthy(body:find("admin = true", 1, true), body)
    end
  end)

  it("holds posts to the user's publish permissions, as NATS publishes", function()
    local code, body = publish("shop:shoppw", "orders.a")
    assert.are.equal(202, code, body)
    code, body = publish("shop:shoppw", "shipping.a")
    assert.are.equal(403, code, body)
    assert.truthy(body:find([[Permissions Violation for Publish to \"shipping.a\"]], 1, true), body)
    code = publish("ops:opspw", "shipping.b")
    assert.are.equal(202, code)
    local got = {}
    for _, l in ipairs(answers(watch)) do got[#got + 1] = l:match("^MSG (%S+)") end
    assert.are.same({ "orders.a", "shipping.b" }, got)
  end)

  it("holds tails to the user's subscribe permissions", function()
    local code, body = req(hport, "/v1/tail?subject=shipping.>", "-u shop:shoppw")
    assert.are.equal(403, code)
    assert.truthy(body:find([[Permissions Violation for Subscription to \"shipping.>\"]], 1, true), body)
    -- A wildcard tail does not show what the user's deny covers.
    local tdir = h.make_tmpdir("tail")
    local out = tdir .. "/out"
    local pid = h.proc.spawn({ "/bin/sh", "-c", ("exec curl -s -N --max-time 3 -u shop:shoppw " ..
      "'http://127.0.0.1:%d/v1/tail?subject=orders.>'"):format(hport) }, out)
    assert(h.wait_until(function() local f = io.open(out) local t = f and f:read("a") or "" if f then f:close() end
      return t:find("tail of", 1, true) end, 5))
    watch:send("PUB orders.secret.x 1\r\n1\r\nPUB orders.open.x 1\r\n2\r\n")
    assert.are.same({ "MSG orders.secret.x 1", "MSG orders.open.x 2" }, answers(watch))
    h.proc.wait(pid, 10)
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    assert.truthy(text:find("orders.open.x", 1, true), text)
    assert.falsy(text:find("orders.secret.x", 1, true), text)
    h.remove_tmpdir(tdir)
  end)

  it("takes the token as Bearer, and challenges with Bearer", function()
    assert.are.equal(200, (req(tport, "/metrics", "-H 'Authorization: Bearer t0k'")))
    local code, _, challenge = req(tport, "/metrics", "-H 'Authorization: Bearer t0K'")
    assert.are.equal(401, code)
    assert.are.equal('Bearer realm="tide"', challenge)
    assert.are.equal(401, (req(tport, "/metrics", "-u t0k:t0k")))
  end)

  it("checks a bcrypt password off the loop, and remembers one that passed", function()
    -- Wrong passwords at cost 13 (each check about half a second of CPU
    -- or more): the loop answers NATS PINGs meanwhile.
    local pids = {}
    local dir = h.make_tmpdir("http-storm")
    for i = 1, 4 do
      pids[i] = h.proc.spawn({ "/bin/sh", "-c", ("exec curl -s -o /dev/null -w '%%{http_code}' --max-time 60 " ..
        "-u 'slow:nope%d' 'http://127.0.0.1:%d/metrics'"):format(i, hport) }, dir .. "/c" .. i)
    end
    h.proc.sleep(0.1)
    local times = {}
    for _ = 1, 20 do
      local p0 = h.proc.now()
      watch:ping(5)
      times[#times + 1] = (h.proc.now() - p0) * 1000
      h.proc.sleep(0.05)
    end
    for i = 1, 4 do h.proc.wait(pids[i], 60) end
    for i = 1, 4 do
      local f = assert(io.open(dir .. "/c" .. i))
      assert.are.equal("401", f:read("a"))
      f:close()
    end
    table.sort(times)
    -- On the loop, each PING would wait behind a check of 500 ms or more.
    assert.is_true(times[#times // 2 + 1] < 50, ("median PING %.1f ms"):format(times[#times // 2 + 1]))
    -- The first right password is checked (slow); the next requests are not.
    local t0 = h.proc.now()
    assert.are.equal(200, (req(hport, "/metrics", "-u 'slow:slow pw'")))
    local first = h.proc.now() - t0
    t0 = h.proc.now()
    for _ = 1, 5 do assert.are.equal(200, (req(hport, "/metrics", "-u 'slow:slow pw'"))) end
    local next5 = h.proc.now() - t0
    print(("\n  HTTP Basic at bcrypt cost 13: first request %.0f ms, the next five %.0f ms in all"):format(
      first * 1000, next5 * 1000))
    assert.is_true(next5 < first, ("five remembered checks took %.3f s, the first %.3f s"):format(next5, first))
    -- A remembered check does not outlive a changed password.
    local before = select(2, srv:log():gsub("Reloaded scripts", ""))
    local conf = io.open(srv.config):read("a")
    h.write_file(srv.config, (conf:gsub(SLOW_HASH:gsub("%p", "%%%0"), (hash("new pw"):gsub("%%", "%%%%")))))
    assert(h.wait_until(function() return select(2, srv:log():gsub("Reloaded scripts", "")) > before end, 10))
    assert.are.equal(401, (req(hport, "/metrics", "-u 'slow:slow pw'")))
    assert.are.equal(200, (req(hport, "/metrics", "-u 'slow:new pw'")))
    h.remove_tmpdir(dir)
  end)
end)

describe("auth { } in the entry file", function()
  local function check(text)
    local dir = h.make_tmpdir("tide-authcheck")
    h.write_file(dir .. "/tide.lua", text)
    local rc, out = h.sh(("'%s' check '%s/tide.lua'"):format(h.bin, dir))
    h.remove_tmpdir(dir)
    return rc, out
  end

  it("is refused at load when wrong, with what is wrong", function()
    local cases = {
      { [[auth { token = "a", users = { { user = "u", password = "p" } } }]],
        "auth: token and users are exclusive" },
      { [[auth { tokn = "x" }]], "auth: unknown setting 'tokn'" },
      { [[auth { users = { { user = "u", password = "p", colour = 1 } } }]],
        "auth: users[1]: unknown setting 'colour'" },
      { [[auth { users = { { user = "u", password = "p", permissions = { publish = { allw = { "a" } } } } } }]],
        "auth: users[1].permissions.publish: unknown setting 'allw'" },
      { [[auth { users = { { user = "u", password = "p", permissions = { subscribe = { deny = { "a..b" } } } } } }]],
        "auth: users[1].permissions.subscribe.deny: invalid subject pattern 'a..b'" },
      { [[auth { users = { { user = "u", password = "$2b$11$tooshort" } } }]],
        "auth: the password of user 'u' starts like a bcrypt hash but is not one" },
      { [[auth { users = { { user = "u", password = "p" } }, no_auth_user = "x" }]],
        "auth: no_auth_user 'x' is not one of the users" },
      { [[auth { users = { { user = "u", password = "p" }, { user = "u", password = "q" } } }]],
        "auth: user 'u' is declared twice" },
      { [[auth { users = { { user = "u" } } }]],
        "auth: user 'u' needs a password (only under tls { verify = true, map_user = true }" },
      { [[auth { users = { { user = "ok", password = "p" }, { user = "u", admin = true } } }]],
        "auth: user 'u' needs a password" },
      { [[auth { timeout = "1s" }]], "auth: give a token or users" },
      { [[auth { users = { { nkey = "UABC" } } }]], "auth: users[1]: 'UABC' is not a public user nkey" },
      { [[auth { users = { { user = "u", nkey = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4" } } }]],
        "auth: users[1] has both user and nkey" },
      { [[limits { max_subscriptions = -1 }]], "limits: max_subscriptions must be 0" },
    }
    for _, c in ipairs(cases) do
      local rc, out = check(c[1])
      assert.are_not.equal(0, rc, c[1])
      assert.is_truthy(out:find(c[2], 1, true), ("for %s:\n%s"):format(c[1], out))
    end
    -- A plain-text password loads, with a warning.
    local rc, out = check([[auth { users = { { user = "u", password = "p" } } }]])
    assert.are.equal(0, rc, out)
    assert.matches("the password of user 'u' is plain text", out)
    rc, out = check(([[auth { users = { { user = "u", password = %q } } }]]):format(SHOP_HASH))
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("plain text", 1, true))
  end)
end)

describe("auth, what tide adds", function()
  it("keeps $TIDE.ADMIN.> for admin users", function()
    local srv = h.start_scripted(TIDE_CONF)
    local ok, err = pcall(function()
      local c = login(srv.port, "all", "allpw")
      c:sub("_INBOX.me", "1")
      c:pub("$TIDE.ADMIN.STATS", "", "_INBOX.me")
      assert.are.same({ "-ERR 'Permissions Violation for Publish to \"$TIDE.ADMIN.STATS\"'" }, answers(c))
      local ops = login(srv.port, "ops", "opspw")
      ops:sub("_INBOX.ops", "1")
      ops:pub("$TIDE.ADMIN.STATS", "", "_INBOX.ops")
      local m = assert(ops:msg())
      assert.is_number(json.decode(m.payload).connections)
    end)
    stop_all({ srv })
    assert(ok, err)
  end)

  it("decides alike for subjects it has cached and subjects past its bounded cache", function()
    local srv = h.start_scripted(TIDE_CONF)
    local ok, err = pcall(function()
      local watch = login(srv.port, "all", "allpw")
      watch:sub("orders.>", "1")
      assert.are.same({}, answers(watch))
      local shop = login(srv.port, "shop", "shoppw")
      local long = ("x"):rep(300) -- longer than a cached subject may be
      local parts = {}
      for round = 1, 2 do -- the second round after the cache was filled and started again
        for i = 1, 300 do
          parts[#parts + 1] = ("PUB orders.n%d 1\r\n%d\r\nPUB orders.internal.n%d 0\r\n\r\n"):format(i, round, i)
        end
        parts[#parts + 1] = ("PUB orders.%s 0\r\n\r\nPUB orders.internal.%s 0\r\n\r\n"):format(long, long)
      end
      shop:send(table.concat(parts))
      local refused = 0
      for _, l in ipairs(answers(shop, 10)) do
        assert.matches("^%-ERR 'Permissions Violation for Publish to \"orders%.internal%.", l)
        refused = refused + 1
      end
      assert.are.equal(602, refused)
      local got = watch:collect(602, 10)
      assert.are.equal(602, #got)
      for _, m in ipairs(got) do assert.is_nil(m.subject:find("internal", 1, true)) end
      assert.are.same({}, answers(watch))
    end)
    stop_all({ srv })
    assert(ok, err)
  end)

  it("forgets the publish decisions it remembered when a reload changes the permissions", function()
    local conf = [[ auth { users = { { user = "p", password = "p", permissions = { publish = { %s } } } } } ]]
    local srv = h.start_scripted(conf:format('"orders.>"'))
    local ok, err = pcall(function()
      local c = login(srv.port, "p", "p")
      c:send("PUB orders.a 1\r\nx\r\nPUB orders.a 1\r\nx\r\nPUB orders.b 1\r\nx\r\nPUB orders.a 1\r\nx\r\n")
      assert.are.same({}, answers(c))
      local before = select(2, srv:log():gsub("Reloaded scripts", ""))
      h.write_file(srv.config, conf:format('"shipping.>"'))
      assert(h.wait_until(function() return select(2, srv:log():gsub("Reloaded scripts", "")) > before end, 10))
      c:send("PUB orders.a 1\r\nx\r\nPUB orders.b 1\r\nx\r\nPUB shipping.a 1\r\nx\r\n")
      assert.are.same({ [[-ERR 'Permissions Violation for Publish to "orders.a"']],
                        [[-ERR 'Permissions Violation for Publish to "orders.b"']] }, answers(c))
    end)
    stop_all({ srv })
    assert(ok, err)
  end)

  it("does not route, store or show to a rule an event it refuses", function()
    local srv = h.start_scripted(TIDE_CONF .. [[
      stream "ORD" { subjects = { "orders.>" } }
      on("orders.>", function(e, ctx) ctx.publish("seen." .. e.subject, "x") end)
    ]])
    local ok, err = pcall(function()
      local watch = login(srv.port, "all", "allpw")
      watch:send("SUB orders.> 1\r\nSUB seen.> 2\r\n")
      assert.are.same({}, answers(watch))
      local shop = login(srv.port, "shop", "shoppw")
      shop:send("PUB orders.internal.x 1\r\nA\r\nPUB orders.ok 1\r\nB\r\n")
      assert.are.same({ "-ERR 'Permissions Violation for Publish to \"orders.internal.x\"'" }, answers(shop))
      local got = watch:collect(2, 3)
      local subjects = {}
      for _, m in ipairs(got) do subjects[#subjects + 1] = m.subject end
      table.sort(subjects)
      assert.are.same({ "orders.ok", "seen.orders.ok" }, subjects)
      assert.are.same({}, answers(watch))
      local ops = login(srv.port, "ops", "opspw")
      ops:sub("_INBOX.ops", "1")
      ops:pub("$TIDE.ADMIN.STREAM.INFO", "ORD", "_INBOX.ops")
      local info = json.decode(assert(ops:msg()).payload)
      assert.are.equal(1, info.messages)
    end)
    stop_all({ srv })
    assert(ok, err)
  end)
end)

describe("auth under load", function()
  -- bcrypt at cost 11 costs about 100 ms of CPU per check; the checks run
  -- on threads of their own, so a client already connected is answered as
  -- promptly as ever while 200 others log in.  The bound is 5 ms on an idle
  -- machine; the suite runs specs side by side on 2 cores, so the test
  -- allows the same loaded-machine slack as tests/hostile_spec.lua
  -- (SLACK_MS there: 250 ms) for the 99th percentile, and checks the
  -- median against 5 ms.  A server that checked passwords on its loop
  -- fails both: each PING would wait behind ~100 ms checks.
  local SLACK_MS = 250
  local TARGET_MS = 5

  it("answers a connected client's PING promptly while 200 clients log in with bcrypt passwords", function()
    local storm_hash = hash("stormpw", 11)
    local srv = h.start_scripted(([[
      auth { users = { { user = "storm", password = %q }, { user = "all", password = "allpw" } } }
    ]]):format(storm_hash))
    local ok, err = pcall(function()
      local normal = login(srv.port, "all", "allpw")
      local clients = {}
      local t0 = h.proc.now()
      for i = 1, 200 do
        -- Not waiting for INFO: a server that checked passwords on its
        -- loop would hold the rest of the storm (and the PINGs) back.
        clients[i] = h.connect(srv.port, { timeout = 60, no_info = true })
        clients[i]:send("CONNECT " .. creds("storm", "stormpw") .. "\r\nPING\r\n")
      end
      -- While the logins are checked: PING the connected client.
      local times = {}
      local pending = 200
      local done = {}
      while pending > 0 and h.proc.now() - t0 < 120 do
        local p0 = h.proc.now()
        normal:ping(5)
        times[#times + 1] = (h.proc.now() - p0) * 1000
        -- Collect the PONGs of the logins done so far (without waiting).
        for i = 1, 200 do
          if not done[i] then
            local l = clients[i]:line(0)
            if l and not l:match("^INFO ") then
              assert.are.equal("PONG", l)
              done[i] = true
              pending = pending - 1
            end
          end
        end
        h.proc.sleep(0.05)
      end
      local took = h.proc.now() - t0
      assert.are.equal(0, pending, "logins left unanswered")
      table.sort(times)
      local median, p99, worst = times[#times // 2 + 1], times[math.ceil(#times * 0.99)], times[#times]
      print(("\n  200 bcrypt logins (cost 11) in %.1f s; PING while they ran: %d samples, " ..
        "median %.2f ms, 99th percentile %.2f ms, worst %.2f ms"):format(took, #times, median, p99, worst))
      assert.is_true(#times >= 20, "too few samples")
      assert.is_true(median < TARGET_MS, ("median PING %.2f ms"):format(median))
      -- The 99th percentile, not the single worst sample: on a machine
      -- shared with other work one PING in hundreds can wait for the
      -- scheduler (this test's own process included) whatever tide does.
      assert.is_true(p99 < SLACK_MS, ("99th percentile PING %.2f ms"):format(p99))
      for i = 1, 200 do clients[i]:close() end
    end)
    stop_all({ srv })
    assert(ok, err)
  end)
end)

describe("auth and memory", function()
  -- The server's resident memory in KiB.
  local function rss_kb(srv)
    return tonumber((h.read_file("/proc/" .. srv.pid .. "/status") or ""):match("VmRSS:%s*(%d+)"))
  end

  it("stays flat through 1,000 failed logins in a row", function()
    local srv = h.start_scripted(([[ auth { users = { { user = "u", password = %q }, { user = "p", password = "pw" } } } ]])
      :format(hash("right", 4)))
    local ok, err = pcall(function()
      local function fail_logins(n)
        for i = 1, n do
          local c = h.connect(srv.port)
          -- Half bcrypt (a checker thread's job), half plain text.
          c:send("CONNECT " .. creds(i % 2 == 0 and "u" or "p", "wrong" .. i) .. "\r\n")
          assert.are.equal("-ERR 'Authorization Violation'", c:line(5))
          assert.is_true(c:closed(5))
          c:close()
        end
      end
      fail_logins(200) -- warm up: the allocator's pools and the checker threads
      local before = rss_kb(srv)
      fail_logins(1000)
      local grown = rss_kb(srv) - before
      print(("\n  1,000 failed logins: RSS %d KiB -> %d KiB"):format(before, before + grown))
      if os.getenv("TIDE_PASS") ~= "asan" then -- under ASan freed memory sits in quarantine
        assert.is_true(grown < 512, ("RSS grew %d KiB"):format(grown))
      end
      login(srv.port, "p", "pw"):close()
    end)
    stop_all({ srv })
    assert(ok, err)
  end)
end)

describe("auth on reload, against nats-server", function()
  -- The entry file and nats.conf before and after: shop may no longer
  -- subscribe to orders.*, and the user resp is gone.
  local function confs(shop_subs, with_resp)
    local lua_subs, conf_subs = {}, {}
    for _, s in ipairs(shop_subs) do
      lua_subs[#lua_subs + 1] = ("%q"):format(s)
      conf_subs[#conf_subs + 1] = ('"%s"'):format(s)
    end
    local tide_text = ([[
auth { users = {
  { user = "shop", password = %q, permissions = { subscribe = { allow = { %s } } } },
  { user = "all", password = "allpw" },
  %s
} }
]]):format(SHOP_HASH, table.concat(lua_subs, ", "),
      with_resp and ('{ user = "resp", password = "resppw" },') or "")
    local nats_text = ([[
authorization { users = [
  {user: shop, password: "%s", permissions: {subscribe: {allow: [%s]}}}
  {user: all, password: "allpw"}
  %s
] }
]]):format(SHOP_HASH, table.concat(conf_subs, ", "), with_resp and '{user: resp, password: "resppw"}' or "")
    return tide_text, nats_text
  end

  it("removes the subscriptions a permission no longer allows, and closes removed users", function()
    local t1, n1 = confs({ "orders.*", "_INBOX.>" }, true)
    local t2, n2 = confs({ "_INBOX.>" }, false)
    local tide = h.start_scripted(t1)
    local nats = start_nats(n1)
    local reloads = {
      [tide] = function()
        local before = select(2, tide:log():gsub("Reloaded scripts", ""))
        h.write_file(tide.config, t2)
        assert(h.wait_until(function() return select(2, tide:log():gsub("Reloaded scripts", "")) > before end, 10),
          "tide did not reload:\n" .. tide:log())
      end,
      [nats] = function()
        h.write_file(nats.dir .. "/nats.conf", n2)
        h.proc.kill(nats.pid, "HUP")
        assert(h.wait_until(function() return nats:log():find("Reloaded server configuration", 1, true) end, 10),
          "nats-server did not reload:\n" .. nats:log())
      end,
    }
    local results = {}
    local ok, err = pcall(function()
      for _, srv in ipairs({ nats, tide }) do
        local shop = login(srv.port, "shop", "shoppw")
        shop:send("SUB orders.* 1\r\nSUB _INBOX.shop 2\r\n")
        assert.are.same({}, answers(shop))
        local resp = login(srv.port, "resp", "resppw")
        local all = login(srv.port, "all", "allpw")
        all:send("PUB orders.a 1\r\n1\r\n")
        assert.are.same({}, answers(all))
        assert.are.same({ "MSG orders.a 1" }, answers(shop))
        reloads[srv]()
        -- The subscriber keeps reading: told once, then nothing more on orders.*.
        local out = {}
        local told = shop:frame(5)
        out[#out + 1] = told and told.text or "<nothing>"
        all:send("PUB orders.b 1\r\n2\r\nPUB _INBOX.shop 1\r\n3\r\n")
        assert.are.same({}, answers(all))
        for _, l in ipairs(answers(shop)) do out[#out + 1] = l end
        -- The removed user was closed.
        for _, l in ipairs(answers(resp)) do out[#out + 1] = l end
        results[#results + 1] = out
        shop:close()
        all:close()
      end
    end)
    stop_all({ tide, nats })
    assert(ok, err)
    local expect = { "-ERR 'Permissions Violation for Subscription to \"orders.*\" (sid \"1\")'",
                     "MSG _INBOX.shop 3", "-ERR 'Authorization Violation'", "<closed>" }
    assert.are.same(expect, results[2])
    -- nats-server 2.9 queues that -ERR for the removed user but closes the
    -- connection before it is written (reload.go: authViolation); tide
    -- writes it first, as at login.  The rest must be the same.
    local function but_violation(list)
      local out = {}
      for _, l in ipairs(list) do
        if l ~= "-ERR 'Authorization Violation'" then out[#out + 1] = l end
      end
      return out
    end
    assert.are.same(but_violation(expect), but_violation(results[1]))
  end)

  it("lets a client in whose password check was under way when a reload turned auth off", function()
    -- Cost 14: about 1.5 s of checking, time enough to reload meanwhile.
    local tide = h.start_scripted(([[ auth { users = { { user = "slow", password = %q } } } ]])
      :format(hash("slowpw", 14)))
    local ok, err = pcall(function()
      local c = h.connect(tide.port)
      local t0 = h.proc.now()
      c:send("CONNECT " .. creds("slow", "slowpw") .. "\r\n")
      h.write_file(tide.config, "-- no auth\n")
      h.proc.kill(tide.pid, "HUP")
      assert(h.wait_until(function() return tide:log():find("auth: off", 1, true) end, 5), tide:log())
      assert.is_true(h.proc.now() - t0 < 1, "the reload came after the check; the test proves nothing")
      assert.are.same({}, answers(c, 10))
    end)
    stop_all({ tide })
    assert(ok, err)
  end)

  it("keeps serving a client that logs in again while a reload replaces its permissions", function()
    -- The client is "a" (its deliveries checked against a deny) and sends a
    -- second CONNECT as "slow" (cost 14: about 1.5 s held); a reload frees
    -- the configuration its permissions were in, and messages reach it
    -- meanwhile.  (Under ASan a permission read from the old one fails.)
    local slow = hash("slowpw", 14)
    local function conf(tag)
      return ([[
        -- %s
        auth { users = {
          { user = "a", password = "apw", permissions = { subscribe = { allow = { ">" }, deny = { "x.secret.>" } } } },
          { user = "slow", password = %q },
          { user = "all", password = "allpw" },
        } }
      ]]):format(tag, slow)
    end
    local tide = h.start_scripted(conf("v1"))
    local ok, err = pcall(function()
      local c = login(tide.port, "a", "apw")
      c:sub("x.>", "1")
      assert.are.same({}, answers(c))
      local all = login(tide.port, "all", "allpw")
      local t0 = h.proc.now()
      c:send("CONNECT " .. creds("slow", "slowpw") .. "\r\n")
      h.write_file(tide.config, conf("v2"))
      h.proc.kill(tide.pid, "HUP")
      assert(h.wait_until(function() return select(2, tide:log():gsub("auth: users", "")) >= 2 end, 5), tide:log())
      all:send("PUB x.secret.k 1\r\n1\r\nPUB x.open.k 1\r\n2\r\n")
      assert.are.same({}, answers(all))
      assert.is_true(h.proc.now() - t0 < 1, "the check was over before the messages; the test proves nothing")
      -- Held: what it receives comes as the check ends; still a's deny applies.
      local m = assert(c:msg(30))
      assert.are.equal("x.open.k", m.subject)
      assert.are.same({}, answers(c, 30)) -- it passed as slow, whose permissions allow all
      all:send("PUB x.secret.k 1\r\n3\r\n")
      assert.are.same({}, answers(all))
      assert.are.same({ "MSG x.secret.k 3" }, answers(c))
    end)
    stop_all({ tide })
    assert(ok, err)
  end)

  it("keeps the running auth when a reload fails", function()
    local t1 = confs({ ">" }, true)
    local tide = h.start_scripted(t1)
    local ok, err = pcall(function()
      local shop = login(tide.port, "shop", "shoppw")
      h.write_file(tide.config, [[ auth { token = "x", users = { { user = "u", password = "p" } } } ]])
      assert(h.wait_until(function() return tide:log():find("Reload %(.-%) failed") end, 10), tide:log())
      assert.matches("token and users are exclusive", tide:log())
      assert.are.same({}, answers(shop))
      login(tide.port, "resp", "resppw"):close()
    end)
    stop_all({ tide })
    assert(ok, err)
  end)
end)

describe("tide passwd", function()
  it("prints a bcrypt hash of the line read from stdin", function()
    local rc, out = h.sh(("printf 'pw one\\n' | '%s' passwd"):format(h.bin))
    assert.are.equal(0, rc, out)
    assert.matches("^%$2b%$11%$[./A-Za-z0-9]+\n$", out)
    assert.are.equal(60, #out - 1)
    rc, out = h.sh(("printf 'pw\\n' | '%s' passwd --cost 4"):format(h.bin))
    assert.are.equal(0, rc, out)
    assert.matches("^%$2b%$04%$", out)
    rc, out = h.sh(("'%s' passwd </dev/null"):format(h.bin))
    assert.are.equal(1, rc)
    assert.matches("no password given", out)
  end)
end)

describe("e.client in rules", function()
  it("is who published the event, read-only, not forgeable by headers or envelope; handlers' events are $tide", function()
    local srv = h.start_scripted(TIDE_CONF .. [[
      local function seen(e, ctx)
        local c = e.client
        local assign_field = pcall(function() c.user = "x" end)
        local assign_client = pcall(function() e.client = {} end)
        ctx.publish("saw." .. e.subject, { user = c.user or "(none)", id = c.id, addr = c.addr or "(none)",
          tls = c.tls, assign_field = assign_field, assign_client = assign_client, user_after = e.client.user })
        ctx.publish("again.x", "1")
      end
      on("who.>", seen)
      on("public.who", seen)
      on("again.>", function(e, ctx) ctx.publish("saw.again", { user = e.client.user, id = e.client.id }) end)
    ]])
    local ok, err = pcall(function()
      local watch = login(srv.port, "all", "allpw")
      watch:sub("saw.>", "1")
      assert.are.same({}, answers(watch))
      local pub = login(srv.port, "all", "allpw")
      local _, lport = pub.sock:getsockname()
      local cid = json.decode(pub.info).client_id
      pub:hpub("who.a", { { "client", "forged" }, { "ce-client", "forged" } },
        json.encode({ specversion = "1.0", type = "t", id = "1", source = "s", client = { user = "forged" } }))
      assert.are.same({}, answers(pub))
      local got = {}
      for _, m in ipairs(watch:collect(3, 5)) do got[m.subject] = json.decode(m.payload).data end
      assert.are.same({ user = "all", id = cid, addr = "127.0.0.1:" .. lport, tls = false,
        assign_field = false, assign_client = false, user_after = "all" }, got["saw.who.a"])
      -- Events a handler publishes are tide's.
      assert.are.same({ user = "$tide", id = 0 }, got["saw.again"])
      -- Without credentials: the no_auth_user.
      local guest = h.connect(srv.port)
      guest:send("CONNECT {}\r\nPUB public.who 2\r\n{}\r\n")
      assert.are.same({}, answers(guest))
      local m = assert(watch:msg())
      while m.subject ~= "saw.public.who" do m = assert(watch:msg()) end
      assert.are.equal("guest", json.decode(m.payload).data.user)
      guest:close()
    end)
    stop_all({ srv })
    assert(ok, err)
  end)
end)

describe("e.client of events posted over HTTP", function()
  -- The handler records who the rules saw post each event.
  local RULES = [[
    on("who.>", function(e, ctx)
      local c = e.client
      ctx.publish("saw." .. e.subject, { user = c.user or "(none)", id = c.id, addr = c.addr or "(none)", tls = c.tls })
    end)
  ]]
  local function post(port, subject, how)
    local rc, out = h.sh(("curl -s -o /dev/null -w '%%{http_code} %%{local_port}' --max-time 10 %s -X POST " ..
      "-H 'Content-Type: application/json' -d '{\"n\":1}' 'http://127.0.0.1:%d/v1/publish/%s'"):format(how, port, subject))
    assert.are.equal(0, rc, out)
    local code, lport = out:match("^(%d+) (%d+)$")
    return tonumber(code), lport
  end
  local function seen(watch, n)
    local got = {}
    for _, m in ipairs(watch:collect(n, 5)) do got[m.subject] = json.decode(m.payload).data end
    return got
  end

  it("is the Basic user, or no user for the token, with the HTTP peer's address", function()
    local hport, tport = h.free_port(), h.free_port()
    local srv = h.start_scripted('auth { users = { { user = "ops", password = "opspw" } } }\n' .. RULES,
      { args = { "--http", "127.0.0.1:" .. hport } })
    local tok = h.start_scripted('auth { token = "t0k" }\n' .. RULES, { args = { "--http", "127.0.0.1:" .. tport } })
    local ok, err = pcall(function()
      local watch = login(srv.port, "ops", "opspw")
      watch:sub("saw.>", "1")
      assert.are.same({}, answers(watch))
      local code, lport = post(hport, "who.basic", "-u ops:opspw")
      assert.are.equal(202, code)
      assert.are.same({ user = "ops", id = 0, addr = "127.0.0.1:" .. lport, tls = false }, seen(watch, 1)["saw.who.basic"])
      watch:close()
      watch = h.connect(tok.port)
      watch:send('CONNECT {"auth_token":"t0k"}\r\nSUB saw.> 1\r\n')
      assert.are.same({}, answers(watch))
      code, lport = post(tport, "who.token", "-H 'Authorization: Bearer t0k'")
      assert.are.equal(202, code)
      assert.are.same({ user = "(none)", id = 0, addr = "127.0.0.1:" .. lport, tls = false },
        seen(watch, 1)["saw.who.token"])
      watch:close()
    end)
    stop_all({ srv, tok })
    assert(ok, err)
  end)

  it("is the server's own (id 0, no user, no address) without auth", function()
    local hport = h.free_port()
    local srv = h.start_scripted(RULES, { args = { "--http", "127.0.0.1:" .. hport } })
    local ok, err = pcall(function()
      local watch = h.connect(srv.port)
      watch:send("CONNECT {}\r\nSUB saw.> 1\r\n")
      assert.are.same({}, answers(watch))
      assert.are.equal(202, (post(hport, "who.open", "")))
      assert.are.same({ user = "(none)", id = 0, addr = "(none)", tls = false }, seen(watch, 1)["saw.who.open"])
      watch:close()
    end)
    stop_all({ srv })
    assert(ok, err)
  end)
end)

describe("e.client of test events", function()
  local FLOW = [[
filter("orders.>", function(e) return e.client.user == "shop" or (e.data.total or 0) <= 10000 end)
on("orders.>", function(e, ctx)
  local c = e.client
  ctx.publish("seen." .. e.subject, { user = c.user or "(none)", id = c.id, addr = c.addr or "(none)", tls = c.tls })
end)
]]
  local dir
  before_each(function() dir = h.make_tmpdir("test-identity") end)
  after_each(function() h.remove_tmpdir(dir) end)

  it("is what a 'client' field of a tide run input line says, and nobody without it", function()
    h.write_file(dir .. "/flow.lua", FLOW)
    h.write_file(dir .. "/in.jsonl", table.concat({
      '{"subject":"orders.a","data":{"total":20000},"client":{"user":"shop","id":7,"addr":"10.0.0.1:5000","tls":true}}',
      '{"subject":"orders.b","data":{"total":20000},"client":{"user":"other"}}',
      '{"subject":"orders.c","data":{"total":5}}',
      "" }, "\n"))
    local rc, out = h.sh(("'%s' run '%s/flow.lua' --events '%s/in.jsonl' 2>&1"):format(h.bin, dir, dir))
    assert.are.equal(0, rc, out)
    local seen = {}
    for line in out:gmatch("[^\n]+") do
      local v = json.decode(line)
      if v.subject:match("^seen%.") then seen[v.subject] = v.event.data end
    end
    assert.are.same({
      ["seen.orders.a"] = { user = "shop", id = 7, addr = "10.0.0.1:5000", tls = true },
      ["seen.orders.c"] = { user = "(none)", id = 0, addr = "(none)", tls = false },
    }, seen)
    h.write_file(dir .. "/bad.jsonl", '{"subject":"orders.a","data":{},"client":{"name":"x"}}\n')
    rc, out = h.sh(("'%s' run '%s/flow.lua' --events '%s/bad.jsonl' 2>&1"):format(h.bin, dir, dir))
    assert.are.equal(2, rc, out)
    assert.truthy(out:find("bad.jsonl:1", 1, true), out)
    assert.truthy(out:find("not 'name'", 1, true), out)
  end)

  it("is what pub()'s fourth argument says at the prompt", function()
    h.write_file(dir .. "/flow.lua", FLOW)
    h.write_file(dir .. "/in.txt", table.concat({
      'sub("seen.>")',
      'pub("orders.a", { total = 20000 }, nil, { user = "shop", id = 3 })',
      'pub("orders.b", { total = 20000 }, { ["x-h"] = "1" }, { user = "other" })',
      'pub("orders.c", { total = 1 })',
      'pub("orders.d", {}, nil, { nope = 1 })',
      -- a header refused after the identity was read: nothing of it is kept
      -- (under ASan the prompt's exit status says whether memory leaked)
      'pub("orders.e", {}, { ["bad:name"] = "1" }, { user = "x" })',
      "" }, "\n"))
    local rc, out = h.sh(("cd '%s' && TIDE_HISTORY='%s/history' '%s' repl -c flow.lua < in.txt 2>&1"):format(dir, dir,
      h.bin))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find('"user":"shop"', 1, true), out)
    assert.truthy(out:find('"id":3', 1, true), out)
    assert.truthy(out:find('"user":"(none)"', 1, true), out)
    assert.falsy(out:find('"user":"other"', 1, true), out)
    assert.truthy(out:find("not 'nope'", 1, true), out)
    assert.truthy(out:find("header names hold no ':'", 1, true), out)
  end)
end)

describe("tide serve beyond loopback", function()
  -- 192.0.2.1 (TEST-NET-1, RFC 5737) is an address of no machine: tide
  -- either refuses before binding, or gets past the check and fails to
  -- bind it.  Nothing here listens beyond loopback.
  local function serve(extra, entry)
    local dir = h.make_tmpdir("tide-exposure")
    h.write_file(dir .. "/tide.lua", entry or "-- nothing\n")
    local rc, out = h.sh(("timeout 10 '%s' serve -a 192.0.2.1 -p %d --no-http -c '%s/tide.lua' %s")
      :format(h.bin, h.free_port(), dir, extra or ""))
    h.remove_tmpdir(dir)
    return rc, out
  end

  it("refuses to start without auth, and says how to go on", function()
    local rc, out = serve()
    assert.are.equal(1, rc)
    assert.matches("refusing to serve on 192%.0%.2%.1:%d+ without authentication", out)
    assert.matches("auth { } block", out, 1, true)
    assert.matches("--insecure", out, 1, true)
    assert.is_nil(out:find("cannot listen", 1, true))
  end)

  it("goes on with an auth block, or with --insecure", function()
    local rc, out = serve(nil, [[ auth { users = { { user = "u", password = "p" } } } ]])
    assert.are_not.equal(0, rc)
    assert.matches("cannot listen on 192%.0%.2%.1", out)
    rc, out = serve("--insecure")
    assert.are_not.equal(0, rc)
    assert.matches("cannot listen on 192%.0%.2%.1", out)
    assert.is_nil(out:find("refusing", 1, true))
  end)
end)
