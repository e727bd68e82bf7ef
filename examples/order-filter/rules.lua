-- Keep order.created only when data.amount > 100; send the big ones
-- (amount > 1000) to order.review instead of order.created.

filter("order.created", function(e)
  local amount = e.data and e.data.amount
  return type(amount) == "number" and amount > 100 -- no amount: dropped
end)

-- Runs only for the events the filter kept.  Returning nil keeps the
-- subject; a string delivers the event under that subject instead.
route("order.created", function(e)
  if e.data.amount > 1000 then return "order.review" end
end)
