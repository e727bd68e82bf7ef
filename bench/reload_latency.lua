-- Reload latency: from a write of a rules file to the new version handling
-- events.  Usage: lua5.4 bench/reload_latency.lua <tide-binary> [reloads]
-- Starts tide on a free loopback port with a rules file whose route names
-- its version, rewrites the file `reloads` times (default 50), and after
-- each write publishes a probe every 2 ms until the event comes back routed
-- by the new version.  Prints "RESULT reload n=.. p50_ms=.. p99_ms=.. max_ms=..".
package.cpath = "build/?.so;" .. package.cpath
local socket = require "socket"
local proc = require "procmod"

local bin = arg[1] or "build/tide"
local n = tonumber(arg[2] or "50")
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local rules = dir .. "/tide.lua"

local function write_rules(v)
  local f = assert(io.open(rules .. ".tmp", "w"))
  f:write(('route("probe", function(e) return "probe.v%d" end)\n'):format(v))
  f:close()
  assert(os.rename(rules .. ".tmp", rules)) -- as editors and deploy tools do
end

write_rules(0)
local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
s:close()
local pid = proc.spawn({ bin, "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", rules }, dir .. "/tide.log")
local c
for _ = 1, 200 do
  c = socket.tcp()
  c:settimeout(0.2)
  if c:connect("127.0.0.1", port) then break end
  c:close()
  c = nil
  proc.sleep(0.02)
end
assert(c, "tide did not start")
c:setoption("tcp-nodelay", true)
c:settimeout(5)
assert(c:receive("*l"))                         -- INFO
c:send("SUB probe.> 1\r\nPING\r\n")
assert(c:receive("*l") == "PONG")

local lat = {}
for v = 1, n do
  write_rules(v)
  local t0 = proc.now()
  local want = "MSG probe.v" .. v .. " "
  local got = false
  c:settimeout(0.002)
  while not got do
    c:send("PUB probe 1\r\nx\r\n")
    while true do
      local l = c:receive("*l")
      if not l then break end
      if l:sub(1, #want) == want then got = true end
    end
    assert(proc.now() - t0 < 10, "version " .. v .. " never took over")
  end
  lat[#lat + 1] = (proc.now() - t0) * 1000
  -- drain what is still in flight
  c:settimeout(0.02)
  while c:receive("*l") do end
end
proc.kill(pid, "TERM")
proc.wait(pid, 5)
os.execute("rm -rf " .. dir)

table.sort(lat)
local function pct(p) return lat[math.max(1, math.ceil(p * #lat))] end
print(("RESULT reload n=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f"):format(#lat, pct(0.5), pct(0.99), lat[#lat]))
