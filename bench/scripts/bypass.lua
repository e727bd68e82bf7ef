-- A rule on another subject: the benchmark's events match nothing.
filter("unrelated.subject", function(e) return e.data.amount > 100 end)
