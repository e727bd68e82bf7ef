-- Reads only the subject: no JSON decoding.
filter("order.created", function(e) return e.subject ~= "order.rejected" end)
