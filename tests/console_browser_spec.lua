-- The web console end to end in real browsers: Debian's chromium driven by
-- playwright-core, and Debian's firefox-esr driven by puppeteer-core over
-- WebDriver BiDi (console/node_modules, from console/package-lock.json),
-- against tide serving examples/tour with a stream for its dead letters.
-- The checks are in tests/console/e2e.mjs; screenshots of each view go to
-- build/console-*.png (Firefox's: build/console-firefox-*.png).
local h = require "helpers"

-- The tour's entry file in dir, with its examples found from here, plus a
-- stream that keeps the scripts' dead letters (so one can be replayed).
local function tour_config(dir)
  h.write_file(dir .. "/tide.lua", ([[
scripting { path = %q }
storage { dir = "data" }
stream "dead" { subjects = { "$TIDE.DEAD.>" } }
require "user-upgrade.rules"
require "order-filter.rules"
require "order-flow.rules"
require "idempotent.rules"
]]):format(h.root .. "/examples"))
  local tour = h.read_file(h.root .. "/examples/tour/tide.lua")
  for _, ex in ipairs({ "user-upgrade", "order-filter", "order-flow", "idempotent" }) do
    assert.is_truthy(tour:find('require "' .. ex .. '.rules"', 1, true), "the tour no longer requires " .. ex)
  end
  return dir .. "/tide.lua"
end

local function skip_asan()
  if os.getenv("TIDE_PASS") == "asan" then
    pending("runs in the plain pass only: the browser, not tide, is what costs here")
    return true
  end
end

describe("the web console in chromium", function()
  it("draws every rule, live rates, tails, traces, replays a dead letter, starts shadows and canaries, promotes, rolls back",
  function()
    if skip_asan() then return end
    local chromium = os.getenv("CHROMIUM") or "/usr/bin/chromium"
    assert(h.exists(chromium), "no " .. chromium .. ": scripts/install-deps.sh installs Debian's chromium")
    assert(h.exists(h.root .. "/console/node_modules/playwright-core/package.json"),
      "no playwright-core: make builds the console, which runs npm ci in console/")
    local dir = h.make_tmpdir()
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", tour_config(dir), "--http", "127.0.0.1:" .. hport } }
    -- examples/order-filter, whose candidate the page shadows, promotes and
    -- runs as a canary (docs/deploys.md).
    local ORDERS = h.root .. "/examples/order-filter"
    local oport = h.free_port()
    local osrv = h.start_server { args = { "-c", ORDERS .. "/tide.lua", "--http", "127.0.0.1:" .. oport } }
    local shots = h.root .. "/build"
    local rc, out = h.sh(("CHROMIUM=%q timeout -k 5 120 node %q %d %q %q %q"):format(chromium,
      h.root .. "/tests/console/e2e.mjs", srv.port, "http://127.0.0.1:" .. hport, shots,
      "http://127.0.0.1:" .. oport))
    assert.are.equal("exited", (srv:stop()))
    assert.are.equal("exited", (osrv:stop()))
    h.remove_tmpdir(dir)
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("not ok", 1, true), out)
    assert.matches("ok %- the dead letter was replayed", out)
    assert.matches("ok %- Stop from the page ended the shadow", out)
    assert.matches("ok %- Rollback from the page", out)
    assert.matches("ok %- the canary was finished from the page", out)
  end)
end)

describe("the web console in firefox", function()
  it("draws every rule, live rates, tails and traces, and fits a phone", function()
    if skip_asan() then return end
    local firefox = os.getenv("FIREFOX") or "/usr/bin/firefox-esr"
    assert(h.exists(firefox), "no " .. firefox .. ": scripts/install-deps.sh installs Debian's firefox-esr")
    assert(h.exists(h.root .. "/console/node_modules/puppeteer-core/package.json"),
      "no puppeteer-core: make builds the console, which runs npm ci in console/")
    local dir = h.make_tmpdir()
    local hport = h.free_port()
    local srv = h.start_server { args = { "-c", tour_config(dir), "--http", "127.0.0.1:" .. hport } }
    -- Firefox keeps its profile in TMPDIR: the test's own directory.
    local rc, out = h.sh(("BROWSER=firefox FIREFOX=%q TMPDIR=%q timeout -k 5 120 node %q %d %q %q"):format(firefox,
      dir, h.root .. "/tests/console/e2e.mjs", srv.port, "http://127.0.0.1:" .. hport, h.root .. "/build"))
    assert.are.equal("exited", (srv:stop()))
    h.remove_tmpdir(dir)
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("not ok", 1, true), out)
    assert.matches("# firefox/", out)
    assert.matches("ok %- the event published from the page is in the tail", out)
    assert.matches("ok %- #/rules at 390 px: no sideways scroll", out)
  end)
end)
