-- Upgrader (changes the event, so it is re-encoded), filter and route.
upgrade("order.created", 1, function(e)
  e.data.currency = "EUR"
  return e
end)
filter("order.created", function(e) return e.data.amount > 100 end)
route("order.created", function(e)
  if e.data.amount > 1000 then return "order.review" end
end)
