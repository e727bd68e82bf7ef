-- Common string-pattern calls, tide's pattern functions (src/script/pattern.c,
-- through build/tide_core.so) against stock Lua 5.4's: ns per call, best of
-- BENCH_ROUNDS (default 5) rounds.  Run from the repository root:
--   lua5.4 bench/patterns.lua
package.cpath = "build/?.so;" .. package.cpath
local core = require "tide_core"
local ours = core.patterns()
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 5

local text = {}
for i = 1, 200 do text[i] = ("w%d"):format(i) end
local kb = table.concat(text, " "):sub(1, 1000) .. " needle " -- a word at the end of 1 KB
local template = "Hello $name, your order $order of $amount EUR ships on $date."
local vars = { name = "Ada", order = "A-17", amount = "12.50", date = "Monday" }

local cases = {
  { "match key=value", 200000, function(lib) return lib.match("key=value", "^(%w+)=(%w+)$") end },
  { "gsub of a short template", 100000, function(lib) return lib.gsub(template, "%$(%w+)", vars) end },
  { "find a word in 1 KB (plain)", 100000, function(lib) return lib.find(kb, "needle", 1, true) end },
  { "find a word in 1 KB (pattern)", 20000, function(lib) return lib.find(kb, "%f[%w]needle%f[%W]") end },
  { "find with no specials", 200000, function(lib) return lib.find("order.created.eu", "created") end },
  { "match a number", 200000, function(lib) return lib.match("amount: 1234.50", "(%d+%.?%d*)") end },
  { "gmatch words of a line", 50000, function(lib)
    local n = 0
    for _ in lib.gmatch("the quick brown fox jumps over the lazy dog", "%a+") do n = n + 1 end
    return n
  end },
  { "gsub trim", 200000, function(lib) return lib.gsub("   padded value   ", "^%s*(.-)%s*$", "%1") end },
}

local function time(fn, lib, n)
  local best = math.huge
  for _ = 1, ROUNDS do
    local t0 = os.clock()
    for _ = 1, n do fn(lib) end
    best = math.min(best, (os.clock() - t0) / n)
  end
  return best * 1e9
end

print(("%-32s %10s %10s %7s"):format("call", "stock ns", "tide ns", "ratio"))
for _, c in ipairs(cases) do
  assert(select("#", c[3](string)) == select("#", c[3](ours)))
  local a, b = time(c[3], string, c[2]), time(c[3], ours, c[2])
  print(("%-32s %10.0f %10.0f %7.2f"):format(c[1], a, b, b / a))
end
