-- Sequence numbers past 2^53 in every answer that carries them: the PubAck,
-- STREAM.INFO / GET / EVENTS, CONSUMER.INFO, DLQ.SHOW / REPLAY, the HTTP
-- views and the `tide stream` / `tide dlq` output.  A double holds every
-- integer only up to 2^53, so an answer built through one says
-- 9007199254740992 for 9007199254740993.  The streams start there: each
-- gets an empty segment file whose header names its first sequence, which
-- the store takes as where the stream left off (src/store/slog.h).
-- Answers are checked as text, never through a decoder's numbers.
local h = require "helpers"

local BASE = 9007199254740993 -- 2^53 + 1: the first integer a double cannot hold

-- An empty segment of stream `name` starting at `first`.
local function seed_stream(data, name, first)
  local path = ("%s/streams/%s/%020d.seg"):format(data, name, first)
  h.write_file(path, "TIDESEG1" .. string.pack("<I8", first))
end

local function tide(srv, out_dir, args)
  local o = out_dir .. "/out"
  local rc = h.sh(("timeout 20 '%s' %s -s 127.0.0.1:%d > '%s' 2>&1"):format(h.bin, args, srv.port, o))
  return rc, h.read_file(o) or ""
end

local function admin(srv, verb, payload)
  local m = assert(h.request(srv.port, "$TIDE.ADMIN." .. verb, payload or ""))
  return m.payload
end

local function curl(url)
  local rc, out = h.sh("curl -s --max-time 5 " .. url)
  assert.are.equal(0, rc, out)
  return out
end

describe("sequences past 2^53", function()
  local srv, dir, out_dir, hport

  setup(function()
    dir = h.make_tmpdir("tide-exact")
    out_dir = dir .. "/cli"
    assert(os.execute("mkdir -p '" .. out_dir .. "'"))
    seed_stream(dir .. "/data", "orders", BASE)
    seed_stream(dir .. "/data", "dlq", BASE + 2)
    hport = h.free_port()
    h.write_file(dir .. "/tide.lua", ([[
listen { http = "127.0.0.1:%d" }
storage { dir = %q }
stream "orders" { subjects = { "order.>" } }
stream "dlq"    { subjects = { "dlq.>" } }
consumer "shipper" { stream = "orders", deliver = "ship.orders", ack_wait = "200ms", max_deliver = 1,
                     dead_letter = "dlq.orders" }
]]):format(hport, dir .. "/data"))
    srv = h.start_server { args = { "-c", dir .. "/tide.lua" } }
  end)

  teardown(function()
    if srv then assert.are.equal("exited", (srv:stop())) end
    h.remove_tmpdir(dir)
  end)

  it("are exact in every answer, the dead letters' included", function()
    local c = h.connect(srv.port)
    c:send('CONNECT {"headers":true}\r\nSUB _INBOX.ex 1\r\nSUB ship.orders 2\r\n')
    c:pub("order.created", '{"order_id":1}', "_INBOX.ex")
    local ack = assert(c:msg())
    assert.are.equal('{"stream":"orders","seq":' .. BASE .. '}', ack.payload)
    local m = assert(c:msg()) -- delivered once, never acked: max_deliver 1 makes it a dead letter
    assert.matches("^%$JS%.ACK%.orders%.shipper%.1%." .. BASE .. "%.", m.reply)

    local info = admin(srv, "STREAM.INFO", "orders")
    assert.matches(('"first_seq":%d,"last_seq":%d,"committed_seq":%d,'):format(BASE, BASE, BASE), info, 1, true)
    local got = admin(srv, "STREAM.GET", '{"stream":"orders","seq":' .. BASE .. '}')
    assert.matches('"seq":' .. BASE .. ',', got, 1, true)
    local evs = admin(srv, "STREAM.EVENTS", '{"stream":"orders","from_seq":' .. BASE .. '}')
    assert.matches('"seq":' .. BASE .. ',', evs, 1, true)
    assert.matches('"next_seq":' .. (BASE + 1) .. ',"more":false}', evs, 1, true)

    local dlseq = BASE + 2
    assert(h.wait_until(function()
      return admin(srv, "STREAM.INFO", "dlq"):find('"committed_seq":' .. dlseq .. ',', 1, true)
    end, 5), "the dead letter was not stored: " .. admin(srv, "STREAM.INFO", "dlq"))
    assert.matches('"next_seq":' .. (BASE + 1) .. ',', admin(srv, "CONSUMER.INFO", "shipper"), 1, true)

    local show = admin(srv, "DLQ.SHOW", '{"stream":"dlq","from_seq":' .. dlseq .. '}')
    assert.matches('"seq":' .. dlseq .. ',', show, 1, true)
    assert.matches('"source_seq":' .. BASE .. ',', show, 1, true)
    assert.matches('"next_seq":' .. (dlseq + 1) .. ',"more":false}', show, 1, true)
    assert.matches('"first_seq":' .. BASE .. ',', curl(("http://127.0.0.1:%d/v1/streams"):format(hport)), 1, true)
    assert.matches('"next_seq":' .. (BASE + 1) .. ',', curl(("http://127.0.0.1:%d/v1/consumers"):format(hport)),
      1, true)
    local replay = admin(srv, "DLQ.REPLAY", '{"stream":"dlq","seq":' .. dlseq .. '}')
    assert.matches('"replayed":1,"seqs":[' .. dlseq .. '],', replay, 1, true)
    assert(h.wait_until(function()
      return admin(srv, "STREAM.INFO", "orders"):find('"committed_seq":' .. (BASE + 1) .. ',', 1, true)
    end, 5), "the replay was not stored")
    c:close()
  end)

  it("are printed exactly by tide stream, tide consumer and tide dlq", function()
    local last = admin(srv, "STREAM.INFO", "orders"):match('"last_seq":(%d+),')
    local next_seq = admin(srv, "CONSUMER.INFO", "shipper"):match('"next_seq":(%d+),')
    local rc, out = tide(srv, out_dir, "stream info orders")
    assert.are.equal(0, rc, out)
    assert.matches(("sequences    %d..%s"):format(BASE, last), out, 1, true)
    rc, out = tide(srv, out_dir, "stream ls")
    assert.are.equal(0, rc, out)
    assert.matches(" " .. BASE .. " +" .. last .. " ", out)
    rc, out = tide(srv, out_dir, "stream get orders " .. BASE)
    assert.are.equal(0, rc, out)
    assert.matches("seq      " .. BASE .. "\n", out, 1, true)
    rc, out = tide(srv, out_dir, "stream events orders --from " .. (BASE + 1))
    assert.are.equal(0, rc, out)
    assert.matches("^#" .. (BASE + 1) .. " ", out)
    rc, out = tide(srv, out_dir, "consumer info shipper")
    assert.are.equal(0, rc, out)
    assert.matches("next_seq +" .. next_seq .. "\n", out)
    rc, out = tide(srv, out_dir, "dlq show dlq")
    assert.are.equal(0, rc, out)
    assert.matches("\n" .. (BASE + 2) .. " ", out)
    rc, out = tide(srv, out_dir, "dlq replay dlq --seq " .. (BASE + 2))
    assert.are.equal(0, rc, out)
    assert.matches("replayed 1 dead letter", out, 1, true) -- again: a duplicate of the first replay
  end)
end)
