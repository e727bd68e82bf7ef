-- What the TLS specs share (tests/tls_spec.lua, tests/tls_hostile_spec.lua):
-- certificates made with the openssl command, and tide started with a
-- tls{} block beside copies of them.
local h = require "helpers"

local M = {}
M.NODE_DIR = h.root .. "/tests/interop/node"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function sh_ok(cmd)
  local rc, out = h.sh(cmd)
  assert(rc == 0, cmd .. "\n" .. out)
  return out
end

-- A CA, a server certificate for 127.0.0.1 and localhost signed by it, a
-- client certificate (CN "shop") signed by it; a second CA with a client
-- certificate and a server certificate of its own.  RSA 2048 throughout;
-- with opts.big, also big.pem (RSA 4096: a handshake that costs the server
-- about 4 ms).
local function make_certs(dir, opts)
  local function ossl(args) sh_ok(("cd %s && openssl %s"):format(q(dir), args)) end
  h.write_file(dir .. "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
  local function ca(name, cn)
    ossl(("req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=%s' -keyout %s-key.pem -out %s.pem"):format(cn, name, name))
  end
  local function leaf(name, cn, signer, bits, ext)
    ossl(("req -newkey rsa:%d -nodes -subj '/CN=%s' -keyout %s-key.pem -out %s.csr"):format(bits, cn, name, name))
    ossl(("x509 -req -in %s.csr -CA %s.pem -CAkey %s-key.pem -CAcreateserial -days 2 %s -out %s.pem")
      :format(name, signer, signer, ext and "-extfile san.ext" or "", name))
  end
  ca("ca", "tide test CA")
  ca("other-ca", "another CA")
  leaf("server", "localhost", "ca", 2048, true)
  leaf("client", "shop", "ca", 2048, false)
  leaf("intruder", "shop", "other-ca", 2048, false)
  leaf("stranger", "stranger", "ca", 2048, false)
  leaf("server2", "localhost", "other-ca", 2048, true)
  if opts and opts.big then leaf("big", "localhost", "ca", 4096, true) end
  h.write_file(dir .. "/not-a-cert.pem", "this is not PEM\n")
end

-- tide with a tls{} block (text) in an entry file beside copies of the
-- certificates (so the relative names are taken from its directory).
local function start_tide(certs, tls_block, opts)
  local files = { ["tide.lua"] = tls_block }
  for _, f in ipairs({ "ca.pem", "server.pem", "server-key.pem", "server2.pem", "server2-key.pem",
                       "other-ca.pem", "big.pem", "big-key.pem", "client-key.pem", "not-a-cert.pem" }) do
    files[f] = h.read_file(certs .. "/" .. f) -- nil (absent) for big*.pem without opts.big
  end
  return h.start_scripted(files, opts)
end

local function stop(srv)
  if not srv then return end
  local st, code = srv:stop(srv.stop_signal)
  assert(st == "exited" and code == 0, ("server ended with %s %s:\n%s"):format(tostring(st), tostring(code),
    srv:log():sub(-3000)))
end


M.q, M.sh_ok, M.make_certs, M.start_tide, M.stop = q, sh_ok, make_certs, start_tide, stop
return M
