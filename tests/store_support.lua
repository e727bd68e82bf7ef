-- What the store specs (store_recovery_spec, checkpoint_spec) share: a
-- test's directory and entry file, a server started on it (with
-- TIDE_FAULT when asked), the admin requests they read, and raw file
-- access for damaging what is on disk.
local h = require "helpers"
local json = require "dkjson"

local M = {}

-- A test's directory: <dir>/tide.lua is its config, <dir>/data its data.
function M.new_env(prefix)
  local dir = h.make_tmpdir(prefix)
  return { dir = dir, data = dir .. "/data" }
end

-- A stream declaration as Lua source (o: subject, fsync, limits, segment
-- size, dedup window; numbers as numbers, the rest quoted).
function M.stream_decl(name, o)
  o = o or {}
  local t = { ("stream %q {"):format(name), ("  subjects = { %q },"):format(o.subject or (name .. ".>")),
              ("  fsync = %q,"):format(o.fsync or "always") }
  for _, k in ipairs { "sync_interval", "segment_size", "dedup_window", "max_msgs", "max_bytes" } do
    if o[k] then t[#t + 1] = ("  %s = %s,"):format(k, type(o[k]) == "number" and o[k] or ("%q"):format(o[k])) end
  end
  t[#t + 1] = "}"
  return table.concat(t, "\n")
end

-- Starts tide on env.config (the text of its tide.lua) and env.data;
-- opts.fault: a TIDE_FAULT spec.
function M.start(env, opts)
  opts = opts or {}
  h.write_file(env.dir .. "/tide.lua", env.config)
  local port = h.free_port()
  local cmd = { "serve", "-a", "127.0.0.1", "-p", tostring(port), "-c", env.dir .. "/tide.lua",
                "--data", env.data, "--no-http" }
  local bin
  if opts.fault then
    bin = "/usr/bin/env"
    table.insert(cmd, 1, h.bin)
    table.insert(cmd, 1, "TIDE_FAULT=" .. opts.fault)
  end
  return h.start_server { bin = bin, cmd = cmd, port = port, timeout = 20 }
end

-- $TIDE.ADMIN.<verb>'s answer, decoded.
function M.admin(port, verb, payload)
  local m = assert(h.request(port, "$TIDE.ADMIN." .. verb, payload, { timeout = 10 }))
  return assert(json.decode(m.payload), verb .. " did not answer JSON: " .. m.payload)
end

-- STREAM.INFO of stream name.
function M.info(port, name)
  local i = M.admin(port, "STREAM.INFO", name)
  assert(i.name == name, "STREAM.INFO " .. name .. ": " .. json.encode(i))
  return i
end

function M.read_all(path)
  return assert(h.read_file(path), "cannot read " .. path)
end

function M.write_raw(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

-- A shell command that must succeed; its output.
function M.sh(cmd)
  local rc, out = h.sh(cmd)
  assert(rc == 0, cmd .. ": " .. out)
  return out
end

return M
