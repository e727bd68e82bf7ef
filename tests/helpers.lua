-- Shared helpers for the busted specs: start a real `tide serve` on a free
-- loopback port, talk to it over raw sockets, and stop it.
local socket = require "socket"
local proc = require "procmod"

local M = {}

M.root = os.getenv("TIDE_ROOT") or "."
M.bin = os.getenv("TIDE_BIN") or (M.root .. "/build/tide")
M.tmpdir = os.getenv("TIDE_TEST_TMP") or "/tmp"
M.proc = proc

-- A port nobody listens on right now (bind to 0, read it back, release it).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local log_seq = 0

local Server = {}
Server.__index = Server

-- Starts `tide serve -a 127.0.0.1 -p <port> <extra args...>` and waits until
-- the port accepts connections.  opts.args: extra argv entries;
-- opts.bin: other binary; opts.wait = false to skip waiting (for start-up
-- failure tests).
function M.start_server(opts)
  opts = opts or {}
  local port = opts.port or M.free_port()
  log_seq = log_seq + 1
  local log = string.format("%s/tide-test-%d-%d.log", M.tmpdir, proc.now() * 1000 // 1, log_seq)
  os.remove(log)
  local argv = { opts.bin or M.bin }
  for _, a in ipairs(opts.cmd or { "serve", "-a", "127.0.0.1", "-p", tostring(port) }) do
    argv[#argv + 1] = a
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local pid = proc.spawn(argv, log)
  local self = setmetatable({ port = port, pid = pid, logfile = log, argv = argv }, Server)
  if opts.wait ~= false then
    local deadline = proc.now() + (opts.timeout or 10)
    while true do
      local c = socket.tcp()
      c:settimeout(0.2)
      local ok = c:connect("127.0.0.1", port)
      c:close()
      if ok then break end
      local st, code = proc.wait(pid, 0)
      if st then
        error(string.format("tide exited (%s %s) during start-up:\n%s", st, code, self:log()))
      end
      if proc.now() > deadline then
        self:kill()
        error("tide did not start listening on port " .. port .. ":\n" .. self:log())
      end
      proc.sleep(0.02)
    end
  end
  return self
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
-- table {op, subject, sid, reply, headers, payload}, or nil, err.
function Client:msg(timeout)
  while true do
    local l, err = self:line(timeout)
    if not l then return nil, err end
    if l == "PING" then
      self:send("PONG\r\n")
    else
      local op, rest = l:match("^(%u+)%s+(.*)$")
      if op == "MSG" then
        local a = {}
        for w in rest:gmatch("%S+") do a[#a + 1] = w end
        local n = tonumber(a[#a])
        local payload = n > 0 and self:bytes(n, timeout) or ""
        self:bytes(2, timeout)
        return { op = "MSG", subject = a[1], sid = a[2], reply = (#a == 4) and a[3] or nil, payload = payload }
      elseif op == "HMSG" then
        local a = {}
        for w in rest:gmatch("%S+") do a[#a + 1] = w end
        local total, hlen = tonumber(a[#a]), tonumber(a[#a - 1])
        local data = total > 0 and self:bytes(total, timeout) or ""
        self:bytes(2, timeout)
        return { op = "HMSG", subject = a[1], sid = a[2], reply = (#a == 5) and a[3] or nil,
                 headers = data:sub(1, hlen), payload = data:sub(hlen + 1) }
      else
        return nil, "unexpected line: " .. l
      end
    end
  end
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

function Client:close()
  self.sock:close()
end

return M
