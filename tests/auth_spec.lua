-- Identities and subject permissions on the NATS listener (docs/security.md).
local h = require "helpers"

describe("tide passwd", function()
  it("prints a bcrypt hash of the line read from stdin", function()
    local rc, out = h.sh(("printf 'pw one\\n' | '%s' passwd"):format(h.bin))
    assert.are.equal(0, rc, out)
    assert.matches("^%$2b%$11%$[./A-Za-z0-9]+\n$", out)
    assert.are.equal(60, #out - 1)
    rc, out = h.sh(("printf 'pw\\n' | '%s' passwd --cost 4"):format(h.bin))
    assert.are.equal(0, rc, out)
    assert.matches("^%$2b%$04%$", out)
    rc, out = h.sh(("'%s' passwd </dev/null"):format(h.bin))
    assert.are.equal(1, rc)
    assert.matches("no password given", out)
  end)
end)
