// jsapi.mjs - stream management through the JetStream API with the nats.js
// client (npm package "nats", v2, or v3 with --v3): the manager's streams.add / info /
// update / delete / list / names / getMessage, direct.getMessage,
// js.publish and its PubAcks, and raw $JS.API requests for the answers a
// client library would refuse to send (bad JSON, a name that does not
// match the subject).
//
// Usage: node jsapi.mjs <port> [--v3]
//
// With --v3 the same steps run with the v3 packages (@nats-io/jetstream
// and @nats-io/transport-node), which gate features on INFO's version.
//
// Runs the same steps against any server with JetStream on an empty store
// (tests/jsapi_spec.lua runs it against tide and against nats-server -js)
// and prints one JSON object: step name -> what the server answered,
// reduced to the fields both implement (no timestamps; sizes as "more
// than 0"), errors as their err_code.  Exit status 0 when every step got
// an answer; 2 on a global timeout.
import { loadClient, parseArgs, stepsInto } from "./jsclient.mjs";

const GLOBAL_TIMEOUT_MS = 40000;
const { port, v3 } = parseArgs("jsapi.mjs", GLOBAL_TIMEOUT_MS);
const { connect, headers, managerOf, jetstreamOf } = await loadClient(v3);
const te = new TextEncoder();
const td = new TextDecoder();
const sc = { encode: (s) => te.encode(s), decode: (b) => td.decode(b) };
const jc = { encode: (o) => te.encode(JSON.stringify(o)), decode: (b) => JSON.parse(td.decode(b)) };
const out = {};
const step = stepsInto(out);

function state(si) {
  const s = si.state;
  return { messages: s.messages, bytes_gt0: s.bytes > 0, first_seq: s.first_seq, last_seq: s.last_seq,
    consumer_count: s.consumer_count, num_subjects: s.num_subjects ?? 0 };
}

function config(c) {
  return { name: c.name, subjects: c.subjects, retention: c.retention, max_msgs: c.max_msgs,
    max_bytes: c.max_bytes, max_age: c.max_age, max_msg_size: c.max_msg_size, discard: c.discard,
    storage: c.storage, num_replicas: c.num_replicas, duplicate_window: c.duplicate_window,
    allow_direct: c.allow_direct, deny_delete: c.deny_delete, deny_purge: c.deny_purge };
}

// A raw API request: the answer's err_code, or the answer reduced by fn.
async function raw(nc, subject, body, fn) {
  const m = await nc.request(subject, typeof body === "string" ? sc.encode(body) : jc.encode(body),
    { timeout: 3000 });
  const r = jc.decode(m.data);
  if (r.error) return { err: r.error.err_code, code: r.error.code, type: r.type };
  return fn ? fn(r) : r;
}

const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 3000 });
const info = nc.info;
out.server_info = { jetstream: info.jetstream === true, headers: info.headers === true };
const jsm = await managerOf(nc);
const js = jetstreamOf(nc);

await step("account_info_empty", async () => {
  const a = await jsm.getAccountInfo();
  return { streams: a.streams, consumers: a.consumers, storage: a.storage };
});
await step("add_orders", async () => {
  const si = await jsm.streams.add({ name: "ORDERS", subjects: ["orders.>"] });
  return { config: config(si.config), state: state(si) };
});
await step("add_orders_again_same", async () => {
  const si = await jsm.streams.add({ name: "ORDERS", subjects: ["orders.>"] });
  return { name: si.config.name };
});
await step("add_orders_again_other", () => jsm.streams.add({ name: "ORDERS", subjects: ["other.>"] }));
await step("add_overlapping", () => jsm.streams.add({ name: "OVERLAP", subjects: ["orders.eu.*"] }));
await step("add_replicas_3", () => jsm.streams.add({ name: "R3", subjects: ["r3.>"], num_replicas: 3 }));
await step("create_bad_json", () => raw(nc, "$JS.API.STREAM.CREATE.BAD", "{not json"));
await step("create_name_mismatch", () => raw(nc, "$JS.API.STREAM.CREATE.ONE", { name: "TWO", subjects: ["two"] }));
await step("create_bad_name", () => raw(nc, "$JS.API.STREAM.CREATE.a*b", { name: "a*b", subjects: ["ab"] }));
await step("create_response_type", () => raw(nc, "$JS.API.STREAM.CREATE.TYPED", { name: "TYPED", subjects: ["typed"] },
  (r) => ({ type: r.type, name: r.config.name, subjects: r.config.subjects, messages: r.state.messages })));
await step("add_events", async () => {
  const si = await jsm.streams.add({ name: "EVENTS", subjects: ["events.>"], max_msgs: 2, allow_direct: true,
    max_msg_size: 64 });
  return { config: config(si.config), state: state(si) };
});

await step("publish_orders", async () => {
  const acks = [];
  for (let i = 1; i <= 3; i++) {
    const h = headers();
    h.set("Order", `n${i}`);
    const pa = await js.publish(`orders.${i % 2 ? "eu" : "us"}.new`, sc.encode(`order ${i}`), { headers: h });
    acks.push({ stream: pa.stream, seq: pa.seq, duplicate: pa.duplicate });
  }
  return acks;
});
await step("publish_events", async () => {
  const acks = [];
  for (let i = 1; i <= 3; i++) {
    const pa = await js.publish(`events.e${i}`, sc.encode(`event ${i}`));
    acks.push(pa.seq);
  }
  return acks;
});
await step("publish_too_big", () => js.publish("events.big", new Uint8Array(100)));

await step("info_orders", async () => state(await jsm.streams.info("ORDERS")));
await step("info_events", async () => state(await jsm.streams.info("EVENTS")));
await step("info_missing", () => jsm.streams.info("MISSING"));
await step("info_type", () => raw(nc, "$JS.API.STREAM.INFO.ORDERS", "", (r) => ({ type: r.type })));

await step("names", async () => {
  const names = [];
  for await (const n of jsm.streams.names()) names.push(n);
  return names.sort();
});
await step("names_filtered", async () => {
  const names = [];
  for await (const n of jsm.streams.names("events.x")) names.push(n);
  return names;
});
await step("names_raw_offset", () => raw(nc, "$JS.API.STREAM.NAMES", { offset: 1 },
  (r) => ({ total: r.total, offset: r.offset, limit: r.limit, streams: r.streams, type: r.type })));
await step("list", async () => {
  const all = [];
  for await (const si of jsm.streams.list()) all.push({ name: si.config.name, state: state(si) });
  return all.sort((a, b) => (a.name < b.name ? -1 : 1));
});
await step("list_raw_offset", () => raw(nc, "$JS.API.STREAM.LIST", { offset: 2 },
  (r) => ({ total: r.total, offset: r.offset, limit: r.limit, names: r.streams.map((s) => s.config.name),
    type: r.type })));

function sm(m) {
  return { subject: m.subject, seq: m.seq, data: sc.decode(m.data), order: m.header ? m.header.get("Order") : "" };
}
await step("get_seq_2", async () => sm(await jsm.streams.getMessage("ORDERS", { seq: 2 })));
await step("get_last_by_subj", async () => sm(await jsm.streams.getMessage("ORDERS", { last_by_subj: "orders.eu.new" })));
await step("get_missing_seq", () => jsm.streams.getMessage("ORDERS", { seq: 99 }));
await step("get_missing_stream", () => jsm.streams.getMessage("MISSING", { seq: 1 }));
await step("get_raw_type", () => raw(nc, "$JS.API.STREAM.MSG.GET.ORDERS", { seq: 1 },
  (r) => ({ type: r.type, subject: r.message.subject, seq: r.message.seq, has_hdrs: !!r.message.hdrs })));
await step("direct_get_seq", async () => {
  const m = await jsm.direct.getMessage("EVENTS", { seq: 3 });
  return { subject: m.subject, seq: m.seq, data: sc.decode(m.data), stream: m.header.get("Nats-Stream") };
});
await step("direct_get_last", async () => {
  const m = await jsm.direct.getMessage("EVENTS", { last_by_subj: "events.e2" });
  return { subject: m.subject, seq: m.seq };
});
await step("direct_get_missing", async () => {
  const m = await nc.request("$JS.API.DIRECT.GET.EVENTS", jc.encode({ seq: 1 }), { timeout: 3000 });
  return { status: m.headers ? m.headers.code : 0 };
});

await step("update_orders", async () => {
  const si = await jsm.streams.update("ORDERS", { subjects: ["orders.>", "more.>"], max_msgs: 10 });
  return { config: config(si.config), state: state(si) };
});
await step("publish_more", async () => (await js.publish("more.x", sc.encode("more"))).seq);
await step("update_missing", () => jsm.streams.update("MISSING", { subjects: ["missing"] }));
await step("update_overlap", () => jsm.streams.update("TYPED", { subjects: ["typed", "events.e1"] }));

await step("delete_events", () => jsm.streams.delete("EVENTS"));
await step("delete_events_again", () => jsm.streams.delete("EVENTS"));
await step("names_after_delete", async () => {
  const names = [];
  for await (const n of jsm.streams.names()) names.push(n);
  return names.sort();
});
await step("publish_deleted", async () => {
  try {
    await js.publish("events.e9", sc.encode("x"), { timeout: 1000 });
    return "stored";
  } catch (e) {
    const none = e.code === "503" || (typeof e.isNoResponders === "function" && e.isNoResponders()) ||
      /NoResponders|JetStreamNotEnabled/.test(e.name);
    return none ? "no responders" : `error: ${e.name} ${e.message}`;
  }
});
await step("account_info", async () => {
  const a = await jsm.getAccountInfo();
  return { streams: a.streams, consumers: a.consumers, storage_gt0: a.storage > 0 };
});

// Purges and message deletes, on ORDERS (1 orders.eu.new, 2 orders.us.new,
// 3 orders.eu.new, 4 more.x).
await step("purge_filter", async () => (await jsm.streams.purge("ORDERS", { filter: "orders.us.>" })));
await step("info_after_purge_filter", async () => state(await jsm.streams.info("ORDERS")));
await step("delete_msg", () => jsm.streams.deleteMessage("ORDERS", 3));
await step("delete_msg_again", () => jsm.streams.deleteMessage("ORDERS", 3));
await step("delete_msg_raw_empty", () => raw(nc, "$JS.API.STREAM.MSG.DELETE.ORDERS", ""));
await step("get_deleted", async () => {
  const m = await jsm.streams.getMessage("ORDERS", { seq: 3 });
  return m ? sm(m) : null;
});
await step("info_after_delete", async () => state(await jsm.streams.info("ORDERS")));
await step("purge_keep_1", async () => (await jsm.streams.purge("ORDERS", { keep: 1 })));
await step("info_after_keep", async () => state(await jsm.streams.info("ORDERS")));
await step("purge_seq_and_keep", () => raw(nc, "$JS.API.STREAM.PURGE.ORDERS", { seq: 2, keep: 1 }));
await step("purge_missing", () => raw(nc, "$JS.API.STREAM.PURGE.MISSING", ""));
await step("purge_all_typed", () => raw(nc, "$JS.API.STREAM.PURGE.TYPED", "",
  (r) => ({ type: r.type, success: r.success, purged: r.purged })));
await step("publish_after_purge", async () => (await js.publish("orders.eu.new", sc.encode("order 5"))).seq);
await step("add_guarded", async () => {
  const si = await jsm.streams.add({ name: "GUARDED", subjects: ["guarded"], deny_delete: true, deny_purge: true });
  await js.publish("guarded", sc.encode("g"));
  return config(si.config);
});
await step("purge_guarded", () => jsm.streams.purge("GUARDED"));
await step("delete_guarded", () => jsm.streams.deleteMessage("GUARDED", 1));
await step("purge_seq", async () => {
  for (let i = 0; i < 3; i++) await js.publish("typed", sc.encode(`t${i}`));
  const r = await jsm.streams.purge("TYPED", { seq: 3 });
  return { purged: r.purged, state: state(await jsm.streams.info("TYPED")) };
});
await step("info_final", async () => state(await jsm.streams.info("ORDERS")));

await nc.close();
process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));
