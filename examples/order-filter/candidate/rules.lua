-- A candidate for examples/order-filter with a deliberate mistake, to try
-- the shadow with (docs/deploys.md): the filter's threshold has one zero
-- too many, so orders between 101 and 1000 would be dropped.

filter("order.created", function(e)
  local amount = e.data and e.data.amount
  return type(amount) == "number" and amount > 1000 -- typo: meant 100
end)

route("order.created", function(e)
  if e.data.amount > 1000 then return "order.review" end
end)
