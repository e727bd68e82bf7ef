-- tide run: runs a flow offline.
--
--   tide run flow.lua --events in.jsonl [--expect out.jsonl] [--settle SECONDS]
--                     [--clock real|virtual]
--
-- Publishes every line of in.jsonl through the flow (a router with no
-- network), prints every delivery as a JSON line in delivery order, and
-- with --expect compares them with out.jsonl, printing a readable diff and
-- failing on any difference.  The formats are described in
-- examples/README.md.  Returns the process exit code.
--
-- A flow that declares streams runs them for real in a temporary data
-- directory (removed afterwards): after each input line the router runs
-- until the streams are idle (every append stored, nothing left for a
-- consumer to deliver, no Lua handler call pending), at most --settle
-- seconds (default 10), so what durable handlers publish follows the event
-- that caused it, in the same order on every run.
--
-- --clock virtual runs the flow on the events' own time (a line's `time`,
-- or its event's): before each line, what falls due up to its time runs
-- in due order (redeliveries after ack_wait, backoff, NAK delays, batch
-- waits) with the clock at each due time; then the clock is set to the
-- line's time and the line is published.  A line without a time leaves
-- the clock where it is.  At the end of the input the clock jumps to each
-- time a handler consumer still has work due, until none has.
local flow = require "tide.flow"
local json = tide_json -- set by the C side: encode, decode, null, array

local function fail(msg)
  io.stderr:write("tide run: ", msg, "\n")
  return 2
end

local function read_lines(path)
  local f, err = io.open(path, "r")
  if not f then return nil, err end
  local out, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") then out[#out + 1] = { n = n, text = line } end
  end
  f:close()
  return out
end

-- A JSON value as plain Lua: tables for objects/arrays (arrays marked),
-- json.null for null.
local ARRAY = setmetatable({}, { __mode = "k" })
local function plain(v)
  if type(v) == "userdata" then
    local is_array = #v > 0 and v[1] ~= nil
    local t = {}
    for k, x in pairs(v) do t[k] = plain(x) end
    if is_array or (next(t) == nil and tostring(v):sub(1, 1) == "[") then ARRAY[t] = true end
    return t
  end
  return v
end

local function decode(text, what)
  local v, err = json.decode(text)
  if v == nil and err then return nil, what .. ": " .. err end
  return plain(v)
end

-- Canonical text of a plain value: keys sorted, for output and diffs.
local function canon(v)
  if v == json.null then return "null" end
  local t = type(v)
  if t == "table" then
    local parts = {}
    if ARRAY[v] or (#v > 0) then
      for i = 1, #v do parts[i] = canon(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do parts[i] = json.encode(k) .. ":" .. canon(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  if t == "number" and math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
    return string.format("%d", v) -- 1.0 and 1 compare equal
  end
  return json.encode(v)
end

local function equal(a, b) return canon(a) == canon(b) end

-- NATS header block -> { lower-case name = value or {values} }
local function parse_headers(block)
  if not block or block == "" then return nil end
  local h = {}
  local first = true
  for line in block:gmatch("([^\r\n]*)\r?\n") do
    if first then
      first = false
    elseif line ~= "" then
      local k, v = line:match("^([^:]+):%s*(.-)%s*$")
      if k then
        k = k:lower()
        if h[k] == nil then h[k] = v
        elseif type(h[k]) == "table" then h[k][#h[k] + 1] = v
        else h[k] = { h[k], v } end
      end
    end
  end
  return h
end

local function header_block(headers)
  if not headers then return nil end
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  table.sort(names)
  local out = { "NATS/1.0\r\n" }
  for _, k in ipairs(names) do
    local v = headers[k]
    if type(v) ~= "table" then v = { v } end
    for _, x in ipairs(v) do out[#out + 1] = k .. ": " .. tostring(x) .. "\r\n" end
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

-- One input line -> subject, header block, payload.
local function input_message(line, n)
  local v, err = decode(line, "line " .. n)
  if not v then return nil, err end
  if type(v) ~= "table" or ARRAY[v] then return nil, ("line %d: expected a JSON object"):format(n) end
  for k in pairs(v) do
    if k ~= "subject" and k ~= "headers" and k ~= "data" and k ~= "event" and k ~= "id" and k ~= "reply"
       and k ~= "client" and k ~= "time" then
      return nil, ("line %d: unknown key '%s'"):format(n, k)
    end
  end
  if type(v.subject) ~= "string" then return nil, ("line %d: 'subject' is required"):format(n) end
  if v.reply ~= nil and (type(v.reply) ~= "string" or not v.reply:match("^[^%s%*>]+$")
                         or v.reply:match("^%.") or v.reply:match("%.$") or v.reply:match("%.%.")) then
    return nil, ("line %d: 'reply' must be a subject without wildcards"):format(n)
  end
  if (v.data == nil) == (v.event == nil) then
    return nil, ("line %d: give exactly one of 'data' and 'event'"):format(n)
  end
  if v.time ~= nil and (v.event ~= nil or type(v.time) ~= "string") then
    return nil, ("line %d: 'time' is an RFC 3339 string beside 'data' (an 'event' has its own)"):format(n)
  end
  local payload, time
  if v.event ~= nil then
    payload = canon(v.event)
    if type(v.event) == "table" and type(v.event.time) == "string" then time = v.event.time end
  else
    time = v.time
    payload = '{"specversion":"1.0","id":' .. json.encode(v.id or ("evt-" .. n)) ..
      ',"source":"events.jsonl","type":' .. json.encode(v.subject) ..
      (time and ',"time":' .. json.encode(time) or "") .. ',"data":' .. canon(v.data) .. "}"
  end
  if v.client ~= nil and (type(v.client) ~= "table" or ARRAY[v.client]) then
    return nil, ("line %d: 'client' must be an object like {\"user\":\"shop\"}"):format(n)
  end
  return { subject = v.subject, hdr = header_block(v.headers), payload = payload, reply = v.reply,
           client = v.client, time = time }
end

-- The lines' messages, and under the virtual clock each one's time in ns
-- (nil for a line without one).
local function input_messages(inputs, events, virtual)
  local out = {}
  for i, l in ipairs(inputs) do
    local m, err = input_message(l.text, l.n)
    if not m then return nil, events .. ": " .. err end
    if virtual and m.time then
      m.ns = m.time:match("^%d%d%d%d%-%d%d%-%d%d[Tt]") and flow.time(m.time)
      if not m.ns then
        return nil, ("%s:%d: 'time' is not an RFC 3339 time: %s"):format(events, l.n, m.time)
      end
    end
    m.n = l.n
    out[i] = m
  end
  return out
end

-- A delivery as the line tide run prints.
local function delivery_record(d)
  local r = { subject = d.subject }
  local v = json.decode(d.payload)
  if v ~= nil then v = plain(v) end
  if type(v) == "table" and not ARRAY[v] then
    r.event = v
  elseif v ~= nil then
    r.data = v
  else
    r.payload = d.payload
  end
  r.headers = parse_headers(d.headers)
  return r
end

local function record_line(r)
  local parts = { '"subject":' .. json.encode(r.subject) }
  if r.headers then parts[#parts + 1] = '"headers":' .. canon(r.headers) end
  if r.event then parts[#parts + 1] = '"event":' .. canon(r.event) end
  if r.data ~= nil then parts[#parts + 1] = '"data":' .. canon(r.data) end
  if r.payload then parts[#parts + 1] = '"payload":' .. json.encode(r.payload) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Does delivery r meet expectation x?  Returns true, or false and why.
local function matches(x, r)
  if x.subject ~= r.subject then
    return false, ("subject %s, expected %s"):format(r.subject, x.subject)
  end
  if x.data ~= nil then
    local got = r.event and r.event.data or r.data
    if r.event and r.event.data == nil then got = nil end
    if got == nil or not equal(got, x.data) then
      return false, ("data %s, expected %s"):format(got == nil and "(none)" or canon(got), canon(x.data))
    end
  end
  if x.event ~= nil then
    if not r.event then return false, "payload is not a JSON envelope" end
    for k, want in pairs(x.event) do
      local got = r.event[k]
      if got == nil then return false, ("envelope has no '%s'"):format(k) end
      if want ~= "*" and not equal(got, want) then
        return false, ("envelope '%s' is %s, expected %s"):format(k, canon(got), canon(want))
      end
    end
  end
  if x.headers ~= nil then
    for k, want in pairs(x.headers) do
      local got = r.headers and r.headers[k:lower()]
      if got == nil then return false, ("no header '%s'"):format(k) end
      if want ~= "*" and canon(got) ~= canon(want) then
        return false, ("header '%s' is %s, expected %s"):format(k, canon(got), canon(want))
      end
    end
  end
  return true
end

local function expectations(path)
  local lines, err = read_lines(path)
  if not lines then return nil, err end
  local out = {}
  for _, l in ipairs(lines) do
    local v, derr = decode(l.text, path .. ":" .. l.n)
    if not v then return nil, derr end
    for k in pairs(v) do
      if k ~= "subject" and k ~= "data" and k ~= "event" and k ~= "headers" then
        return nil, ("%s:%d: unknown key '%s'"):format(path, l.n, k)
      end
    end
    if type(v.subject) ~= "string" or (v.data == nil and v.event == nil) then
      return nil, ("%s:%d: needs 'subject' and 'data' or 'event'"):format(path, l.n)
    end
    v.line = l.n
    out[#out + 1] = v
  end
  return out
end

-- Publishes msgs through the flow entry (opened with opts) and returns the
-- deliveries as records, in order; nil and a message when it cannot.
local function run_flow(entry, opts, msgs, events)
  local virtual = opts.virtual_start ~= nil
  local f, err = flow.open(entry, opts)
  if not f then return nil, err end
  local got = {}
  local function take(delivered)
    for _, d in ipairs(delivered) do got[#got + 1] = delivery_record(d) end
  end
  for _, m in ipairs(msgs) do
    if virtual then -- first what falls due up to the line's time
      local delivered, stopped = f:advance(m.ns, m.n)
      take(delivered)
      if stopped then
        io.stderr:write(("tide run: %s:%d: before this line: %s\n"):format(events, m.n, stopped))
      end
    end
    local okp, delivered, busy = pcall(f.publish, f, m.subject, m.hdr, m.payload, m.reply, m.client)
    if not okp then f:close(); return nil, ("%s:%d: %s"):format(events, m.n, delivered) end
    take(delivered)
    if busy then
      io.stderr:write(("tide run: %s:%d: %s; going on with the next line\n"):format(events, m.n, busy))
    end
  end
  if virtual then
    local delivered, stopped = f:advance(math.maxinteger)
    take(delivered)
    if stopped then io.stderr:write(("tide run: at the end of the input: %s\n"):format(stopped)) end
  end
  f:close()
  return got
end

local function main(args)
  local entry, events, expect, settle, clock = nil, nil, nil, nil, "real"
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--events" then events = args[i + 1]; i = i + 2
    elseif a == "--expect" then expect = args[i + 1]; i = i + 2
    elseif a == "--settle" then
      settle = tonumber(args[i + 1] or "")
      if not settle or settle < 0 or settle > 3600 then
        return fail("--settle wants a number of seconds from 0 to 3600")
      end
      i = i + 2
    elseif a == "--clock" then
      clock = args[i + 1]
      if clock ~= "real" and clock ~= "virtual" then
        return fail("--clock wants 'real' or 'virtual'" .. (clock and ", not '" .. clock .. "'" or ""))
      end
      i = i + 2
    elseif a:sub(1, 1) == "-" then return fail("unknown option '" .. a .. "'")
    elseif not entry then entry = a; i = i + 1
    else return fail("unexpected argument '" .. a .. "'") end
  end
  if not entry or not events then
    return fail("usage: tide run flow.lua --events in.jsonl [--expect out.jsonl] [--settle SECONDS]"
                .. " [--clock real|virtual]")
  end
  local virtual = clock == "virtual"
  local inputs, err = read_lines(events)
  if not inputs then return fail(err) end
  local msgs
  msgs, err = input_messages(inputs, events, virtual)
  if not msgs then return fail(err) end
  local want
  if expect then
    want, err = expectations(expect)
    if not want then return fail(err) end
  end
  local start
  if virtual then
    start = 0 -- the epoch, when no line has a time
    for _, m in ipairs(msgs) do
      if m.ns then start = m.ns; break end
    end
  end
  local got
  got, err = run_flow(entry, { settle = settle, virtual_start = start }, msgs, events)
  if not got then return fail(err) end

  if not want then
    for _, r in ipairs(got) do print(record_line(r)) end
    return 0
  end
  -- Compare in order; report every difference.
  local problems = {}
  local n = math.max(#got, #want)
  for k = 1, n do
    local x, r = want[k], got[k]
    if not r then
      problems[#problems + 1] = ("- delivery %d missing: expected %s (%s:%d)"):format(k, x.subject, expect, x.line)
    elseif not x then
      problems[#problems + 1] = ("+ delivery %d not expected: %s"):format(k, record_line(r))
    else
      local ok, why = matches(x, r)
      if not ok then
        problems[#problems + 1] = ("! delivery %d (%s:%d): %s\n    got: %s"):format(k, expect, x.line, why, record_line(r))
      end
    end
  end
  if #problems == 0 then
    print(("ok: %d deliveries match %s"):format(#got, expect))
    return 0
  end
  print(("%d of %d deliveries differ from %s:"):format(#problems, n, expect))
  for _, p in ipairs(problems) do print(p) end
  return 1
end

return main
