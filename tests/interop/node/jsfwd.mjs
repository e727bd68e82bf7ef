// jsfwd.mjs - a stock JetStream client (npm "nats" v2) on the JetStream
// API of a tide node in cluster mode, or on a nats-server of the same
// cluster, for tests/cluster_jsapi_spec.lua to compare.
//
// Usage: node jsfwd.mjs <port> setup          messages, a consumer and a KV bucket, made on the cluster
//        node jsfwd.mjs <port> read           what a client reads of them (one JSON object)
//        node jsfwd.mjs <port> pull <name>    a durable pull consumer made, fetched and acked
//        node jsfwd.mjs <port> create <name>  a stream <name> on <name>.> made
//        node jsfwd.mjs <port> info <name>    a stream's name and subjects
//        node jsfwd.mjs <port> kvput <key> <value>  a put into the KV bucket cfg, read back
//        node jsfwd.mjs <port> kvget <key>    a key of cfg
//        node jsfwd.mjs <port> objput <name> <text>  an object put into the object store files, read back
//        node jsfwd.mjs <port> objget <name>  an object of files, as text
//
// Prints one JSON object last; a step that fails says {"error": ...}.
import { AckPolicy, connect } from "nats";

const [port, mode, arg, arg2] = process.argv.slice(2);
const te = new TextEncoder();
const td = new TextDecoder();
const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 5000 });
const jsm = await nc.jetstreamManager({ timeout: 5000 });
const js = nc.jetstream({ timeout: 5000 });
const out = {};

async function step(name, fn) {
  try {
    out[name] = await fn();
  } catch (err) {
    out[name] = { error: (err.api_error && err.api_error.err_code) || err.code || err.message };
  }
}

async function names(lister, pick) {
  const all = [];
  for await (const x of lister) all.push(pick(x));
  return all.sort();
}

if (mode === "setup") {
  for (const d of ["1", "2", "3"]) await js.publish("orders.new", te.encode(d));
  await jsm.consumers.add("orders", { durable_name: "audit", ack_policy: AckPolicy.Explicit });
  const kv = await js.views.kv("cfg", { replicas: 3 });
  out.revision = await kv.put("color", te.encode("blue"));
} else if (mode === "read") {
  await step("stream", async () => {
    const si = await jsm.streams.info("orders");
    return { name: si.config.name, subjects: si.config.subjects, num_replicas: si.config.num_replicas,
             messages: si.state.messages, last_seq: si.state.last_seq };
  });
  await step("consumer", async () => {
    const ci = await jsm.consumers.info("orders", "audit");
    return { name: ci.name, stream_name: ci.stream_name, num_pending: ci.num_pending,
             ack_policy: ci.config.ack_policy };
  });
  await step("msg", async () => {
    const m = await jsm.streams.getMessage("orders", { seq: 2 });
    return { subject: m.subject, seq: m.seq, data: td.decode(m.data) };
  });
  await step("kv", async () => {
    const kv = await js.views.kv("cfg", { bindOnly: true });
    const e = await kv.get("color");
    return e && { value: td.decode(e.value), revision: e.revision };
  });
  await step("names", () => names(jsm.streams.names(), (n) => n));
  await step("list", () => names(jsm.streams.list(), (si) => si.config.name));
  await step("account", async () => (await jsm.getAccountInfo()).streams);
} else if (mode === "pull") {
  await step("pull", async () => {
    await jsm.consumers.add("orders", { durable_name: arg, ack_policy: AckPolicy.Explicit });
    const c = await js.consumers.get("orders", arg);
    const data = [];
    for await (const m of await c.fetch({ max_messages: 3, expires: 3000 })) {
      data.push(td.decode(m.data));
      if (!(await m.ackAck())) throw new Error("ack not confirmed");
      if (data.length === 3) break;
    }
    const ci = await jsm.consumers.info("orders", arg);
    return { data, num_ack_pending: ci.num_ack_pending, num_pending: ci.num_pending,
             delivered: ci.delivered.consumer_seq, ack_floor: ci.ack_floor.consumer_seq };
  });
} else if (mode === "create") {
  await step("create", async () => {
    const si = await jsm.streams.add({ name: arg, subjects: [`${arg}.>`] });
    return { name: si.config.name, subjects: si.config.subjects };
  });
} else if (mode === "info") {
  await step("info", async () => {
    const si = await jsm.streams.info(arg);
    return { name: si.config.name, subjects: si.config.subjects };
  });
} else if (mode === "kvput" || mode === "kvget") {
  await step(mode, async () => {
    const kv = await js.views.kv("cfg", { bindOnly: true });
    const revision = mode === "kvput" ? await kv.put(arg, te.encode(arg2)) : undefined;
    const e = await kv.get(arg);
    return { put: revision, value: e && td.decode(e.value), revision: e && e.revision };
  });
} else if (mode === "objput" || mode === "objget") {
  await step(mode, async () => {
    const os = await js.views.os("files");
    if (mode === "objput") await os.putBlob({ name: arg }, te.encode(arg2));
    const data = await os.getBlob(arg);
    return data && td.decode(data);
  });
}
await nc.close();
process.stdout.write(JSON.stringify(out) + "\n");
