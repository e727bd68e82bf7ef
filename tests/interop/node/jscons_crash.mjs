// jscons_crash.mjs - pulls from a consumer with acks that wait for their
// answer (ackAck) while the server is killed and restarted under it.
//
// Usage: node jscons_crash.mjs <port> <n>
//
// Makes stream C (subject c.>) and durable pull consumer W, publishes n
// messages, prints "ready", then fetches batches of 50 and acks each with
// ackAck until every message is acked (reconnecting as long as it takes,
// at most 45 s), printing "acked N" every 250.  Prints one JSON line: how many were acked, the sequences
// delivered again after their ack was answered (must be none), and those
// never acked.
import { connect, AckPolicy } from "nats";

const port = Number(process.argv[2]);
const n = Number(process.argv[3]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nc = await connect({ servers: `127.0.0.1:${port}`, reconnect: true, maxReconnectAttempts: -1,
  reconnectTimeWait: 100, timeout: 3000 });
const jsm = await nc.jetstreamManager();
const js = nc.jetstream();
await jsm.streams.add({ name: "C", subjects: ["c.>"] });
await jsm.consumers.add("C", { durable_name: "W", ack_policy: AckPolicy.Explicit, ack_wait: 2e9 });
for (let i = 0; i < n; i += 100) {
  const ps = [];
  for (let k = i; k < Math.min(n, i + 100); k++) ps.push(js.publish(`c.${k % 7}`, new TextEncoder().encode(`m${k}`)));
  await Promise.all(ps);
}
process.stdout.write("ready\n");

const acked = new Set();
const again = [];
let deliveries = 0;
const deadline = Date.now() + 45000;
while (acked.size < n && Date.now() < deadline) {
  try {
    const it = js.fetch("C", "W", { batch: 50, expires: 1000 });
    for await (const m of it) {
      deliveries++;
      if (acked.has(m.seq)) again.push(m.seq);
      try {
        if (await m.ackAck({ timeout: 1000 })) {
          acked.add(m.seq);
          if (acked.size % 250 === 0) process.stdout.write(`acked ${acked.size}\n`);
        }
      } catch (_) {
        // not answered (the server went away): not known to be acked
      }
    }
  } catch (_) {
    await sleep(100);
  }
}
const missing = [];
for (let s = 1; s <= n; s++) if (!acked.has(s)) missing.push(s);
process.stdout.write(JSON.stringify({ acked: acked.size, deliveries, again, missing: missing.slice(0, 20) }) + "\n",
  () => process.exit(0));
