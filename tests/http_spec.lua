-- The HTTP face: CloudEvents ingestion, views, metrics, health, live tail.
local h = require "helpers"
local json = require "dkjson"
local socket = require "socket"

local srv, base

-- curl: returns status, body
local function curl(args)
  local rc, out = h.sh("curl -s -o /dev/stdout -w '\\n%{http_code}' --max-time 5 " .. args)
  assert.are.equal(0, rc, out)
  local body, code = out:match("^(.*)\n(%d+)%s*$")
  return tonumber(code), body
end

local function post(path, ctype, body, extra)
  local f = os.tmpname()
  local fh = io.open(f, "w")
  fh:write(body)
  fh:close()
  local code, out = curl(("-X POST %s%s -H 'Content-Type: %s' %s --data-binary @%s"):format(base, path, ctype, extra or "", f))
  os.remove(f)
  return code, out
end

setup(function()
  local dir = h.make_tmpdir()
  h.write_file(dir .. "/tide.lua", [[
filter("order.created", function(e) return e.data.amount > 100 end)
]])
  local hport = h.free_port()
  srv = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport, "--max-payload", "2048" } }
  srv.dir = dir
  base = "http://127.0.0.1:" .. hport
end)

teardown(function()
  assert.are.equal("exited", (srv:stop()))
  h.remove_tmpdir(srv.dir)
end)

describe("HTTP views", function()
  it("answers /healthz, /readyz, /v1/stats, /v1/rules, /v1/streams", function()
    local code, body = curl(base .. "/healthz")
    assert.are.equal(200, code)
    assert.are.equal("ok", json.decode(body).status)
    code, body = curl(base .. "/readyz")
    assert.are.equal(200, code)
    code, body = curl(base .. "/v1/stats")
    assert.are.equal(200, code)
    assert.is_true(json.decode(body).scripts.loaded)
    code, body = curl(base .. "/v1/rules")
    assert.are.equal(200, code)
    local rules = json.decode(body)
    assert.are.equal("filter", rules[1].kind)
    assert.are.equal("order.created", rules[1].pattern)
    code, body = curl(base .. "/v1/streams")
    assert.are.equal(200, code)
    assert.are.equal("[]", body)
  end)

  it("says 404 and 405 with a JSON error", function()
    local code, body = curl(base .. "/nope")
    assert.are.equal(404, code)
    assert.are.equal(404, json.decode(body).error.code)
    code = curl("-X DELETE " .. base .. "/v1/stats")
    assert.are.equal(405, code)
  end)
end)

describe("CloudEvents over HTTP", function()
  local c
  before_each(function()
    c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\nSUB order.> 1\r\nSUB raw.> 2\r\n')
    assert(c:ping())
  end)
  after_each(function() c:close() end)

  it("POST /v1/publish/<subject> wraps a plain JSON body in an envelope", function()
    local code, body = post("/v1/publish/order.created", "application/json", '{"amount":500,"big":12345678901234567890}')
    assert.are.equal(202, code, body)
    local m = assert(c:msg())
    assert.are.equal("order.created", m.subject)
    local env = json.decode(m.payload)
    assert.are.equal("1.0", env.specversion)
    assert.are.equal("order.created", env.type)
    assert.are.equal("http", env.source)
    assert.is_string(env.id)
    assert.matches('"big":12345678901234567890', m.payload)
  end)

  it("reads binary mode (ce-* headers) and keeps every attribute", function()
    local code, body = post("/", "application/json", '{"amount":700}',
      "-H 'ce-specversion: 1.0' -H 'ce-id: b-1' -H 'ce-type: order.created' -H 'ce-source: shop' " ..
      "-H 'ce-subject: orders/7' -H 'ce-traceparent: 00-abc'")
    assert.are.equal(202, code, body)
    local env = json.decode(assert(c:msg()).payload)
    assert.same({ specversion = "1.0", id = "b-1", type = "order.created", source = "shop", subject = "orders/7",
                  traceparent = "00-abc", datacontenttype = "application/json", data = { amount = 700 } }, env)
  end)

  it("reads structured mode, and batches", function()
    local code = post("/v1/events", "application/cloudevents+json",
      '{"specversion":"1.0","id":"s-1","source":"x","type":"order.created","data":{"amount":900}}')
    assert.are.equal(202, code)
    assert.are.equal("s-1", json.decode(assert(c:msg()).payload).id)
    local body
    code, body = post("/", "application/cloudevents-batch+json",
      '[{"specversion":"1.0","id":"b1","source":"x","type":"order.created","data":{"amount":101}},' ..
      '{"specversion":"1.0","id":"b2","source":"x","type":"raw.thing","data":"t"}]')
    assert.are.equal(202, code)
    assert.are.equal(2, json.decode(body).accepted)
    assert.are.equal("b1", json.decode(assert(c:msg()).payload).id)
    local m = assert(c:msg())
    assert.are.equal("raw.thing", m.subject)
  end)

  it("goes through the pipeline: the filter drops a small order", function()
    assert.are.equal(202, (post("/v1/publish/order.created", "application/json", '{"amount":5}')))
    assert.same({}, c:ping()) -- nothing delivered
  end)

  it("refuses bad input with the right status and delivers nothing", function()
    local cases = {
      { "/v1/publish/order.created", "application/json", "{not json", 400, "not valid JSON" },
      { "/", "application/cloudevents+json", '{"specversion":"1.0","source":"x","type":"t"}', 400, "'id'" },
      { "/", "application/cloudevents-batch+json", '[{"specversion":"1.0","id":"1","source":"x","type":"t"},{}]',
        400, "event 1" },
      { "/", "text/csv", "a,b", 415, "CloudEvent" },
      { "/v1/publish/order.created", "text/plain", "x", 415, "application/json" },
      { "/v1/publish/bad..subject", "application/json", "{}", 400, "not a valid subject" },
      { "/v1/publish/order.created", "application/json", '{"pad":"' .. string.rep("x", 3000) .. '"}', 413, "max_payload" },
    }
    for _, t in ipairs(cases) do
      local code, body = post(t[1], t[2], t[3])
      assert.are.equal(t[4], code, t[1] .. " " .. t[2] .. ": " .. tostring(body))
      assert.matches(t[5], json.decode(body).error.description)
    end
    assert.same({}, c:ping())
    -- and the server still serves
    assert.are.equal(202, (post("/v1/publish/order.created", "application/json", '{"amount":200}')))
    assert(c:msg())
  end)
end)

describe("GET /metrics", function()
  it("is valid Prometheus text with the counts of a known workload", function()
    local before = {}
    local function scrape()
      local code, body = curl(base .. "/metrics")
      assert.are.equal(200, code)
      local v, types = {}, {}
      for line in body:gmatch("[^\n]+") do
        if line:match("^# TYPE ") then
          local name, typ = line:match("^# TYPE (%S+) (%S+)$")
          assert(name and (typ == "counter" or typ == "gauge" or typ == "histogram"), line)
          types[name] = typ
        elseif not line:match("^# HELP ") then
          local name, labels, value = line:match('^([%a_:][%w_:]*)(%b{}) (%S+)$')
          if not name then
            name, value = line:match("^([%a_:][%w_:]*) (%S+)$")
            labels = ""
          end
          assert(name and tonumber(value), "not a sample line: " .. line)
          v[name .. labels] = tonumber(value)
        end
      end
      for name, typ in pairs(types) do
        if typ == "counter" then assert.matches("_total$", name) end
      end
      return v
    end
    before = scrape()
    for i = 1, 5 do post("/v1/publish/order.created", "application/json", ('{"amount":%d}'):format(i * 50)) end
    local after = scrape()
    assert.are.equal(5, after.tide_http_events_total - before.tide_http_events_total)
    local key = 'tide_rule_calls_total{kind="filter",pattern="order.created",where="tide.lua:1"}'
    assert.are.equal(5, after[key] - (before[key] or 0))
    key = 'tide_rule_dropped_total{kind="filter",pattern="order.created",where="tide.lua:1"}'
    assert.are.equal(2, after[key] - (before[key] or 0)) -- amounts 50 and 100
    assert.are.equal(5, after.tide_script_call_seconds_count - before.tide_script_call_seconds_count)
    assert.are.equal(after.tide_script_call_seconds_count, after['tide_script_call_seconds_bucket{le="+Inf"}'])
    assert.are.equal(1, after.tide_script_last_reload_success)
  end)
end)

describe("GET /v1/tail", function()
  it("streams matching events as Server-Sent Events", function()
    local out = h.tmpdir .. "/tail-" .. h.free_port() .. ".txt"
    local pid = h.proc.spawn({ "/usr/bin/curl", "-s", "-N", "--max-time", "4", base .. "/v1/tail?subject=tail.>" }, out)
    -- the tail's subscription is made before its first line is written
    assert(h.wait_until(function() return (h.read_file(out) or ""):find("tail of", 1, true) end, 5),
      "the tail did not open")
    local c = h.connect(srv.port)
    c:send("PUB tail.one 7\r\n{\"n\":1}\r\nPUB other.x 1\r\nx\r\nPUB tail.two 3\r\nabc\r\n")
    assert(c:ping())
    c:close()
    h.proc.wait(pid, 5)
    local f = io.open(out)
    local text = f and f:read("a") or ""
    if f then f:close() end
    os.remove(out)
    assert.matches('event: message\ndata: {"subject":"tail.one","data":{"n":1}}', text)
    assert.matches('event: message\ndata: {"subject":"tail.two","payload":"abc"}', text)
    assert.is_nil(text:match("other.x"))
    local code = curl(base .. "/v1/tail?subject=bad..x")
    assert.are.equal(400, code)
  end)
end)

describe("a real CloudEvents client", function()
  it("(the cloudevents SDK, nats.js, a Prometheus parser) sees attributes intact and metrics right", function()
    local ready, out = h.npm_ready()
    assert(ready, "npm ci failed:\n" .. tostring(out))
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", 'filter("sdk.>", function(e) return e.data.amount > 0 end)\n')
    local hport = h.free_port()
    local s = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local rc
    rc, out = h.sh(("timeout -k 5 40 node %s/tests/interop/node/http_ce.mjs %d %d"):format(h.root, s.port, hport))
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert.are.equal(0, rc, out)
    assert.is_nil(out:match("not ok"), out)
    assert.matches("\n1%.%.(%d+)", out)
    assert.is_true(tonumber(out:match("\n1%.%.(%d+)")) >= 24, out)
  end)
end)

describe("http { binary = ... }", function()
  it("delivers matching subjects with ce-* headers and the data as payload, and scripts see the same event", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
http { binary = { "bin.>" } }
route("bin.order", function(e)
  e.headers["X-Seen"] = e.id .. "/" .. e.source .. "/" .. tostring(e.data.amount)
end)
]])
    local hport = h.free_port()
    local s = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local ok, err = pcall(function()
    local c = h.connect(s.port)
    c:send('CONNECT {"headers":true}\r\nSUB bin.> 1\r\nSUB plain.> 2\r\n')
    assert(c:ping())
    local f = os.tmpname()
    local fh = io.open(f, "w")
    fh:write('{"specversion":"1.0","id":"e-1","source":"shop","type":"bin.order","traceid":"t1",' ..
             '"datacontenttype":"application/json","data":{"amount":12345678901234567890}}')
    fh:close()
    local rc, out = h.sh(("curl -s -w '%%{http_code}' -X POST http://127.0.0.1:%d/ " ..
      "-H 'Content-Type: application/cloudevents+json' --data-binary @%s"):format(hport, f))
    os.remove(f)
    assert.matches("202$", out)
    local m = assert(c:msg())
    assert.are.equal("HMSG", m.op)
    local _, hd = h.parse_headers(m.headers)
    assert.are.equal("e-1", hd["ce-id"])
    assert.are.equal("shop", hd["ce-source"])
    assert.are.equal("bin.order", hd["ce-type"])
    assert.are.equal("1.0", hd["ce-specversion"])
    assert.are.equal("t1", hd["ce-traceid"])
    assert.are.equal("application/json", hd["content-type"])
    assert.are.equal('{"amount":12345678901234567890}', m.payload)
    assert.are.equal("e-1/shop/1.2345678901235e+19", hd["X-Seen"])
    -- a subject not listed arrives as a structured envelope
    rc, out = h.sh(("curl -s -X POST http://127.0.0.1:%d/v1/publish/plain.x -H 'Content-Type: application/json' -d '{\"a\":1}'")
      :format(hport))
    local p = assert(c:msg())
    assert.are.equal("MSG", p.op)
    assert.matches('"specversion":"1.0"', p.payload)
    c:close()
    end)
    assert.are.equal("exited", (s:stop())) -- stopped whatever happened above
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("puts a number attribute of any length whole into its ce-* header", function()
    -- Numbers keep their text (json.h): 300 digits are 300 bytes of header.
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[ http { binary = { "bin.>" } } ]])
    local hport = h.free_port()
    local s = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local ok, err = pcall(function()
      local c = h.connect(s.port)
      c:send('CONNECT {"headers":true}\r\nSUB bin.> 1\r\n')
      assert(c:ping())
      local long, frac = ("7"):rep(300), "-0." .. ("1"):rep(200) .. "e-5"
      local f = os.tmpname()
      h.write_file(f, ('{"specversion":"1.0","id":"e-1","source":"s","type":"bin.n","n":%s,"f":%s,"data":{}}')
        :format(long, frac))
      local code = curl(("-X POST http://127.0.0.1:%d/ -H 'Content-Type: application/cloudevents+json' " ..
        "--data-binary @%s"):format(hport, f))
      os.remove(f)
      assert.are.equal(202, code)
      local m = assert(c:msg())
      assert.are.equal("HMSG", m.op)
      local _, hd = h.parse_headers(m.headers)
      assert.are.equal(long, hd["ce-n"])
      assert.are.equal(frac, hd["ce-f"])
      assert.are.equal("e-1", hd["ce-id"])
      c:close()
    end)
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("leaves out an attribute whose name cannot be a header name, rather than forge header lines", function()
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[ http { binary = { "bin.>" } } ]])
    local hport = h.free_port()
    local s = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    local ok, err = pcall(function()
      local c = h.connect(s.port)
      c:send('CONNECT {"headers":true}\r\nSUB bin.> 1\r\n')
      assert(c:ping())
      local f = os.tmpname()
      h.write_file(f, '{"specversion":"1.0","id":"e-1","source":"s","type":"bin.n","traceid":"t1",' ..
        '"x\\r\\nNats-Msg-Id":"forged","a b":"1","c:d":"2","":"3","data":{}}')
      local code = curl(("-X POST http://127.0.0.1:%d/ -H 'Content-Type: application/cloudevents+json' " ..
        "--data-binary @%s"):format(hport, f))
      os.remove(f)
      assert.are.equal(202, code)
      local m = assert(c:msg())
      assert.are.equal("HMSG", m.op)
      local status, hd = h.parse_headers(m.headers)
      assert.are.equal("NATS/1.0", status)
      assert.is_nil(hd["Nats-Msg-Id"])
      assert.are.equal("t1", hd["ce-traceid"])
      assert.are.equal("e-1", hd["ce-id"])
      for line in m.headers:gmatch("([^\r\n]*)\r\n") do
        if line ~= "" and line ~= "NATS/1.0" then
          assert.matches("^[%w!#$%%&'*+.^_`|~-]+: ", line)
        end
      end
      c:close()
    end)
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)

-- HTTP/1.1 on one socket (keep-alive): returns status, body, headers.
local function http_req(s, method, path, headers, body)
  body = body or ""
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1", "Content-Length: " .. #body }
  for _, kv in ipairs(headers or {}) do lines[#lines + 1] = kv[1] .. ": " .. kv[2] end
  assert(s:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body))
  local status = assert(s:receive("*l"))
  local code = tonumber(status:match("^HTTP/1%.1 (%d+) "))
  local hd = {}
  while true do
    local l = assert(s:receive("*l"))
    if l == "" or l == "\r" then break end
    local k, v = l:match("^([^:]+):%s*(.-)\r?$")
    hd[k:lower()] = v
  end
  local n = tonumber(hd["content-length"] or "0")
  local b = n > 0 and assert(s:receive(n)) or ""
  return code, b, hd
end

-- Prometheus text through the npm parser: { name = family }, failing on a
-- name that comes back as two families (samples of a metric not together).
local function parse_metrics(text)
  local ready, out = h.npm_ready()
  assert(ready, "npm ci failed:\n" .. tostring(out))
  local f = os.tmpname()
  h.write_file(f, text)
  local rc
  rc, out = h.sh(("cd %s/tests/interop/node && node -e 'const p = require(\"parse-prometheus-text-format\"); " ..
    "console.log(JSON.stringify(p(require(\"fs\").readFileSync(process.argv[1], \"utf8\"))))' %s"):format(h.root, f))
  os.remove(f)
  assert.are.equal(0, rc, out)
  local by = {}
  for _, fam in ipairs(assert(json.decode(out), out)) do
    assert.is_nil(by[fam.name], fam.name .. " appears as two families: its samples are not together")
    by[fam.name] = fam
  end
  return by
end

-- The HTTP listener opens after the NATS one start_server waits for.
local function wait_http(port)
  assert(h.wait_until(function()
    local t = socket.tcp()
    t:settimeout(0.2)
    local ok = t:connect("127.0.0.1", port)
    t:close()
    return ok
  end, 10), "no HTTP listener on port " .. port)
end

local function sample(fam, labels)
  for _, m in ipairs(fam and fam.metrics or {}) do
    local ok = true
    for k, v in pairs(labels) do ok = ok and m.labels and m.labels[k] == v end
    if ok then return tonumber(m.value) end
  end
end

describe("HTTP into streams", function()
  local s, hport, dir
  setup(function()
    dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", [[
stream "orders" { subjects = { "order.>" } }
consumer "billing"  { stream = "orders", deliver = "billing.orders" }
consumer "shipping" { stream = "orders", filter = "order.created", deliver = "shipping.orders" }
filter("order.ignored", function(e) return false end)
]])
    hport = h.free_port()
    s = h.start_server { args = { "-c", dir .. "/tide.lua", "--http", "127.0.0.1:" .. hport } }
    wait_http(hport)
  end)
  teardown(function()
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
  end)

  it("answers 201 with the PubAck once stored, 409 on a conflict, 202 when no stream captures, on one connection", function()
    local sock = socket.tcp()
    sock:settimeout(5)
    assert(sock:connect("127.0.0.1", hport))
    local JSON = { { "Content-Type", "application/json" } }
    local code, body = http_req(sock, "POST", "/v1/publish/order.created", JSON, '{"n":1}')
    assert.are.equal(201, code, body)
    assert.same({ stream = "orders", seq = 1 }, json.decode(body))
    -- binary mode: a repeated ce-source + ce-id is a duplicate of the first
    local ce = { { "Content-Type", "application/json" }, { "ce-specversion", "1.0" }, { "ce-id", "d-1" },
                 { "ce-source", "shop" }, { "ce-type", "order.paid" } }
    code, body = http_req(sock, "POST", "/", ce, '{"n":2}')
    assert.are.equal(201, code, body)
    assert.same({ stream = "orders", seq = 2 }, json.decode(body))
    code, body = http_req(sock, "POST", "/", ce, '{"n":2}')
    assert.are.equal(201, code, body)
    assert.same({ stream = "orders", seq = 2, duplicate = true }, json.decode(body))
    -- expected last sequence: wrong, then right
    code, body = http_req(sock, "POST", "/v1/publish/order.created",
      { JSON[1], { "Nats-Expected-Last-Sequence", "7" } }, '{"n":3}')
    assert.are.equal(409, code, body)
    assert.same({ stream = "orders", error = { code = 409, err_code = 10071, description = "wrong last sequence: 2" } },
      json.decode(body))
    code, body = http_req(sock, "POST", "/v1/publish/order.created",
      { JSON[1], { "Nats-Expected-Last-Sequence", "2" } }, '{"n":3}')
    assert.are.equal(201, code, body)
    assert.same({ stream = "orders", seq = 3 }, json.decode(body))
    -- not captured, or dropped by a filter before the stream: 202 as before
    code, body = http_req(sock, "POST", "/v1/publish/other.thing", JSON, '{"n":4}')
    assert.are.equal(202, code, body)
    assert.same({ accepted = 1 }, json.decode(body))
    code, body = http_req(sock, "POST", "/v1/publish/order.ignored", JSON, '{"n":5}')
    assert.are.equal(202, code, body)
    -- a batch: one PubAck per event, null for the one no stream took
    code, body = http_req(sock, "POST", "/", { { "Content-Type", "application/cloudevents-batch+json" } },
      '[{"specversion":"1.0","id":"b-1","source":"shop","type":"order.created","data":{"n":6}},' ..
      '{"specversion":"1.0","id":"b-2","source":"shop","type":"other.thing","data":{"n":7}},' ..
      '{"specversion":"1.0","id":"d-1","source":"shop","type":"order.paid","data":{"n":2}}]')
    assert.are.equal(201, code, body)
    assert.are.equal('{"accepted":3,"acks":[{"stream":"orders","seq":4},null,{"stream":"orders","seq":2,"duplicate":true}]}',
      body)
    code, body = http_req(sock, "POST", "/", { { "Content-Type", "application/cloudevents-batch+json" },
      { "Nats-Msg-Id", "x" } }, "[]")
    assert.are.equal(400, code)
    assert.matches("not a batch", json.decode(body).error.description)
    sock:close()
    -- what the 201s said is what is stored
    local m = assert(h.request(s.port, "$TIDE.ADMIN.STREAM.GET", '{"stream":"orders","seq":3}'))
    local rec = json.decode(m.payload)
    assert.are.equal("order.created", rec.subject)
    assert.are.equal(3, rec.data.data.n)
    assert.are.equal("2", rec.headers["Nats-Expected-Last-Sequence"])
  end)

  it("GET /v1/streams and /v1/consumers give the admin JSON", function()
    local code, body = curl(("http://127.0.0.1:%d/v1/streams"):format(hport))
    assert.are.equal(200, code)
    local st = json.decode(body)
    assert.are.equal(1, #st)
    assert.are.equal("orders", st[1].name)
    assert.are.equal(4, st[1].messages)
    assert.are.equal(4, st[1].stored)
    assert.are.equal(2, st[1].duplicates)
    assert.are.equal(1, st[1].conflicts)
    assert.are.equal(2, st[1].consumers)
    local admin = json.decode(assert(h.request(s.port, "$TIDE.ADMIN.STREAM.LS", "")).payload)
    assert.are.equal(admin[1].bytes, st[1].bytes)
    code, body = curl(("http://127.0.0.1:%d/v1/consumers"):format(hport))
    assert.are.equal(200, code)
    local cs = json.decode(body)
    assert.are.equal(2, #cs)
    assert.are.equal("billing", cs[1].name)
    assert.are.equal("shipping", cs[2].name)
    assert.are.equal("order.created", cs[2].filter)
    assert.are.equal(4, cs[1].num_pending)
    code, body = curl(("http://127.0.0.1:%d/readyz"):format(hport))
    assert.are.equal(200, code, body)
  end)

  it("/metrics has the stream and consumer counters of that workload, each metric's samples together", function()
    local code, body = curl(("http://127.0.0.1:%d/metrics"):format(hport))
    assert.are.equal(200, code)
    local m = parse_metrics(body)
    local o = { stream = "orders" }
    assert.are.equal(4, sample(m.tide_stream_messages, o))
    assert.are.equal(4, sample(m.tide_stream_last_seq, o))
    assert.are.equal(4, sample(m.tide_stream_stored_total, o))
    assert.are.equal(2, sample(m.tide_stream_duplicates_total, o))
    assert.are.equal(1, sample(m.tide_stream_conflicts_total, o))
    assert.are.equal(0, sample(m.tide_stream_store_errors_total, o))
    assert.are.equal("COUNTER", m.tide_stream_stored_total.type)
    assert.are.equal("GAUGE", m.tide_stream_messages.type)
    for _, name in ipairs { "tide_consumer_pending", "tide_consumer_ack_pending", "tide_consumer_delivered_total",
                            "tide_consumer_redelivered_total", "tide_consumer_acked_total",
                            "tide_consumer_dead_lettered_total" } do
      local fam = m[name]
      assert(fam, name .. " is missing")
      assert.are.equal(name:match("_total$") and "COUNTER" or "GAUGE", fam.type, name)
      assert.is_true(#fam.help > 0, name)
      assert.are.equal(2, #fam.metrics, name) -- billing and shipping, in one family
    end
    assert.are.equal(4, sample(m.tide_consumer_pending, { consumer = "billing", stream = "orders" }))
    assert.are.equal(3, sample(m.tide_consumer_pending, { consumer = "shipping" })) -- the order.created ones
    assert.are.equal(0, sample(m.tide_consumer_delivered_total, { consumer = "billing" }))
  end)
end)

describe("HTTP when the store fails", function()
  local function faulty(fault, config)
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", 'stream "orders" { subjects = { "order.>" } }\n' .. (config or ""))
    local port, hport = h.free_port(), h.free_port()
    local s = h.start_server { bin = "/usr/bin/env", port = port,
      cmd = { "TIDE_FAULT=" .. fault, h.bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", dir .. "/tide.lua",
              "--http", "127.0.0.1:" .. hport } }
    wait_http(hport)
    return s, "http://127.0.0.1:" .. hport, dir
  end

  it("answers 503 with the stream's error when it cannot store", function()
    local s, b, dir = faulty("write:1+:ENOSPC")
    local ok, err = pcall(function()
      local f = os.tmpname()
      h.write_file(f, '{"n":1}')
      local code, body = curl(("-X POST %s/v1/publish/order.created -H 'Content-Type: application/json' --data-binary @%s")
        :format(b, f))
      os.remove(f)
      assert.are.equal(503, code, body)
      assert.same({ stream = "orders", error = { code = 503, err_code = 10077,
        description = "stream orders: storing failed: No space left on device" } }, json.decode(body))
      local st = json.decode(select(2, curl(b .. "/v1/streams")))
      assert.are.equal(0, st[1].messages)
      assert.are.equal(1, st[1].store_errors)
      local _, metrics = curl(b .. "/metrics")
      assert.matches('\ntide_stream_store_errors_total{stream="orders"} 1\n', metrics)
      assert.matches('\ntide_http_rejected_total 1\n', metrics)
    end)
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("answers 504 when the PubAck does not come within http.ack_timeout, keeps serving, and stores the event once",
    function()
    -- every sync hangs 1.5 s; the request waits 0.3 s for its PubAck
    local s, b, dir = faulty("stall:sync:1+:1500", 'http { ack_timeout = "300ms" }\n')
    local ok, err = pcall(function()
      local t0 = h.proc.now()
      local code, body = curl(("-X POST %s/v1/publish/order.created -H 'Content-Type: application/json' -d '{\"n\":1}'")
        :format(b))
      local waited = h.proc.now() - t0
      assert.are.equal(504, code, body)
      assert.are.equal("no PubAck within 0.3 s (0 of 1): the event may or may not be stored; retry with the same ce-id",
        json.decode(body).error.description)
      assert.is_true(waited < 1.4, "answered after " .. waited .. " s, not at the timeout")
      -- the loop is not the one waiting: other requests are answered at once
      t0 = h.proc.now()
      code = curl(b .. "/readyz")
      assert.are.equal(200, code)
      assert.is_true(h.proc.now() - t0 < 1, "/readyz took " .. (h.proc.now() - t0) .. " s")
      -- once the disk answers, the event is there, once; the late PubAck goes nowhere
      local st
      assert.is_true(h.wait_until(function()
        st = json.decode(select(2, curl(b .. "/v1/streams")))
        return st[1].messages == 1
      end, 10), "the event was not stored once the sync returned")
      assert.are.equal(1, st[1].last_seq)
    end)
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)

  it("/readyz says 503 while a stream's storage has failed", function()
    -- the write fails, taking it back fails, and reopening fails: the log waits to reopen
    local s, b, dir = faulty("write:1+:ENOSPC,truncate:1+:EIO,open:2+:EIO")
    local ok, err = pcall(function()
      local code, body = curl(b .. "/readyz")
      assert.are.equal(200, code, body)
      code, body = curl(("-X POST %s/v1/publish/order.created -H 'Content-Type: application/json' -d '{}'"):format(b))
      assert.are.equal(503, code, body)
      code, body = curl(b .. "/readyz")
      assert.are.equal(503, code, body)
      assert.are.equal("storage is not writable: stream orders failed and waits to reopen",
        json.decode(body).error.description)
    end)
    assert.are.equal("exited", (s:stop()))
    h.remove_tmpdir(dir)
    assert(ok, err)
  end)
end)
