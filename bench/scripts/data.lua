-- Reads e.data.amount: the payload is parsed.
filter("order.created", function(e) return e.data.amount > 100 end)
