-- NATS user nkeys (src/base/nkey.c) through `tide nkey`, checked against the
-- nats.js nkeys package (tests/interop/node/nkeys.mjs): the same public key
-- from the same seed, the same signature of the same message, each side's
-- signatures accepted by the other, and what both refuse.
local h = require "helpers"
local core = require "tide_core"

local NODE_DIR = h.root .. "/tests/interop/node"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs `tide ARGS...`; returns the exit code, stdout and stderr.
local function tide(...)
  local args = { q(h.bin) }
  for _, a in ipairs({ ... }) do args[#args + 1] = q(a) end
  local err = os.tmpname()
  local f = io.popen(table.concat(args, " ") .. " 2>" .. err .. "; echo \"rc=$?\"")
  local out = f:read("a")
  f:close()
  local e = h.read_file(err) or ""
  os.remove(err)
  return tonumber(out:match("rc=(%d+)%s*$")), (out:gsub("rc=%d+%s*$", "")), e
end

-- Runs the reference: `node nkeys.mjs ARGS...`; returns its output lines.
local function ref(...)
  local args = { "node", q(NODE_DIR .. "/nkeys.mjs") }
  for _, a in ipairs({ ... }) do args[#args + 1] = q(a) end
  local _, out = h.sh(table.concat(args, " "))
  local lines = {}
  for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return lines
end

local function write(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- Replaces the character at i with another base32 letter.
local function flip(s, i)
  local c = s:sub(i, i) == "A" and "B" or "A"
  return s:sub(1, i - 1) .. c .. s:sub(i + 1)
end

describe("tide nkey", function()
  local files = {}
  local function seedfile(text)
    local p = write(text)
    files[#files + 1] = p
    return p
  end

  setup(function()
    local ok = h.sh("command -v node") == 0
    assert(ok, "node is needed (make deps installs it)")
    local ready, out = h.npm_ready()
    assert(ready, "npm ci failed in " .. NODE_DIR .. ":\n" .. tostring(out))
  end)

  teardown(function()
    for _, p in ipairs(files) do os.remove(p) end
  end)

  it("gen prints a new user seed, then the public key nats.js derives from it", function()
    local seen = {}
    for _ = 1, 3 do
      local rc, out = tide("nkey", "gen")
      assert.are.equal(0, rc)
      local seed, pub = out:match("^(SU[A-Z2-7]+)\n(U[A-Z2-7]+)\n$")
      assert.is_truthy(seed, out)
      assert.are.equal(58, #seed)
      assert.are.equal(56, #pub)
      assert.are.same({ pub }, ref("pub", seed))
      assert.is_nil(seen[seed])
      seen[seed] = true
      -- and tide reads back what it wrote
      local _, again = tide("nkey", "pub", seedfile(out))
      assert.are.equal(pub .. "\n", again)
    end
  end)

  it("reads a seed made by nats.js, alone or in a .creds file", function()
    local kp = ref("create", "user")
    local rc, out = tide("nkey", "pub", seedfile(kp[1] .. "\n"))
    assert.are.equal(0, rc)
    assert.are.equal(kp[2] .. "\n", out)
    local creds = "-----BEGIN NATS USER JWT-----\r\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5In0\r\n"
      .. "------END NATS USER JWT------\r\n\r\n-----BEGIN USER NKEY SEED-----\r\n  "
      .. kp[1] .. "  \r\n------END USER NKEY SEED------\r\n"
    rc, out = tide("nkey", "pub", seedfile(creds))
    assert.are.equal(0, rc)
    assert.are.equal(kp[2] .. "\n", out)
  end)

  it("signs a nonce exactly as nats.js does, and nats.js verifies it", function()
    local kp = ref("create", "user")
    local file = seedfile(kp[1])
    for _, nonce in ipairs({ "Xc3tGbOsRmi1Jq0", "", "a longer message with spaces" }) do
      local rc, sig = tide("nkey", "sign", file, nonce)
      assert.are.equal(0, rc)
      sig = sig:gsub("\n$", "")
      assert.matches("^[A-Za-z0-9_-]+$", sig)
      assert.are.equal(86, #sig)
      -- Ed25519 signatures are deterministic: the same bytes on both sides
      assert.are.equal(ref("sign", kp[1], nonce)[1], sig)
      assert.are.same({ "ok" }, ref("verify", kp[2], nonce, sig))
    end
  end)

  it("verifies nats.js signatures in base64url and in nats.js' own padded base64", function()
    local kp = ref("create", "user")
    local sigs = ref("sign", kp[1], "pJr5Mfw2X1EU9Ls")
    assert.are.equal(86, #sigs[1])
    assert.are.equal(88, #sigs[2])
    assert.matches("==$", sigs[2])
    for _, sig in ipairs(sigs) do
      local rc, out = tide("nkey", "verify", kp[2], "pJr5Mfw2X1EU9Ls", sig)
      assert.are.equal(0, rc)
      assert.are.equal("verified\n", out)
    end
  end)

  it("refuses a signature of another nonce, by another key, or altered", function()
    local kp, other = ref("create", "user"), ref("create", "user")
    local nonce = "hQ2ub8Jc0LZsGr4"
    local sig = ref("sign", kp[1], nonce)[1]
    local cases = {
      { kp[2], "hQ2ub8Jc0LZsGr5", sig },         -- another nonce
      { other[2], nonce, sig },                  -- another key
      { kp[2], nonce, ref("sign", other[1], nonce)[1] },
      { kp[2], nonce, flip(sig, 40) },           -- one byte of the signature
    }
    for i, c in ipairs(cases) do
      local rc, out, err = tide("nkey", "verify", c[1], c[2], c[3])
      assert.are.equal(1, rc, "case " .. i)
      assert.are.equal("", out)
      assert.matches("signature does not verify", err)
      assert.are.same({ "bad" }, ref("verify", c[1], c[2], c[3]), "case " .. i)
    end
  end)

  it("refuses signatures that are not base64 of 64 bytes", function()
    local kp = ref("create", "user")
    local sigs = ref("sign", kp[1], "n")
    local url, std = sigs[1], sigs[2]
    assert.are.equal(0, (tide("nkey", "verify", kp[2], "n", url)))
    local bad = {
      url:sub(1, 85),                          -- truncated
      url .. "A",                              -- too long
      "",
      url:sub(1, 43) .. "." .. url:sub(45),    -- not a base64 character
    }
    -- A signature without '-' or '_' (about one in 15) is spelled the same
    -- in both alphabets, so the mixed forms are only wrong when it has them.
    if url:find("[-_]") then
      bad[#bad + 1] = url .. "=="              -- URL alphabet with padding
    end
    if std:find("[+/]") then
      bad[#bad + 1] = std:sub(1, 86)           -- standard alphabet without padding
    end
    for i, sig in ipairs(bad) do
      local rc, _, err = tide("nkey", "verify", kp[2], "n", sig)
      assert.are.equal(1, rc, "case " .. i)
      assert.matches("signature: bad encoding", err, 1, true)
    end
  end)

  -- nats-server's answer for a user nkey in its configuration: true if it
  -- takes the key (`nats-server -t` checks it as it would at start-up).
  local function server_takes(key)
    local conf = seedfile(('authorization { users = [ { nkey: "%s" } ] }\n'):format(key))
    return h.sh("nats-server -t -c " .. q(conf)) == 0
  end

  it("refuses a public key with a bad checksum, the wrong prefix or the wrong length", function()
    assert(h.sh("command -v nats-server") == 0, "nats-server is needed (make deps installs it)")
    local kp, acct = ref("create", "user"), ref("create", "account")
    local sig = ref("sign", kp[1], "n")[1]
    assert.is_true(server_takes(kp[2]))
    local cases = {
      { flip(kp[2], 20), "bad checksum" },
      { flip(kp[2], 56), "bad checksum" },
      -- still base32: 34 bytes, the CRC is off (or, once in 65,536 keys,
      -- matches by chance, and the length is what is refused)
      { kp[2]:sub(1, 55), "bad checksum", "not a public user key" },
      { kp[2]:sub(1, 54), "bad encoding" },     -- not a length base32 can end at
      { kp[2]:sub(1, 41), "bad encoding" },
      { kp[2]:lower(), "bad encoding" },
      { kp[2]:sub(1, 30) .. "0" .. kp[2]:sub(32), "bad encoding" },
      { "", "bad encoding" },
      { kp[1], "not a public user key" },       -- the seed where the public key goes
      { acct[2], "not a public user key" },     -- an account key "A..."
    }
    for i, c in ipairs(cases) do
      local rc, out, err = tide("nkey", "verify", c[1], "n", sig)
      assert.are.equal(1, rc, "case " .. i)
      assert.are.equal("", out)
      if not (c[3] and err:find(c[3], 1, true)) then assert.matches(c[2], err, 1, true) end
      assert.is_false(server_takes(c[1]), "nats-server takes case " .. i)
    end
    -- One character more that adds no whole byte: Go's and nats.js' base32
    -- decoders drop it (nats-server takes the key, though no client could
    -- ever send that string); tide refuses it as the typo it is.
    local rc, _, err = tide("nkey", "verify", kp[2] .. "A", "n", sig)
    assert.are.equal(1, rc)
    assert.matches("bad encoding", err, 1, true)
  end)

  it("refuses a seed file without a user seed", function()
    local kp, acct = ref("create", "user"), ref("create", "account")
    local cases = {
      { kp[2], "not a user seed" },               -- a public key
      { acct[1], "not a user seed" },             -- an account seed "SA..."
      { flip(kp[1], 30), "bad checksum" },
      { kp[1]:sub(1, 57), "bad encoding" },      -- one character short
      { "", "bad encoding" },
    }
    for i, c in ipairs(cases) do
      local rc, out, err = tide("nkey", "pub", seedfile(c[1] .. "\n"))
      assert.are.equal(1, rc, "case " .. i)
      assert.are.equal("", out)
      assert.matches(c[2], err, 1, true)
    end
    assert.matches("^SA", acct[1])
    local rc, _, err = tide("nkey", "sign", "/nonexistent/seed", "n")
    assert.are.equal(1, rc)
    assert.matches("/nonexistent/seed", err, 1, true)
  end)

  it("answers a wrong command line with its usage and exit code 2", function()
    for _, args in ipairs({ { "nkey" }, { "nkey", "gen", "x" }, { "nkey", "verify", "U" }, { "nkey", "frob" } }) do
      local rc, _, err = tide(table.unpack(args))
      assert.are.equal(2, rc)
      assert.matches("usage: tide nkey gen", err, 1, true)
    end
  end)
end)

describe("nkey nonces (tide_core)", function()
  setup(function()
    local ready, out = h.npm_ready()
    assert(ready, "npm ci failed in " .. NODE_DIR .. ":\n" .. tostring(out))
  end)

  it("are 11 random bytes in base64url without padding, as nats-server's", function()
    local seen = {}
    for i = 1, 1000 do
      local n = core.nkey_nonce()
      assert.are.equal(15, #n)
      assert.matches("^[A-Za-z0-9_-]+$", n)
      -- 15 characters carry 90 bits; 11 bytes leave the last one's low two zero
      assert.matches("[AEIMQUYcgkosw048]$", n)
      assert.is_nil(seen[n], "nonce " .. i .. " repeats")
      seen[n] = true
    end
  end)

  it("verify when signed by nats.js, in either encoding, and only for that nonce", function()
    local kp = ref("create", "user")
    local nonce = core.nkey_nonce()
    for _, sig in ipairs(ref("sign", kp[1], nonce)) do
      assert.are.same({ true, "ok" }, { core.nkey_verify(kp[2], nonce, sig) })
      assert.are.same({ false, "signature does not verify" },
        { core.nkey_verify(kp[2], core.nkey_nonce(), sig) })
    end
  end)
end)
