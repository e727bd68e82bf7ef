-- Shared helpers for the busted specs: start a real `tide serve` on a free
-- loopback port, talk to it over raw sockets, and stop it.
local socket = require "socket"
local proc = require "procmod"

local M = {}

M.root = os.getenv("TIDE_ROOT") or os.getenv("PWD") or "."
M.bin = os.getenv("TIDE_BIN") or (M.root .. "/build/tide")
M.tmpdir = os.getenv("TIDE_TEST_TMP") or "/tmp"
M.proc = proc

-- Runs a shell command (stderr joined to stdout); returns its exit code and
-- its output.
function M.sh(cmd)
  local f = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  return tonumber(out:match("rc=(%d+)%s*$")), (out:gsub("rc=%d+%s*$", ""))
end

-- True when path names a file this process can open for reading.
function M.exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

-- The nats-server the reference comparisons run: $NATS_SERVER_BIN, else
-- Debian's, else the one on PATH.  Fails the calling test when there is none.
function M.nats_server_bin()
  local env = os.getenv("NATS_SERVER_BIN")
  if env and env ~= "" then return env end
  for _, p in ipairs({ "/usr/bin/nats-server", "/usr/sbin/nats-server" }) do
    if M.exists(p) then return p end
  end
  local rc, out = M.sh("command -v nats-server")
  assert(rc == 0, "nats-server not found (set NATS_SERVER_BIN)")
  return (out:gsub("%s+$", ""))
end

-- Makes sure tests/interop/node has its npm packages (npm ci from the lock
-- when one is missing).  Returns true, or false and npm's output.
function M.npm_ready()
  local dir = M.root .. "/tests/interop/node"
  local need = { "nats", "nkeys.js", "cloudevents", "parse-prometheus-text-format", "@nats-io/jetstream",
    "@nats-io/transport-node", "@nats-io/kv", "@nats-io/obj" }
  local missing = false
  for _, p in ipairs(need) do
    local f = io.open(dir .. "/node_modules/" .. p .. "/package.json")
    if f then f:close() else missing = true end
  end
  if not missing then return true end
  -- Under a lock, and only if still missing then: specs running side by
  -- side may all get here at once.
  local test = {}
  for _, p in ipairs(need) do test[#test + 1] = "test -f node_modules/" .. p .. "/package.json" end
  local rc, out = M.sh(("cd '%s' && flock . sh -c '%s || timeout 300 npm ci --no-audit --no-fund'")
    :format(dir, table.concat(test, " && ")))
  return rc == 0, out
end

-- TIDE_TEST_PORTS="FIRST-LAST": the ports this busted process takes its free
-- ports from.  scripts/run-tests.sh gives each spec it runs side by side a
-- range of its own, so that two specs never pick the same port between
-- one's free_port() and its server's bind.
local port_first, port_last = (os.getenv("TIDE_TEST_PORTS") or ""):match("^(%d+)%-(%d+)$")
port_first, port_last = tonumber(port_first), tonumber(port_last)
local port_next = port_first

-- A port nobody listens on right now: the next one of TIDE_TEST_PORTS that
-- binds (tried and released), else one the kernel picks (bind to 0).
function M.free_port()
  if port_first then
    for _ = port_first, port_last do
      local port = port_next
      port_next = port_next < port_last and port_next + 1 or port_first
      local s = socket.bind("127.0.0.1", port)
      if s then
        s:close()
        return port
      end
    end
  end
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local log_seq = 0

local Server = {}
Server.__index = Server

-- Starts `tide serve -a 127.0.0.1 -p <port> <extra args...>` and waits until
-- it is ready: its log says it listens on the port and is ready.
-- opts.args: extra argv entries; opts.bin: other binary; opts.wait = false
-- to skip waiting (for start-up failure tests).  A `serve` given neither --http nor --no-http, nor an
-- entry file (-c) whose listen { } names http, gets --no-http: tide's
-- default HTTP address, 127.0.0.1:8222, is one port for all the specs that
-- run side by side (a test of HTTP names a free port for it).
function M.start_server(opts)
  opts = opts or {}
  local port = opts.port or M.free_port()
  log_seq = log_seq + 1
  local log = string.format("%s/tide-test-%d-%d.log", M.tmpdir, proc.now() * 1000 // 1, log_seq)
  os.remove(log)
  local argv = { opts.bin or M.bin }
  local serve, http = false, false
  for _, a in ipairs(opts.cmd or { "serve", "-a", "127.0.0.1", "-p", tostring(port) }) do
    argv[#argv + 1] = a
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  for i, a in ipairs(argv) do
    serve = serve or a == "serve"
    http = http or a == "--no-http" or a:match("^%-%-http") ~= nil
    if (a == "-c" or a == "--config") and argv[i + 1] then
      http = http or (M.read_file(argv[i + 1]) or ""):find("listen%s*{[^}]*http") ~= nil
    end
  end
  if serve and not http then argv[#argv + 1] = "--no-http" end
  local pid = proc.spawn(argv, log)
  local self = setmetatable({ port = port, pid = pid, logfile = log, argv = argv }, Server)
  if opts.wait ~= false then
    local deadline = proc.now() + (opts.timeout or 10)
    while true do
      -- Up when this server says it listens on the port (a connection
      -- could reach another that took it first, and would count against
      -- the server's connection limit) and that its start-up is done (the
      -- port accepts before the scripts, the store and HTTP are there).
      local text = self:log()
      if text:find("Listening for client connections on [^\n]*:" .. port .. "%f[^%d]")
        and text:find("Server is ready", 1, true) then
        break
      end
      local st, code = proc.wait(pid, 0)
      if st then
        if not opts.port and not opts.cmd and (opts.tries or 1) < 3
          and self:log():find("cannot listen on [^\n]*:" .. port .. ": Address already in use") then
          local o = setmetatable({ tries = (opts.tries or 1) + 1 }, { __index = opts })
          return M.start_server(o) -- taken since free_port(): on another port
        end
        error(string.format("tide exited (%s %s) during start-up:\n%s", st, code, self:log()))
      end
      if proc.now() > deadline then
        self:kill()
        error("tide was not ready on port " .. port .. " in time:\n" .. self:log())
      end
      proc.sleep(0.02)
    end
  end
  return self
end

-- Files and directories -------------------------------------------------------

-- A new empty directory under M.tmpdir; returns its path.
function M.make_tmpdir(prefix)
  local name = os.tmpname() -- creates a unique file; its name makes the directory unique
  os.remove(name)
  local dir = string.format("%s/%s-%s", M.tmpdir, prefix or "tide", name:match("([^/]+)$"))
  assert(os.execute("mkdir -p '" .. dir .. "'"), "cannot create " .. dir)
  return dir
end

-- Removes a directory made by make_tmpdir (and only such a directory).
function M.remove_tmpdir(dir)
  if dir and dir:sub(1, #M.tmpdir + 1) == M.tmpdir .. "/" and not dir:find("%.%.") then
    os.execute("rm -rf '" .. dir .. "'")
  end
end

-- Writes text to path, creating parent directories.  The text goes to a
-- temporary file first and is renamed into place, so a reader (or a file
-- watcher) never sees a half-written file.
function M.write_file(path, text)
  local parent = path:match("^(.*)/[^/]+$")
  if parent then assert(os.execute("mkdir -p '" .. parent .. "'")) end
  local tmp = path .. ".part"
  local f = assert(io.open(tmp, "wb"))
  assert(f:write(text))
  assert(f:close())
  assert(os.rename(tmp, path))
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes files = { ["tide.lua"] = text, ["lib/x.lua"] = text, ... } into a
-- new directory and starts `tide serve -c <dir>/tide.lua` (opts as for
-- start_server; opts.entry names another entry file).  Returns the server,
-- with srv.dir and srv.config set.
function M.start_scripted(files, opts)
  opts = opts or {}
  if type(files) == "string" then files = { ["tide.lua"] = files } end
  local dir = M.make_tmpdir("tide-cfg")
  for name, text in pairs(files) do M.write_file(dir .. "/" .. name, text) end
  local config = dir .. "/" .. (opts.entry or "tide.lua")
  local args = { "-c", config }
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.args = args
  local srv = M.start_server(o)
  srv.dir, srv.config = dir, config
  return srv
end

-- Calls fn every `step` seconds until it returns a truthy value or `timeout`
-- seconds pass; returns that value (or nil on timeout).
function M.wait_until(fn, timeout, step)
  local deadline = proc.now() + (timeout or 5)
  while true do
    local v = fn()
    if v then return v end
    if proc.now() > deadline then return nil end
    proc.sleep(step or 0.02)
  end
end

-- Splits a NATS header block into its status line and a table name -> value
-- (a list of values when a name repeats); names keep their case.
function M.parse_headers(block)
  local t = {}
  if not block or block == "" then return nil, t end
  local status
  for line in block:gmatch("([^\r\n]*)\r\n") do
    if not status then
      status = line
    elseif line ~= "" then
      local k, v = line:match("^([^:]+):%s*(.-)%s*$")
      if k then
        if t[k] == nil then
          t[k] = v
        elseif type(t[k]) == "table" then
          t[k][#t[k] + 1] = v
        else
          t[k] = { t[k], v }
        end
      end
    end
  end
  return status, t
end

-- Builds a NATS header block from a list of {name, value} pairs.
function M.header_block(pairs_list)
  local out = { "NATS/1.0\r\n" }
  for _, kv in ipairs(pairs_list) do out[#out + 1] = kv[1] .. ": " .. kv[2] .. "\r\n" end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

function Server:log()
  local f = io.open(self.logfile, "r")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Sends a signal (default TERM) and waits for the exit; returns how it ended.
function Server:stop(sig, timeout)
  if self.status then return self.status, self.code end
  proc.kill(self.pid, sig or "TERM")
  local st, code = proc.wait(self.pid, timeout or 10)
  if not st then
    proc.kill(self.pid, "KILL")
    st, code = proc.wait(self.pid, 5)
    st = "timeout"
  end
  self.status, self.code = st, code
  return st, code
end

function Server:kill()
  return self:stop("KILL")
end

function Server:alive()
  if self.status then return false end
  local st, code = proc.wait(self.pid, 0)
  if st then
    self.status, self.code = st, code
    return false
  end
  return true
end

-- Raw protocol client -------------------------------------------------------

local Client = {}
Client.__index = Client

-- Connects and (unless opts.no_info) reads the INFO line.  Returns the client;
-- c.info holds the raw INFO JSON text.
function M.connect(port, opts)
  opts = opts or {}
  local s = assert(socket.tcp())
  s:settimeout(opts.timeout or 5)
  assert(s:connect(opts.host or "127.0.0.1", port))
  s:setoption("tcp-nodelay", true)
  local self = setmetatable({ sock = s, timeout = opts.timeout or 5 }, Client)
  if not opts.no_info then
    local line = assert(self:line())
    assert(line:match("^INFO "), "expected INFO, got: " .. tostring(line))
    self.info = line:sub(6)
  end
  if opts.connect then
    self:send("CONNECT " .. opts.connect .. "\r\n")
  end
  return self
end

function Client:send(data)
  local i = 1
  while i <= #data do
    local n, err, last = self.sock:send(data, i)
    if not n then
      if err == "timeout" and last then
        i = last + 1
      else
        return nil, err
      end
    else
      i = n + 1
    end
  end
  return true
end

-- Reads one line without its CRLF; nil, err on timeout/close.
function Client:line(timeout)
  self.sock:settimeout(timeout or self.timeout)
  local l, err = self.sock:receive("*l")
  if not l then return nil, err end
  return (l:gsub("\r$", ""))
end

-- Reads exactly n bytes.
function Client:bytes(n, timeout)
  self.sock:settimeout(timeout or self.timeout)
  return self.sock:receive(n)
end

-- Reads one MSG/HMSG frame (skipping PINGs, which it answers) and returns a
-- table {op, subject, sid, reply, headers, payload}, or nil, err; any other
-- frame is an error ("unexpected line: ...").
function Client:msg(timeout)
  local f, err = self:frame(timeout)
  if not f then return nil, err end
  if f.op == "MSG" or f.op == "HMSG" then return f end
  return nil, "unexpected line: " .. (f.text or f.op)
end

-- Sends PING and reads up to the PONG; returns the lines seen before it.
function Client:ping(timeout)
  assert(self:send("PING\r\n"))
  local seen = {}
  while true do
    local l, err = self:line(timeout)
    if not l then return nil, err, seen end
    if l == "PONG" then return seen end
    seen[#seen + 1] = l
  end
end

-- True when the server closed the connection (reads until EOF or timeout).
function Client:closed(timeout)
  self.sock:settimeout(timeout or 2)
  while true do
    local _, err = self.sock:receive(4096)
    if err == "closed" then return true end
    if err == "timeout" then return false end
  end
end

-- Publishing and receiving -----------------------------------------------------

-- PUB subject [reply] payload.
function Client:pub(subject, payload, reply)
  payload = payload or ""
  return self:send(("PUB %s %s%d\r\n%s\r\n"):format(subject, reply and (reply .. " ") or "", #payload, payload))
end

-- HPUB with a header block (a string, or a list of {name, value} pairs).
function Client:hpub(subject, headers, payload, reply)
  payload = payload or ""
  if type(headers) == "table" then headers = M.header_block(headers) end
  return self:send(("HPUB %s %s%d %d\r\n%s%s\r\n"):format(subject, reply and (reply .. " ") or "", #headers,
    #headers + #payload, headers, payload))
end

-- SUB subject sid [queue].
function Client:sub(subject, sid, queue)
  return self:send(("SUB %s %s%s\r\n"):format(subject, queue and (queue .. " ") or "", sid or "1"))
end

-- Reads the next frame: a MSG/HMSG table as from msg(), or {op = "PONG"},
-- {op = "+OK"}, {op = "-ERR", text = ...}; answers PINGs.  nil, err on
-- timeout or close.
function Client:frame(timeout)
  while true do
    local l, err = self:line(timeout)
    if not l then return nil, err end
    if l == "PING" then
      self:send("PONG\r\n")
    elseif l == "PONG" or l == "+OK" then
      return { op = l }
    elseif l:match("^%-ERR") then
      return { op = "-ERR", text = l }
    else
      local op, rest = l:match("^(%u+)%s+(.*)$")
      local a = {}
      for w in (rest or ""):gmatch("%S+") do a[#a + 1] = w end
      if op == "MSG" then
        local n = tonumber(a[#a])
        local payload = n > 0 and self:bytes(n, timeout) or ""
        self:bytes(2, timeout)
        return { op = "MSG", subject = a[1], sid = a[2], reply = (#a == 4) and a[3] or nil, payload = payload }
      elseif op == "HMSG" then
        local total, hlen = tonumber(a[#a]), tonumber(a[#a - 1])
        local data = total > 0 and self:bytes(total, timeout) or ""
        self:bytes(2, timeout)
        return { op = "HMSG", subject = a[1], sid = a[2], reply = (#a == 5) and a[3] or nil,
                 headers = data:sub(1, hlen), payload = data:sub(hlen + 1) }
      elseif op == "INFO" then
        -- a later INFO: not a message, skip it
      else
        return nil, "unexpected line: " .. l
      end
    end
  end
end

-- Sends PING and returns every message that arrives before the PONG.
function Client:until_pong(timeout)
  assert(self:send("PING\r\n"))
  local msgs = {}
  while true do
    local f, err = self:frame(timeout)
    if not f then return nil, err, msgs end
    if f.op == "PONG" then return msgs end
    if f.op == "MSG" or f.op == "HMSG" then msgs[#msgs + 1] = f end
  end
end

-- Reads messages until n have arrived or `timeout` seconds (in all) pass;
-- returns the list (possibly shorter than n).
function Client:collect(n, timeout)
  local msgs = {}
  local deadline = proc.now() + (timeout or 5)
  while #msgs < n do
    local left = deadline - proc.now()
    if left <= 0 then break end
    local f = self:frame(left)
    if not f then break end
    if f.op == "MSG" or f.op == "HMSG" then msgs[#msgs + 1] = f end
  end
  return msgs
end

local inbox_seq = 0

-- Sends a request (payload, optional header block) on a fresh connection
-- and returns the first reply message, or nil, err after `timeout` seconds.
function M.request(port, subject, payload, opts)
  opts = opts or {}
  local c = M.connect(port)
  c:send('CONNECT {"headers":true}\r\n')
  inbox_seq = inbox_seq + 1
  local inbox = ("_INBOX.spec%d.%d"):format(proc.now() * 1000 // 1, inbox_seq)
  c:sub(inbox, "1")
  if opts.headers then
    c:hpub(subject, opts.headers, payload or "", inbox)
  else
    c:pub(subject, payload or "", inbox)
  end
  local msgs = c:collect(1, opts.timeout or 5)
  c:close()
  if not msgs[1] then return nil, "no reply to " .. subject end
  return msgs[1]
end

-- The server's $TIDE.ADMIN.STATS, decoded.
function M.stats(port)
  local json = require "dkjson"
  local m = assert(M.request(port, "$TIDE.ADMIN.STATS", ""))
  return assert(json.decode(m.payload), "stats are not JSON: " .. m.payload)
end

function Client:close()
  self.sock:close()
end

return M
