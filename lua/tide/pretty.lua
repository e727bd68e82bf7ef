-- Pretty printing for the tide prompt: tables nested and sorted by key,
-- strings quoted, JSON values as JSON, events as their subject and payload.
local function is_ident(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "number" or ta == "string" then return a < b end
  return tostring(a) < tostring(b)
end

local function show(v, indent, seen, depth)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t ~= "table" then return tostring(v) end
  if v == tide.null then return "null" end
  if seen[v] then return "<cycle>" end
  if depth > 8 then return "{...}" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  if #keys == 0 then seen[v] = nil return "{}" end
  table.sort(keys, key_order)
  local n, array = #v, true
  for _, k in ipairs(keys) do
    if math.type(k) ~= "integer" or k < 1 or k > n then array = false break end
  end
  local parts, inner = {}, indent .. "  "
  for _, k in ipairs(keys) do
    local val = show(v[k], inner, seen, depth + 1)
    if array then
      parts[#parts + 1] = inner .. val
    elseif is_ident(k) then
      parts[#parts + 1] = inner .. k .. " = " .. val
    else
      parts[#parts + 1] = inner .. "[" .. show(k, inner, seen, depth + 1) .. "] = " .. val
    end
  end
  seen[v] = nil
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

return function(...)
  local out = {}
  for i = 1, select("#", ...) do
    out[i] = show((select(i, ...)), "", {}, 0)
  end
  return table.concat(out, "\t")
end
