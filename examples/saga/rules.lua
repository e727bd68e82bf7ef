-- The saga's steps.  Each handler runs at least once per event; after a
-- crash it may run again for an event it already handled.  Two things make
-- that harmless:
--   * a step's effect on tide.kv (stock taken or given back) is recorded
--     under the order id in the same value as the stock, so the effect and
--     its record are one write (two writes could be cut apart by a crash,
--     and the stock taken twice), and it is done only if not recorded yet;
--   * the event a step publishes carries a Nats-Msg-Id made from the event
--     it answers, so publishing it again is dropped by the stream as a
--     duplicate.
-- tide records a handler's ack only once what it published is on disk, so
-- a crash never loses a step: the handler runs again and finishes it.
local kv = tide.kv

local function emit(ctx, meta, subject, data)
  ctx.publish(subject, data, { ["Nats-Msg-Id"] = ("%s.%d.%s"):format(meta.consumer, meta.seq, subject) })
end

-- Per item: the stock left and, by order id, what was taken for it and
-- what was given back; set once (kept across restarts by tide.kv).
if not kv.has("inventory.book") then
  kv.set("inventory.book", { left = 10, taken = {}, returned = {} })
  kv.set("inventory.lamp", { left = 0, taken = {}, returned = {} })
end

local CARD_LIMIT = 1000 -- payments above this are declined

on("order.placed", { consumer = "inventory" }, function(e, ctx, meta)
  local d = e.data
  local key = "inventory." .. d.item
  local inv = kv.get(key) or { left = 0, taken = {}, returned = {} }
  if inv.taken[d.order_id] == nil then -- first time: take the stock, or record that there was none
    local ok = inv.left >= d.qty
    inv.taken[d.order_id] = ok and d.qty or 0
    if ok then inv.left = inv.left - d.qty end
    kv.set(key, inv)
  end
  if inv.taken[d.order_id] > 0 then
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
  local key = "inventory." .. d.item
  local inv = kv.get(key)
  if not inv.returned[d.order_id] then
    inv.returned[d.order_id] = true
    inv.left = inv.left + d.qty
    kv.set(key, inv)
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
  local inv = kv.get("inventory." .. item)
  ctx.reply({ item = item, left = inv and inv.left })
end)
