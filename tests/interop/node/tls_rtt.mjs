// Round trips of one TLS client while something else happens, for
// tests/tls_spec.lua.
//
//   node tls_rtt.mjs PORT CA SECONDS
//
// Connects with TLS (trusting CA), prints "ready", then for SECONDS makes
// PING/PONG round trips (nc.rtt()) one after another, 2 ms apart, and
// prints {"n":..,"max_ms":..,"median_ms":..} as JSON.
import { connect } from "nats";

const [port, ca, seconds] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const nc = await connect({ servers: `127.0.0.1:${port}`, tls: { caFile: ca }, reconnect: false, timeout: 5000 });
console.log("ready");
const rtts = [];
const end = Date.now() + seconds * 1000;
while (Date.now() < end) {
  rtts.push(await nc.rtt());
  await new Promise((r) => setTimeout(r, 2));
}
await nc.close();
rtts.sort((a, b) => a - b);
console.log(JSON.stringify({ n: rtts.length, max_ms: rtts[rtts.length - 1], median_ms: rtts[rtts.length >> 1] }));
