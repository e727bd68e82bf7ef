-- Capture each authorized payment once, even when the producer sends the
-- same event twice (a retry after a timeout, a replay): the handler
-- remembers the event ids it has handled in tide.kv and skips repeats.
--
-- tide.kv lives in the server, not in the Lua state, so the ids survive a
-- reload of the scripts (Lua globals do not).  It has no expiry: a long-
-- running node should delete old keys (tide.kv.del) or bound them.

on("payment.authorized", function(e, ctx)
  if not e.id then error("payment.authorized needs a CloudEvents id") end
  local key = "seen:" .. e.id
  if tide.kv.has(key) then
    log("payment event " .. e.id .. " seen before: not captured again")
    return
  end
  local ok, why = ctx.publish("payment.captured", {
    payment_id = e.data.payment_id,
    amount = e.data.amount,
  })
  if ok then
    tide.kv.set(key, true)
  else
    log("warn", "payment " .. tostring(e.data.payment_id) .. " not captured: " .. why)
  end
end)
