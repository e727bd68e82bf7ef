-- tide stream / consumer / dlq against a live server: readable and --json
-- output with exact values, the event-store queries, export into tide run,
-- dead letters shown and replayed end to end, and the errors.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local srv, c, out_dir
local times = {}

-- Runs build/tide with args (a list); returns exit code, stdout, stderr.
-- opts.env: "NAME=value" prefix; opts.server = false: no -s.
local function tide(args, opts)
  opts = opts or {}
  local cmd = h.bin
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  if opts.server ~= false then cmd = cmd .. " -s 127.0.0.1:" .. srv.port end
  local o, e = out_dir .. "/out", out_dir .. "/err"
  local rc = h.sh(("{ %s timeout 20 %s > %s 2> %s; }"):format(opts.env or "", cmd, o, e))
  return rc, h.read_file(o) or "", h.read_file(e) or ""
end

-- tide ... --json, decoded (one value, or a list for JSON lines).
local function tide_json(args, lines)
  local a = { table.unpack(args) }
  a[#a + 1] = "--json"
  local rc, out, err = tide(a)
  assert.are.equal(0, rc, err)
  if not lines then return assert(json.decode(out), out) end
  local t = {}
  for l in out:gmatch("[^\n]+") do t[#t + 1] = assert(json.decode(l), l) end
  return t
end

local function seqs_of(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.seq end
  return t
end

local inbox_n = 0
-- Publishes and waits for the PubAck; returns it decoded.
local function store(subject, payload, headers)
  inbox_n = inbox_n + 1
  local reply = "_INBOX.cli." .. inbox_n
  if headers then c:hpub(subject, headers, payload, reply) else c:pub(subject, payload, reply) end
  local m = assert(c:msg())
  assert.are.equal(reply, m.subject)
  return json.decode(m.payload)
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%03dZ"):format(math.floor((t % 1) * 1000))
end

setup(function()
  out_dir = h.make_tmpdir("tide-cli-out")
  srv = h.start_scripted([[
stream "orders" { subjects = { "order.>" } }
stream "dlq"    { subjects = { "dlq.>" } }
stream "bulk"   { subjects = { "bulk.>" }, fsync = "never" }
consumer "audit"   { stream = "orders", deliver = "audit.orders" }
consumer "shipper" { stream = "orders", filter = "order.created.*", deliver = "ship.orders",
                     ack_wait = "300ms", max_deliver = 1, dead_letter = "dlq.orders" }
]])
  c = h.connect(srv.port)
  c:send('CONNECT {"headers":true}\r\nSUB _INBOX.cli.* 1\r\n')
  assert(c:ping())
  -- two events, a pause, two more: the pause splits them in time
  assert.same({ stream = "orders", seq = 1 },
    store("order.created.1001", '{"order_id":1001,"amount":50}', { { "Nats-Msg-Id", "m1" } }))
  assert.same({ stream = "orders", seq = 2 }, store("order.paid.1001", '{"order_id":1001}'))
  h.proc.sleep(0.25)
  times.split = socket.gettime()
  h.proc.sleep(0.25)
  assert.same({ stream = "orders", seq = 3 }, store("order.created.1002",
    '{"specversion":"1.0","id":"c-1002","source":"shop","type":"order.created","data":{"order_id":1002}}'))
  assert.same({ stream = "orders", seq = 4 }, store("order.shipped.1001", "shipped"))
end)

teardown(function()
  if c then c:close() end
  if srv then
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(srv.dir)
  end
  h.remove_tmpdir(out_dir)
end)

-- bytes of a record: 40-byte head, subject, dedup key, headers, payload
local function rec_bytes(subject, key, hdr, payload) return 40 + #subject + #key + #hdr + #payload end
local orders_bytes = rec_bytes("order.created.1001", "m1", h.header_block { { "Nats-Msg-Id", "m1" } },
    '{"order_id":1001,"amount":50}') +
  rec_bytes("order.paid.1001", "", "", '{"order_id":1001}') +
  rec_bytes("order.created.1002", "ce:shop\31c-1002", "",
    '{"specversion":"1.0","id":"c-1002","source":"shop","type":"order.created","data":{"order_id":1002}}') +
  rec_bytes("order.shipped.1001", "", "", "shipped")

describe("tide stream", function()
  it("ls: a table, and the admin JSON with --json", function()
    local rc, out, err = tide { "stream", "ls" }
    assert.are.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(4, #lines, out)
    assert.matches("^NAME%s+SUBJECTS%s+MESSAGES%s+BYTES%s+FIRST%s+LAST%s+CONSUMERS%s+FSYNC$", lines[1])
    assert.matches("^orders%s+order%.>%s+4%s+" .. orders_bytes .. "%s+1%s+4%s+2%s+always$", lines[2])
    assert.matches("^dlq%s+dlq%.>%s+0%s+0%s+1%s+0%s+0%s+always$", lines[3])
    assert.matches("^bulk%s+bulk%.>%s+0%s+0%s+1%s+0%s+0%s+never$", lines[4])
    local all = tide_json { "stream", "ls" }
    assert.are.equal(3, #all)
    assert.are.equal("orders", all[1].name)
    assert.same({ "order.>" }, all[1].subjects)
    assert.are.equal(4, all[1].messages)
    assert.are.equal(orders_bytes, all[1].bytes)
    assert.are.equal(4, all[1].committed_seq)
    assert.are.equal(4, all[1].stored)
    assert.is_false(all[1].failed)
  end)

  it("info NAME", function()
    local rc, out, err = tide { "stream", "info", "orders" }
    assert.are.equal(0, rc, err)
    assert.matches("^stream orders\n", out)
    assert.matches("\n  subjects     order%.>\n", out)
    assert.matches("\n  messages     4 %(" .. orders_bytes .. " bytes%)\n", out)
    assert.matches("\n  sequences    1%.%.4 %(durable up to 4%)\n", out)
    assert.matches("\n  consumers    2\n", out)
    assert.matches("\n  stored       4, duplicates 0, conflicts 0, store errors 0\n", out)
    assert.matches("\n  failed       no\n", out)
    assert.matches("dedup_window 120 s", out)
    local i = tide_json { "stream", "info", "orders" }
    assert.are.equal("orders", i.name)
    assert.are.equal(4, i.messages)
    assert.are.equal(1, i.first_seq)
    assert.are.equal(4, i.last_seq)
    assert.are.equal(2, i.consumers)
    assert.are.equal(120, i.limits.dedup_window)
  end)

  it("get NAME SEQ", function()
    local rc, out, err = tide { "stream", "get", "orders", "1" }
    assert.are.equal(0, rc, err)
    assert.matches("^stream   orders\nseq      1\ntime     %d%d%d%d%-%d%d%-%d%dT[%d:.]+Z\n" ..
                   "subject  order%.created%.1001\nheader   Nats%-Msg%-Id: m1\n" ..
                   'data     {"order_id":1001,"amount":50}\n$', out)
    local r = tide_json { "stream", "get", "orders", "4" }
    assert.are.equal(4, r.seq)
    assert.are.equal("order.shipped.1001", r.subject)
    assert.are.equal("shipped", r.payload)
    r = tide_json { "stream", "get", "orders", "1" }
    assert.same({ ["Nats-Msg-Id"] = "m1" }, r.headers)
    assert.same({ order_id = 1001, amount = 50 }, r.data)
  end)

  it("events NAME: all, one aggregate, one type, a time range, from and limit", function()
    local rc, out, err = tide { "stream", "events", "orders" }
    assert.are.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(4, #lines, out)
    assert.matches('^#1  %S+Z  order%.created%.1001  {"order_id":1001,"amount":50}  %[Nats%-Msg%-Id: m1%]$', lines[1])
    assert.matches('^#2  %S+Z  order%.paid%.1001  {"order_id":1001}$', lines[2])
    assert.matches("^#4  %S+Z  order%.shipped%.1001  shipped$", lines[4])
    assert.same({ 1, 2, 3, 4 }, seqs_of(tide_json({ "stream", "events", "orders" }, true)))
    -- one aggregate: its id is a subject token
    assert.same({ 1, 2, 4 }, seqs_of(tide_json({ "stream", "events", "orders", "--subject", "order.*.1001" }, true)))
    -- one type
    local created = tide_json({ "stream", "events", "orders", "--subject", "order.created.*" }, true)
    assert.same({ 1, 3 }, seqs_of(created))
    assert.are.equal("c-1002", created[2].data.id)
    -- by time: epoch seconds, RFC 3339, and "that long ago"
    assert.same({ 3, 4 }, seqs_of(tide_json({ "stream", "events", "orders", "--since", ("%.3f"):format(times.split) }, true)))
    assert.same({ 1, 2 }, seqs_of(tide_json({ "stream", "events", "orders", "--until", rfc3339(times.split) }, true)))
    assert.same({ 3 }, seqs_of(tide_json({ "stream", "events", "orders", "--since", rfc3339(times.split),
                                          "--subject", "order.created.*" }, true)))
    assert.same({ 1, 2, 3, 4 }, seqs_of(tide_json({ "stream", "events", "orders", "--since", "1h" }, true)))
    assert.same({}, seqs_of(tide_json({ "stream", "events", "orders", "--until", "1h" }, true)))
    assert.same({ 2, 3 }, seqs_of(tide_json({ "stream", "events", "orders", "--from", "2", "--limit", "2" }, true)))
    rc, out, err = tide { "stream", "events", "orders", "--subject", "nothing.here" }
    assert.are.equal(0, rc)
    assert.are.equal("", out)
    assert.matches("no events", err)
  end)

  it("events pages through next_seq up to the limit", function()
    local parts = {}
    for i = 1, 1203 do
      local p = ('{"n":%d}'):format(i)
      parts[#parts + 1] = ("PUB bulk.%d %d\r\n%s\r\n"):format(i % 3, #p, p)
    end
    c:send(table.concat(parts))
    assert.same({ stream = "bulk", seq = 1204 }, store("bulk.x", '{"n":1204}'))
    local all = tide_json({ "stream", "events", "bulk" }, true)
    assert.are.equal(1204, #all)
    for i, e in ipairs(all) do
      assert.are.equal(i, e.seq)
      assert.are.equal(i, e.data.n)
    end
    local some = tide_json({ "stream", "events", "bulk", "--limit", "1001" }, true)
    assert.are.equal(1001, #some)
    assert.are.equal(1001, some[1001].seq)
    local ones = tide_json({ "stream", "events", "bulk", "--subject", "bulk.1", "--from", "600", "--limit", "700" }, true)
    assert.are.equal(201, #ones) -- bulk.1: n % 3 == 1, from 601 to 1201
    assert.are.equal(601, ones[1].seq)
    assert.are.equal(1201, ones[#ones].seq)
  end)

  it("export writes tide run input, and tide run takes it", function()
    local file = out_dir .. "/export.jsonl"
    local rc = h.sh(("{ %s stream export orders -s 127.0.0.1:%d > %s 2> %s/export.err; }"):format(h.bin, srv.port, file,
      out_dir))
    assert.are.equal(0, rc, h.read_file(out_dir .. "/export.err"))
    assert.matches("exported 4 events from orders", h.read_file(out_dir .. "/export.err"))
    local lines = {}
    for l in h.read_file(file):gmatch("[^\n]+") do lines[#lines + 1] = json.decode(l) end
    -- data lines carry the record's stored time (for tide run --clock virtual); an envelope has its own
    local stored = {}
    for i, l in ipairs(lines) do
      if l.data ~= nil then
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*Z$", l.time, "line " .. i)
        stored[l.subject], l.time = l.time, nil
      else
        assert.is_nil(l.time, "line " .. i)
      end
    end
    assert.is_true(stored["order.created.1001"] <= stored["order.shipped.1001"])
    assert.same({
      { subject = "order.created.1001", headers = { ["Nats-Msg-Id"] = "m1" }, data = { order_id = 1001, amount = 50 } },
      { subject = "order.paid.1001", data = { order_id = 1001 } },
      { subject = "order.created.1002", event = { specversion = "1.0", id = "c-1002", source = "shop",
                                                  type = "order.created", data = { order_id = 1002 } } },
      { subject = "order.shipped.1001", data = "shipped" },
    }, lines)
    -- a flow that keeps order 1001's events, run over the export
    local flow = out_dir .. "/flow.lua"
    h.write_file(flow, 'filter("order.>", function(e) return e.data.order_id == 1001 or e.data == "shipped" end)\n')
    local out
    rc, out = h.sh(("%s run %s --events %s"):format(h.bin, flow, file))
    assert.are.equal(0, rc, out)
    local got = {}
    for l in out:gmatch("[^\n]+") do got[#got + 1] = json.decode(l) end
    assert.are.equal(3, #got, out)
    assert.are.equal("order.created.1001", got[1].subject)
    assert.are.equal(stored["order.created.1001"], got[1].event.time, "the run's envelope has the stored time")
    assert.same({ order_id = 1001, amount = 50 }, got[1].event.data)
    assert.are.equal("m1", got[1].headers["nats-msg-id"])
    assert.are.equal("order.paid.1001", got[2].subject)
    assert.are.equal("order.shipped.1001", got[3].subject)
    assert.are.equal("shipped", got[3].event.data)
    -- --subject and --since narrow an export the same way as events
    rc = h.sh(("{ %s stream export orders --subject 'order.created.*' --since %.3f -s 127.0.0.1:%d > %s 2>/dev/null; }")
      :format(h.bin, times.split, srv.port, file))
    assert.are.equal(0, rc)
    assert.are.equal(1, select(2, h.read_file(file):gsub("\n", "")))
    assert.matches('"id":"c%-1002"', h.read_file(file))
  end)
end)

describe("tide consumer", function()
  it("ls and info", function()
    local rc, out, err = tide { "consumer", "ls" }
    assert.are.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(3, #lines, out)
    assert.matches("^NAME%s+STREAM%s+DELIVER%s+NEXT%s+PENDING%s+ACK_PENDING%s+DELIVERED%s+ACKED%s+DEAD_LETTERED$", lines[1])
    assert.matches("^audit%s+orders%s+audit%.orders%s+1%s+4%s+0%s+0%s+0%s+0$", lines[2])
    assert.matches("^shipper%s+orders%s+ship%.orders%s+1%s+2%s+0%s+0%s+0%s+0$", lines[3]) -- 2 created orders
    rc, out, err = tide { "consumer", "info", "shipper" }
    assert.are.equal(0, rc, err)
    assert.matches("^consumer shipper\n  stream +orders\n  filter +order%.created%.%*\n" ..
                   "  deliver +ship%.orders\n  dead_letter +dlq%.orders\n  next_seq +1\n", out)
    assert.matches("\n  ack_wait +0%.3 s\n  max_deliver +1\n", out)
    local at = {} -- every value starts in one column, past the longest name (dead_letters_lost)
    for line in out:gmatch("\n(  %S+ +)") do at[#line] = true end
    assert.are.same({ [#"  dead_letters_lost "] = true }, at)
    local all = tide_json { "consumer", "ls" }
    assert.are.equal(2, #all)
    local s = tide_json { "consumer", "info", "shipper" }
    assert.are.equal("shipper", s.name)
    assert.are.equal("dlq.orders", s.dead_letter)
    assert.are.equal(2, s.num_pending)
    assert.are.equal(0, s.delivered)
    assert.are.equal(1, s.max_deliver)
  end)
end)

describe("tide dlq", function()
  it("lists, shows and replays dead letters end to end", function()
    local rc, out, err = tide { "dlq", "ls" }
    assert.are.equal(0, rc, err)
    assert.matches("^CONSUMER%s+STREAM%s+DEAD_LETTER%s+DEAD_LETTERED%s+STORED_IN%s+MESSAGES\n" ..
                   "shipper%s+orders%s+dlq%.orders%s+0%s+dlq%s+0\n$", out)
    rc, out = tide { "dlq", "show", "dlq" }
    assert.are.equal(0, rc)
    assert.are.equal("no dead letters in dlq\n", out)

    -- a worker that takes the two created orders and never acks
    local w = h.connect(srv.port)
    w:send('CONNECT {"headers":true}\r\nSUB ship.orders 1\r\n')
    local first = w:collect(2, 5)
    assert.are.equal(2, #first)
    assert.matches("^%$JS%.ACK%.orders%.shipper%.1%.1%.", first[1].reply)
    assert.matches("^%$JS%.ACK%.orders%.shipper%.1%.3%.", first[2].reply)
    -- ack_wait 300ms, max_deliver 1: both are dead letters, stored in "dlq"
    assert(h.wait_until(function() return tide_json({ "stream", "info", "dlq" }).messages == 2 end, 5),
      "the dead letters were not stored")
    assert.same({ { consumer = "shipper", stream = "orders", dead_letter = "dlq.orders", dead_lettered = 2,
                    dead_letters_lost = 0, dlq_stream = "dlq", messages = 2 } }, tide_json { "dlq", "ls" })
    rc, out, err = tide { "dlq", "show", "dlq" }
    assert.are.equal(0, rc, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(4, #lines, out)
    assert.matches("^SEQ%s+TIME%s+ORIGINAL_SUBJECT%s+REASON%s+DELIVERIES%s+CONSUMER%s+ERROR$", lines[1])
    assert.matches("^1%s+%S+Z%s+order%.created%.1001%s+max_deliver%s+1%s+shipper%s+max_deliver$", lines[2])
    assert.matches("^2%s+%S+Z%s+order%.created%.1002%s+max_deliver%s+1%s+shipper%s+max_deliver$", lines[3])
    assert.are.equal("2 dead letters in dlq", lines[4])
    local dl = tide_json({ "dlq", "show", "dlq" }, true)
    assert.are.equal(2, #dl)
    assert.are.equal("dlq.orders", dl[1].subject)
    assert.are.equal("orders", dl[1].source_stream)
    assert.are.equal(1, dl[1].source_seq)
    assert.are.equal(3, dl[2].source_seq)
    assert.same({ ["Nats-Msg-Id"] = "m1" }, dl[1].headers) -- the event's own headers, not the Tide-* ones
    assert.same({ order_id = 1001, amount = 50 }, dl[1].data)
    assert.are.equal(1, #tide_json({ "dlq", "show", "dlq", "--limit", "1" }, true))

    -- replay one: stored again in orders (seq 5) and delivered to the worker again
    rc, out, err = tide { "dlq", "replay", "dlq", "--seq", "1" }
    assert.are.equal(0, rc, err)
    assert.are.equal("replayed 1 dead letter from dlq to their original subjects (stored 1, duplicates 0, refused 0)\n", out)
    local again = assert(w:msg())
    assert.are.equal("1", again.sid) -- the worker's subscription to ship.orders
    assert.matches("^%$JS%.ACK%.orders%.shipper%.1%.5%.", again.reply)
    assert.are.equal('{"order_id":1001,"amount":50}', again.payload)
    local _, hd = h.parse_headers(again.headers)
    assert.same({ ["Nats-Msg-Id"] = "tide-replay.dlq.1" }, hd)
    w:pub(again.reply, "+ACK")
    local r5 = tide_json { "stream", "get", "orders", "5" }
    assert.are.equal("order.created.1001", r5.subject)
    -- replay all: the first again is a duplicate (same replay id), the second is stored
    local res = tide_json { "dlq", "replay", "dlq", "--all" }
    assert.same({ ok = true, stream = "dlq", replayed = 2, seqs = { 1, 2 }, stored = 1, duplicates = 1, refused = 0 }, res)
    local two = assert(w:msg())
    assert.matches("^%$JS%.ACK%.orders%.shipper%.1%.6%.", two.reply)
    assert.are.equal("c-1002", json.decode(two.payload).id)
    w:pub(two.reply, "+ACK")
    assert(w:ping())
    assert(h.wait_until(function() return tide_json({ "consumer", "info", "shipper" }).acked == 2 end, 5))
    local s = tide_json { "consumer", "info", "shipper" }
    assert.are.equal(2, s.dead_lettered)
    assert.are.equal(0, s.num_ack_pending)
    assert.are.equal(7, s.next_seq)
    assert.are.equal(6, tide_json({ "stream", "info", "orders" }).messages)
    w:close()
  end)

  it("refuses what is not a dead letter, and says which to replay", function()
    local rc, _, err = tide { "dlq", "replay", "orders", "--seq", "1" }
    assert.are.equal(1, rc)
    assert.matches("message 1 of stream 'orders' is not a dead letter", err)
    rc, _, err = tide { "dlq", "replay", "dlq", "--seq", "99" }
    assert.are.equal(1, rc)
    assert.matches("stream 'dlq' has no message 99", err)
    rc, _, err = tide { "dlq", "replay", "dlq" }
    assert.are.equal(2, rc)
    assert.matches("give %-%-seq N or %-%-all", err)
    local res = tide_json { "dlq", "replay", "orders", "--all" } -- nothing there is a dead letter
    assert.are.equal(0, res.replayed)
  end)
end)

describe("errors", function()
  it("name the unknown stream or consumer and exit 1", function()
    for _, args in ipairs {
      { "stream", "info", "nope" }, { "stream", "get", "nope", "1" }, { "stream", "events", "nope" },
      { "stream", "export", "nope" }, { "dlq", "show", "nope" }, { "dlq", "replay", "nope", "--all" },
    } do
      local rc, out, err = tide(args)
      assert.are.equal(1, rc, table.concat(args, " "))
      assert.are.equal("", out)
      assert.are.equal("tide: no stream 'nope'\n", err, table.concat(args, " "))
    end
    local rc, _, err = tide { "consumer", "info", "nope" }
    assert.are.equal(1, rc)
    assert.are.equal("tide: no consumer 'nope'\n", err)
    rc, _, err = tide { "stream", "get", "orders", "99" }
    assert.are.equal(1, rc)
    assert.matches("stream 'orders' has no message 99", err)
    rc, _, err = tide { "stream", "events", "orders", "--subject", "a..b" }
    assert.are.equal(1, rc)
    assert.matches("not a valid subject pattern", err)
    rc, _, err = tide { "stream", "events", "orders", "--since", "yesterday" }
    assert.are.equal(1, rc)
    assert.matches("RFC 3339", err)
  end)

  it("say when no server is there, or it has no streams", function()
    local port = h.free_port()
    local rc, out, err = tide({ "stream", "ls", "-s", "127.0.0.1:" .. port }, { server = false })
    assert.are.equal(1, rc)
    assert.are.equal("", out)
    assert.matches("cannot connect to 127%.0%.0%.1:" .. port .. ".*is tide serve running there%?", err)
    rc, out, err = tide({ "dlq", "ls" }, { server = false, env = "TIDE_SERVER=127.0.0.1:" .. port })
    assert.are.equal(1, rc)
    assert.matches("cannot connect to 127%.0%.0%.1:" .. port, err)
    local plain = h.start_server()
    rc, out, err = tide({ "stream", "ls", "-s", "127.0.0.1:" .. plain.port }, { server = false })
    assert.are.equal("exited", (plain:stop()))
    assert.are.equal(1, rc)
    assert.matches("this server has no persistent queue", err)
  end)

  it("$TIDE_SERVER is used without -s", function()
    local rc, out = tide({ "stream", "ls", "--json" }, { server = false, env = "TIDE_SERVER=127.0.0.1:" .. srv.port })
    assert.are.equal(0, rc)
    assert.are.equal("orders", json.decode(out)[1].name)
  end)

  it("usage errors exit 2", function()
    for _, args in ipairs {
      { "stream" }, { "stream", "bogus" }, { "stream", "info" }, { "stream", "get", "orders" },
      { "stream", "get", "orders", "x" }, { "stream", "events", "orders", "--limit", "0" },
      { "consumer", "info" }, { "dlq", "show" }, { "stream", "ls", "--bogus" },
    } do
      local rc, _, err = tide(args)
      assert.are.equal(2, rc, table.concat(args, " ") .. ": " .. err)
      assert.is_true(#err > 0)
    end
    local rc, _, err = tide({ "stream", "--help" }, { server = false })
    assert.are.equal(0, rc)
    assert.matches("usage: tide stream ls", err)
  end)
end)

describe("tide sub", function()
  it("prints a consumer's backlog, which arrives as soon as it subscribes", function()
    -- audit has had no subscriber: all 6 events of orders wait for one
    assert.are.equal(6, tide_json({ "consumer", "info", "audit" }).num_pending)
    local rc, out, err = tide { "sub", "audit.orders", "--count", "6", "--json" }
    assert.are.equal(0, rc, err)
    local seqs = {}
    for l in out:gmatch("[^\n]+") do
      local m = json.decode(l)
      seqs[#seqs + 1] = tonumber(m.reply:match("^%$JS%.ACK%.orders%.audit%.1%.(%d+)%."))
    end
    assert.same({ 1, 2, 3, 4, 5, 6 }, seqs)
  end)
end)

describe("records as the store keeps them", function()
  it("keep integers beyond 2^53 and every value of a repeated header, and honour time zones", function()
    local s2 = h.start_scripted('listen { http = false }\nstream "big" { subjects = { "big.>" } }\n')
    local c2 = h.connect(s2.port)
    c2:send('CONNECT {"headers":true}\r\n')
    c2:sub("_INBOX.big", "1")
    c2:hpub("big.one", h.header_block { { "X", "1" }, { "X", "2" } }, '{"id":12345678901234567890,"n":-9007199254740993}',
      "_INBOX.big")
    assert(c2:msg())
    local rc, out, err = h.sh(("timeout 20 '%s' stream get big 1 --json -s 127.0.0.1:%d > %s/big 2>&1"):format(
      h.bin, s2.port, out_dir)), h.read_file(out_dir .. "/big")
    assert.are.equal(0, rc, out)
    assert.matches('"data":{"id":12345678901234567890,"n":-9007199254740993}', out, 1, true)
    assert.matches('"headers":{"X":["1","2"]}', out, 1, true)
    -- An hour ahead of UTC, an hour ago is now: the record is found; two hours ahead it is not.
    local function count(since)
      local m = assert(h.request(s2.port, "$TIDE.ADMIN.STREAM.EVENTS", json.encode { stream = "big", since = since }))
      return #assert(json.decode(m.payload)).events
    end
    local t = os.time() - 30
    assert.are.equal(1, count(os.date("!%Y-%m-%dT%H:%M:%S+00:00", t)))
    assert.are.equal(1, count(os.date("!%Y-%m-%dT%H:%M:%S+01:00", t + 3600)))
    assert.are.equal(0, count(os.date("!%Y-%m-%dT%H:%M:%S-01:00", t)))
    c2:close()
    s2:stop()
    h.remove_tmpdir(s2.dir)
  end)
end)
