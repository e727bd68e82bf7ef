-- The saga's steps.  Each handler runs at least once per event; after a
-- crash it may run again for an event it already handled.  Two things make
-- that harmless:
--   * a step's effect on tide.kv (stock taken or given back) is recorded
--     under the order id, and done only if it is not recorded yet;
--   * the event a step publishes carries a Nats-Msg-Id made from the event
--     it answers, so publishing it again is dropped by the stream as a
--     duplicate.
-- tide records a handler's ack only once what it published is on disk, so
-- a crash never loses a step: the handler runs again and finishes it.
local kv = tide.kv

local function emit(ctx, meta, subject, data)
  ctx.publish(subject, data, { ["Nats-Msg-Id"] = ("%s.%d.%s"):format(meta.consumer, meta.seq, subject) })
end

-- Stock per item, set once (kept across restarts by tide.kv).
if not kv.has("stock.book") then
  kv.set("stock.book", 10)
  kv.set("stock.lamp", 0)
end

local CARD_LIMIT = 1000 -- payments above this are declined

on("order.placed", { consumer = "inventory" }, function(e, ctx, meta)
  local d = e.data
  local key = "reserved." .. d.order_id
  if not kv.has(key) then -- first time: take the stock, or record that there was none
    local left = kv.get("stock." .. d.item) or 0
    if left >= d.qty then
      kv.set("stock." .. d.item, left - d.qty)
      kv.set(key, true)
    else
      kv.set(key, false)
    end
  end
  if kv.get(key) then
    emit(ctx, meta, "inventory.reserved", d)
  else
    emit(ctx, meta, "order.cancelled", { order_id = d.order_id, reason = "out of stock: " .. d.item })
  end
end)

on("inventory.reserved", { consumer = "payment" }, function(e, ctx, meta)
  local d = e.data
  if d.amount > CARD_LIMIT then
    emit(ctx, meta, "payment.failed", { order_id = d.order_id, item = d.item, qty = d.qty, reason = "card declined" })
  else
    emit(ctx, meta, "payment.charged", d)
  end
end)

on("payment.charged", { consumer = "shipping" }, function(e, ctx, meta)
  emit(ctx, meta, "shipping.scheduled", { order_id = e.data.order_id, item = e.data.item })
end)

-- Compensation: give the reserved stock back (once) and cancel the order.
on("payment.failed", { consumer = "compensate" }, function(e, ctx, meta)
  local d = e.data
  local key = "released." .. d.order_id
  if not kv.has(key) then
    kv.incr("stock." .. d.item, d.qty)
    kv.set(key, true)
  end
  emit(ctx, meta, "inventory.released", { order_id = d.order_id, item = d.item, qty = d.qty })
  emit(ctx, meta, "order.cancelled", { order_id = d.order_id, reason = d.reason })
end)

on("shipping.scheduled", { consumer = "finish" }, function(e, ctx, meta)
  emit(ctx, meta, "order.completed", { order_id = e.data.order_id })
end)

-- A look at the stock: a request to stock.<item>.
on("stock.*", function(e, ctx)
  local item = e.subject:match("^stock%.(.+)$")
  ctx.reply({ item = item, left = kv.get("stock." .. item) })
end)
