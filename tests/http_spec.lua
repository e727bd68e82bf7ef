-- The HTTP face: CloudEvents ingestion, views, metrics, health, live tail.
local h = require "helpers"
local json = require "dkjson"

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
    local pid = h.proc.spawn({ "/usr/bin/curl", "-s", "-N", "--max-time", "2", base .. "/v1/tail?subject=tail.>" }, out)
    h.proc.sleep(0.4)
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
end)
