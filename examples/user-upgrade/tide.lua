-- examples/user-upgrade: run with  build/tide serve -c examples/user-upgrade/tide.lua
-- (the -a/-p flags override the address below).
listen { nats = "127.0.0.1:4222" }

require "rules" -- rules.lua beside this file
