-- tide.kv.bucket(name): a Lua handle on the JetStream KV bucket `name`
-- (the stream KV_<name>): what a handler writes, nats.js's KV API reads,
-- and the other way round; revision() and update() (compare-and-set on
-- the key's revision); the bucket survives a kill -9.
local h = require "helpers"
local json = require "dkjson"

local NODE_DIR = h.root .. "/tests/interop/node"

local ENTRY = [[
local function show(v)
  if type(v) == "table" or type(v) == "userdata" then return "table:" .. tostring(v.a) .. ":" .. tostring(v.list and v.list[2]) end
  return math.type(v) and (math.type(v) .. ":" .. tostring(v)) or (type(v) .. ":" .. tostring(v))
end

on("lua.write", function(e, ctx)
  local b = tide.kv.bucket("app")
  b.set("s", "text")
  b:set("n", 42)
  b.set("f", 1.5)
  b.set("yes", true)
  b.set("t", { a = 1, list = { 1, 2, 3 } })
  b.incr("c")
  b.incr("c", 5)
  b.set("gone", "x")
  b.del("gone")
  ctx.reply("ok")
end)

on("lua.read", function(e, ctx)
  local b = tide.kv.bucket("app")
  local out = {}
  for _, k in ipairs({ "s", "n", "f", "yes", "t", "c", "gone", "client", "missing" }) do
    out[#out + 1] = k .. "=" .. show(b.get(k)) .. "@" .. tostring(b.revision(k))
  end
  out[#out + 1] = "keys=" .. table.concat(b.keys(), ",")
  out[#out + 1] = "count=" .. b.count()
  ctx.reply(table.concat(out, " "))
end)

on("lua.update", function(e, ctx)
  local b = tide.kv.bucket("app")
  local calls = 0
  local rev = b.update("c", function(v, r)
    calls = calls + 1
    if calls == 1 then
      -- someone else writes the key between the read and the write
      b.set("c", v + 100)
    end
    return v + 1
  end)
  ctx.reply(("calls=%d c=%s rev=%d same=%s"):format(calls, tostring(b.get("c")), rev,
    tostring(rev == b.revision("c"))))
end)

on("tidekv.write", function(e, ctx)
  tide.kv.set("greeting", "hi")
  tide.kv.set("user 42", 7)
  tide.kv.incr("n")
  tide.kv.incr("n")
  ctx.reply("ok")
end)

on("tidekv.read", function(e, ctx)
  local out = {}
  for _, k in ipairs({ "fromclient", "user 42", "n" }) do out[#out + 1] = k .. "=" .. show(tide.kv.get(k)) end
  out[#out + 1] = "keys=" .. table.concat(tide.kv.keys(), ",")
  out[#out + 1] = "same=" .. tostring(tide.kv.bucket("tide").get("user 42") == 7)
  ctx.reply(table.concat(out, " "))
end)

on("lua.bad", function(e, ctx)
  local ok, err = pcall(function() tide.kv.bucket("app").set("a..b", 1) end)
  local ok2, err2 = pcall(tide.kv.bucket, "no.dots")
  ctx.reply(tostring(err) .. " | " .. tostring(err2))
end)
]]

local function node_on(bucket, port, ...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = "'" .. a .. "'" end
  local rc, out = h.sh(("cd '%s' && timeout -k 5 30 node kv_lua.mjs %d %s %s"):format(NODE_DIR, port, bucket,
    table.concat(args, " ")))
  assert(rc == 0, out)
  return json.decode(out:match("(%b{})%s*$") or out:match("(%S+)%s*$"))
end

local function node(port, ...) return node_on("app", port, ...) end

local function ask(port, subject)
  local m = assert(h.request(port, subject, ""))
  return m.payload
end

describe("tide.kv.bucket", function()
  local srv, data

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm ci failed:\n" .. tostring(out))
    data = h.make_tmpdir("kvb-data")
    srv = h.start_scripted(ENTRY, { args = { "--data", data } })
  end)

  teardown(function()
    if srv then
      srv:kill()
      h.remove_tmpdir(srv.dir)
    end
    if data then h.remove_tmpdir(data) end
  end)

  it("writes from Lua what nats.js's KV API reads, and reads what it puts", function()
    assert.are.equal("ok", ask(srv.port, "lua.write"))
    local got = node(srv.port, "read", "s", "n", "f", "yes", "t", "c", "gone")
    assert.are.same({ value = "text", revision = 1, operation = "PUT" }, got.s)
    assert.are.same({ value = "42", revision = 2, operation = "PUT" }, got.n)
    assert.are.same({ value = "1.5", revision = 3, operation = "PUT" }, got.f)
    assert.are.same({ value = "true", revision = 4, operation = "PUT" }, got.yes)
    assert.are.same({ a = 1, list = { 1, 2, 3 } }, json.decode(got.t.value))
    assert.are.same({ value = "6", revision = 7, operation = "PUT" }, got.c)
    assert.are.equal("DEL", got.gone and got.gone.operation, json.encode(got))
    assert.are.equal(10, node(srv.port, "put", "client", "from a client"))
    assert.are.equal("s=string:text@1 n=integer:42@2 f=float:1.5@3 yes=boolean:true@4 t=table:1:2@5 c=integer:6@7 " ..
      "gone=nil:nil@nil client=string:from a client@10 missing=nil:nil@nil keys=c,client,f,n,s,t,yes count=7",
      ask(srv.port, "lua.read"))
    assert.is_true(node(srv.port, "delete", "client"))
    assert.truthy(ask(srv.port, "lua.read"):find("client=nil:nil@nil", 1, true))
  end)

  it("update() writes only over the revision it read, and reads again when the key moved", function()
    assert.are.equal("calls=2 c=107 rev=13 same=true", ask(srv.port, "lua.update"))
    assert.are.same({ value = "107", revision = 13, operation = "PUT" }, node(srv.port, "read", "c").c)
  end)

  it("tide.kv is the bucket `tide`: a client reads what a handler writes, a handler what it puts", function()
    assert.are.equal("ok", ask(srv.port, "tidekv.write"))
    -- "user 42" is no KV key: it is stored as "=" and its base64url.
    local got = node_on("tide", srv.port, "read", "greeting", "n", "=dXNlciA0Mg")
    assert.are.equal("hi", got.greeting.value)
    assert.are.equal("2", got.n.value)
    assert.are.equal("7", got["=dXNlciA0Mg"].value)
    assert.is_number(node_on("tide", srv.port, "put", "fromclient", "hello lua"))
    assert.are.equal("fromclient=string:hello lua user 42=integer:7 n=integer:2 keys=fromclient,greeting,n,user 42 " ..
      "same=true", ask(srv.port, "tidekv.read"))
  end)

  it("refuses keys and bucket names the clients' KV API would not take", function()
    local r = ask(srv.port, "lua.bad")
    assert.truthy(r:find("'a..b' is not a valid key", 1, true), r)
    assert.truthy(r:find("'no.dots' is not a bucket name", 1, true), r)
  end)

  it("keeps the bucket across a kill -9, its stream made as the clients make one", function()
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
    assert.truthy(ask(srv.port, "lua.read"):find("n=integer:42@2 ", 1, true))
    local m = assert(h.request(srv.port, "$JS.API.STREAM.INFO.KV_app", ""))
    local cfg = json.decode(m.payload).config
    assert.are.same({ { "$KV.app.>" }, 1, true, true, "new" }, { cfg.subjects, cfg.max_msgs_per_subject,
      cfg.allow_rollup_hdrs, cfg.allow_direct, cfg.discard })
  end)
end)
