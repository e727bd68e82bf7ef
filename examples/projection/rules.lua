-- The projection: account.<id>.opened / deposited / withdrawn -> the
-- account's balance in tide.kv.  A durable handler is called at least once
-- per event, so it remembers the last stream sequence it applied per
-- account and skips anything at or below it: a redelivery after a crash
-- does not count twice.  The balance and that sequence are one value,
-- written at once: two writes could be cut apart by a crash, leaving a
-- balance that counts an event its sequence does not.

local function apply(e, meta)
  local id = e.data.account
  local key = "account." .. id
  local acc = tide.kv.get(key) or { balance = 0, applied = 0 }
  if meta.seq <= acc.applied then return end   -- seen before: already in the balance
  local kind = e.subject:match("^account%.[^.]+%.(%w+)$")
  local balance = acc.balance
  if kind == "opened" then
    balance = 0
  elseif kind == "deposited" then
    balance = balance + e.data.amount
  elseif kind == "withdrawn" then
    balance = balance - e.data.amount
  end
  tide.kv.set(key, { balance = balance, applied = meta.seq })
end

on("account.*.*", { consumer = "balances" }, function(e, ctx, meta)
  apply(e, meta)
end)

-- The query side: a request to balance.get.<id>.
on("balance.get.*", function(e, ctx)
  local id = e.subject:match("^balance%.get%.(.+)$")
  local acc = tide.kv.get("account." .. id)
  ctx.reply({ account = id, balance = acc and acc.balance, applied = acc and acc.applied })
end)
