-- The tour: the four examples in one node.  `make run` starts it:
--
--   build/tide serve -c examples/tour/tide.lua
--
-- scripting{path} lets require look in examples/ too, so each example's own
-- rules.lua is loaded (and hot-reloaded) from its own directory.
--
-- The four touch different subjects, so they do not interfere; rules run
-- in the order of these requires.
listen { nats = "127.0.0.1:4222" }
scripting { path = ".." }

require "user-upgrade.rules" -- user.created v1 -> v2, then email.welcome
require "order-filter.rules" -- order.created: drop amount <= 100, amount > 1000 -> order.review
require "order-flow.rules"   -- order.paid -> inventory.reserved (correlation/causation ids)
require "idempotent.rules"   -- payment.authorized -> payment.captured, once per event id
