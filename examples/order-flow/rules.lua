-- When an order is paid, reserve its items: a handler that publishes a
-- new event, inventory.reserved, carrying the order id.
--
-- tide links the new event to the one that caused it: its envelope gets
-- correlationid (the id of the whole chain) and causationid (the id of
-- order.paid), and the same ids travel as the Tide-Correlation-Id and
-- Tide-Causation-Id headers.

on("order.paid", function(e, ctx)
  ctx.publish("inventory.reserved", {
    order_id = e.data.order_id,
    items = e.data.items,
  })
end)
