-- The JetStream API ($JS.API.>): stock clients manage tide's streams.
--
-- tests/interop/node/jsapi.mjs drives nats.js v2, then v3 (jetstreamManager,
-- js.publish, direct gets, raw API requests) through the same steps
-- against nats-server -js (2.9, the reference, on a fresh store) and
-- against tide (a fresh data directory), and prints what each step got;
-- the two must agree on every step.  Then tide alone: INFO, restarts,
-- reloads and streams the entry file declares.
local h = require "helpers"
local json = require "dkjson"
local js = require "js_support"

local PROGRAM_TIMEOUT = 45

local api, canon = js.api, js.canon

-- One client's run against both servers (flag: jsapi.mjs's client choice).
local function compare_suite(label, flag, more)
describe("the JetStream API, with " .. label .. ", against nats-server -js", function()
  local ref, got, srv, data
  local ctx = {}

  setup(function()
    ref, got, srv, data = js.run_both("jsapi.mjs", flag, PROGRAM_TIMEOUT, "jsapi")
    ctx.srv, ctx.data, ctx.got = srv, data, got
  end)

  teardown(function()
    js.stop(ctx.srv, data)
  end)

  it("gives the same answer as nats-server at every step", function()
    js.assert_same_steps(ref, got, 55, srv)
  end)

  it("answered the steps themselves (not only the same failure twice)", function()
    assert.are.same({ "EVENTS", "ORDERS", "TYPED" }, got.names)
    assert.are.same({ messages = 3, bytes_gt0 = true, first_seq = 1, last_seq = 3, consumer_count = 0,
      num_subjects = 2 }, got.info_orders)
    assert.are.same({ messages = 2, bytes_gt0 = true, first_seq = 2, last_seq = 3, consumer_count = 0,
      num_subjects = 2 }, got.info_events)
    assert.are.equal(10058, got.add_orders_again_other.err)
    assert.are.equal(10065, got.add_overlapping.err)
    assert.are.equal(10025, got.create_bad_json.err)
    assert.are.equal(10056, got.create_name_mismatch.err)
    assert.are.equal(10059, got.info_missing.err)
    assert.are.equal(10054, got.publish_too_big.err)
    assert.are.same({ subject = "orders.us.new", seq = 2, data = "order 2", order = "n2" }, got.get_seq_2)
    assert.are.same({ subject = "events.e3", seq = 3, data = "event 3", stream = "EVENTS" }, got.direct_get_seq)
    assert.are.same({ "orders.>", "more.>" }, got.update_orders.config.subjects)
    assert.is_true(got.delete_events)
    assert.are.same({ "ORDERS", "TYPED" }, got.names_after_delete)
    assert.are.equal("no responders", got.publish_deleted)
    assert.are.equal(1, got.purge_filter.purged)
    assert.are.equal(10043, got.delete_msg_again.err)
    assert.are.same({ messages = 1, bytes_gt0 = true, first_seq = 4, last_seq = 4, consumer_count = 0,
      num_subjects = 1 }, got.info_after_keep)
    assert.are.equal(10110, got.purge_guarded.err)
    assert.are.equal(10057, got.delete_guarded.err)
    assert.are.same({ messages = 2, bytes_gt0 = true, first_seq = 4, last_seq = 5, consumer_count = 0,
      num_subjects = 2 }, got.info_final)
  end)

  if more then more(ctx) end
end)
end

compare_suite("nats.js v2", "", function(ctx)
  it("keeps the streams made through the API, their purges and deletes across a kill -9", function()
    local srv, data = ctx.srv, ctx.data
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
    ctx.srv = srv
    local names = api(srv.port, "$JS.API.STREAM.NAMES")
    assert.are.same({ "GUARDED", "ORDERS", "TYPED" }, names.streams, canon(names))
    local info = api(srv.port, "$JS.API.STREAM.INFO.ORDERS")
    assert.are.same({ "orders.>", "more.>" }, info.config.subjects)
    assert.are.equal(10, info.config.max_msgs)
    -- what the client saw last (info_final), not what the log holds
    assert.are.same(ctx.got.info_final, { messages = info.state.messages, bytes_gt0 = info.state.bytes > 0,
      first_seq = info.state.first_seq, last_seq = info.state.last_seq, consumer_count = 0,
      num_subjects = info.state.num_subjects or 0 })
    assert.are.equal(3, api(srv.port, "$JS.API.STREAM.INFO.TYPED").state.first_seq)
    for _, seq in ipairs({ 1, 2, 3 }) do -- purged by filter, deleted, purged by keep
      local r = api(srv.port, "$JS.API.STREAM.MSG.GET.ORDERS", { seq = seq })
      assert.are.equal(10037, r.error and r.error.err_code, canon(r))
    end
    assert.are.equal("bW9yZQ==", api(srv.port, "$JS.API.STREAM.MSG.GET.ORDERS", { seq = 4 }).message.data)
    assert.is_true(api(srv.port, "$JS.API.STREAM.INFO.GUARDED").config.deny_purge)
    local f = io.open(data .. "/streams/EVENTS/.", "r")
    assert(not f, "EVENTS' files are still there")
    -- and a publish to it is stored again, after the last one
    local pa = assert(h.request(srv.port, "orders.eu.late", "late"))
    assert.are.same({ stream = "ORDERS", seq = 6 }, json.decode(pa.payload))
  end)
end)

-- nats.js v3 gates features on INFO's version: the same steps with it.
compare_suite("nats.js v3 (@nats-io/jetstream)", "--v3")

describe("the JetStream API beside declared streams", function()
  local srv, data
  local CONFIG = 'stream "DECL" { subjects = { "decl.>" }, max_msgs = 100 }\n'

  before_each(function()
    data = h.make_tmpdir("jsapi-decl")
    srv = h.start_scripted(CONFIG, { args = { "--data", data } })
  end)

  after_each(function()
    srv:kill()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(data)
  end)

  it("INFO says jetstream, the nats-server version it answers as, and tide's own", function()
    local c = h.connect(srv.port)
    local info = json.decode(c.info)
    c:close()
    assert.is_true(info.jetstream)
    assert.are.equal("2.10.0", info.version)
    assert.are.equal("0.1.0", info.tide_version)
  end)

  it("shows a declared stream, and refuses to change or delete it, naming the entry file", function()
    local info = api(srv.port, "$JS.API.STREAM.INFO.DECL")
    assert.are.same({ "decl.>" }, info.config.subjects)
    assert.are.equal(100, info.config.max_msgs)
    local del = api(srv.port, "$JS.API.STREAM.DELETE.DECL")
    assert.are.equal(10050, del.error.err_code)
    assert.truthy(del.error.description:find("tide.lua", 1, true), del.error.description)
    local upd = api(srv.port, "$JS.API.STREAM.UPDATE.DECL", { name = "DECL", subjects = { "decl.>", "x" } })
    assert.are.equal(10069, upd.error.err_code)
    assert.truthy(upd.error.description:find("tide.lua", 1, true), upd.error.description)
    local ovl = api(srv.port, "$JS.API.STREAM.CREATE.MINE", { name = "MINE", subjects = { "decl.a" } })
    assert.are.equal(10065, ovl.error.err_code)
    assert.are.equal(1, api(srv.port, "$JS.API.STREAM.NAMES").total)
  end)

  it("shows a declared consumer in CONSUMER.NAMES/LIST/INFO, and refuses to change or delete it, naming the "
    .. "entry file", function()
    h.write_file(srv.config, CONFIG .. 'consumer "WORK" { stream = "DECL", filter = "decl.a", deliver = "w.decl", '
      .. 'ack_wait = "5s", max_deliver = 3, max_ack_pending = 7 }\n')
    local m = assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", ""))
    assert(json.decode(m.payload).ok, m.payload)
    api(srv.port, "$JS.API.CONSUMER.CREATE.DECL.MINE", { stream_name = "DECL",
      config = { durable_name = "MINE", ack_policy = "explicit" } })
    assert(h.request(srv.port, "decl.a", "one"))
    local names = api(srv.port, "$JS.API.CONSUMER.NAMES.DECL")
    assert.are.same({ "MINE", "WORK" }, names.consumers, canon(names))
    assert.are.equal(2, names.total)
    local info = api(srv.port, "$JS.API.CONSUMER.INFO.DECL.WORK")
    assert.are.equal("WORK", info.name, canon(info))
    assert.are.same({ durable_name = "WORK", name = "WORK", filter_subject = "decl.a", deliver_subject = "w.decl",
      deliver_policy = "all", ack_policy = "explicit", ack_wait = 5000000000, max_deliver = 3, max_ack_pending = 7,
      replay_policy = "instant", num_replicas = 1 },
      (function() local c = info.config; local md = c.metadata; c.metadata = nil
        assert.truthy(md and md.tide_declared:find("tide.lua", 1, true), canon(md)); return c end)())
    assert.are.equal(1, info.num_pending)
    local list = api(srv.port, "$JS.API.CONSUMER.LIST.DECL")
    assert.are.same({ "MINE", "WORK" }, { list.consumers[1].name, list.consumers[2].name }, canon(list))
    local del = api(srv.port, "$JS.API.CONSUMER.DELETE.DECL.WORK")
    assert.is_table(del.error, canon(del))
    assert.truthy(del.error.description:find("tide.lua", 1, true), del.error.description)
    local upd = api(srv.port, "$JS.API.CONSUMER.CREATE.DECL.WORK", { stream_name = "DECL",
      config = { durable_name = "WORK", ack_policy = "explicit", deliver_subject = "w.other" } })
    assert.are.equal(10013, upd.error.err_code)
    assert.truthy(upd.error.description:find("tide.lua", 1, true), upd.error.description)
    assert.are.equal("WORK", api(srv.port, "$JS.API.CONSUMER.INFO.DECL.WORK").name)
  end)

  it("keeps API streams through a reload", function()
    local made = api(srv.port, "$JS.API.STREAM.CREATE.MINE", { name = "MINE", subjects = { "mine.>" } })
    assert.are.equal("MINE", made.config.name, canon(made))
    h.write_file(srv.config, CONFIG .. 'stream "MORE" { subjects = { "more.>" } }\n')
    local m = assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", ""))
    assert(json.decode(m.payload).ok, m.payload)
    assert.are.same({ "DECL", "MINE", "MORE" }, api(srv.port, "$JS.API.STREAM.NAMES").streams)
  end)

  it("keeps the byte count exact through a message delete and a purge, and across a restart", function()
    api(srv.port, "$JS.API.STREAM.CREATE.B", { name = "B", subjects = { "b.*" } })
    for i = 1, 3 do assert(h.request(srv.port, "b.x", ("payload-%d"):format(i))) end
    local full = api(srv.port, "$JS.API.STREAM.INFO.B").state.bytes
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.B", { seq = 2 }).success)
    local st = api(srv.port, "$JS.API.STREAM.INFO.B").state
    -- three records of the same size: one third went
    assert.are.same({ 2, full * 2 // 3, 1, 3 }, { st.messages, st.bytes, st.first_seq, st.last_seq })
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
    st = api(srv.port, "$JS.API.STREAM.INFO.B").state
    assert.are.same({ 2, full * 2 // 3, 1, 3 }, { st.messages, st.bytes, st.first_seq, st.last_seq })
    assert.are.equal(2, api(srv.port, "$JS.API.STREAM.PURGE.B", { seq = 4 }).purged)
    st = api(srv.port, "$JS.API.STREAM.INFO.B").state
    assert.are.same({ 0, 0, 4, 3 }, { st.messages, st.bytes, st.first_seq, st.last_seq })
  end)

  it("finds the newest message left on a subject once its last one is deleted, also after a kill -9", function()
    api(srv.port, "$JS.API.STREAM.CREATE.LS", { name = "LS", subjects = { "ls.*" }, allow_direct = true })
    for _, s in ipairs({ "ls.a", "ls.b", "ls.a", "ls.a" }) do assert(h.request(srv.port, s, s)) end
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.LS", { seq = 4 }).success)
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.LS", { seq = 3 }).success)
    local function last_a()
      local got = api(srv.port, "$JS.API.STREAM.MSG.GET.LS", { last_by_subj = "ls.a" })
      local direct = h.request(srv.port, "$JS.API.DIRECT.GET.LS.ls.a", "")
      local _, hdrs = h.parse_headers(direct.headers)
      return { got.message and got.message.seq or got.error.err_code, tonumber(hdrs["Nats-Sequence"]) }
    end
    assert.are.same({ 1, 1 }, last_a())
    -- what an expected-last-subject-sequence publish is held against, too
    local pa = h.request(srv.port, "ls.a", "cas", { headers = { { "Nats-Expected-Last-Subject-Sequence", "1" } } })
    assert.are.same({ stream = "LS", seq = 5 }, json.decode(pa.payload))
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.LS", { seq = 5 }).success)
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
    assert.are.same({ 1, 1 }, last_a())
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.LS", { seq = 1 }).success)
    local gone = api(srv.port, "$JS.API.STREAM.MSG.GET.LS", { last_by_subj = "ls.a" })
    assert.are.equal(10037, gone.error and gone.error.err_code, canon(gone))
  end)

  it("compacts the file of removed sequences to what the index says once it is twice as long", function()
    api(srv.port, "$JS.API.STREAM.CREATE.RM", { name = "RM", subjects = { "rm" } })
    local c = h.connect(srv.port)
    c:send("CONNECT {}\r\n")
    for i = 1, 520 do c:pub("rm", "m" .. i) end
    c:close()
    assert(h.wait_until(function() return api(srv.port, "$JS.API.STREAM.INFO.RM").state.messages == 520 end, 10))
    for seq = 2, 518, 2 do assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.RM", { seq = seq }).success) end
    local removed = data .. "/streams/RM/removed"
    -- every line still names a hole: kept as it is
    assert.are.equal(259, select(2, h.read_file(removed):gsub("\n", "")))
    assert.are.equal(257, api(srv.port, "$JS.API.STREAM.PURGE.RM", { seq = 515 }).purged)
    assert.are.equal("p 515\nd 516\nd 518\n", h.read_file(removed))
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
    local st = api(srv.port, "$JS.API.STREAM.INFO.RM").state
    assert.are.same({ 4, 515, 520 }, { st.messages, st.first_seq, st.last_seq })
    assert.are.equal(10037, api(srv.port, "$JS.API.STREAM.MSG.GET.RM", { seq = 516 }).error.err_code)
    assert.are.equal("bTUxNw==", api(srv.port, "$JS.API.STREAM.MSG.GET.RM", { seq = 517 }).message.data) -- "m517"
  end)

  -- kill -9 and a start on the same data directory
  local function restart()
    srv:kill()
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
  end

  local function state(name)
    local st = api(srv.port, "$JS.API.STREAM.INFO." .. name).state
    return { st.messages, st.first_seq, st.last_seq }
  end

  local function has(name, seq)
    local r = api(srv.port, "$JS.API.STREAM.MSG.GET." .. name, { seq = seq })
    return r.message ~= nil
  end

  it("keeps the newest max_msgs_per_subject messages of each subject, also across a kill -9", function()
    local made = api(srv.port, "$JS.API.STREAM.CREATE.PS", { name = "PS", subjects = { "ps.*" },
      max_msgs_per_subject = 2 })
    assert.are.equal(2, made.config.max_msgs_per_subject, canon(made))
    for _, s in ipairs({ "ps.a", "ps.a", "ps.b", "ps.a", "ps.a" }) do assert(h.request(srv.port, s, s)) end
    assert.are.same({ 3, 3, 5 }, state("PS"))
    assert.are.same({ false, false, true, true, true }, { has("PS", 1), has("PS", 2), has("PS", 3), has("PS", 4),
      has("PS", 5) })
    restart()
    assert.are.same({ 3, 3, 5 }, state("PS"))
    assert.are.same({ false, false, true }, { has("PS", 1), has("PS", 2), has("PS", 4) })
    local upd = api(srv.port, "$JS.API.STREAM.UPDATE.PS", { name = "PS", subjects = { "ps.*" },
      max_msgs_per_subject = 1 })
    assert.are.equal(1, upd.config.max_msgs_per_subject, canon(upd))
    assert.are.same({ 2, 3, 5 }, state("PS"))
    assert.is_false(has("PS", 4))
    assert(h.request(srv.port, "ps.b", "b2"))
    assert.are.same({ 2, 5, 6 }, state("PS"))
  end)

  it("rolls up a subject or the whole stream on Nats-Rollup, durably, and only where allowed", function()
    api(srv.port, "$JS.API.STREAM.CREATE.RU", { name = "RU", subjects = { "ru.*" }, allow_rollup_hdrs = true })
    for _, s in ipairs({ "ru.a", "ru.a", "ru.b" }) do assert(h.request(srv.port, s, s)) end
    local pa = h.request(srv.port, "ru.a", "", { headers = { { "Nats-Rollup", "sub" } } })
    assert.are.same({ stream = "RU", seq = 4 }, json.decode(pa.payload))
    assert.are.same({ 2, 3, 4 }, state("RU"))
    restart()
    assert.are.same({ 2, 3, 4 }, state("RU"))
    pa = h.request(srv.port, "ru.c", "", { headers = { { "Nats-Rollup", "all" } } })
    assert.are.same({ stream = "RU", seq = 5 }, json.decode(pa.payload))
    assert.are.same({ 1, 5, 5 }, state("RU"))
    pa = json.decode(h.request(srv.port, "ru.c", "", { headers = { { "Nats-Rollup", "most" } } }).payload)
    assert.are.same({ 500, 10111, 'rollup value invalid: "most"' }, { pa.error.code, pa.error.err_code,
      pa.error.description })
    restart()
    assert.are.same({ 1, 5, 5 }, state("RU"))
    api(srv.port, "$JS.API.STREAM.CREATE.NR", { name = "NR", subjects = { "nr" } })
    pa = json.decode(h.request(srv.port, "nr", "", { headers = { { "Nats-Rollup", "all" } } }).payload)
    assert.are.same({ 500, 10111, "rollup not permitted" }, { pa.error.code, pa.error.err_code, pa.error.description })
    assert.are.same({ 0, 0, 0 }, state("NR"))
  end)

  it("seals a stream on update: publishes, deletes, purges and unsealing refused, as nats-server", function()
    api(srv.port, "$JS.API.STREAM.CREATE.SL", { name = "SL", subjects = { "sl" }, max_age = 60e9 })
    for i = 1, 2 do assert(h.request(srv.port, "sl", "m" .. i)) end
    local upd = api(srv.port, "$JS.API.STREAM.UPDATE.SL", { name = "SL", subjects = { "sl" }, sealed = true })
    assert(upd.config, canon(upd))
    assert.are.same({ true, true, true, "new", 0 }, { upd.config.sealed, upd.config.deny_delete,
      upd.config.deny_purge, upd.config.discard, upd.config.max_age })
    local function refused_publish()
      local pa = json.decode(h.request(srv.port, "sl", "late").payload)
      assert.are.same({ 400, 10109 }, { pa.error and pa.error.code, pa.error and pa.error.err_code }, canon(pa))
    end
    refused_publish()
    assert.are.equal(10109, api(srv.port, "$JS.API.STREAM.MSG.DELETE.SL", { seq = 1 }).error.err_code)
    assert.are.equal(10109, api(srv.port, "$JS.API.STREAM.PURGE.SL").error.err_code)
    local un = api(srv.port, "$JS.API.STREAM.UPDATE.SL", { name = "SL", subjects = { "sl" } })
    assert.are.equal(10052, un.error and un.error.err_code, canon(un))
    assert.are.same({ 2, 1, 2 }, state("SL"))
    restart()
    assert.is_true(api(srv.port, "$JS.API.STREAM.INFO.SL").config.sealed)
    refused_publish()
    assert.are.same({ 2, 1, 2 }, state("SL"))
  end)

  it("keeps a memory stream's messages until a restart, which forgets the stream as nats-server does", function()
    local made = api(srv.port, "$JS.API.STREAM.CREATE.MEM", { name = "MEM", subjects = { "mem" }, storage = "memory" })
    assert.are.equal("memory", made.config.storage, canon(made))
    for i = 1, 3 do assert(h.request(srv.port, "mem", "m" .. i)) end
    assert.are.same({ 3, 1, 3 }, state("MEM"))
    local upd = api(srv.port, "$JS.API.STREAM.UPDATE.MEM", { name = "MEM", subjects = { "mem" } })
    assert.are.equal(10052, upd.error and upd.error.err_code, canon(upd))
    assert.is_true(h.exists(data .. "/memory/MEM"))
    restart()
    assert.are.equal(10059, api(srv.port, "$JS.API.STREAM.INFO.MEM").error.err_code)
    -- what the kill left is gone with the start
    assert.is_false(h.exists(data .. "/memory/MEM"))
    -- made again, it starts empty
    api(srv.port, "$JS.API.STREAM.CREATE.MEM", { name = "MEM", subjects = { "mem" }, storage = "memory" })
    assert.are.same({ 0, 0, 0 }, state("MEM"))
  end)

  it("refuses what tide does not implement with nats-server's error", function()
    local r = api(srv.port, "$JS.API.STREAM.CREATE.SE", { name = "SE", subjects = { "se" }, sealed = true })
    assert.are.equal(10052, r.error.err_code)
    r = api(srv.port, "$JS.API.STREAM.CREATE.MI", { name = "MI", subjects = { "mi" }, mirror = { name = "DECL" } })
    assert.are.equal(10052, r.error.err_code)
    r = api(srv.port, "$JS.API.STREAM.CREATE.a/b", { name = "a/b", subjects = { "ab" } })
    assert.are.equal(10128, r.error.err_code)
    r = api(srv.port, "$JS.API.STREAM.SNAPSHOT.DECL")
    assert.are.equal(10003, r.error.err_code)
    assert.are.equal(1, api(srv.port, "$JS.API.STREAM.NAMES").total)
  end)
end)

describe("the JetStream API without streams", function()
  it("is off: INFO says no jetstream and $JS.API has no responder", function()
    local srv = h.start_scripted("-- nothing declared, no storage\n")
    local c = h.connect(srv.port)
    local info = json.decode(c.info)
    c:close()
    local answer = api(srv.port, "$JS.API.INFO", nil, 1)
    srv:kill()
    h.remove_tmpdir(srv.dir)
    assert.is_nil(info.jetstream)
    assert.are.equal("2.10.0", info.version)
    assert.is_nil(answer)
  end)
end)

describe("the JetStream API when a stream's log fails", function()
  local S = require "store_support"

  it("keeps a deleted message deleted once the log reopens after a failed sync", function()
    local env = S.new_env("jsapi-reopen")
    env.config = 'stream "D" { subjects = { "d" } }\n'
    -- the 10th sync is the group commit of the publishes after the delete
    local srv = S.start(env, { fault = "sync:10:EIO" })
    for i = 1, 3 do assert(h.request(srv.port, "d", "m" .. i)) end
    assert.is_true(api(srv.port, "$JS.API.STREAM.MSG.DELETE.D", { seq = 2 }).success)
    for i = 4, 6 do h.request(srv.port, "d", "m" .. i, { timeout = 3 }) end
    assert(h.wait_until(function() return srv:log():find("reopened", 1, true) end, 10), srv:log())
    local got = api(srv.port, "$JS.API.STREAM.MSG.GET.D", { seq = 2 })
    srv:kill()
    h.remove_tmpdir(env.dir)
    assert.are.equal(10037, got.error and got.error.err_code, canon(got))
  end)
end)
