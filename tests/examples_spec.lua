-- The example flows in examples/: each one runs on a real tide, gets every
-- line of its events.jsonl published, and must deliver exactly what its
-- expected.jsonl lists, in that order.  The file format is described in
-- examples/README.md; this file is its reference implementation.
local h = require "helpers"
local json = require "dkjson"

local EXAMPLES_DIR = h.root .. "/examples"
local RULE_EXAMPLES = { "user-upgrade", "order-filter", "order-flow", "idempotent" }
local ALL_EXAMPLES = { "user-upgrade", "order-filter", "order-flow", "idempotent", "tour", "projection", "saga" }
-- Flows with streams and durable handlers: run with a data directory of
-- their own, and after each event the server is left to finish what the
-- event set off (as tide run does) before the next one is published.
local DURABLE_EXAMPLES = { projection = true, saga = true }

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The JSON object on each non-blank line of a .jsonl file, as {n = line
-- number, v = value}.
local function read_jsonl(path)
  local out, n = {}, 0
  for line in (read_file(path) .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:match("%S") then
      local v, _, err = json.decode(line, 1, json.null)
      if type(v) ~= "table" or v == json.null or (getmetatable(v) or {}).__jsontype == "array" then
        error(("%s:%d: not a JSON object (%s)"):format(path, n, err or type(v)))
      end
      out[#out + 1] = { n = n, v = v }
    end
  end
  return out
end

local function check_keys(path, n, t, known)
  for k in pairs(t) do
    if not known[k] then error(("%s:%d: unknown key '%s'"):format(path, n, tostring(k))) end
  end
end

-- events.jsonl line -> subject, header block (or nil), payload.
local EVENT_KEYS = { subject = true, headers = true, data = true, event = true, id = true, reply = true }

local function header_block(headers)
  local names = {}
  for name in pairs(headers) do names[#names + 1] = name end
  table.sort(names)
  local lines = { "NATS/1.0\r\n" }
  for _, name in ipairs(names) do
    local v = headers[name]
    for _, one in ipairs(type(v) == "table" and v or { v }) do
      lines[#lines + 1] = name .. ": " .. tostring(one) .. "\r\n"
    end
  end
  return table.concat(lines) .. "\r\n"
end

local function json_kind(v)
  local mt = getmetatable(v)
  return mt and mt.__jsontype
end

-- JSON text with object keys in sorted order, so a line always gives the
-- same bytes.
local function encode(v)
  if type(v) ~= "table" or v == json.null then return json.encode(v) end
  local kind, parts = json_kind(v), {}
  if kind == "array" or (kind == nil and #v > 0) then
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. encode(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function message_for(path, line)
  local e, n = line.v, line.n
  check_keys(path, n, e, EVENT_KEYS)
  if type(e.subject) ~= "string" then error(("%s:%d: subject missing"):format(path, n)) end
  if (e.data == nil) == (e.event == nil) then
    error(("%s:%d: give exactly one of data and event"):format(path, n))
  end
  local payload
  if e.event ~= nil then
    if type(e.event) ~= "table" or e.id ~= nil then
      error(("%s:%d: event must be an object (and carries its own id)"):format(path, n))
    end
    payload = encode(e.event)
  else
    payload = ('{"specversion":"1.0","id":%s,"source":"events.jsonl","type":%s,"data":%s}'):format(
      encode(e.id or ("evt-" .. n)), encode(e.subject), encode(e.data))
  end
  if e.reply ~= nil and (type(e.reply) ~= "string" or not e.reply:match("^[%w_.-]+$")) then
    error(("%s:%d: reply must be a subject"):format(path, n))
  end
  return e.subject, e.headers and header_block(e.headers) or nil, payload, e.reply
end

local function parse_headers(block)
  local out = {}
  for l in block:gmatch("([^\r\n]+)") do
    local name, value = l:match("^([^:]+):%s*(.-)%s*$")
    if name and not l:match("^NATS/") then
      local k = name:lower()
      out[k] = out[k] or {}
      table.insert(out[k], value)
    end
  end
  return out
end

-- Reads the subscriber's MSG/HMSG frames up to the PONG that answers the
-- PING sent after the publishes.
local function read_until_pong(c)
  local got = {}
  c:send("PING\r\n")
  while true do
    local l = assert(c:line())
    if l == "PONG" then return got end
    if l == "PING" then
      c:send("PONG\r\n")
    else
      local op, rest = l:match("^(%u+)%s+(.*)$")
      local a = {}
      for w in (rest or ""):gmatch("%S+") do a[#a + 1] = w end
      if op == "MSG" then
        local size = tonumber(a[#a])
        local payload = size > 0 and assert(c:bytes(size)) or ""
        c:bytes(2)
        got[#got + 1] = { subject = a[1], headers = {}, payload = payload }
      elseif op == "HMSG" then
        local hlen, total = tonumber(a[#a - 1]), tonumber(a[#a])
        local data = assert(c:bytes(total))
        c:bytes(2)
        got[#got + 1] = { subject = a[1], raw_headers = data:sub(1, hlen),
                          headers = parse_headers(data:sub(1, hlen)), payload = data:sub(hlen + 1) }
      else
        error("unexpected line from tide: " .. l)
      end
    end
  end
end

-- Whether the server's streams look idle (every append stored, and no
-- consumer with events to deliver or, bound to Lua handlers, in flight),
-- and a digest of their counters.
local function store_state(port)
  local s = h.request(port, "$TIDE.ADMIN.STREAM.LS", "")
  local c = h.request(port, "$TIDE.ADMIN.CONSUMER.LS", "")
  if not s or not c then return false, "" end
  local idle, digest = true, {}
  for _, st in ipairs(assert(json.decode(s.payload))) do
    if st.last_seq ~= st.committed_seq then idle = false end
    digest[#digest + 1] = ("%s %d %d"):format(st.name, st.last_seq, st.committed_seq)
  end
  for _, co in ipairs(assert(json.decode(c.payload))) do
    if co.num_pending > 0 or (not co.deliver and co.num_ack_pending > 0) then idle = false end
    digest[#digest + 1] = ("%s %d %d %d %d"):format(co.name, co.next_seq, co.delivered, co.acked, co.num_ack_pending)
  end
  return idle, table.concat(digest, "|")
end

-- True when the streams are idle.  The two requests are not one atomic
-- look (a commit can fall between them), so idle means: idle, and the same
-- counters in two looks in a row.
local function store_idle(port)
  local last
  return h.wait_until(function()
    local idle, digest = store_state(port)
    local same = idle and digest == last
    last = idle and digest or nil
    return same
  end, 10)
end

-- Publishes every line of events_path to srv and returns what a subscriber
-- to ">" received.  Everything the events cause is in by the time the
-- publisher's PONG arrives: tide runs an event, its handlers and what they
-- publish before it reads the next message.  With durable = true, each
-- event also waits until the streams are idle (what durable handlers do
-- happens later, from the loop), as in tide run.
local function run_events(srv, events_path, durable)
  local sub = h.connect(srv.port, { connect = '{"headers":true}' })
  sub:send("SUB > 1\r\n")
  assert(sub:ping())
  local pub = h.connect(srv.port, { connect = '{"headers":true}' })
  for _, line in ipairs(read_jsonl(events_path)) do
    local subject, hdr, payload, reply = message_for(events_path, line)
    local to = reply and (subject .. " " .. reply) or subject
    if hdr then
      pub:send(("HPUB %s %d %d\r\n%s%s\r\n"):format(to, #hdr, #hdr + #payload, hdr, payload))
    else
      pub:send(("PUB %s %d\r\n%s\r\n"):format(to, #payload, payload))
    end
    if durable then
      assert(pub:ping())
      assert(store_idle(srv.port), ("%s:%d: the streams did not go idle"):format(events_path, line.n))
    end
  end
  local before_pong = assert(pub:ping())
  assert(#before_pong == 0, "tide answered the publisher with: " .. table.concat(before_pong, " | "))
  local got = read_until_pong(sub)
  pub:close()
  sub:close()
  if durable then -- the answers to store_idle's requests
    local kept = {}
    for _, d in ipairs(got) do
      if not d.subject:match("^_INBOX%.spec") then kept[#kept + 1] = d end
    end
    got = kept
  end
  return got
end

-- Comparing deliveries with expected.jsonl ------------------------------------

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  if a == json.null or b == json.null then return a == b end
  local ka, kb = json_kind(a), json_kind(b)
  if ka and kb and ka ~= kb then return false end -- [] is not {}
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function show(v)
  if v == nil then return "(missing)" end
  return json.encode(v)
end

local EXPECT_KEYS = { subject = true, data = true, event = true, headers = true }

-- nil when the delivery d meets the expectation line, else what differs.
local function mismatch(path, line, d)
  local x, n = line.v, line.n
  check_keys(path, n, x, EXPECT_KEYS)
  if x.data == nil and x.event == nil then
    error(("%s:%d: give data or event (or both)"):format(path, n))
  end
  if d.subject ~= x.subject then
    return ("subject %s, expected %s"):format(d.subject, tostring(x.subject))
  end
  local body = json.decode(d.payload, 1, json.null)
  local is_envelope = type(body) == "table" and json_kind(body) ~= "array" and body ~= json.null
  if x.data ~= nil then
    local data = body
    if is_envelope then data = body.data end
    if not same(x.data, data) then
      return ("data is %s, expected %s"):format(show(data), show(x.data))
    end
  end
  if x.event ~= nil then
    if not is_envelope then return "payload is not a JSON envelope: " .. d.payload end
    for k, want in pairs(x.event) do
      local have = body[k]
      if want == "*" then
        if have == nil then return ("event.%s missing"):format(k) end
      elseif not same(want, have) then
        return ("event.%s is %s, expected %s"):format(k, show(have), show(want))
      end
    end
  end
  for name, want in pairs(x.headers or {}) do
    local have = d.headers[name:lower()]
    if want == "*" then
      if not have then return ("header %s missing"):format(name) end
    elseif not same(type(want) == "table" and want or { want }, have or {}) then
      return ("header %s is %s, expected %s"):format(name, show(have), show(want))
    end
  end
  return nil
end

local function describe_deliveries(got)
  local lines = {}
  for i, d in ipairs(got) do
    lines[#lines + 1] = ("  #%d %s %s%s"):format(i, d.subject,
      d.raw_headers and (d.raw_headers:gsub("\r\n", " | ")) or "", d.payload)
  end
  return table.concat(lines, "\n")
end

-- nil when got matches the expectations exactly, else an explanation.
local function compare(got, expected_path, expected)
  expected = expected or read_jsonl(expected_path)
  for i = 1, math.max(#got, #expected) do
    local d, line = got[i], expected[i]
    local why
    if not d then
      why = ("delivery #%d missing (%s:%d)"):format(i, expected_path, line.n)
    elseif not line then
      why = ("delivery #%d not expected: %s %s"):format(i, d.subject, d.payload)
    else
      why = mismatch(expected_path, line, d)
      if why then why = ("delivery #%d (%s:%d): %s"):format(i, expected_path, line.n, why) end
    end
    if why then return why .. "\ndelivered:\n" .. describe_deliveries(got) end
  end
  return nil
end

local function entry(name)
  return EXAMPLES_DIR .. "/" .. name .. "/tide.lua"
end

local function start(name)
  return h.start_server { args = { "-c", entry(name) } }
end

local function log_errors(srv)
  local errs = {}
  for l in srv:log():gmatch("[^\n]+") do
    if l:match("%[ERR%]") then errs[#errs + 1] = l end
  end
  return errs
end

-- Runs one example's events on a server of its own, stopped afterwards;
-- returns the deliveries and the (stopped) server.  A durable example keeps
-- its data in a temporary directory, removed afterwards.
local function run_example(name)
  local data, srv
  if DURABLE_EXAMPLES[name] then
    data = h.make_tmpdir("example-" .. name)
    srv = h.start_server { args = { "--no-http", "-c", entry(name), "--data", data } }
  else
    srv = start(name)
  end
  local ok, got = pcall(run_events, srv, EXAMPLES_DIR .. "/" .. name .. "/events.jsonl", DURABLE_EXAMPLES[name])
  srv:stop()
  h.remove_tmpdir(data)
  if not ok then error(got .. "\nserver log:\n" .. srv:log(), 0) end
  return got, srv
end

local function rules_of(srv)
  local c = h.connect(srv.port)
  c:send("SUB _INBOX.rules 1\r\nPUB $TIDE.ADMIN.RULES _INBOX.rules 0\r\n\r\n")
  local m = assert(c:msg())
  c:close()
  return assert(json.decode(m.payload))
end

describe("examples", function()
  for _, name in ipairs(ALL_EXAMPLES) do
    it(name .. ": events.jsonl delivers expected.jsonl", function()
      local got, srv = run_example(name)
      local why = compare(got, EXAMPLES_DIR .. "/" .. name .. "/expected.jsonl")
      assert(why == nil, why)
      local errs = log_errors(srv)
      assert(#errs == 0, "errors in the server log:\n" .. table.concat(errs, "\n"))
      assert.are.same({ "exited", 0 }, { srv.status, srv.code })
    end)
  end

  it("each example has its entry, rules, README, events and expectations", function()
    local index = read_file(EXAMPLES_DIR .. "/README.md")
    for _, name in ipairs(ALL_EXAMPLES) do
      local dir = EXAMPLES_DIR .. "/" .. name
      for _, f in ipairs { "tide.lua", "README.md", "events.jsonl", "expected.jsonl" } do
        local fh = io.open(dir .. "/" .. f, "rb")
        assert(fh, dir .. "/" .. f .. " is missing")
        assert(#fh:read("a") > 0, dir .. "/" .. f .. " is empty")
        fh:close()
      end
      assert(#read_jsonl(dir .. "/events.jsonl") > 0, name .. ": no events")
      assert(#read_jsonl(dir .. "/expected.jsonl") > 0, name .. ": nothing expected")
      assert(index:find("(" .. name .. "/)", 1, true), "examples/README.md does not link " .. name .. "/")
      local readme = read_file(dir .. "/README.md")
      assert(readme:find("examples/" .. name .. "/tide.lua", 1, true), name .. "/README.md: no run command")
    end
    for _, name in ipairs(RULE_EXAMPLES) do
      assert(io.open(EXAMPLES_DIR .. "/" .. name .. "/rules.lua"), name .. "/rules.lua is missing")
      assert.matches('require "rules"', read_file(entry(name)), 1, true)
    end
  end)

  it("the tour registers every example's rules, in the order of its requires", function()
    local want = {}
    for _, name in ipairs(RULE_EXAMPLES) do
      local srv = start(name)
      local ok, rules = pcall(rules_of, srv)
      srv:stop()
      assert(ok, rules)
      assert(#rules > 0, name .. " registers no rules")
      for _, r in ipairs(rules) do
        assert.matches("^rules%.lua:%d+$", r.where)
        want[#want + 1] = ("%s %s %s"):format(r.kind, r.pattern or r.type, name)
      end
    end
    local srv = start("tour")
    local ok, rules = pcall(rules_of, srv)
    srv:stop()
    assert(ok, rules)
    local have = {}
    for _, r in ipairs(rules) do
      -- loaded from the example's own directory through scripting{path = ".."}
      local from = r.where:match("^%.%./([^/]+)/rules%.lua:%d+$")
      have[#have + 1] = ("%s %s %s"):format(r.kind, r.pattern or r.type, tostring(from))
    end
    assert.are.same(want, have)
  end)

  it("the comparison notices a wrong, missing, extra or reordered delivery", function()
    -- What order-flow delivers, written out by hand so that this checks the
    -- comparison alone, whatever the server does.
    local function frame(subject, envelope, corr, cause)
      local headers = {}
      if corr then headers["tide-correlation-id"] = { corr } end
      if cause then headers["tide-causation-id"] = { cause } end
      return { subject = subject, headers = headers, payload = envelope }
    end
    local function paid(id, extra, data)
      return ('{"specversion":"1.0","id":"%s","source":"events.jsonl","type":"order.paid",%s"data":%s}')
        :format(id, extra, data)
    end
    local function reserved(corr, cause, data)
      return frame("inventory.reserved", ('{"specversion":"1.0","id":"u-%s","source":"tide",'
        .. '"type":"inventory.reserved","time":"2026-01-01T00:00:00.000Z","correlationid":"%s",'
        .. '"causationid":"%s","data":%s}'):format(cause, corr, cause, data), corr, cause)
    end
    local d1 = '{"order_id":"A-1001","items":[{"sku":"book-42","qty":1}]}'
    local d2 = '{"order_id":"A-1002","items":[{"sku":"mug","qty":2},{"sku":"tea","qty":1}]}'
    local d3 = '{"order_id":"A-1003","items":[]}'
    local got = {
      frame("order.paid", paid("pay-1001", "", d1)),
      reserved("pay-1001", "pay-1001", d1),
      frame("order.paid", paid("pay-1002", '"correlationid":"checkout-77",', d2)),
      reserved("checkout-77", "pay-1002", d2),
      frame("order.paid", paid("pay-1003", "", d3), "session-9"),
      reserved("session-9", "pay-1003", d3),
    }
    local path = EXAMPLES_DIR .. "/order-flow/expected.jsonl"
    assert.is_nil(compare(got, path))
    local function variant(change)
      local lines = read_jsonl(path)
      change(lines)
      return compare(got, path, lines) or "(no difference found)"
    end
    assert.matches("delivery #6 not expected", variant(function(l) table.remove(l) end))
    assert.matches("delivery #7 missing", variant(function(l) table.insert(l, l[1]) end))
    assert.matches("delivery #1 .*: subject", variant(function(l) l[1], l[2] = l[2], l[1] end))
    assert.matches("event.data is", variant(function(l) l[2].v.event.data.order_id = "A-9" end))
    assert.matches("event.data is", variant(function(l) -- [] is not {}
      l[6].v.event.data.items = setmetatable({}, { __jsontype = "object" })
    end))
    assert.matches("event.causationid is", variant(function(l) l[4].v.event.causationid = "pay-1001" end))
    assert.matches("event.extra missing", variant(function(l) l[2].v.event.extra = "*" end))
    assert.matches("header Tide%-Causation%-Id is", variant(function(l) l[2].v.headers["Tide-Causation-Id"] = "x" end))
    assert.matches("header X%-Absent missing", variant(function(l) l[1].v.headers = { ["X-Absent"] = "*" } end))
    assert.matches("data is", variant(function(l) l[1].v.data = { order_id = "A-1001" } end))
    -- A typo in a key is an error, not an expectation that always holds.
    assert.has_error(function() variant(function(l) l[1].v.evnt, l[1].v.event = l[1].v.event, nil end) end)
  end)

  it("make run's command serves the tour: tide serve -c examples/tour/tide.lua (-p to move it)", function()
    local port = h.free_port()
    local srv = h.start_server { port = port, cmd = { "serve", "-c", "examples/tour/tide.lua", "-p", tostring(port) } }
    local ok, got = pcall(run_events, srv, EXAMPLES_DIR .. "/tour/events.jsonl")
    local st, code = srv:stop()
    assert(ok, got)
    local why = compare(got, EXAMPLES_DIR .. "/tour/expected.jsonl")
    assert(why == nil, why)
    assert.matches("Listening for client connections on 127%.0%.0%.1:" .. port, srv:log())
    assert.matches("Loaded [^\n]*/examples/tour/tide%.lua: 6 rules", srv:log())
    assert.are.same({ "exited", 0 }, { st, code })
    -- Without -p the file's own address applies: the one make run uses.
    assert.matches('listen { nats = "127.0.0.1:4222" }', read_file(EXAMPLES_DIR .. "/tour/tide.lua"), 1, true)
  end)
end)
