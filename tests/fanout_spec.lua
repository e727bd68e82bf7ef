-- Fan-out to many connections (docs/architecture.md "Output and memory"):
-- a burst that queues a lot of output for clients that do not read yet is
-- delivered whole, and the memory it took goes back to the system once it
-- is written.
local h = require "helpers"

-- The server's resident memory in KiB.
local function rss_kb(srv)
  local text = h.read_file("/proc/" .. srv.pid .. "/status") or ""
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

local CONNS = 20
local SIZE = 32 * 1024

describe("a fan-out burst", function()
  local srv, subs, pub

  before_each(function()
    srv = h.start_server()
    subs = {}
    for i = 1, CONNS do
      local c = h.connect(srv.port, { timeout = 20 })
      c:send("CONNECT {\"verbose\":false}\r\nSUB burst 1\r\n")
      assert(c:ping())
      subs[i] = c
    end
    pub = h.connect(srv.port, { timeout = 20 })
  end)

  after_each(function()
    for _, c in ipairs(subs or {}) do c:close() end
    if pub then pub:close() end
    if srv then srv:stop() end
  end)

  -- msgs messages of SIZE bytes to CONNS connections that read none of it
  -- until all is routed (the kernel's socket buffers take a few MiB of each
  -- connection's share, the server queues the rest).  Subscriptions made
  -- during the burst stay, in memory between the pieces of its output, so
  -- what the burst frees is not one block at the end of the heap, which an
  -- allocator gives back by itself, but holes between them.  Returns the
  -- RSS before and at the peak, and after the readers took everything.
  local function burst(msgs)
    local before = rss_kb(srv)
    local payload = ("x"):rep(SIZE)
    local frame = ("PUB burst %d\r\n%s\r\n"):format(SIZE, payload)
    for i = 1, msgs do assert(pub:send(frame .. ("SUB kept.%d %d\r\n"):format(i, i))) end
    assert(pub:ping()) -- every message routed: the output waits for the readers
    local peak = rss_kb(srv)
    local one = ("MSG burst 1 %d\r\n%s\r\n"):format(SIZE, payload)
    for i, c in ipairs(subs) do
      local got, err = c:bytes(#one * msgs, 30)
      assert(got, ("subscriber %d: %s"):format(i, tostring(err)))
      assert.are.equal(one:rep(msgs), got)
    end
    for _, c in ipairs(subs) do assert(c:ping()) end
    return before, peak
  end

  -- That RSS comes back to within 16 MiB of before within 10 s of the
  -- burst being written, after it had grown by more than `grew` KiB.
  local function assert_returned(before, peak, grew)
    if os.getenv("TIDE_PASS") == "asan" then
      return -- freed memory sits in ASan's quarantine: RSS says nothing there
    end
    -- The burst did take memory (else the test shows nothing) ...
    assert.is_true(peak - before > grew, ("RSS grew only %d KiB during the burst"):format(peak - before))
    -- ... and it goes back (on the server's idle timer) once written.
    local after
    local ok = h.wait_until(function()
      after = rss_kb(srv)
      return after - before < 16 * 1024
    end, 10, 0.2)
    assert.is_true(ok, ("RSS %d KiB before, %d KiB at the peak, still %d KiB 10 s after"):format(before, peak, after))
  end

  it("of 160 MiB is delivered whole, and its memory goes back down once written", function()
    local before, peak = burst(256)
    assert_returned(before, peak, 64 * 1024)
  end)
end)
