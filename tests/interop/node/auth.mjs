// auth.mjs - what the nats.js client (npm "nats") makes of a server's
// authentication and permissions, for tests/auth_spec.lua.
//
// Usage: node auth.mjs <port> '<json>'
//   json: { "opts": { user, pass, token, ... }   connect options
//           "nkeySeed": "SU...",                   log in with nkeyAuthenticator
//           "credsFile": "path",                   log in with credsAuthenticator
//           "sub": "subject",                      subscribe, report errors
//           "pub": "subject" }                     publish, report errors
// Prints one line per outcome: "connected", "error <code>" (connect
// failed), "sub error <code>", "status error <code>", "closed".  Every
// wait is bounded; the program ends within 10 s whatever the server does.
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, nkeyAuthenticator } from "nats";

const [port, json] = process.argv.slice(2);
const o = JSON.parse(json || "{}");
setTimeout(() => {
  console.log("timeout");
  process.exit(2);
}, 10000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const te = new TextEncoder();
let authenticator;
if (o.nkeySeed) authenticator = nkeyAuthenticator(te.encode(o.nkeySeed));
if (o.credsFile) authenticator = credsAuthenticator(readFileSync(o.credsFile));

try {
  const nc = await connect({
    ...(authenticator ? { authenticator } : {}),
    servers: `127.0.0.1:${port}`,
    reconnect: false,
    timeout: 5000,
    ...(o.opts || {}),
  });
  console.log("connected");
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "error") console.log(`status error ${s.data}`);
    }
  })();
  if (o.sub) {
    nc.subscribe(o.sub, {
      callback: (err) => {
        if (err) console.log(`sub error ${err.code}`);
      },
    });
  }
  if (o.pub) nc.publish(o.pub, new Uint8Array(0));
  await nc.flush();
  await sleep(300);
  await nc.close();
  console.log("closed");
} catch (e) {
  console.log(`error ${e.code}`);
}
