-- The command line: help, version, flag errors, signals.
local h = require "helpers"

local function run(args)
  local cmd = h.bin
  for _, a in ipairs(args) do cmd = cmd .. " '" .. a .. "'" end
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out:gsub("rc=%d+%s*$", "")
end

describe("tide command line", function()
  it("prints help and exits 0", function()
    local rc, out = run { "--help" }
    assert.are.equal(0, rc)
    assert.matches("Usage: tide", out)
    assert.matches("%-%-port", out)
    rc, out = run { "serve", "--help" }
    assert.are.equal(0, rc)
    assert.matches("Usage: tide", out)
  end)

  it("prints the version", function()
    local rc, out = run { "--version" }
    assert.are.equal(0, rc)
    assert.matches("^tide version %d+%.%d+%.%d+", out)
  end)

  it("rejects unknown flags and commands with exit code 2", function()
    local rc, out = run { "serve", "--bogus" }
    assert.are.equal(2, rc)
    assert.matches("unknown option '%-%-bogus'", out)
    rc, out = run { "--bogus" }
    assert.are.equal(2, rc)
    assert.matches("unknown option", out)
    rc, out = run { "frobnicate" }
    assert.are.equal(2, rc)
    assert.matches("unknown command 'frobnicate'", out)
  end)

  it("rejects bad flag values", function()
    local rc, out = run { "serve", "-p", "70000" }
    assert.are.equal(2, rc)
    assert.matches("port", out)
    rc, out = run { "serve", "--max-payload", "lots" }
    assert.are.equal(2, rc)
    assert.matches("%-%-max%-payload expects", out)
    rc, out = run { "serve", "-p" }
    assert.are.equal(2, rc)
    assert.matches("needs a value", out)
  end)

  it("fails clearly when the port is taken", function()
    local a = h.start_server()
    local b = h.start_server { port = a.port, wait = false }
    local st, code = h.proc.wait(b.pid, 5)
    assert.are.equal("exited", st)
    assert.are.equal(1, code)
    assert.matches("cannot listen on 127.0.0.1:" .. a.port, b:log())
    assert.are.equal("exited", (a:stop()))
  end)

  for _, sig in ipairs { "TERM", "INT" } do
    it("exits 0 on SIG" .. sig .. " after flushing and removes its pid file", function()
      local dir = h.make_tmpdir("tide-cli")
      local pidfile = dir .. "/tide.pid"
      local s = h.start_server { args = { "-P", pidfile } }
      finally(function()
        s:stop() -- (a no-op once the test has stopped it)
        h.remove_tmpdir(dir)
      end)
      -- written once start-up is done, which can be after the port accepts;
      -- the file is created before its line is in it
      local text = h.wait_until(function()
        local t = h.read_file(pidfile)
        return t and t:match("\n$") and t
      end, 10)
      assert(text, "no pid line in " .. pidfile)
      assert.are.equal(s.pid .. "\n", text)
      local c = h.connect(s.port)
      c:send("SUB bye 1\r\nPUB bye 3\r\nyes\r\n")
      assert.are.equal("yes", assert(c:msg()).payload)
      local st, code = s:stop(sig)
      assert.are.equal("exited", st)
      assert.are.equal(0, code)
      assert.is_true(c:closed(2))
      assert.is_nil(io.open(pidfile))
      assert.matches("shutting down", s:log())
    end)
  end

  it("listens on IPv6 loopback", function()
    local port = h.free_port()
    local s = h.start_server { cmd = { "serve", "-a", "::1", "-p", tostring(port) }, port = port, wait = false }
    local socket = require "socket"
    local ok
    for _ = 1, 100 do
      local c = socket.tcp6()
      c:settimeout(0.2)
      ok = c:connect("::1", port)
      if ok then
        local line = c:receive("*l")
        assert.matches("^INFO ", line)
        c:close()
        break
      end
      c:close()
      h.proc.sleep(0.02)
    end
    assert.is_truthy(ok, "no IPv6 listener: " .. s:log())
    assert.are.equal("exited", (s:stop()))
  end)
end)

describe("settings from the entry file", function()
  it("apply, and command-line flags override them", function()
    local json = require "dkjson"
    local dir = h.make_tmpdir()
    h.write_file(dir .. "/tide.lua", 'limits { max_payload = "1KB", ping_interval = "90s" }\n' ..
                                     'scripting { memory = "16MB", time = "250ms" }\n')
    local s = h.start_server { args = { "-c", dir .. "/tide.lua" } }
    local c = h.connect(s.port)
    assert.are.equal(1024, json.decode(c.info).max_payload)
    c:close()
    assert.are.equal("exited", (s:stop()))
    s = h.start_server { args = { "-c", dir .. "/tide.lua", "--max-payload", "2048" } }
    c = h.connect(s.port)
    assert.are.equal(2048, json.decode(c.info).max_payload)
    c:close()
    assert.are.equal("exited", (s:stop()))
    -- a typo is an error, not silently ignored
    h.write_file(dir .. "/tide.lua", 'limits { max_paylod = 10 }\n')
    local rc, out = h.sh(("%s check %s/tide.lua"):format(h.bin, dir))
    assert.are.equal(1, rc)
    assert.matches("tide%.lua:1: limits: unknown setting 'max_paylod'", out)
    -- and so is a value out of range
    h.write_file(dir .. "/tide.lua", 'http { ack_timeout = "0s" }\n')
    rc, out = h.sh(("%s check %s/tide.lua"):format(h.bin, dir))
    assert.are.equal(1, rc)
    assert.matches("tide%.lua:1: http: ack_timeout must be between 1ms and 1h", out)
    h.remove_tmpdir(dir)
  end)
end)
