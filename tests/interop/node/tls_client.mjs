// One TLS connection with the Node client (npm "nats"), for tests/tls_spec.lua.
//
//   node tls_client.mjs PORT [--ca FILE] [--cert FILE --key FILE] [--plain]
//                            [--user NAME --pass PASSWORD]
//
// Connects to 127.0.0.1:PORT (with tls options built from the files given;
// none at all with --plain), subscribes, publishes one message to itself and
// waits for it.  Prints "ok", or "error CODE MESSAGE" with the client's
// error, and exits 0 either way (1 on a bad command line).
import { connect } from "nats";

const args = process.argv.slice(2);
const port = args.shift();
const opt = {};
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--plain") opt.plain = true;
  else if (["--ca", "--cert", "--key", "--user", "--pass"].includes(a)) opt[a.slice(2)] = args[++i];
  else { console.log("usage: tls_client.mjs PORT [--ca F] [--cert F --key F] [--plain]"); process.exit(1); }
}
let tls;
if (!opt.plain) {
  tls = {};
  if (opt.ca) tls.caFile = opt.ca;
  if (opt.cert) { tls.certFile = opt.cert; tls.keyFile = opt.key; }
}
const timer = setTimeout(() => { console.log("error TIMEOUT no answer within 10 s"); process.exit(0); }, 10000);
try {
  const nc = await connect({ servers: `127.0.0.1:${port}`, tls, reconnect: false, timeout: 3000,
                             user: opt.user, pass: opt.pass });
  const sub = nc.subscribe("tls.js.check", { max: 1 });
  nc.publish("tls.js.check", "hello");
  let got = "";
  for await (const m of sub) got = new TextDecoder().decode(m.data);
  await nc.close();
  console.log(got === "hello" ? "ok" : `error WRONG got '${got}'`);
} catch (e) {
  console.log(`error ${e.code || e.name} ${String(e.message).split("\n")[0]}`);
}
clearTimeout(timer);
