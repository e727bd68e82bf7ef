-- The saga's steps.  Each handler runs at least once per event: it keeps
-- the sequences it has handled in tide.kv and does nothing for a repeat,
-- so a redelivery never reserves, charges or ships twice.
local kv = tide.kv

local function once(meta, fn)
  local key = "done." .. meta.consumer .. "." .. meta.seq
  if kv.has(key) then return end
  fn()
  kv.set(key, true)
end

-- Stock per item, set once (kept across restarts by tide.kv).
if not kv.has("stock.book") then
  kv.set("stock.book", 10)
  kv.set("stock.lamp", 0)
end

local CARD_LIMIT = 1000 -- payments above this are declined

on("order.placed", { consumer = "inventory" }, function(e, ctx, meta)
  once(meta, function()
    local d = e.data
    local left = kv.get("stock." .. d.item) or 0
    if left < d.qty then
      ctx.publish("order.cancelled", { order_id = d.order_id, reason = "out of stock: " .. d.item })
      return
    end
    kv.set("stock." .. d.item, left - d.qty)
    ctx.publish("inventory.reserved", d)
  end)
end)

on("inventory.reserved", { consumer = "payment" }, function(e, ctx, meta)
  once(meta, function()
    local d = e.data
    if d.amount > CARD_LIMIT then
      ctx.publish("payment.failed", { order_id = d.order_id, item = d.item, qty = d.qty,
                                      reason = "card declined" })
    else
      ctx.publish("payment.charged", d)
    end
  end)
end)

on("payment.charged", { consumer = "shipping" }, function(e, ctx, meta)
  once(meta, function()
    ctx.publish("shipping.scheduled", { order_id = e.data.order_id, item = e.data.item })
  end)
end)

-- Compensation: give the reserved stock back and cancel the order.
on("payment.failed", { consumer = "compensate" }, function(e, ctx, meta)
  once(meta, function()
    local d = e.data
    kv.incr("stock." .. d.item, d.qty)
    ctx.publish("inventory.released", { order_id = d.order_id, item = d.item, qty = d.qty })
    ctx.publish("order.cancelled", { order_id = d.order_id, reason = d.reason })
  end)
end)

on("shipping.scheduled", { consumer = "finish" }, function(e, ctx, meta)
  once(meta, function()
    ctx.publish("order.completed", { order_id = e.data.order_id })
  end)
end)

-- A look at the stock: a request to stock.<item>.
on("stock.*", function(e, ctx)
  local item = e.subject:match("^stock%.(.+)$")
  ctx.reply({ item = item, left = kv.get("stock." .. item) })
end)
