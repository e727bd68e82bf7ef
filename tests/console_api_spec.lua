-- The console's JSON endpoints: /api/flow, /api/rates and /api/tail against
-- a real tide serving examples/tour, bad input, a node with streams, and auth.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local TOUR = h.root .. "/examples/tour/tide.lua"
local KINDS = { subject = true, upgrade = true, filter = true, route = true, handler = true, stream = true,
  consumer = true, dlq = true }

-- curl: status, body (args are put in the shell command as they are).
local function curl(args)
  local rc, out = h.sh("curl -s -o /dev/stdout -w '\\n%{http_code}' --max-time 5 " .. args)
  assert.are.equal(0, rc, out)
  local body, code = out:match("^(.*)\n(%d+)%s*$")
  return tonumber(code), body
end

local function get_json(url, extra)
  local code, body = curl((extra or "") .. " '" .. url .. "'")
  assert.are.equal(200, code, body)
  return json.decode(body)
end

-- Sends a raw GET of target and reads the status line, in at most `within`
-- seconds: the status code, or nil and why.  Closes the connection.
local function raw_status(port, target, within)
  local s = socket.tcp()
  s:settimeout(within)
  assert(s:connect("127.0.0.1", port))
  s:send("GET " .. target .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
  local line, err = s:receive("*l")
  s:close()
  if not line then return nil, err end
  return tonumber(line:match("^HTTP/1%.%d (%d+)")), line
end

-- POSTs body (JSON text) to url: status, decoded answer (or the raw body).
local function post_json(url, body, extra)
  local f = os.tmpname()
  h.write_file(f, body)
  local code, out = curl(("-X POST -H 'Content-Type: application/json' %s --data-binary @%s '%s'"):format(extra or "", f, url))
  os.remove(f)
  return code, json.decode(out) or out
end

local function by_id(list)
  local t = {}
  for _, n in ipairs(list) do t[n.id] = n end
  return t
end

local function edge_rate(edges, from, to)
  for _, e in ipairs(edges) do
    if e.from == from and e.to == to then return e.rate end
  end
end

local function publish_for(port, seconds, subject, payload)
  local c = h.connect(port)
  local deadline, n = h.proc.now() + seconds, 0
  while h.proc.now() < deadline do
    for _ = 1, 20 do c:pub(subject, payload); n = n + 1 end
    h.proc.sleep(0.05)
  end
  assert(c:ping())
  c:close()
  return n
end

describe("/api/ on the tour", function()
  local srv, hport, base

  setup(function()
    hport = h.free_port()
    srv = h.start_server { args = { "-c", TOUR, "--http", "127.0.0.1:" .. hport } }
    base = "http://127.0.0.1:" .. hport
  end)

  teardown(function()
    assert.are.equal("exited", (srv:stop()))
  end)

  it("/api/flow has a node for every rule, with its kind, pattern and place, and edges between known nodes", function()
    local rules = get_json(base .. "/v1/rules")
    local flow = get_json(base .. "/api/flow")
    assert.are.equal(6, #rules)
    local nodes = by_id(flow.nodes)
    for _, n in ipairs(flow.nodes) do
      assert.is_true(KINDS[n.kind], n.kind)
      assert.is_string(n.label)
    end
    local kind_of = { upgrade = "upgrade", filter = "filter", route = "route", on = "handler" }
    for i, r in ipairs(rules) do
      local n = nodes["rule:" .. (i - 1)]
      assert.is_table(n, "no node for rule " .. i)
      assert.are.equal(kind_of[r.kind], n.kind)
      assert.are.equal(r.where, n.where)
      -- a rule's label holds its subject pattern, an upgrader's its type
      assert.is_truthy(n.label:find(r.pattern or r.type, 1, true), n.label)
      -- and its subject node feeds it
      assert.is_table(nodes["subject:" .. (r.pattern or r.type)])
    end
    assert.are.equal("dlq", nodes["dlq:$TIDE.DEAD.>"].kind)
    for _, e in ipairs(flow.edges) do
      assert.is_table(nodes[e.from], e.from)
      assert.is_table(nodes[e.to], e.to)
      assert.are.equal(0, e.rate)
    end
    -- the pipeline's order within a pattern: subject -> filter -> route
    assert.is_number(edge_rate(flow.edges, "subject:order.created", "rule:2"))
    assert.is_number(edge_rate(flow.edges, "rule:2", "rule:3"))
    assert.is_number(edge_rate(flow.edges, "subject:user.created", "rule:0"))
    assert.is_number(edge_rate(flow.edges, "rule:0", "rule:1"))
    assert.is_number(edge_rate(flow.edges, "rule:5", "dlq:$TIDE.DEAD.>"))
    -- /api/rates: the same edges, rates only
    local rates = get_json(base .. "/api/rates")
    assert.are.equal(#flow.edges, #rates.edges)
    for i, e in ipairs(rates.edges) do
      assert.are.same({ from = flow.edges[i].from, to = flow.edges[i].to, rate = 0 }, e)
    end
  end)

  it("edge rates rise while a publisher runs and fall to zero after", function()
    get_json(base .. "/api/rates") -- the console is in use from now on: sampled every second
    local big = '{"specversion":"1.0","id":"x","source":"t","type":"order.created","data":{"amount":5000}}'
    local n = publish_for(srv.port, 3, "order.created", big)
    local rates = get_json(base .. "/api/rates").edges
    local into_filter = edge_rate(rates, "subject:order.created", "rule:2")
    assert.is_true(into_filter > 20, "rate " .. tostring(into_filter) .. " after " .. n .. " events")
    assert.is_true(edge_rate(rates, "rule:2", "rule:3") > 20)
    assert.are.equal(0, edge_rate(rates, "subject:order.paid", "rule:4"))
    assert.are.equal(0, edge_rate(rates, "rule:2", "dlq:$TIDE.DEAD.>"))
    local flow = get_json(base .. "/api/flow")
    assert.is_true(edge_rate(flow.edges, "subject:order.created", "rule:2") > 20)
    assert.are.equal(n, by_id(flow.nodes)["rule:2"].calls)
    -- a handler's failures are the rate of its edge to the dead letters
    local c = h.connect(srv.port)
    for _ = 1, 30 do c:pub("payment.authorized", '{"data":{}}') end -- no id: the handler raises
    assert(c:ping())
    c:close()
    assert(h.wait_until(function()
      return edge_rate(get_json(base .. "/api/rates").edges, "rule:5", "dlq:$TIDE.DEAD.>") > 0
    end, 5), "no rate on the handler's dead-letter edge")
    local rule5 = by_id(get_json(base .. "/api/flow").nodes)["rule:5"]
    assert.are.equal(30, rule5.errors)
    assert.matches("needs a CloudEvents id", rule5.last_error.message)
    assert(h.wait_until(function()
      local e = get_json(base .. "/api/rates").edges
      return edge_rate(e, "subject:order.created", "rule:2") == 0 and edge_rate(e, "rule:5", "dlq:$TIDE.DEAD.>") == 0
    end, 8), "rates did not fall to zero")
  end)

  it("/api/tail streams matching events as server-sent events", function()
    local out = h.tmpdir .. "/console-tail-" .. h.free_port() .. ".txt"
    local pid = h.proc.spawn({ "/usr/bin/curl", "-s", "-N", "--max-time", "4", base .. "/api/tail?subject=order.>" }, out)
    -- the tail's subscription is made before its first line is written
    assert(h.wait_until(function() return (h.read_file(out) or ""):find("tail of", 1, true) end, 5),
      "the tail did not open")
    local c = h.connect(srv.port)
    c:pub("order.paid", '{"data":{"order_id":7}}')
    c:pub("greet.world", "hi")
    assert(c:ping())
    c:close()
    h.proc.wait(pid, 5)
    local text = h.read_file(out) or ""
    os.remove(out)
    assert.matches(': tail of order.>\n\n', text, 1, true)
    assert.matches('event: message\ndata: {"subject":"order.paid","data":{"data":{"order_id":7}}}', text, 1, true)
    assert.is_nil(text:find("greet.world", 1, true))
  end)

  it("GET / serves the console, built in, with its own files only", function()
    local rc, out = h.sh("curl -s -D - --max-time 5 '" .. base .. "/'")
    assert.are.equal(0, rc)
    assert.matches("HTTP/1.1 200", out)
    assert.matches("Content%-Type: text/html", out)
    assert.matches("Content%-Security%-Policy: default%-src 'none'; script%-src 'self'", out)
    assert.matches('<nav aria%-label="Views">', out)
    local js = out:match('src="(/assets/[^"]+%.js)"')
    assert.is_string(js, out)
    local code, body = curl("'" .. base .. js .. "'")
    assert.are.equal(200, code)
    assert.is_truthy(body:find("/api/rates", 1, true))
    assert.are.equal(404, (curl("'" .. base .. "/assets/nope.js'")))
  end)

  it("POST /api/trace publishes an event and answers its steps with the filter's decision", function()
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\n')
    c:sub("order.>", 1)
    assert(c:ping())
    local code, t = post_json(base .. "/api/trace", '{"subject":"order.created","data":{"amount":50}}')
    assert.are.equal(200, code, t)
    assert.are.equal("order.created", t.subject)
    assert.matches("^event order%.created", t.steps[1])
    assert.matches("filter%s+order%.created%s+%S+order%-filter/rules%.lua:4%s+DROPPED", t.steps[2])
    code, t = post_json(base .. "/api/trace", '{"subject":"order.created","data":{"amount":5000},"headers":{"X-Why":"test"}}')
    assert.are.equal(200, code, t)
    local text = table.concat(t.steps, "\n")
    assert.matches("filter%s+order%.created%s+%S+%s+kept", text)
    assert.matches("route%s+order%.created%s+%S+%s+%-> order%.review", text)
    -- it was published for real, with its headers
    local m = c:msg()
    assert.are.equal("order.review", m.subject)
    assert.are.equal(t.id, json.decode(m.payload).id)
    assert.matches("X%-Why: test", m.headers or "")
    c:close()
  end)

  it("/api/source shows the lines around a rule, its own line among them", function()
    local src = get_json(base .. "/api/source?rule=2")
    assert.matches("order%-filter/rules%.lua:4$", src.where)
    assert.are.equal(4, src.line)
    assert.are.equal(1, src.first_line)
    assert.are.equal('filter("order.created", function(e)', src.lines[4])
    assert.is_true(#src.lines <= 16)
    assert.are.equal(404, (curl("'" .. base .. "/api/source?rule=6'")))
    assert.are.equal(400, (curl("'" .. base .. "/api/source?rule=-1'")))
    assert.are.equal(400, (curl("'" .. base .. "/api/source?rule=x'")))
    assert.are.equal(400, (curl("'" .. base .. "/api/source'")))
  end)

  it("POST /api/trace and /api/dlq/replay refuse bad input and change nothing", function()
    local before = get_json(base .. "/api/flow")
    local calls = by_id(before.nodes)["rule:2"].calls
    for _, c in ipairs({
      { '{"subject":"bad..x","data":1}', 400 },
      { '{"subject":"order.*","data":1}', 400 },
      { '{"subject":"$TIDE.ADMIN.RELOAD","data":1}', 403 },
      { '{"subject":"$JS.API.INFO"}', 403 },
      { '{"data":1}', 400 },
      { '[1,2]', 400 },
      { 'not json', 400 },
      { '{"subject":"order.created","headers":{"Bad Name":"x"}}', 400 },
      { '{"subject":"order.created","headers":{"X":"a\\r\\nY: b"}}', 400 },
      { '{"subject":"order.created","headers":["x"]}', 400 },
    }) do
      local code, body = post_json(base .. "/api/trace", c[1])
      assert.are.equal(c[2], code, c[1] .. ": " .. json.encode(body))
    end
    local code = post_json(base .. "/api/trace", '{"subject":"order.created"}', "-H 'Origin: http://evil.example'")
    assert.are.equal(403, code)
    code = curl("-X POST -H 'Content-Type: text/plain' --data-binary '{}' '" .. base .. "/api/trace'")
    assert.are.equal(415, code)
    assert.are.equal(404, (post_json(base .. "/api/nope", "{}")))
    -- the tour has no streams: nothing to replay or show
    assert.are.equal(404, (post_json(base .. "/api/dlq/replay", '{"stream":"dead","seq":1}')))
    assert.are.equal(400, (post_json(base .. "/api/dlq/replay", '{"stream":"dead"}')))
    assert.are.equal(400, (post_json(base .. "/api/dlq/replay", '{"stream":"dead","seq":-1}')))
    assert.are.equal(404, (curl("'" .. base .. "/api/dlq?stream=dead'")))
    assert.are.equal(400, (curl("'" .. base .. "/api/dlq'")))
    assert.are.equal(404, (curl("'" .. base .. "/api/events?stream=dead'")))
    assert.are.equal(400, (curl("'" .. base .. "/api/events?stream=dead&from_seq=1x'")))
    assert.are.equal(calls, by_id(get_json(base .. "/api/flow").nodes)["rule:2"].calls)
    local st = get_json(base .. "/api/streams")
    assert.are.same({ streams = {}, consumers = {}, dead_letter_streams = {} }, st)
  end)

  it("bad input gets a 4xx at once and holds nothing", function()
    local before = get_json(base .. "/api/flow")
    local long = ("a"):rep(5000)
    local checks = {
      { "/api/tail?subject=bad..x", 400 },
      { "/api/tail?subject=a.>.b", 400 },
      { "/api/tail", 400 },
      { "/v1/tail?subject=" .. long, 414 },
      { "/api/tail?subject=" .. long, 414 },
      { "/api/tail?subject=" .. ("a."):rep(300) .. "x", 400 }, -- a subject over 512 bytes
      { "/v1/tail?subject=" .. ("a."):rep(300) .. "x", 400 },
      { "/api/tail?subject=order.>&pad=" .. ("x"):rep(3000), 414 },
      { "/api/flow?pad=" .. ("x"):rep(3000), 414 },
      { "/api/nope", 404 },
      { "/api/", 404 },
      { "/api/flow/x", 404 },
      { "/api/dlq?stream=", 400 },
      { "/api/dlq?stream=dead&from_seq=x", 400 },
      { "/api/dlq?stream=" .. ("s"):rep(80), 400 },
    }
    for _, c in ipairs(checks) do
      local t0 = h.proc.now()
      local code, why = raw_status(hport, c[1], 3)
      assert.are.equal(c[2], code, c[1]:sub(1, 60) .. ": " .. tostring(why))
      assert.is_true(h.proc.now() - t0 < 2, c[1]:sub(1, 60))
    end
    -- 100 KB of subject: refused at once too
    for _, path in ipairs({ "/api/tail", "/v1/tail" }) do
      local code = raw_status(hport, path .. "?subject=" .. ("a"):rep(100 * 1024), 3)
      assert.is_true(code >= 400 and code < 500, tostring(code))
    end
    -- no tail slot was taken: more refused tails than there are slots, then a good one
    for i = 1, 70 do
      local path = i % 2 == 0 and "/api/tail?subject=" or "/v1/tail?subject="
      assert.are.equal(400, (raw_status(hport, path .. ("a."):rep(300) .. "x", 3)))
      assert.are.equal(414, (raw_status(hport, path .. long, 3)))
    end
    assert.are.equal(200, (raw_status(hport, "/api/tail?subject=ok.>", 3)))
    local after = get_json(base .. "/api/flow")
    assert.are.same(before.nodes, after.nodes)
    local code = curl("-X POST '" .. base .. "/api/flow'")
    assert.are.equal(405, code)
  end)
end)

describe("/api/flow with streams, consumers and dead letters", function()
  it("shows them, with the counters behind their edges", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
storage { dir = "data" }
stream "orders" { subjects = { "order.>" } }
stream "dead" { subjects = { "dlq.>" } }
consumer "w" { stream = "orders", deliver = "work.w", ack_wait = "200ms", max_deliver = 1, dead_letter = "dlq.w" }
consumer "c" { stream = "orders" }
on("order.*", { consumer = "c" }, function(e) end)
filter("order.created", function(e) return true end)
]])
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local base = "http://127.0.0.1:" .. hport
    local ok, err = pcall(function()
      local sub = h.connect(srv.port)
      sub:send("SUB work.w 1\r\n") -- takes deliveries, never acks: each one is dead-lettered
      assert(sub:ping())
      local c = h.connect(srv.port)
      for i = 1, 5 do c:pub("order.created", '{"data":{"k":' .. i .. '}}') end
      assert(c:ping())
      c:close()
      local flow
      assert(h.wait_until(function()
        flow = get_json(base .. "/api/flow")
        local d = by_id(flow.nodes)["dlq:dlq.w"]
        return d and d.depth == 5
      end, 10), "the dead letters did not arrive")
      sub:close()
      local nodes = by_id(flow.nodes)
      assert.are.equal("stream", nodes["stream:orders"].kind)
      assert.are.equal(5, nodes["stream:orders"].messages)
      assert.are.equal("consumer", nodes["consumer:orders/w"].kind)
      assert.are.equal(5, nodes["consumer:orders/w"].dead_lettered)
      assert.are.equal("dead", nodes["dlq:dlq.w"].stream)
      assert.are.equal("c", nodes["rule:0"].consumer)
      assert.are.equal(5, nodes["rule:0"].calls)
      local edges = {}
      for _, e in ipairs(flow.edges) do edges[e.from .. " -> " .. e.to] = true end
      for _, want in ipairs({ "subject:order.> -> stream:orders", "stream:orders -> consumer:orders/w",
        "consumer:orders/w -> dlq:dlq.w", "stream:orders -> consumer:orders/c", "consumer:orders/c -> rule:0",
        "subject:order.created -> rule:1", "subject:dlq.> -> stream:dead" }) do
        assert.is_true(edges[want], want)
      end
      -- the Streams view's JSON, a page of dead letters, and a replay
      local st = get_json(base .. "/api/streams")
      assert.are.same({ "dead" }, st.dead_letter_streams)
      assert.are.equal(2, #st.streams)
      assert.are.equal(2, #st.consumers)
      local page -- shown once durable: the flow's depth counts them as soon as they are appended
      assert(h.wait_until(function()
        page = get_json(base .. "/api/dlq?stream=dead")
        return #page.dead_letters == 5
      end, 5), "the dead letters are not shown")
      assert.are.equal("order.created", page.dead_letters[1].original_subject)
      assert.are.equal(404, (curl("'" .. base .. "/api/dlq?stream=nope'")))
      -- the messages a stream holds, by sequence, time and subject
      local evs = get_json(base .. "/api/events?stream=orders")
      assert.are.equal(5, #evs.events)
      assert.are.equal(1, evs.events[1].seq)
      assert.are.same({ k = 1 }, evs.events[1].data.data)
      evs = get_json(base .. "/api/events?stream=orders&from_seq=4")
      assert.are.equal(2, #evs.events)
      evs = get_json(base .. "/api/events?stream=orders&since=2000-01-01T00:00:00Z&subject=order.created")
      assert.are.equal(5, #evs.events)
      evs = get_json(base .. "/api/events?stream=orders&since=2200-01-01T00:00:00Z")
      assert.are.equal(0, #evs.events)
      assert.are.equal(400, (curl("'" .. base .. "/api/events?stream=orders&since=yesterday'")))
      assert.are.equal(404, (curl("'" .. base .. "/api/events?stream=nope'")))
      local code, a = post_json(base .. "/api/dlq/replay", '{"stream":"dead","seq":' .. page.dead_letters[1].seq .. '}')
      assert.are.equal(200, code, json.encode(a))
      assert.are.equal(1, a.replayed)
      assert(h.wait_until(function()
        return by_id(get_json(base .. "/api/flow").nodes)["stream:orders"].messages == 6
      end, 5), "the replayed event was not stored again")
      assert.are.equal(404, (post_json(base .. "/api/dlq/replay", '{"stream":"nope","seq":1}')))
      -- the reload history: a failed reload, then a good one
      local reloads = get_json(base .. "/api/reloads")
      assert.are.equal(1, #reloads.reloads)
      assert.is_true(reloads.reloads[1].ok)
      local text = h.read_file(dir .. "/tide.lua")
      h.write_file(dir .. "/tide.lua", text .. "\nthis is not lua\n")
      assert(h.wait_until(function() return #get_json(base .. "/api/reloads").reloads == 2 end, 10), "no failed reload noted")
      reloads = get_json(base .. "/api/reloads").reloads
      assert.is_false(reloads[2].ok)
      assert.matches("tide%.lua:%d+", reloads[2].error)
      h.write_file(dir .. "/tide.lua", text .. "\n-- changed\n")
      assert(h.wait_until(function() return #get_json(base .. "/api/reloads").reloads == 3 end, 10), "no reload noted")
      reloads = get_json(base .. "/api/reloads")
      assert.is_true(reloads.reloads[3].ok)
      assert.are.equal(2, reloads.reloads[3].generation)
      assert.are.equal(2, reloads.generation)
    end)
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

describe("/api/ with auth", function()
  it("needs a user for the views, and the tail a user who may read its subject", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
auth { users = {
  { user = "admin", password = "adminpw", admin = true },
  { user = "shop", password = "shoppw", permissions = { subscribe = { allow = { "orders.>" } } } },
} }
filter("orders.*", function(e) return true end)
]])
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local base = "http://127.0.0.1:" .. hport
    local ok, err = pcall(function()
      for _, path in ipairs({ "/api/flow", "/api/rates", "/api/tail?subject=orders.>", "/api/nope" }) do
        assert.are.equal(401, (curl("'" .. base .. path .. "'")), path)
        assert.are.equal(401, (curl("-u shop:wrong '" .. base .. path .. "'")), path)
      end
      for _, who in ipairs({ "shop:shoppw", "admin:adminpw" }) do
        local flow = get_json(base .. "/api/flow", "-u " .. who)
        assert.are.equal("filter", by_id(flow.nodes)["rule:0"].kind)
        get_json(base .. "/api/rates", "-u " .. who)
      end
      assert.are.equal(403, (curl("-u shop:shoppw '" .. base .. "/api/tail?subject=payments.>'")))
      assert.are.equal(404, (curl("-u shop:shoppw '" .. base .. "/api/nope'")))
      -- actions are for admin users; the page and the views for any user
      local body = '{"subject":"orders.x","data":{}}'
      assert.are.equal(401, (post_json(base .. "/api/trace", body)))
      assert.are.equal(403, (post_json(base .. "/api/trace", body, "-u shop:shoppw")))
      local code, t = post_json(base .. "/api/trace", body, "-u admin:adminpw")
      assert.are.equal(200, code, json.encode(t))
      assert.matches("filter%s+orders%.%*", t.steps[2])
      assert.are.equal(403, (post_json(base .. "/api/dlq/replay", '{"stream":"s","seq":1}', "-u shop:shoppw")))
      assert.are.equal(401, (curl("'" .. base .. "/'")))
      assert.are.equal(200, (curl("-u shop:shoppw '" .. base .. "/'")))
    end)
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

describe("/api/rules/ on examples/order-filter", function()
  local ORDERS = h.root .. "/examples/order-filter"

  local function order(id, amount)
    return json.encode { specversion = "1.0", id = id, source = "spec", type = "order.created",
                         data = { order_id = id, amount = amount } }
  end

  it("shows the history and a shadow's diff, and promotes, stops and rolls back", function()
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", ORDERS .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local base = "http://127.0.0.1:" .. hport
    local ok, err = pcall(function()
      local hist = get_json(base .. "/api/rules/history")
      assert.are.equal(1, hist.live)
      assert.are.equal("live", hist.revisions[1].state)
      -- no shadow yet: the diff, promote and stop are a conflict
      assert.are.equal(409, (curl("'" .. base .. "/api/rules/diff'")))
      assert.are.equal(409, (post_json(base .. "/api/rules/promote", "{}")))
      assert.are.equal(409, (post_json(base .. "/api/rules/stop", "{}")))
      -- bad input, and a revision that does not exist: 4xx, nothing changed
      assert.are.equal(400, (post_json(base .. "/api/rules/rollback", "{}")))
      assert.are.equal(400, (post_json(base .. "/api/rules/rollback", '{"rev":"x"}')))
      assert.are.equal(400, (post_json(base .. "/api/rules/rollback", '{"rev":99}')))
      assert.are.equal(405, (curl("'" .. base .. "/api/rules/promote'")))
      assert.are.equal(405, (post_json(base .. "/api/rules/history", "{}")))
      assert.are.equal(1, get_json(base .. "/api/rules/history").live)

      local m = assert(h.request(srv.port, "$TIDE.ADMIN.RULES.SHADOW", json.encode { path = ORDERS .. "/candidate" }))
      assert.is_true(json.decode(m.payload).ok, m.payload)
      local c = h.connect(srv.port)
      c:send('CONNECT {"headers":true}\r\n')
      c:pub("order.created", order("A-1", 40))
      c:pub("order.created", order("A-2", 250))
      c:pub("order.created", order("A-3", 500))
      assert(c:ping())
      c:close()
      local d = get_json(base .. "/api/rules/diff")
      assert.are.equal(3, d.events)
      assert.are.equal(2, d.differ)
      assert.are.equal(2, d.kinds.kept)
      assert.are.equal("dropped by rules.lua:5", d.samples[1].candidate[1])

      local code, p = post_json(base .. "/api/rules/promote", "{}")
      assert.are.equal(200, code, json.encode(p))
      assert.is_true(p.ok)
      hist = get_json(base .. "/api/rules/history")
      assert.are.equal(3, hist.live) -- rev 2 is the shadow's entry, now promoted
      assert.are.equal("promoted", hist.revisions[2].state)
      assert.are.equal(409, (curl("'" .. base .. "/api/rules/diff'")))

      code, p = post_json(base .. "/api/rules/rollback", '{"rev":1}')
      assert.are.equal(200, code, json.encode(p))
      assert.are.same({ ok = true, live = 1, from = 3 }, p)
      assert.are.equal(1, get_json(base .. "/api/rules/history").live)
    end)
    assert.are.equal("exited", (srv:stop()))
    assert(ok, err)
  end)

  it("starts a shadow and a canary from POST, and refuses bad input with nothing changed", function()
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", ORDERS .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local base = "http://127.0.0.1:" .. hport
    local function publish(prefix, amounts)
      local c = h.connect(srv.port)
      c:send('CONNECT {"headers":true}\r\n')
      for i, amount in ipairs(amounts) do c:pub("order.created", order(prefix .. i, amount)) end
      assert(c:ping())
      c:close()
    end
    -- each bad request: its status, and the state unchanged after it
    local function refused(path, body, status, state)
      local before = get_json(base .. "/api/rules/history")
      local code, a = post_json(base .. path, body)
      assert.are.equal(status, code, path .. " " .. body .. ": " .. json.encode(a))
      assert.is_string(a.error.description, path .. " " .. body)
      local hist = get_json(base .. "/api/rules/history")
      assert.are.equal(1, hist.live, body)
      assert.are.same(before, hist, body) -- no revision added or changed
      if not state then
        assert.are.equal(409, (curl("'" .. base .. "/api/rules/diff'")), body)
      else
        local d = get_json(base .. "/api/rules/diff")
        for k, v in pairs(state) do assert.are.equal(v, d[k], body .. ": " .. k) end
      end
    end
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/broken.lua", 'filter("order.created", function(e) return e.data.amount >\n')
    local BROKEN = ('{"path":"%s"}'):format(dir .. "/broken.lua")
    local ok, err = pcall(function()
      local BAD_SHADOW = { "{}", '{"path":""}', '{"path":7}', '{"path":"nope"}', '{"path":"/nonexistent/x.lua"}',
        ('{"path":"%s"}'):format(("a"):rep(5000)), BROKEN }
      local BAD_CANARY = { '{"path":"candidate"}', '{"path":"candidate","percent":-1}',
        '{"path":"candidate","percent":101}', '{"path":"candidate","percent":"10"}',
        '{"path":"candidate","percent":10,"key":"a..b"}', '{"path":"candidate","percent":10,"key":"data.x y"}',
        ('{"path":"candidate","percent":10,"key":"%s"}'):format(("k"):rep(200)),
        '{"path":"candidate","percent":10,"max_error_rate":2}', '{"path":"candidate","percent":10,"window":0}',
        '{"path":"candidate","percent":10,"window":"60s"}', '{"path":"nope","percent":10}',
        '{"percent":10,"window":30}', ('{"path":"%s","percent":10}'):format(dir .. "/broken.lua") }
      for _, b in ipairs(BAD_SHADOW) do refused("/api/rules/shadow", b, 400) end
      for _, b in ipairs(BAD_CANARY) do refused("/api/rules/canary", b, 400) end
      refused("/api/rules/canary", '{"percent":50}', 409) -- no canary runs

      -- a shadow of the candidate, its path taken from the entry file's directory
      local code, a = post_json(base .. "/api/rules/shadow", '{"path":"candidate"}')
      assert.are.equal(200, code, json.encode(a))
      assert.are.same({ ok = true, path = ORDERS .. "/candidate" }, a)
      publish("S-", { 40, 250, 500 }) -- 250 and 500: kept by the live rules, dropped by the candidate
      local shadow = { mode = "shadow", path = ORDERS .. "/candidate", events = 3, differ = 2 }
      refused("/api/rules/shadow", '{"path":"nope"}', 400, shadow) -- the running shadow stays
      refused("/api/rules/canary", '{"path":"candidate","percent":200}', 400, shadow)
      refused("/api/rules/canary", '{"percent":50}', 409, shadow) -- a shadow is no canary
      code = post_json(base .. "/api/rules/stop", "{}")
      assert.are.equal(200, code)
      assert.are.equal(409, (curl("'" .. base .. "/api/rules/diff'")))

      -- a canary at 50% by the order id, its share changed, then finished
      code, a = post_json(base .. "/api/rules/canary",
        ('{"path":"%s","percent":50,"key":"data.order_id","max_error_rate":0.05,"window":30}'):format(ORDERS .. "/candidate"))
      assert.are.equal(200, code, json.encode(a))
      assert.are.equal("canary", a.mode)
      assert.are.equal(50, a.percent)
      assert.are.equal("data.order_id", a.key)
      assert.are.equal(0.05, a.max_error_rate)
      assert.are.equal(30, a.window)
      local amounts = {}
      for i = 1, 20 do amounts[i] = 100 + i end
      publish("C-", amounts)
      local d = get_json(base .. "/api/rules/diff")
      assert.are.equal(20, d.live.events + d.candidate.events)
      assert.is_true(d.live.events > 0 and d.candidate.events > 0, json.encode(d))
      code, a = post_json(base .. "/api/rules/canary", '{"percent":30}')
      assert.are.equal(200, code, json.encode(a))
      assert.are.equal(30, get_json(base .. "/api/rules/diff").percent)
      local canary = { mode = "canary", percent = 30, key = "data.order_id" }
      local hist_before = get_json(base .. "/api/rules/history")
      for _, b in ipairs({ '{"percent":30,"window":5}', '{"percent":-5}', '{"percent":"all"}' }) do
        local c2 = post_json(base .. "/api/rules/canary", b)
        assert.are.equal(400, c2, b)
        local now = get_json(base .. "/api/rules/diff")
        for k, v in pairs(canary) do assert.are.equal(v, now[k], b .. ": " .. k) end
      end
      assert.are.same(hist_before, get_json(base .. "/api/rules/history"))
      code, a = post_json(base .. "/api/rules/canary", '{"percent":100}')
      assert.are.equal(200, code, json.encode(a))
      assert.are.same({ ok = true, finished = true }, a)
      assert.are.equal(409, (curl("'" .. base .. "/api/rules/diff'")))
      local hist = get_json(base .. "/api/rules/history")
      assert.is_true(hist.live > 1)
      local states = {}
      for _, r in ipairs(hist.revisions) do states[r.state] = r end
      assert.is_truthy(states.promoted, json.encode(hist))
      assert.are.same({ ORDERS .. "/candidate" }, states.promoted.files)
    end)
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("needs a user for the views and admin for the actions", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
auth { users = {
  { user = "admin", password = "adminpw", admin = true },
  { user = "shop", password = "shoppw" },
} }
filter("orders.*", function(e) return true end)
]])
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local base = "http://127.0.0.1:" .. hport
    local ok, err = pcall(function()
      assert.are.equal(401, (curl("'" .. base .. "/api/rules/history'")))
      assert.are.equal(1, get_json(base .. "/api/rules/history", "-u shop:shoppw").live)
      -- a candidate that would load: what a refused request would have started
      h.write_file(dir .. "/candidate.lua", 'filter("orders.*", function(e) return false end)\n')
      local body = ('{"rev":1,"path":"%s","percent":10}'):format(dir .. "/candidate.lua")
      for _, action in ipairs({ "promote", "stop", "rollback", "shadow", "canary" }) do
        local url = base .. "/api/rules/" .. action
        assert.are.equal(401, (post_json(url, body)), action)
        assert.are.equal(403, (post_json(url, body, "-u shop:shoppw")), action)
        assert.are.equal(403, (post_json(url, body, "-u admin:adminpw -H 'Origin: http://evil.example'")), action)
      end
      assert.are.equal(409, (curl("-u shop:shoppw '" .. base .. "/api/rules/diff'"))) -- nothing was started
      -- admin passes: no shadow runs, rev 1 is already live
      assert.are.equal(409, (post_json(base .. "/api/rules/stop", "{}", "-u admin:adminpw")))
      assert.are.equal(400, (post_json(base .. "/api/rules/rollback", '{"rev":1}', "-u admin:adminpw")))
      local code, a = post_json(base .. "/api/rules/shadow", body, "-u admin:adminpw")
      assert.are.equal(200, code, json.encode(a))
      assert.are.equal("shadow", get_json(base .. "/api/rules/diff", "-u shop:shoppw").mode)
      code, a = post_json(base .. "/api/rules/canary", body, "-u admin:adminpw")
      assert.are.equal(200, code, json.encode(a))
      assert.are.equal(10, get_json(base .. "/api/rules/diff", "-u shop:shoppw").percent)
      local hist = get_json(base .. "/api/rules/history", "-u shop:shoppw")
      assert.are.equal("admin", hist.revisions[1].by, json.encode(hist))
    end)
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)
