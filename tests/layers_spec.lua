-- The layer check (scripts/layer-check.lua, docs/architecture.md): the
-- built objects call only downwards, the store knows no Lua, and no cycle
-- of references spans more than 5 files.  It passes on tide's own build and
-- fails on small object trees made here with each kind of violation.
local h = require "helpers"

local CHECK = h.root .. "/scripts/layer-check.lua"

-- Builds a fake tree: files maps "layer/name" to C source.  Returns the
-- build dir to check.
local made = {}
local function tree(files)
  local dir = os.tmpname()
  os.remove(dir)
  made[#made + 1] = dir
  for id, src in pairs(files) do
    local layer, name = id:match("^(%w+)/(%w+)$")
    assert(os.execute(("mkdir -p '%s/obj/%s'"):format(dir, layer)))
    local c = ("%s/%s.c"):format(dir, name)
    local f = assert(io.open(c, "w"))
    f:write(src)
    f:close()
    local rc, out = h.sh(("cc -c -o '%s/obj/%s/%s.o' '%s'"):format(dir, layer, name, c))
    assert(rc == 0, out)
  end
  return dir
end

local function check(dir)
  return h.sh(("lua5.4 '%s' '%s'"):format(CHECK, dir))
end

describe("layer check", function()
  teardown(function()
    for _, d in ipairs(made) do os.execute(("rm -rf '%s'"):format(d)) end
  end)

  it("passes on tide's build", function()
    local rc, out = check(h.root .. "/build")
    assert.are.equal(0, rc, out)
    assert.matches("no upward call", out)
  end)

  it("fails on a call from a lower layer into a higher one, naming the symbol", function()
    local dir = tree({
      ["core/srv"] = "void app_hook(void); void srv_run(void) { app_hook(); }\n",
      ["app/main"] = "void srv_run(void); void app_hook(void) {} int main(void) { srv_run(); return 0; }\n",
    })
    local rc, out = check(dir)
    assert.are.equal(1, rc, out)
    assert.matches("upward call: core/srv %(core%) %-> app/main %(app%): app_hook", out)
    -- The same call downwards is fine.
    dir = tree({
      ["core/srv"] = "void srv_run(void) {}\n",
      ["app/main"] = "void srv_run(void); int main(void) { srv_run(); return 0; }\n",
    })
    rc, out = check(dir)
    assert.are.equal(0, rc, out)
  end)

  it("fails on Lua in the store", function()
    local dir = tree({
      ["store/log"] = "void lua_settop(void *L, int n); void log_append(void *L) { lua_settop(L, 0); }\n",
    })
    local rc, out = check(dir)
    assert.are.equal(1, rc, out)
    assert.matches("Lua in the store layer: store/log calls lua_settop", out)
  end)

  it("fails on a cycle of more than 5 files, and allows one of 5", function()
    local function ring(n)
      local files = {}
      for i = 1, n do
        local nxt = i % n + 1
        files["core/f" .. i] = ("void f%d(void); void f%d(void) { f%d(); }\n"):format(nxt, i, nxt)
      end
      return tree(files)
    end
    local rc, out = check(ring(6))
    assert.are.equal(1, rc, out)
    assert.matches("cycle of 6 files", out)
    rc, out = check(ring(5))
    assert.are.equal(0, rc, out)
  end)
end)
