-- The projection: account.<id>.opened / deposited / withdrawn -> balance.<id>.
-- A durable handler is called at least once per event, so it remembers the
-- last stream sequence it applied per account and skips anything at or
-- below it: a redelivery after a crash does not count twice.

local function apply(e, meta)
  local id = e.data.account
  local last = tide.kv.get("applied." .. id) or 0
  if meta.seq <= last then return end          -- seen before: already in the balance
  local kind = e.subject:match("^account%.[^.]+%.(%w+)$")
  if kind == "opened" then
    tide.kv.set("balance." .. id, 0)
  elseif kind == "deposited" then
    tide.kv.incr("balance." .. id, e.data.amount)
  elseif kind == "withdrawn" then
    tide.kv.incr("balance." .. id, -e.data.amount)
  end
  tide.kv.set("applied." .. id, meta.seq)
end

on("account.*.*", { consumer = "balances" }, function(e, ctx, meta)
  apply(e, meta)
end)

-- The query side: a request to balance.get.<id>.
on("balance.get.*", function(e, ctx)
  local id = e.subject:match("^balance%.get%.(.+)$")
  ctx.reply({ account = id, balance = tide.kv.get("balance." .. id),
              applied = tide.kv.get("applied." .. id) })
end)
