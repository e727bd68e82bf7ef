-- An order saga as durable handlers: reserve inventory -> charge payment ->
-- schedule shipping, with compensation when a step fails.  See README.md.
listen { nats = "127.0.0.1:4222" }
storage { dir = "data" }

-- Every step's events are stored: the saga's whole history is one stream.
stream "orders" { subjects = { "order.>", "inventory.>", "payment.>", "shipping.>" }, fsync = "always" }

-- One consumer per step, each bound to a handler in rules.lua.  Events of
-- one order are handled one at a time and in order; other orders proceed.
local function step(name, filter)
  consumer(name) { stream = "orders", filter = filter, ordered_by = "data.order_id",
                   max_deliver = 5, backoff = { "100ms", "500ms", "2s" }, dead_letter = "saga.dead." .. name }
end
step("inventory",  "order.placed")
step("payment",    "inventory.reserved")
step("shipping",   "payment.charged")
step("compensate", "payment.failed")
step("finish",     "shipping.scheduled")

stream "saga-dead" { subjects = { "saga.dead.>" } }

require "rules"
