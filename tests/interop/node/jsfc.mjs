// jsfc.mjs - a push consumer's flow control with nats.js v2: a stream of
// 500 messages of 100 KiB, then (1) a push consumer with flow_control read
// by a plain subscription that does not answer: where the 100 FlowControl
// Request comes, where delivery stalls, what the heartbeats say while it
// is stalled; (2) the answer to the request: delivery goes on; (3)
// js.subscribe with flowControl(), which answers by itself: every message
// arrives.
//
// Usage: node jsfc.mjs <port>
//
// Prints one JSON object (step -> answer); tests/jsfc_spec.lua runs it
// against nats-server -js and tide and compares.  Exit status 0 when
// every step got an answer; 2 on a global timeout.
import { connect, consumerOpts } from "nats";

const GLOBAL_TIMEOUT_MS = 60000;
const N = 500;
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node jsfc.mjs <port>");
  process.exit(2);
}
const out = {};
setTimeout(() => {
  process.stdout.write(JSON.stringify({ bail: "global timeout", out }) + "\n", () => process.exit(2));
}, GLOBAL_TIMEOUT_MS).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 5000 });
const jsm = await nc.jetstreamManager();
const js = nc.jetstream();
await jsm.streams.add({ name: "FC", subjects: ["fc.>"] });
const body = new Uint8Array(100 * 1024);
for (let i = 0; i < N; i++) await js.publish("fc.x", body);

// (1) and (2): a plain subscriber
const sub = nc.subscribe("dl.fc");
await jsm.consumers.add("FC", { durable_name: "RAW", deliver_subject: "dl.fc", ack_policy: "none",
  flow_control: true, idle_heartbeat: 500e6 });
let n = 0;
const requests = [], heartbeats = [];
(async () => {
  for await (const m of sub) {
    if (m.headers && m.headers.code === 100) {
      if (m.headers.description === "FlowControl Request") {
        requests.push({ after: n, reply: m.reply, data: m.data.length });
      } else {
        heartbeats.push({ after: n, stalled: m.headers.get("Nats-Consumer-Stalled") });
      }
      continue;
    }
    n++;
  }
})();
await sleep(2000);
out.stalled = { delivered: n, requests: requests.map((r) => ({ after: r.after, data: r.data,
  reply_form: /^\$JS\.FC\.FC\.RAW\.\S+$/.test(r.reply) })) };
out.stalled_heartbeat = heartbeats.length > 0 && requests.length > 0 &&
  heartbeats[heartbeats.length - 1].stalled === requests[0].reply;
await sleep(500);
out.still_stalled = n === out.stalled.delivered;
if (requests.length) nc.publish(requests[0].reply);
await sleep(1500);
out.after_answer = { delivered: n, requests: requests.length };
sub.unsubscribe();

// (3) js.subscribe answers by itself
await step("subscribe", async () => {
  const opts = consumerOpts();
  opts.durable("JS");
  opts.deliverTo("dl.js");
  opts.ackNone();
  opts.flowControl();
  opts.idleHeartbeat(500);
  const s = await js.subscribe("fc.>", opts);
  let got = 0, bytes = 0;
  for await (const m of s) {
    got++;
    bytes += m.data.length;
    if (got === N) break;
  }
  const ci = await jsm.consumers.info("FC", "JS");
  return { got, bytes, delivered: ci.delivered.stream_seq, flow_control: ci.config.flow_control };
});

async function step(name, fn) {
  try {
    out[name] = await fn();
  } catch (e) {
    out[name] = { err: String(e && (e.code || e.message)) };
  }
}

await nc.close();
process.stdout.write(JSON.stringify(out) + "\n");
