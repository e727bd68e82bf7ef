-- layer-check.lua - reads the built objects and checks the layering that
-- docs/architecture.md describes:
--   * src/<layer>/ calls only its own layer and the layers below it, in the
--     order base < core < store < script < app;
--   * base, core and store make no call into Lua (no lua_*/luaL_* symbol);
--   * no cycle of references between object files spans more than 5 files.
-- Usage: lua5.4 scripts/layer-check.lua [BUILD_DIR]   (default: build)
-- Prints every violation with the symbol that makes it; exits 1 on any.

local build = arg[1] or "build"
-- Sources are looked for beside the build directory's parent (the checkout),
-- unless there is no src/ there (object trees made by the spec).
local root = build:match("^(.*)/[^/]+$") or "."
local probe = io.open(root .. "/src/core/server.c")
local has_src = probe ~= nil
if probe then probe:close() end
local order = { base = 1, core = 2, store = 3, script = 4, app = 5 }
local NO_LUA = { base = true, core = true, store = true }
local MAX_CYCLE = 5

local function lines(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- Every object, by "layer/name".
local objs = {}
for _, path in ipairs(lines("find '" .. build .. "/obj' -name '*.o' | sort")) do
  local layer, name = path:match("/obj/([^/]+)/([^/]+)%.o$")
  -- An object whose source is gone (renamed since it was built) is stale.
  local src = io.open(("%s/src/%s/%s.c"):format(root, layer or "", name or ""))
  if src then src:close() end
  if layer and order[layer] and (src or not has_src) then
    objs[#objs + 1] = { id = layer .. "/" .. name, layer = layer, path = path }
  end
end
if #objs == 0 then
  io.stderr:write("layer-check: no objects under " .. build .. "/obj (build first)\n")
  os.exit(2)
end

-- Who defines each global symbol.
local defined_by = {}
for _, o in ipairs(objs) do
  for _, l in ipairs(lines("nm --defined-only -g '" .. o.path .. "'")) do
    local sym = l:match("^%x*%s+%u%s+(%S+)$")
    if sym then defined_by[sym] = o end
  end
end

local bad, edges = 0, {}
for _, o in ipairs(objs) do
  edges[o.id] = {}
  for _, l in ipairs(lines("nm -u '" .. o.path .. "'")) do
    local sym = l:match("U%s+(%S+)$")
    if sym then
      local d = defined_by[sym]
      if d and d ~= o then
        edges[o.id][d.id] = true
        if order[d.layer] > order[o.layer] then
          print(string.format("upward call: %s (%s) -> %s (%s): %s", o.id, o.layer, d.id, d.layer, sym))
          bad = bad + 1
        end
      elseif not d and NO_LUA[o.layer] and (sym:match("^lua_") or sym:match("^luaL_")) then
        print(string.format("Lua in the %s layer: %s calls %s", o.layer, o.id, sym))
        bad = bad + 1
      end
    end
  end
end

-- Cycles: strongly connected components of the reference graph (Tarjan).
local index, low, onstack, stack, n = {}, {}, {}, {}, 0
local function connect(v)
  n = n + 1
  index[v], low[v] = n, n
  stack[#stack + 1] = v
  onstack[v] = true
  for w in pairs(edges[v]) do
    if not index[w] then
      connect(w)
      low[v] = math.min(low[v], low[w])
    elseif onstack[w] then
      low[v] = math.min(low[v], index[w])
    end
  end
  if low[v] == index[v] then
    local comp = {}
    repeat
      local w = table.remove(stack)
      onstack[w] = nil
      comp[#comp + 1] = w
    until w == v
    if #comp > MAX_CYCLE then
      table.sort(comp)
      print(string.format("cycle of %d files (at most %d): %s", #comp, MAX_CYCLE, table.concat(comp, " ")))
      bad = bad + 1
    end
  end
end
for _, o in ipairs(objs) do
  if not index[o.id] then connect(o.id) end
end

if bad > 0 then
  print(string.format("layer-check: %d violation(s) in %d objects", bad, #objs))
  os.exit(1)
end
print(string.format("layer-check: %d objects, no upward call, no Lua below script, no cycle over %d files",
  #objs, MAX_CYCLE))
