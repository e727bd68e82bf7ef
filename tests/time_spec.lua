-- Times read to the ns: the fraction of a second of an RFC 3339 time
-- (STREAM.EVENTS since and until, a consumer's start_time) is read from its
-- digits, not through a double: ".267816207" through a double is
-- 267816206 ns, so a seek to 1 ns after a record's time found that record.
local core = require "tide_core"

describe("RFC 3339 fractions", function()
  it("are read to the ns exactly", function()
    for _, c in ipairs { { ".267816207Z", 267816207, 10 }, { ".062540721Z", 62540721, 10 }, { ".5Z", 500000000, 2 },
                         { ".000000001", 1, 10 }, { ".1234567891Z", 123456789, 11 }, { "Z", 0, 0 } } do
      assert.same({ c[2], c[3] }, { core.frac_ns(c[1]) }, c[1])
    end
  end)
end)
