-- The tour: the four examples in one node.  `make run` starts it:
--
--   build/tide serve -c examples/tour/tide.lua
--
-- require looks beside this file (and in tide's lua/ directory) only, so
-- each example's rules.lua has a verbatim copy here, under the example's
-- name: examples/tour/<example>/rules.lua.  Edit the example's own file,
-- then copy it over; tests/examples_spec.lua fails while they differ.
--
-- The four touch different subjects, so they do not interfere; rules run
-- in the order of these requires.
listen { nats = "127.0.0.1:4222" }

require "user-upgrade.rules" -- user.created v1 -> v2, then email.welcome
require "order-filter.rules" -- order.created: drop amount <= 100, amount > 1000 -> order.review
require "order-flow.rules"   -- order.paid -> inventory.reserved (correlation/causation ids)
require "idempotent.rules"   -- payment.authorized -> payment.captured, once per event id
