// kv.mjs - key-value buckets with the stock nats.js clients: v2's
// js.views.kv, or with --v3 the v3 packages (@nats-io/kv's Kvm): bucket
// create and status, put / get (latest and by revision) / create / update
// (compare-and-set on the subject's last sequence) / delete / purge, the
// history limit, a TTL, and the KV_<bucket> stream under them; then a few
// stream features the buckets stand on, through the stream manager:
// max_msgs_per_subject, Nats-Rollup and memory storage.
//
// Usage: node kv.mjs <port> [--v3]
//
// Runs the same steps against any server with JetStream on an empty store
// (tests/kv_spec.lua runs it against tide and against nats-server -js) and
// prints one JSON object: step name -> what the server answered, reduced
// to what both implement (no times, sizes as "more than 0"), errors as
// their err_code.  Exit status 0 when every step got an answer; 2 on a
// global timeout.
import { errCode, loadClient, parseArgs, stepsInto } from "./jsclient.mjs";

const GLOBAL_TIMEOUT_MS = 40000;
const { port, v3 } = parseArgs("kv.mjs", GLOBAL_TIMEOUT_MS);
const { connect, headers, managerOf, jetstreamOf, bucketOf } = await loadClient(v3);
const te = new TextEncoder();
const td = new TextDecoder();
const out = {};

// What an error says; a failed compare-and-set that carries no err_code
// is 10071 (JSStreamWrongLastSequence).
function kvErrCode(e) {
  const code = errCode(e);
  if (typeof code === "string" && /wrong last sequence/.test(String(e && e.message))) return 10071;
  return code;
}
const step = stepsInto(out, kvErrCode);

// An entry as both servers can say it (no created time, no delta).
function entry(e) {
  if (!e) return null;
  return { key: e.key, value: td.decode(e.value), revision: e.revision, operation: e.operation, length: e.length };
}

function state(si) {
  const s = si.state;
  return { messages: s.messages, bytes_gt0: s.bytes > 0, first_seq: s.first_seq, last_seq: s.last_seq };
}

function config(c) {
  return { name: c.name, subjects: c.subjects, retention: c.retention, max_msgs_per_subject: c.max_msgs_per_subject,
    max_age: c.max_age, max_msg_size: c.max_msg_size, discard: c.discard, storage: c.storage,
    allow_rollup_hdrs: c.allow_rollup_hdrs, deny_delete: c.deny_delete, deny_purge: c.deny_purge,
    allow_direct: c.allow_direct, duplicate_window: c.duplicate_window };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 5000 });
const jsm = await managerOf(nc);
const js = jetstreamOf(nc);

// ---- a bucket -------------------------------------------------------------
const kv = await bucketOf(nc, "CFG", { history: 3 });
await step("status_new", async () => {
  const s = await kv.status();
  return { bucket: s.bucket, values: s.values, history: s.history, ttl: s.ttl, backingStore: s.backingStore };
});
await step("stream_config", async () => config((await jsm.streams.info("KV_CFG")).config));
await step("put_a1", () => kv.put("a", te.encode("1")));
await step("put_a2", () => kv.put("a", te.encode("2")));
await step("put_b", () => kv.put("b.x", te.encode("bee")));
await step("get_a", async () => entry(await kv.get("a")));
await step("get_b", async () => entry(await kv.get("b.x")));
await step("get_missing", async () => entry(await kv.get("nope")));
await step("get_a_rev1", async () => entry(await kv.get("a", { revision: 1 })));
await step("get_a_rev3", async () => entry(await kv.get("a", { revision: 3 }))); // b.x's revision: not a's
await step("create_existing", () => kv.create("a", te.encode("x")));
await step("create_c", () => kv.create("c", te.encode("sea")));
await step("update_a", () => kv.update("a", te.encode("3"), 2));
await step("update_a_stale", () => kv.update("a", te.encode("4"), 2));
await step("get_a_after_update", async () => entry(await kv.get("a")));
// the history limit: a's oldest revisions go
for (let i = 0; i < 3; i++) await kv.put("a", te.encode(`h${i}`));
await step("get_a_rev1_after_history", async () => entry(await kv.get("a", { revision: 1 })));
await step("state_after_history", async () => state(await jsm.streams.info("KV_CFG")));
// delete leaves a marker; create after it works
await step("delete_b", () => kv.delete("b.x").then(() => true));
await step("get_b_deleted", async () => entry(await kv.get("b.x")));
await step("create_b_again", () => kv.create("b.x", te.encode("again")));
await step("get_b_again", async () => entry(await kv.get("b.x")));
// delete with a stale previous revision is refused
await step("delete_c_stale", () => kv.delete("c", { previousSeq: 1 }).then(() => true));
// purge rolls the key's history up into one marker
await step("purge_a", () => kv.purge("a").then(() => true));
await step("get_a_purged", async () => entry(await kv.get("a")));
await step("get_a_old_after_purge", async () => entry(await kv.get("a", { revision: 8 })));
await step("state_after_purge", async () => state(await jsm.streams.info("KV_CFG")));
await step("status_after", async () => {
  const s = await kv.status();
  return { bucket: s.bucket, values: s.values, history: s.history };
});

// ---- TTL ------------------------------------------------------------------
const ttl = await bucketOf(nc, "TTL", { ttl: 1000 });
await step("ttl_config", async () => config((await jsm.streams.info("KV_TTL")).config));
await step("ttl_put", () => ttl.put("k", te.encode("v")));
await step("ttl_get_before", async () => entry(await ttl.get("k")));
await sleep(2500);
await step("ttl_get_after", async () => entry(await ttl.get("k")));

// ---- the stream features under them -----------------------------------------
await step("add_per_subject", async () =>
  config((await jsm.streams.add({ name: "PS", subjects: ["ps.*"], max_msgs_per_subject: 2 })).config));
for (const s of ["ps.a", "ps.a", "ps.b", "ps.a", "ps.a"]) await js.publish(s, te.encode(s));
await step("per_subject_state", async () => state(await jsm.streams.info("PS")));
await step("per_subject_get_2", async () => (await jsm.streams.getMessage("PS", { seq: 2 })).seq);
await step("per_subject_last_a", async () => (await jsm.streams.getMessage("PS", { last_by_subj: "ps.a" })).seq);
await step("update_per_subject", async () =>
  config((await jsm.streams.update("PS", { subjects: ["ps.*"], max_msgs_per_subject: 1 })).config));
await step("per_subject_state_1", async () => state(await jsm.streams.info("PS")));

await jsm.streams.add({ name: "RU", subjects: ["ru.*"], allow_rollup_hdrs: true });
for (const s of ["ru.a", "ru.a", "ru.b"]) await js.publish(s, te.encode(s));
const rollup = (v) => {
  const h = headers();
  h.set("Nats-Rollup", v);
  return { headers: h };
};
await step("rollup_sub", async () => (await js.publish("ru.a", te.encode(""), rollup("sub"))).seq);
await step("rollup_sub_state", async () => state(await jsm.streams.info("RU")));
await step("rollup_all", async () => (await js.publish("ru.c", te.encode(""), rollup("all"))).seq);
await step("rollup_all_state", async () => state(await jsm.streams.info("RU")));
// (an invalid Nats-Rollup value: nats-server 2.9 does not answer, 2.10 says
// 10111; tests/jsapi_spec.lua holds tide to 2.10's answer)
await step("rollup_without_purge", async () =>
  config((await jsm.streams.add({ name: "RD", subjects: ["rd"], allow_rollup_hdrs: true, deny_purge: true })).config));
await jsm.streams.add({ name: "NR", subjects: ["nr"] });
await step("rollup_not_allowed", async () => (await js.publish("nr", te.encode(""), rollup("all"))).seq);

await step("add_memory", async () =>
  config((await jsm.streams.add({ name: "MEM", subjects: ["mem"], storage: "memory" })).config));
for (let i = 0; i < 3; i++) await js.publish("mem", te.encode(`m${i}`));
await step("memory_state", async () => state(await jsm.streams.info("MEM")));
await step("memory_update_storage", async () =>
  config((await jsm.streams.update("MEM", { subjects: ["mem"], storage: "file" })).config));

await nc.close();
process.stdout.write(JSON.stringify(out) + "\n");
