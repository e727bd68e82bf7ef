-- JetStream interop: real JetStream client code against tide's streams and
-- consumers.  Two programs run their checks against a live `tide serve -c`
-- and report TAP lines:
--   * the C client (libnats):       build/interop_js_c <port>
--   * the Node client (npm "nats"): node tests/interop/node/js.mjs <port>
-- Each gets a fresh server (fresh data directory: the checks expect exact
-- sequences) with the streams and consumers of CONFIG.  After a run, tide's
-- own admin view of the streams and consumers must agree with what the
-- client did.
--
-- The same programs pass against nats-server 2.9.10; with --create they make
-- these streams and consumers through the JetStream API first:
--   nats-server -a 127.0.0.1 -p PORT -js -sd DIR &
--   build/interop_js_c PORT --create      (or: node tests/interop/node/js.mjs PORT --create)
local h = require "helpers"
local json = require "dkjson"

local ROOT = h.root
local C_BIN = ROOT .. "/build/interop_js_c"
local NODE_DIR = ROOT .. "/tests/interop/node"

-- No program may take longer than this, whatever the server does (each one
-- also stops itself before: its global timer is 50 s; a full run takes ~10 s).
local PROGRAM_TIMEOUT = 55

-- What the programs expect (see their header comments for the same list).
local CONFIG = [[
stream "PUBS"  { subjects = { "js.pub.>" } }
stream "ASYNC" { subjects = { "js.async.>" } }
stream "WORK"  { subjects = { "js.work.>" } }

consumer "acks"  { stream = "WORK", filter = "js.work.acks",  deliver = "js.dlv.acks",  ack_wait = "1s" }
consumer "naks"  { stream = "WORK", filter = "js.work.naks",  deliver = "js.dlv.naks",  ack_wait = "5s" }
consumer "wpis"  { stream = "WORK", filter = "js.work.wpis",  deliver = "js.dlv.wpis",  ack_wait = "1s" }
consumer "terms" { stream = "WORK", filter = "js.work.terms", deliver = "js.dlv.terms", ack_wait = "1s" }
]]

-- The TAP lines each program must print, in order.
local C_CHECKS = {
  "js_Publish: PubAcks from stream PUBS with sequences 1, 2, 3, 4",
  "js_Publish with MsgId: a repeated id is a duplicate with the first seq",
  "js_Publish with ExpectLastSeq: a mismatch is JetStream error 10071",
  "js_Publish with ExpectLastSubjectSeq: per-subject check",
  "js_Publish with ExpectStream: a mismatch is JetStream error 10060",
  "js_PublishAsync: 1000 in flight acked in order, repeated ids duplicates",
  "push consumer: metadata, Ack and AckSync, no redelivery after ack",
  "push consumer: Nak redelivers now, NakWithDelay after the delay",
  "push consumer: InProgress (+WPI) holds redelivery past ack_wait",
  "push consumer: Term stops redelivery, an unacked message comes back",
}

local NODE_CHECKS = {
  "js.publish: PubAcks from stream PUBS with sequences 1, 2, 3, 4",
  "js.publish with msgID: a repeated id is a duplicate with the first seq",
  "js.publish with expect.lastSequence: a mismatch is JetStream error 10071",
  "js.publish with expect.lastSubjectSequence: per-subject check",
  "js.publish with expect.streamName: a mismatch is JetStream error 10060",
  "js.publish: 1000 in flight acked in order, repeated ids duplicates",
  "push consumer: info, ack() and ackAck(), no redelivery after ack",
  "push consumer: nak() redelivers now, nak(800) after the delay",
  "push consumer: working() holds redelivery past ack_wait",
  "push consumer: term() stops redelivery, an unacked message comes back",
}

-- tide's view once every check has run: both programs do the very same
-- things, so the same numbers.
local STREAMS = {
  -- 12 stored; 3 repeated ids; 4 refused expectations (2 last seq, 1 last
  -- subject seq, 1 stream)
  PUBS = { messages = 12, first_seq = 1, last_seq = 12, duplicates = 3, conflicts = 4 },
  ASYNC = { messages = 1000, first_seq = 1, last_seq = 1000, duplicates = 10, conflicts = 0 },
  WORK = { messages = 8, first_seq = 1, last_seq = 8, duplicates = 0, conflicts = 0, consumers = 4 },
}
local CONSUMERS = {
  acks = { delivered = 3, redelivered = 0, acked = 3, naked = 0, terminated = 0, num_ack_pending = 0, num_pending = 0 },
  naks = { delivered = 3, redelivered = 2, acked = 1, naked = 2, terminated = 0, num_ack_pending = 0, num_pending = 0 },
  wpis = { delivered = 1, redelivered = 0, acked = 1, naked = 0, terminated = 0, num_ack_pending = 0, num_pending = 0 },
  terms = { delivered = 3, redelivered = 1, acked = 1, naked = 0, terminated = 1, num_ack_pending = 0,
            num_pending = 0 },
}

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end


-- Runs a shell command; returns ok, how ("exit"/"signal"), code, output
-- (stdout and stderr together).
local function run(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1", "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  return ok == true, how, code, out
end

local function tail(s, n)
  if #s <= n then return s end
  return "..." .. s:sub(-n)
end

-- The TAP lines of a run: lines[n] = {ok = bool, name = ..., why = ...}, and
-- the plan (N of "1..N"), and whether it bailed out.
local function parse_tap(out)
  local lines, plan, bail = {}, nil, nil
  for line in out:gmatch("[^\r\n]+") do
    local ok, n, rest = true, line:match("^ok (%d+) %- (.*)$")
    if not n then
      ok, n, rest = false, line:match("^not ok (%d+) %- (.*)$")
    end
    if n then
      local name, why = rest:match("^(.-) # (.*)$")
      lines[tonumber(n)] = { ok = ok, name = name or rest, why = why }
    elseif line:match("^1%.%.%d+%s*$") then
      plan = tonumber(line:match("^1%.%.(%d+)"))
    elseif line:match("^Bail out!") then
      bail = line
    end
  end
  return lines, plan, bail
end

local function admin(srv, verb, name)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN." .. verb, name))
  return assert(json.decode(m.payload), verb .. " " .. name .. ": not JSON: " .. m.payload)
end

-- One client: a fresh tide with CONFIG, the program run once, then a test
-- per expected TAP line, the run's end, tide's admin view, a clean stop.
local function client_suite(label, prepare, cmd, checks)
  local srv, result

  local function context()
    return string.format("%s against tide on port %d\n--- program output ---\n%s\n--- server log ---\n%s",
      label, srv.port, result and result.out or "(not run)", tail(srv:log(), 4000))
  end

  setup(function()
    prepare()
    srv = h.start_scripted(CONFIG, { args = { "--no-http" } })
    local ok, how, code, out = run(string.format("timeout -k 5 %d %s %d", PROGRAM_TIMEOUT, cmd, srv.port))
    local lines, plan, bail = parse_tap(out)
    result = { ok = ok, how = how, code = code, out = out, lines = lines, plan = plan, bail = bail }
  end)

  teardown(function()
    if srv then
      srv:kill()
      h.remove_tmpdir(srv.dir)
    end
  end)

  for i, name in ipairs(checks) do
    it(string.format("check %d: %s", i, name), function()
      local l = result.lines[i]
      assert(l, string.format("no TAP line %d%s\n\n%s", i, result.bail and (" (" .. result.bail .. ")") or "",
        context()))
      assert.are.equal(name, l.name)
      assert(l.ok, string.format("not ok %d - %s\n  # %s\n\n%s", i, name, tostring(l.why), context()))
    end)
  end

  it("ends with the plan 1.." .. #checks .. " and exit status 0", function()
    assert(not result.bail, result.bail and (result.bail .. "\n\n" .. context()))
    assert(result.plan == #checks, string.format("plan %s, expected 1..%d\n\n%s", tostring(result.plan), #checks,
      context()))
    assert(result.ok, string.format("program ended with %s %s\n\n%s", tostring(result.how), tostring(result.code),
      context()))
  end)

  it("leaves tide's streams and consumers as the client saw them ($TIDE.ADMIN.*.INFO)", function()
    local diffs = {}
    local function compare(what, got, want)
      local keys = {}
      for k in pairs(want) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do
        if got[k] ~= want[k] then
          diffs[#diffs + 1] = string.format("%s.%s = %s, expected %s", what, k, tostring(got[k]), tostring(want[k]))
        end
      end
    end
    for _, name in ipairs({ "PUBS", "ASYNC", "WORK" }) do
      compare("stream " .. name, admin(srv, "STREAM.INFO", name), STREAMS[name])
    end
    for _, name in ipairs({ "acks", "naks", "wpis", "terms" }) do
      compare("consumer " .. name, admin(srv, "CONSUMER.INFO", name), CONSUMERS[name])
    end
    assert(#diffs == 0, table.concat(diffs, "\n") .. "\n\n" .. context())
  end)

  it("leaves the server running, and it then exits 0 on SIGTERM", function()
    assert(srv:alive(), "tide died during the checks:\n" .. context())
    local st, code = srv:stop("TERM")
    assert(st == "exited" and code == 0, string.format("on SIGTERM tide ended with %s %s:\n%s", tostring(st),
      tostring(code), tail(srv:log(), 4000)))
  end)
end

describe("JetStream interop with tide's streams", function()
  describe("C client (libnats)", function()
    client_suite("interop_js_c", function()
      -- BUILD/SAN on the command line: the checker is a plain build, always at
      -- build/interop_js_c, whatever the surrounding build flavour is.
      local ok, _, _, out = run(string.format("make -s -C %s BUILD=build SAN= build/interop_js_c", q(ROOT)))
      assert(ok, "building build/interop_js_c failed:\n" .. out)
      assert(h.exists(C_BIN), C_BIN .. " is missing")
    end, q(C_BIN), C_CHECKS)
  end)

  describe("Node client (nats.js)", function()
    client_suite("js.mjs", function()
      local ok, _, _, out = run("command -v node && command -v npm")
      assert(ok, "node and npm are needed (make deps installs them):\n" .. out)
      local ready, npm_out = h.npm_ready()
      assert(ready, "npm ci failed in " .. NODE_DIR .. ":\n" .. tostring(npm_out))
    end, "node " .. q(NODE_DIR .. "/js.mjs"), NODE_CHECKS)
  end)
end)
