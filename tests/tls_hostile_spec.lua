-- TLS handshakes under load (docs/tls.md, "Handshakes and the event
-- loop"): a burst of handshakes must not hold up a client already
-- connected.  Timed, so scripts/run-tests.sh runs it beside no other spec,
-- as hostile_spec.lua.
local h = require "helpers"
local ts = require "tls_support"
local q, make_certs, start_tide, stop = ts.q, ts.make_certs, ts.start_tide, ts.stop
local NODE_DIR = ts.NODE_DIR

-- How long a PING may wait while a burst of handshakes runs (as in
-- hostile_spec.lua: a prompt server answers within this on a 2-core machine
-- shared with another pass of the suite).
local SLACK_MS = 250

describe("TLS handshakes", function()
  local certs

  setup(function()
    local ok, out = h.npm_ready()
    assert(ok, "npm packages for tests/interop/node:\n" .. tostring(out))
    certs = h.make_tmpdir("tide-tls")
    make_certs(certs, { big = true })
  end)

  teardown(function()
    h.remove_tmpdir(certs)
  end)

  -- The worst PING round trip of a TLS client connected to tide (started
  -- with tls_block) while a burst of n handshakes runs (node tls_burst.mjs
  -- with the extra arguments args, on port burst_port(tide)).
  local function worst_rtt_during_burst(tls_block, n, burst_port, args)
    local tide = start_tide(certs, tls_block)
    local out = ("%s/rtt-%d.out"):format(certs, tide.port)
    local _, node = h.sh("command -v node")
    local probe = h.proc.spawn({ (node:gsub("%s+$", "")), NODE_DIR .. "/tls_rtt.mjs", tostring(tide.port), certs .. "/ca.pem", "8" }, out)
    local ok, err = pcall(function()
      assert(h.wait_until(function() return (h.read_file(out) or ""):find("ready") end, 10, 0.05), "probe not ready")
      h.proc.sleep(0.5)
      local _, burst = h.sh(("cd %s && timeout -k 5 60 node tls_burst.mjs %d %s/ca.pem %d %s"):format(q(NODE_DIR),
        burst_port(tide), q(certs), n, args or ""))
      assert.matches(("handshakes %d of %d"):format(n, n), burst)
    end)
    local st = h.proc.wait(probe, 20)
    if not st then h.proc.kill(probe, "KILL") h.proc.wait(probe, 5) end
    stop(tide)
    assert(ok, err)
    local text = h.read_file(out) or ""
    local nrtt, worst = text:match('"n":(%d+),"max_ms":([%d.]+)')
    assert(nrtt, "no round trips measured:\n" .. text)
    assert.is_true(tonumber(nrtt) > 50, text)
    return tonumber(worst)
  end

  it("keeps connected clients prompt during a burst of handshakes", function()
    -- 400 RSA-4096 handshakes cost the server about 1.5 s of CPU; the
    -- client already connected must not wait behind them.  With the
    -- handshakes at normal priority its worst round trip here was 0.9 to
    -- 1.9 s (300 handshakes); with them at the lowest, 50 to 60 ms on an
    -- idle machine and up to 300 ms on one with a load average of 17 (the
    -- probe and the burst's own client compete for the 2 cores): hence
    -- twice the slack.
    local worst = worst_rtt_during_burst('tls { cert = "big.pem", key = "big-key.pem", timeout = "30s" }', 400,
                                         function(tide) return tide.port end)
    assert.is_true(worst < 2 * SLACK_MS, ("a PING round trip took %s ms during the burst"):format(worst))
  end)

  it("keeps connected clients prompt during a burst of HTTPS handshakes on the HTTP listener", function()
    -- The same burst on the HTTP listener (tls { http = true }): its
    -- handshakes run at the lowest priority too.  With them at normal
    -- priority the worst round trip here was 3.1 s (load average 5); with
    -- them at the lowest, 20 ms.
    local hport = h.free_port()
    local worst = worst_rtt_during_burst(('listen { http = "127.0.0.1:%d" }\n'):format(hport) ..
                                         'tls { cert = "big.pem", key = "big-key.pem", timeout = "30s", http = true }',
                                         400, function() return hport end, "https")
    assert.is_true(worst < 2 * SLACK_MS, ("a PING round trip took %s ms during the HTTPS burst"):format(worst))
  end)
end)
