-- user.created v1 {name, email} -> v2 {firstName, lastName, email}.
--
-- Producers that still send v1 keep working: tide upgrades their events
-- before anyone sees them, so subscribers and handlers only meet v2.
-- Events that already are v2 pass untouched.

upgrade("user.created", 1, function(e)
  local name = e.data.name
  local first, last = name:match("^(%S+)%s*(.*)$")
  e.data = { firstName = first or name, lastName = last or "", email = e.data.email }
  return e -- tide sets e.version to 2
end)

-- Handlers run after the upgrade, so this one can rely on the v2 fields.
on("user.created", function(e, ctx)
  ctx.publish("email.welcome", {
    to = e.data.email,
    text = "Welcome, " .. e.data.firstName .. "!",
  })
end)
