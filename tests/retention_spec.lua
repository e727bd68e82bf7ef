-- Interest and workqueue retention: the store removes a stored message
-- once the acks of the consumers the entry file declares allow it, and a
-- workqueue stream refuses consumers that would take the same messages.
local h = require "helpers"
local json = require "dkjson"

local function api(port, subject, body)
  local m = h.request(port, subject, body and json.encode(body) or "")
  return m and assert(json.decode(m.payload), subject .. ": not JSON: " .. m.payload)
end

local function state(port, name)
  local st = api(port, "$JS.API.STREAM.INFO." .. name).state
  return { st.messages, st.first_seq, st.last_seq }
end

local function publish(port, subject, n)
  for i = 1, n do
    local pa = assert(h.request(port, subject, subject .. " " .. i))
    assert(json.decode(pa.payload).seq, pa.payload)
  end
end

-- kill -9 and a start on the same data directory
local function restart(srv, data)
  srv:kill()
  local s = h.start_server { args = { "-c", srv.config, "--data", data } }
  s.dir, s.config = srv.dir, srv.config
  return s
end

describe("retention", function()
  local srv, data

  after_each(function()
    if srv then
      srv:kill()
      h.remove_tmpdir(srv.dir)
    end
    if data then h.remove_tmpdir(data) end
    srv, data = nil, nil
  end)

  it("workqueue: a message goes once the consumer that takes it acks it, also across a kill -9", function()
    data = h.make_tmpdir("ret-wq")
    srv = h.start_scripted([[
stream "jobs" { subjects = { "job.>" }, retention = "workqueue" }
consumer "a" { stream = "jobs", filter = "job.a" }
consumer "b" { stream = "jobs", filter = "job.b", deliver = "work.b" }
on("job.a", { consumer = "a" }, function(e) end)
]], { args = { "--data", data } })
    assert.are.equal("workqueue", api(srv.port, "$JS.API.STREAM.INFO.jobs").config.retention)
    publish(srv.port, "job.a", 3)
    publish(srv.port, "job.b", 2)
    -- a's handler acks its three; b's two wait for an ack on work.b
    assert(h.wait_until(function() return state(srv.port, "jobs")[1] == 2 end, 10),
      json.encode(state(srv.port, "jobs")))
    assert.are.same({ 2, 4, 5 }, state(srv.port, "jobs"))
    srv = restart(srv, data)
    assert.are.same({ 2, 4, 5 }, state(srv.port, "jobs"))
    -- b acks one of them
    local c = h.connect(srv.port)
    c:send("CONNECT {}\r\n")
    c:sub("work.b", "1")
    local msgs = c:collect(2, 5)
    assert.are.equal(2, #msgs)
    c:pub(msgs[1].reply, "+ACK")
    c:close()
    assert(h.wait_until(function() return state(srv.port, "jobs")[1] == 1 end, 10),
      json.encode(state(srv.port, "jobs")))
    assert.are.same({ 1, 5, 5 }, state(srv.port, "jobs"))
  end)

  it("workqueue: consumers that would take the same messages are refused with nats-server's words", function()
    data = h.make_tmpdir("ret-wq2")
    local base = 'stream "jobs" { subjects = { "job.>" }, retention = "workqueue" }\n' ..
        'consumer "a" { stream = "jobs", filter = "job.a", deliver = "w.a" }\n'
    srv = h.start_scripted(base, { args = { "--data", data } })
    for extra, words in pairs({
      ['consumer "b" { stream = "jobs", filter = "job.*", deliver = "w.b" }\n'] =
          "filtered consumer not unique on workqueue stream",
      ['consumer "b" { stream = "jobs", deliver = "w.b" }\n'] = "filtered consumer not unique on workqueue stream",
    }) do
      h.write_file(srv.config, base .. extra)
      local r = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", "")).payload)
      assert.is_false(r.ok, json.encode(r))
      assert.truthy(tostring(r.error):find(words, 1, true), r.error)
    end
    h.write_file(srv.config, 'stream "jobs" { subjects = { "job.>" }, retention = "workqueue" }\n' ..
      'consumer "a" { stream = "jobs", deliver = "w.a" }\nconsumer "b" { stream = "jobs", deliver = "w.b" }\n')
    local r = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", "")).payload)
    assert.truthy(tostring(r.error):find("multiple non-filtered consumers not allowed on workqueue stream", 1, true),
      json.encode(r))
    h.write_file(srv.config, base .. 'consumer "b" { stream = "jobs", filter = "job.b", deliver = "w.b", ' ..
      'deliver_policy = "new" }\n')
    r = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", "")).payload)
    assert.truthy(tostring(r.error):find("consumer must be deliver all on workqueue stream", 1, true), json.encode(r))
    -- apart, they are fine
    h.write_file(srv.config, base .. 'consumer "b" { stream = "jobs", filter = "job.b", deliver = "w.b" }\n')
    r = json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", "")).payload)
    assert.is_true(r.ok, json.encode(r))
  end)

  it("interest: a message goes once every consumer that takes it has acked it, at once when none does", function()
    data = h.make_tmpdir("ret-int")
    srv = h.start_scripted([[
stream "ev" { subjects = { "ev.>" }, retention = "interest" }
consumer "all" { stream = "ev" }
consumer "slow" { stream = "ev", filter = "ev.x", deliver = "slow.x" }
on("ev.>", { consumer = "all" }, function(e) end)
]], { args = { "--data", data } })
    publish(srv.port, "ev.x", 2) -- both take these: "slow" has not acked them
    publish(srv.port, "ev.y", 2) -- only "all" takes these
    assert(h.wait_until(function() return state(srv.port, "ev")[1] == 2 end, 10),
      json.encode(state(srv.port, "ev")))
    assert.are.same({ 2, 1, 4 }, state(srv.port, "ev"))
    local c = h.connect(srv.port)
    c:send("CONNECT {}\r\n")
    c:sub("slow.x", "1")
    local msgs = c:collect(2, 5)
    assert.are.equal(2, #msgs)
    for _, m in ipairs(msgs) do c:pub(m.reply, "+ACK") end
    c:close()
    assert(h.wait_until(function() return state(srv.port, "ev")[1] == 0 end, 10),
      json.encode(state(srv.port, "ev")))
    srv = restart(srv, data)
    assert.are.same({ 0, 5, 4 }, state(srv.port, "ev"))
    -- a subject no consumer takes is not kept at all
    h.write_file(srv.config, 'stream "ev" { subjects = { "ev.>" }, retention = "interest" }\n' ..
      'consumer "slow" { stream = "ev", filter = "ev.x", deliver = "slow.x" }\n')
    assert(json.decode(assert(h.request(srv.port, "$TIDE.ADMIN.RELOAD", "")).payload).ok)
    publish(srv.port, "ev.z", 1)
    assert.are.same({ 0, 6, 5 }, state(srv.port, "ev"))
  end)
end)
