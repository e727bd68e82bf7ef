-- Shared by the specs that run one of tests/interop/node's programs (stock
-- JetStream clients) against nats-server -js, the reference, and against
-- tide, and require the two to agree on every step.  Each program prints
-- one JSON object last: step name -> what that step got.
local h = require "helpers"
local json = require "dkjson"

local M = {}

M.NODE_DIR = h.root .. "/tests/interop/node"

-- s quoted for the shell.
function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs `node SCRIPT PORT [FLAG]` in tests/interop/node, bounded by timeout
-- seconds; returns its answers decoded.  Fails with its output and the
-- server's log (log()) when it ends badly or prints no answers.
function M.run_steps(script, port, flag, timeout, label, log)
  local rc, out = h.sh(("cd %s && timeout -k 5 %d node %s %d %s"):format(M.q(M.NODE_DIR), timeout, script, port,
    flag or ""))
  local line = out:match("(%b{})%s*$")
  local res = line and json.decode(line)
  assert(rc == 0 and res, ("%s: %s ended with %s:\n%s\n--- server log ---\n%s"):format(label, script, tostring(rc), out,
    log()))
  return res
end

-- Canonical text of a decoded value (sorted keys), to compare and print.
function M.canon(v)
  if type(v) ~= "table" then return json.encode(v) end
  local keys, parts, n = {}, {}, #v
  if n > 0 or next(v) == nil then
    for i = 1, n do parts[i] = M.canon(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = json.encode(k) .. ":" .. M.canon(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Runs script first against a fresh nats-server -js (stopped after), then
-- against a fresh tide whose entry file declares nothing and whose streams
-- are in a new --data directory (left running).  Returns the reference's
-- answers, tide's, the tide server and its data directory (for M.stop).
function M.run_both(script, flag, timeout, tag)
  local ok, out = h.npm_ready()
  assert(ok, "npm ci failed:\n" .. tostring(out))
  local sd = h.make_tmpdir(tag .. "-ns")
  local port = h.free_port()
  local ns = h.start_server { bin = h.nats_server_bin(), port = port,
    cmd = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", sd } }
  local ref = M.run_steps(script, port, flag, timeout, "nats-server", function() return ns:log() end)
  ns:stop("INT")
  h.remove_tmpdir(sd)
  local data = h.make_tmpdir(tag .. "-data")
  local srv = h.start_scripted("-- nothing declared\n", { args = { "--data", data } })
  local got = M.run_steps(script, srv.port, flag, timeout, "tide", function() return srv:log() end)
  return ref, got, srv, data
end

-- Stops what M.run_both left running and removes its directories.
function M.stop(srv, data)
  if srv then
    srv:kill()
    h.remove_tmpdir(srv.dir)
  end
  if data then h.remove_tmpdir(data) end
end

-- That got agrees with ref at every step, but for the steps in diverges
-- (step -> the answer tide must give there), and that the reference ran at
-- least min steps.  The failure lists every differing step and tide's log.
function M.assert_same_steps(ref, got, min, srv, diverges)
  local diffs, keys = {}, {}
  for k in pairs(ref) do keys[#keys + 1] = k end
  table.sort(keys)
  assert(#keys >= min, "the reference run has only " .. #keys .. " steps")
  for _, k in ipairs(keys) do
    local want = diverges and diverges[k] or ref[k]
    if M.canon(want) ~= M.canon(got[k]) then
      diffs[#diffs + 1] = ("%s:\n  nats-server: %s\n  tide:        %s"):format(k, M.canon(want), M.canon(got[k]))
    end
  end
  assert(#diffs == 0, table.concat(diffs, "\n") .. "\n--- tide log ---\n" .. srv:log())
end

-- A JetStream API request to tide: the decoded answer (nil when none came).
function M.api(port, subject, body, timeout)
  local m = h.request(port, subject, body and (type(body) == "string" and body or json.encode(body)) or "",
    { timeout = timeout })
  return m and assert(json.decode(m.payload), subject .. ": not JSON: " .. m.payload)
end

return M
