-- Interop acceptance: real NATS client libraries run their checks against a
-- live server and report TAP lines:
--   * the C client (libnats):      build/interop_c <port>
--   * the Node client (npm "nats"): node tests/interop/node/interop.mjs <port>
--
-- By default the server is tide.  INTEROP_TARGET=nats-server runs the very
-- same checks against the reference server (nats-server, or NATS_SERVER_BIN),
-- which tells a wrong check from a wrong server.
local h = require "helpers"

local target = os.getenv("INTEROP_TARGET") or "tide"
local ROOT = h.root
local C_BIN = os.getenv("INTEROP_C_BIN") or (ROOT .. "/build/interop_c")
local NODE_DIR = ROOT .. "/tests/interop/node"

-- No program may take longer than this, whatever the server does (each one
-- also stops itself well before).
local PROGRAM_TIMEOUT = 60

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

-- The reference server: NATS_SERVER_BIN, else where Debian puts it (sbin),
-- else wherever PATH has it.

local function start_server()
  if target == "nats-server" then
    local port = h.free_port()
    return h.start_server{
      bin = h.nats_server_bin(),
      port = port,
      cmd = { "-a", "127.0.0.1", "-p", tostring(port) },
    }
  elseif target == "tide" then
    return h.start_server()
  end
  error("INTEROP_TARGET must be 'tide' or 'nats-server', not '" .. target .. "'")
end

-- Counts the TAP lines of a run.  Returns the number of "ok" lines, the list
-- of failing lines ("not ok", "Bail out!") and the plan (N of "1..N").
local function parse_tap(out)
  local oks, fails, plan = 0, {}, nil
  for line in out:gmatch("[^\r\n]+") do
    if line:match("^ok %d+") then
      oks = oks + 1
    elseif line:match("^not ok %d+") or line:match("^Bail out!") then
      fails[#fails + 1] = line
    elseif line:match("^1%.%.%d+%s*$") then
      plan = tonumber(line:match("^1%.%.(%d+)"))
    end
  end
  return oks, fails, plan
end

local function tail(s, n)
  if #s <= n then return s end
  return "..." .. s:sub(-n)
end

-- Runs one interop program against srv and asserts every check passed.
local function run_checks(srv, cmd, expected, label)
  local ok, how, code, out = run(string.format("timeout -k 5 %d %s %d", PROGRAM_TIMEOUT, cmd, srv.port))
  local oks, fails, plan = parse_tap(out)
  local context = string.format(
    "%s against %s on port %d\n--- program output ---\n%s\n--- server log ---\n%s",
    label, target, srv.port, out, tail(srv:log(), 4000))
  assert(#fails == 0, string.format("%d failing check(s):\n  %s\n\n%s",
    #fails, table.concat(fails, "\n  "), context))
  assert(ok, string.format("program ended with %s %s\n\n%s", tostring(how), tostring(code), context))
  assert(plan ~= nil, "no TAP plan line (1..N)\n\n" .. context)
  assert(oks == plan, string.format("%d ok lines for a plan of %d\n\n%s", oks, plan, context))
  assert(oks >= expected, string.format("only %d ok lines, expected at least %d\n\n%s",
    oks, expected, context))
end

-- After the clients are gone the server must still run, and stop cleanly:
-- tide exits 0 on SIGTERM.  (nats-server 2.9 exits 1 on SIGTERM and 0 on
-- SIGINT, so the reference run stops it with SIGINT.)
local STOP_SIGNAL = target == "nats-server" and "INT" or "TERM"

local function assert_alive_then_clean_stop(srv)
  assert(srv:alive(), "the server died during the interop checks:\n" .. tail(srv:log(), 4000))
  local st, code = srv:stop(STOP_SIGNAL)
  assert(st == "exited" and code == 0, string.format(
    "on SIG%s the server ended with %s %s:\n%s", STOP_SIGNAL, tostring(st), tostring(code),
    tail(srv:log(), 4000)))
end

describe("interop with NATS client libraries (" .. target .. ")", function()
  describe("C client (libnats)", function()
    local srv

    setup(function()
      if not os.getenv("INTEROP_C_BIN") then
        -- BUILD/SAN on the command line: the checker is a plain build, always
        -- at build/interop_c, whatever the surrounding build flavour is.
        local ok, _, _, out = run(string.format("make -s -C %s BUILD=build SAN= build/interop_c", q(ROOT)))
        assert(ok, "building build/interop_c failed:\n" .. out)
      end
      assert(h.exists(C_BIN), C_BIN .. " is missing")
      srv = start_server()
    end)

    teardown(function()
      if srv then srv:kill() end
    end)

    it("passes every check", function()
      run_checks(srv, q(C_BIN), 10, "interop_c")
    end)

    it("leaves the server running, and it then exits 0 on SIG" .. STOP_SIGNAL, function()
      assert_alive_then_clean_stop(srv)
    end)
  end)

  describe("Node client (nats.js)", function()
    local srv

    setup(function()
      local ok, _, _, out = run("command -v node && command -v npm")
      assert(ok, "node and npm are needed (make deps installs them):\n" .. out)
      local ready, npm_out = h.npm_ready()
      assert(ready, "npm ci failed in " .. NODE_DIR .. ":\n" .. tostring(npm_out))
      srv = start_server()
    end)

    teardown(function()
      if srv then srv:kill() end
    end)

    it("passes every check", function()
      run_checks(srv, "node " .. q(NODE_DIR .. "/interop.mjs"), 11, "interop.mjs")
    end)

    it("leaves the server running, and it then exits 0 on SIG" .. STOP_SIGNAL, function()
      assert_alive_then_clean_stop(srv)
    end)
  end)
end)
