-- Consumers through the JetStream API ($JS.API.CONSUMER.*): stock clients
-- make, read and delete consumers, and pull from them.
--
-- tests/interop/node/jscons.mjs drives nats.js v2, then v3 (the consumer
-- manager, js.fetch / pullSubscribe, consumers.get + fetch / consume, push
-- subscriptions, raw CONSUMER.MSG.NEXT requests for the status messages)
-- through the same steps against nats-server -js (the reference, on a
-- fresh store) and against tide (a fresh data directory), and prints what
-- each step got; the two must agree on every step but the ones listed in
-- DIVERGES.  Then tide alone: restarts, reloads, filter_subjects.
local h = require "helpers"
local json = require "dkjson"
local js = require "js_support"
local socket = require "socket"

local ROOT = h.root
local PROGRAM_TIMEOUT = 70

-- Steps where nats-server 2.9 (the binary the suite runs) and 2.10 (whose
-- API tide answers) differ, with tide's answer, which is 2.10's.
local DIVERGES = {
  -- the client sends action "create": 2.10 refuses another configuration
  -- (server/consumer.go: NewJSConsumerAlreadyExistsError), 2.9 ignores the
  -- action and updates
  add_pull_other_ack_wait = { err = 10148 },
}

local q = js.q
local NODE_DIR = js.NODE_DIR

local function node_bin()
  local rc, out = h.sh("command -v node")
  assert(rc == 0, "node not found")
  return (out:gsub("%s+$", ""))
end

local api, canon = js.api, js.canon

local function seqs(list)
  local t = {}
  for _, m in ipairs(list) do t[#t + 1] = m.seq or m.status end
  return t
end

local function compare_suite(label, flag)
describe("JetStream consumers, with " .. label .. ", against nats-server -js", function()
  local ref, got, srv, data

  setup(function()
    ref, got, srv, data = js.run_both("jscons.mjs", flag, PROGRAM_TIMEOUT, "jscons")
  end)

  teardown(function()
    js.stop(srv, data)
  end)

  it("gives the same answer as nats-server at every step", function()
    js.assert_same_steps(ref, got, 55, srv, DIVERGES)
  end)

  it("answered the steps themselves (not only the same failure twice)", function()
    assert.are.equal("PULL", got.add_pull.name)
    assert.are.same({ 1000, 512, 30000000000, -1 }, { got.add_pull.config.max_ack_pending,
      got.add_pull.config.max_waiting, got.add_pull.config.ack_wait, got.add_pull.config.max_deliver })
    assert.are.equal(20000000000, got.update_pull_ack_wait.ack_wait)
    assert.are.same({ 10012, 10012, 10059, 10014, 10059, 10025, 10056, 10017, 10018, 10131, 10088, 10116, 10094,
      10108, 10103 }, { got.update_pull_other_policy.err, got.update_pull_to_push.err, got.add_missing_stream.err,
      got.info_missing.err, got.info_missing_stream.err, got.create_bad_json.err, got.create_stream_mismatch.err,
      got.create_durable_mismatch.err, got.create_durable_unset.err, got.create_filter_mismatch.err,
      got.create_hb_on_pull.err, got.create_backoff_max_deliver.err, got.create_by_seq_without_seq.err,
      got.create_fc_without_hb.err, got.create_bad_name.err })
    assert.are.equal("orders.eu.>", got.create_filter_in_subject.config.filter_subject)
    assert.are.equal("-ERR 'Maximum Payload Violation'", got.create_over_max_payload_raw)
    assert.are.same({ "EU", "PULL" }, got.names)
    assert.are.same({ 1, 2, 3 }, seqs(got.fetch_3))
    assert.are.same({ 4, 5, 6 }, seqs(got.fetch_rest))
    assert.are.same({ delivered = { 6, 6 }, ack_floor = { 6, 6 }, num_ack_pending = 0, num_redelivered = 0,
      num_pending = 0 }, got.info_after_rest)
    assert.are.same({ { status = 404, description = "No Messages" } }, got.raw_no_wait_empty)
    assert.are.same({ { status = 408, description = "Request Timeout", pending_messages = 2 } },
      got.raw_expires_empty)
    assert.is_true(got.raw_heartbeat.heartbeats_gt0)
    assert.are.equal(400, got.raw_bad_heartbeat[1].status)
    assert.are.same({ 7 }, seqs(got.raw_held_then_published))
    assert.are.same({ 8, 9 }, seqs(got.raw_number_body))
    assert.are.same({ { status = 409, description = "Message Size Exceeds MaxBytes", pending_messages = 1 } },
      got.raw_max_bytes_small)
    assert.are.same({ 10, 408 }, seqs(got.raw_after_max_bytes))
    assert.are.equal("Exceeded MaxWaiting", got.raw_max_waiting.second[1].description)
    assert.are.equal("Consumer Deleted", got.raw_max_waiting.first[1].description)
    assert.are.equal("Exceeded MaxRequestBatch of 5", got.raw_max_batch[1].description)
    assert.are.same({ 1, 1, 3 }, { got.nak_then_redelivered.a[1].seq, got.nak_then_redelivered.b[1].seq,
      got.nak_then_redelivered.c[1].seq })
    assert.are.equal(2, got.nak_then_redelivered.b[1].deliveries)
    assert.are.same({ 1, 2, 3 }, got.ack_none.got)
    assert.are.equal(0, got.ack_none.state.num_ack_pending)
    assert.are.same({ 6, 6 }, got.ack_all.after.ack_floor)
    assert.are.same({ 1, 2 }, { got.ack_wait_max_deliver.a[1].deliveries, got.ack_wait_max_deliver.b[1].deliveries })
    assert.are.same({}, got.ack_wait_max_deliver.c)
    assert.are.same({ got = { 1, 2, 408 }, num_ack_pending = 2 }, got.max_ack_pending)
    assert.are.same({ 1, 0 }, { got.in_progress_holds.before.num_ack_pending,
      got.in_progress_holds.before.num_redelivered })
    assert.are.same({ 408 }, seqs(got.in_progress_holds.again))
    assert.are.same({ 10, 408 }, seqs(got.policy_last.got))
    assert.are.same({ 408 }, seqs(got.policy_new.got))
    assert.are.same({ 8, 9, 10, 408 }, seqs(got.policy_by_seq.got))
    assert.are.same({ 1, 3, 5, 7, 9, 408 }, seqs(got.policy_last_per_subject.got))
    assert.are.same({ 2, 4, 6, 8, 10, 408 }, seqs(got.policy_filter_us.got))
    assert.are.equal(49, got.policy_headers_only.got[10].size)
    assert.are.equal("", got.policy_headers_only.got[10].data)
    assert.are.same({ 9, 10 }, { got.policy_by_time.got[1], got.policy_by_time.got[2] })
    assert.are.same({ 2, 4, 6, 8 }, seqs(got.push_durable.got))
    assert.are.equal("Consumer is push based", got.push_pull_request[1].description)
    assert.are.equal("Idle Heartbeat", got.push_heartbeat[1].description)
    if flag == "" then -- js.subscribe is v2's
      assert.are.same({ seqs = { 1, 3, 5, 7, 9 }, deliver_group = "workers" }, got.js_subscribe_queue)
      assert.are.same({ 1, 3, 5, 7, 9 }, got.js_subscribe_durable)
    end
    assert.are.same({ err = 10014 }, got.ephemeral.after)
    assert.are.equal(5000000000, got.ephemeral_default_threshold.inactive_threshold)
    assert.is_true(got.delete_with_waiting.ok)
    assert.are.equal("Consumer Deleted", got.delete_with_waiting.waiting[1].description)
    assert.are.same({ err = 10014 }, got.delete_again)
    assert.are.same({ 10084, 10100, 10099, 10101 }, { got.wq_ack_none.err, got.wq_overlap.err, got.wq_unfiltered.err,
      got.wq_deliver_new.err })
    assert.are.same({ got = { 1, 2 }, messages = 1, first_seq = 3 }, got.wq_fetch_removes)
    assert.are.same({ keys = { "a", "b" }, history = { "PUT:1", "PUT:3" }, watch = { "b=2", "a=3", "c=4" },
      keys_after_delete = { "a", "c" } }, got.kv_through_consumers)
  end)
end)
end

compare_suite("nats.js v2", "")
compare_suite("nats.js v3 (@nats-io/jetstream)", "--v3")

describe("JetStream consumers with libnats (C), against nats-server -js and tide", function()
  local C_BIN = ROOT .. "/build/interop_jscons_c"

  setup(function()
    -- a plain build, always at build/interop_jscons_c, whatever the build flavour
    local rc, out = h.sh(("make -s -C %s BUILD=build SAN= build/interop_jscons_c"):format(q(ROOT)))
    assert(rc == 0, "building build/interop_jscons_c failed:\n" .. out)
  end)

  local function checks(port, log)
    local rc, out = h.sh(("timeout -k 5 50 %s %d"):format(q(C_BIN), port))
    assert(rc == 0 and out:find("1..14", 1, true), out .. "\n--- server log ---\n" .. log())
  end

  it("passes every check against nats-server -js", function()
    local sd = h.make_tmpdir("jscons-c-ns")
    local port = h.free_port()
    local ns = h.start_server { bin = h.nats_server_bin(), port = port,
      cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", sd } }
    local ok, err = pcall(checks, port, function() return ns:log() end)
    ns:stop("INT")
    h.remove_tmpdir(sd)
    assert(ok, err)
  end)

  it("passes every check against tide", function()
    local data = h.make_tmpdir("jscons-c-data")
    local srv = h.start_scripted("-- nothing declared\n", { args = { "--data", data } })
    local ok, err = pcall(checks, srv.port, function() return srv:log() end)
    srv:kill()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(data)
    assert(ok, err)
  end)
end)

describe("JetStream consumers in tide", function()
  local srv, data
  local CONFIG = 'stream "DECL" { subjects = { "decl.>" } }\n' ..
    'consumer "WORK" { stream = "DECL", deliver = "work.in" }\n'

  local function restart(sig)
    if sig == "KILL" then srv:kill() else srv:stop(sig) end
    local dir, config = srv.dir, srv.config
    srv = h.start_server { args = { "-c", config, "--data", data } }
    srv.dir, srv.config = dir, config
  end

  -- Pulls batch messages (a raw MSG.NEXT) and acks those for which ack(seq) is
  -- true with an AckSync; returns the stream sequences received.
  local function pull_ack(stream, consumer, batch, ack)
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    local inbox = "_INBOX.pull" .. math.random(1e9)
    c:sub(inbox, "1")
    c:pub("$JS.API.CONSUMER.MSG.NEXT." .. stream .. "." .. consumer,
      json.encode({ batch = batch, expires = 500000000 }), inbox)
    local got = {}
    while #got < batch do
      local m = c:frame(2)
      if not m or m.op ~= "MSG" and m.op ~= "HMSG" or (m.headers and m.headers:find("NATS/1.0 4", 1, true)) then
        break
      end
      local seq = tonumber(m.reply:match("^%$JS%.ACK%.[^.]+%.[^.]+%.%d+%.(%d+)%."))
      got[#got + 1] = seq
      if ack(seq) then
        local r = h.request(srv.port, m.reply, "+ACK", { timeout = 2 })
        assert(r, "no answer to the AckSync of " .. seq)
      end
    end
    c:close()
    return got
  end

  before_each(function()
    data = h.make_tmpdir("jscons-tide")
    srv = h.start_scripted(CONFIG, { args = { "--data", data } })
  end)

  after_each(function()
    srv:kill()
    h.remove_tmpdir(srv.dir)
    h.remove_tmpdir(data)
  end)

  it("keeps durable consumers, their configuration and acks across a kill -9; ephemerals go", function()
    api(srv.port, "$JS.API.STREAM.CREATE.S", { name = "S", subjects = { "s.>" } })
    for i = 1, 6 do assert(h.request(srv.port, "s." .. i, "m" .. i)) end
    local made = api(srv.port, "$JS.API.CONSUMER.CREATE.S.D", { stream_name = "S",
      config = { durable_name = "D", ack_policy = "explicit", ack_wait = 60000000000, filter_subject = "s.*" } })
    assert.are.equal("D", made.name, canon(made))
    local eph = api(srv.port, "$JS.API.CONSUMER.CREATE.S", { stream_name = "S", config = { ack_policy = "explicit" } })
    assert.truthy(eph.name, canon(eph))
    -- 1, 2, 3 delivered; 1 and 3 acked, 2 left in flight
    assert.are.same({ 1, 2, 3 }, pull_ack("S", "D", 3, function(s) return s ~= 2 end))
    restart("KILL")
    local info = api(srv.port, "$JS.API.CONSUMER.INFO.S.D")
    assert.are.equal(60000000000, info.config.ack_wait, canon(info))
    assert.are.equal("s.*", info.config.filter_subject)
    assert.are.equal(10014, api(srv.port, "$JS.API.CONSUMER.INFO.S." .. eph.name).error.err_code)
    -- 2 again (it was never acked), then 4..6; never 1 or 3
    assert.are.same({ 2, 4, 5, 6 }, pull_ack("S", "D", 4, function() return true end))
    restart("TERM")
    local st = api(srv.port, "$JS.API.CONSUMER.INFO.S.D")
    assert.are.same({ 0, 0, 6 }, { st.num_ack_pending, st.num_pending, st.ack_floor.stream_seq }, canon(st))
    -- and deleting the stream deletes its consumers' files
    assert.is_true(api(srv.port, "$JS.API.STREAM.DELETE.S").success)
    assert.is_nil(io.open(data .. "/jsapi/consumers/S/D/config.json"))
  end)

  it("keeps API consumers through a reload, beside the declared one", function()
    api(srv.port, "$JS.API.CONSUMER.CREATE.DECL.MINE", { stream_name = "DECL",
      config = { durable_name = "MINE", ack_policy = "explicit" } })
    local taken = api(srv.port, "$JS.API.CONSUMER.CREATE.DECL.WORK", { stream_name = "DECL",
      config = { durable_name = "WORK", ack_policy = "explicit" } })
    assert.are.equal(10013, taken.error.err_code, canon(taken))
    h.write_file(srv.config, CONFIG .. "-- reloaded\n")
    local m = assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", ""))
    assert(json.decode(m.payload).ok, m.payload)
    assert(h.request(srv.port, "decl.x", "after the reload"))
    assert.are.same({ 1 }, pull_ack("DECL", "MINE", 1, function() return true end))
    assert.are.same({ "MINE", "WORK" }, api(srv.port, "$JS.API.CONSUMER.NAMES.DECL").consumers)
  end)

  it("shows API-made streams and consumers in tide stream / tide consumer", function()
    api(srv.port, "$JS.API.STREAM.CREATE.APIS", { name = "APIS", subjects = { "apis.>" } })
    api(srv.port, "$JS.API.CONSUMER.CREATE.APIS.VIAAPI", { stream_name = "APIS",
      config = { durable_name = "VIAAPI", ack_policy = "explicit" } })
    assert(h.request(srv.port, "apis.one", "1"))
    local s = "127.0.0.1:" .. srv.port
    local rc, out = h.sh(("'%s' stream ls -s %s"):format(h.bin, s))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("\nAPIS%s+apis%.>%s+1%s"), out)
    rc, out = h.sh(("'%s' consumer ls -s %s"):format(h.bin, s))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("\nVIAAPI%s+APIS%s"), out)
    rc, out = h.sh(("'%s' consumer info VIAAPI -s %s"):format(h.bin, s))
    assert.are.equal(0, rc, out)
    assert.truthy(out:find("stream%s+APIS"), out)
    assert.truthy(out:find("num_pending%s+1"), out)
  end)

  it("takes filter_subjects (nats-server 2.10) and refuses overlapping ones", function()
    api(srv.port, "$JS.API.STREAM.CREATE.F", { name = "F", subjects = { "f.>" } })
    for _, s in ipairs({ "f.a", "f.b", "f.c", "f.a", "f.c" }) do assert(h.request(srv.port, s, s)) end
    local r = api(srv.port, "$JS.API.CONSUMER.CREATE.F.AC", { stream_name = "F",
      config = { durable_name = "AC", ack_policy = "explicit", filter_subjects = { "f.a", "f.c" } } })
    assert.are.same({ "f.a", "f.c" }, r.config.filter_subjects, canon(r))
    assert.are.equal(4, r.num_pending)
    assert.are.same({ 1, 3, 4, 5 }, pull_ack("F", "AC", 4, function() return true end))
    r = api(srv.port, "$JS.API.CONSUMER.CREATE.F.X", { stream_name = "F",
      config = { durable_name = "X", ack_policy = "explicit", filter_subjects = { "f.>", "f.a" } } })
    assert.are.equal(10138, r.error.err_code)
    r = api(srv.port, "$JS.API.CONSUMER.CREATE.F.Y", { stream_name = "F",
      config = { durable_name = "Y", ack_policy = "explicit", filter_subject = "f.a", filter_subjects = { "f.b" } } })
    assert.are.equal(10136, r.error.err_code)
  end)

  it("redelivers no acked message and loses none when killed -9 twice during pull fetches", function()
    local N = 6000
    local out = srv.dir .. "/crash.out"
    local pid = h.proc.spawn({ node_bin(), NODE_DIR .. "/jscons_crash.mjs", tostring(srv.port), tostring(N) }, out)
    -- the highest "acked N" the client printed
    local function acked()
      local n = 0
      for k in (h.read_file(out) or ""):gmatch("acked (%d+)") do n = math.max(n, tonumber(k)) end
      return n
    end
    for _, at in ipairs({ 1000, 3000 }) do -- killed while it fetches and acks
      local ok = h.wait_until(function() return acked() >= at end, 45)
      assert(ok, "the client did not get to " .. at .. " acks:\n" .. tostring(h.read_file(out)) .. srv:log())
      srv:kill()
      local dir, config, port = srv.dir, srv.config, srv.port
      srv = h.start_server { port = port, args = { "-c", config, "--data", data } }
      srv.dir, srv.config = dir, config
    end
    local st = h.proc.wait(pid, 60)
    if not st then h.proc.kill(pid, "KILL"); h.proc.wait(pid, 5) end
    local text = h.read_file(out) or ""
    local res = json.decode(text:match("(%b{})%s*$") or "null")
    assert(res, "jscons_crash.mjs gave no result:\n" .. text)
    assert.are.same({}, res.again, "delivered again after their ack was answered: " .. canon(res))
    -- An ack the server applied just before a kill has no answer: the
    -- client counts it as not known to be acked, and nothing redelivers it
    -- (rightly).  At most one such ack per kill (the client acks one at a
    -- time); the consumer's own state below says whether it was applied.
    assert.is_true(#res.missing <= 2, canon(res))
    assert.are.equal(N, res.acked + #res.missing, canon(res))
    -- (deliveries > N when a kill caught messages in flight; it may also
    -- fall between two fetches, with nothing to redeliver)
    assert.is_true(res.deliveries >= N, canon(res))
    -- and the consumer agrees: everything acked, nothing pending
    local info = api(srv.port, "$JS.API.CONSUMER.INFO.C.W")
    assert.are.same({ 0, 0, N }, { info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq }, canon(info))
  end)

  it("answers a no_wait request with 404 once the acked messages' ack_wait has run out", function()
    api(srv.port, "$JS.API.STREAM.CREATE.N", { name = "N", subjects = { "n.>" } })
    assert(h.request(srv.port, "n.1", "one"))
    api(srv.port, "$JS.API.CONSUMER.CREATE.N.C", { stream_name = "N",
      config = { durable_name = "C", ack_policy = "explicit", ack_wait = 200000000 } })
    assert.are.same({ 1 }, pull_ack("N", "C", 1, function() return true end))
    h.proc.sleep(0.4) -- the acked message's deadline passes
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("_INBOX.nowait", "1")
    c:pub("$JS.API.CONSUMER.MSG.NEXT.N.C", json.encode({ batch = 1, no_wait = true }), "_INBOX.nowait")
    local m = c:frame(2)
    c:close()
    assert(m and m.headers, "no answer to a no_wait request")
    assert.truthy(m.headers:find("NATS/1.0 404 No Messages", 1, true), m.headers)
  end)

  it("counts num_pending with the new filter after an update changes it", function()
    api(srv.port, "$JS.API.STREAM.CREATE.U", { name = "U", subjects = { "u.>" } })
    for _, s in ipairs({ "u.a", "u.a", "u.a", "u.b", "u.b" }) do assert(h.request(srv.port, s, s)) end
    local cfg = { durable_name = "C", ack_policy = "explicit", filter_subject = "u.a" }
    local r = api(srv.port, "$JS.API.CONSUMER.CREATE.U.C", { stream_name = "U", config = cfg })
    assert.are.equal(3, r.num_pending, canon(r))
    cfg.filter_subject = "u.b"
    r = api(srv.port, "$JS.API.CONSUMER.CREATE.U.C", { stream_name = "U", config = cfg, action = "update" })
    assert.are.equal("u.b", r.config.filter_subject, canon(r))
    assert.are.equal(2, r.num_pending, canon(r))
    assert.are.same({ 4, 5 }, pull_ack("U", "C", 2, function() return true end))
  end)

  -- Receives n messages on c (subscribed already): their stored times (from
  -- the ack reply, ns) and when each came (s).
  local function timed(c, n)
    local stored, came = {}, {}
    while #came < n do
      local m = c:frame(10)
      assert(m, "only " .. #came .. " of " .. n .. " messages came")
      if m.op == "MSG" or m.op == "HMSG" then
        stored[#stored + 1] = tonumber(m.reply:match("^%$JS%.ACK%.[^.]+%.[^.]+%.%d+%.%d+%.%d+%.(%d+)%."))
        came[#came + 1] = socket.gettime()
      end
    end
    return stored, came
  end

  -- The gaps between deliveries against the gaps between the stored times:
  -- none early (beyond rounding), none much late (a loaded machine).
  local function same_spacing(stored, came)
    for i = 2, #came do
      local want, got = (stored[i] - stored[i - 1]) / 1e9, came[i] - came[i - 1]
      assert(got >= want - 0.05, ("message %d came %.3fs after the one before; stored %.3fs after"):format(i, got,
        want))
    end
    local want, got = (stored[#stored] - stored[1]) / 1e9, came[#came] - came[1]
    assert(got <= want + 1.5, ("the whole replay took %.3fs; stored over %.3fs"):format(got, want))
  end

  it("delivers with the stored spacing under replay_policy original, push and pull", function()
    api(srv.port, "$JS.API.STREAM.CREATE.RO", { name = "RO", subjects = { "ro" } })
    for i, gap in ipairs({ 0.4, 0.8, 0, 0 }) do
      assert(h.request(srv.port, "ro", "m" .. i))
      socket.sleep(gap)
    end
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("ro.push", "1")
    local r = api(srv.port, "$JS.API.CONSUMER.CREATE.RO.P", { stream_name = "RO",
      config = { durable_name = "P", ack_policy = "none", replay_policy = "original", deliver_subject = "ro.push" } })
    assert.are.equal("original", r.config and r.config.replay_policy, canon(r))
    local stored, came = timed(c, 4)
    assert((stored[3] - stored[1]) / 1e9 >= 1.1, "the stored gaps are not there")
    same_spacing(stored, came)
    c:close()
    r = api(srv.port, "$JS.API.CONSUMER.CREATE.RO.Q", { stream_name = "RO",
      config = { durable_name = "Q", ack_policy = "none", replay_policy = "original" } })
    assert.are.equal("original", r.config and r.config.replay_policy, canon(r))
    c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("_INBOX.ro", "1")
    c:pub("$JS.API.CONSUMER.MSG.NEXT.RO.Q", json.encode({ batch = 4, expires = 8000000000 }), "_INBOX.ro")
    stored, came = timed(c, 4)
    same_spacing(stored, came)
    c:close()
  end)

  it("refuses what tide does not implement, with the reason", function()
    api(srv.port, "$JS.API.STREAM.CREATE.R", { name = "R", subjects = { "r.>" } })
    local r = api(srv.port, "$JS.API.CONSUMER.CREATE.R.O", { stream_name = "R",
      config = { durable_name = "O", ack_policy = "explicit", rate_limit_bps = 1000,
        deliver_subject = "deliver.r" } })
    assert.are.equal(10012, r.error.err_code)
    assert.truthy(r.error.description:find("rate_limit_bps", 1, true), r.error.description)
    r = api(srv.port, "$JS.API.CONSUMER.CREATE.R.T", { stream_name = "R",
      config = { durable_name = "T", ack_policy = "explicit", num_replicas = 3 } })
    assert.are.equal(10074, r.error.err_code)
  end)
end)
