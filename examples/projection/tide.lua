-- A CQRS read model: account balances kept in tide.kv by a durable handler
-- that consumes the "accounts" stream.  See README.md.
listen { nats = "127.0.0.1:4222" }
storage { dir = "data" }

stream "accounts" { subjects = { "account.>" }, fsync = "always" }

-- Bound to the Lua handler in rules.lua (no deliver subject).  Events of one
-- account are applied one at a time, in order.
consumer "balances" { stream = "accounts", filter = "account.*.*", ordered_by = "data.account" }

require "rules"
