// obj.mjs - the object store with the stock nats.js clients: v2's
// js.views.os, or with --v3 the v3 package (@nats-io/obj's Objm): bucket
// create and status, put / get of a 10 MB object (bytes and digest
// compared), a small object, info, list, a link, delete, sealing the bucket
// (then a put and a delete refused), and the OBJ_<bucket> stream under them.
//
// Usage: node obj.mjs <port> [--v3]
//
// Runs the same steps against any server with JetStream on an empty store
// (tests/obj_spec.lua runs it against tide and against nats-server -js) and
// prints one JSON object: step name -> what the server answered, reduced
// to what both implement (no times, no nuids), errors as their code.  Exit
// status 0 when every step got an answer; 2 on a global timeout.
import { createHash } from "node:crypto";
import { loadClient, parseArgs, stepsInto } from "./jsclient.mjs";

const GLOBAL_TIMEOUT_MS = 100000;
const BIG = 10 * 1024 * 1024;
const out = {};
const { port, v3 } = parseArgs("obj.mjs", GLOBAL_TIMEOUT_MS, () => ({ bail: "global timeout", out }));
const { connect, managerOf, storeOf } = await loadClient(v3);
const te = new TextEncoder();
const td = new TextDecoder();
const step = stepsInto(out);

const sha256 = (b) => "SHA-256=" + createHash("sha256").update(b).digest("base64url");

// An object's info as both servers can say it (no nuid, no mtime).
function info(i) {
  if (!i) return null;
  return { name: i.name, bucket: i.bucket, size: i.size, chunks: i.chunks, digest: i.digest,
    deleted: !!i.deleted, description: i.description ?? null,
    link: i.options && i.options.link ? i.options.link : null };
}

function state(si) {
  const s = si.state;
  return { messages: s.messages, bytes_gt0: s.bytes > 0, first_seq: s.first_seq, last_seq: s.last_seq };
}

function config(c) {
  return { name: c.name, subjects: c.subjects, retention: c.retention, max_msgs_per_subject: c.max_msgs_per_subject,
    discard: c.discard, storage: c.storage, allow_rollup_hdrs: c.allow_rollup_hdrs, allow_direct: c.allow_direct };
}

// 10 MB that is not all one byte: a chunk out of place shows.
const big = new Uint8Array(BIG);
for (let i = 0; i < BIG; i++) big[i] = (i * 2654435761) >>> 24;
const bigDigest = sha256(big); // the client's digest is base64url with padding

const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 5000, maxPingOut: 10 });
const jsm = await managerOf(nc);

const os = await storeOf(nc, "FILES", { description: "files" });
await step("status_new", async () => {
  const s = await os.status();
  return { bucket: s.bucket, size: s.size, sealed: s.sealed, storage: s.storage, description: s.description };
});
await step("stream_config", async () => config((await jsm.streams.info("OBJ_FILES")).config));
await step("put_big", async () => info(await os.putBlob({ name: "big.bin", description: "ten" }, big)));
await step("get_big", async () => {
  const b = await os.getBlob("big.bin");
  return { length: b.length, digest: sha256(b), same: sha256(b) === bigDigest && b.length === big.length };
});
await step("big_digest_expected", () => bigDigest);
await step("get_big_stream", async () => {
  const r = await os.get("big.bin");
  const chunks = [];
  for await (const c of r.data) chunks.push(c);
  await r.error;
  const b = Buffer.concat(chunks);
  return { length: b.length, same: sha256(b) === bigDigest };
});
await step("put_small", async () => info(await os.putBlob({ name: "small.txt" }, te.encode("hello"))));
await step("get_small", async () => td.decode(await os.getBlob("small.txt")));
await step("info_big", async () => info(await os.info("big.bin")));
await step("info_missing", async () => info(await os.info("nope")));
await step("get_missing", async () => await os.getBlob("nope"));
await step("replace_small", async () => info(await os.putBlob({ name: "small.txt" }, te.encode("hello again"))));
await step("get_small_replaced", async () => td.decode(await os.getBlob("small.txt")));
await step("link_small", async () => info(await os.link("alias.txt", await os.info("small.txt"))));
await step("get_link", async () => td.decode(await os.getBlob("alias.txt")));
await step("list", async () => (await os.list()).map(info).sort((a, b) => a.name.localeCompare(b.name)));
await step("state_before_delete", async () => state(await jsm.streams.info("OBJ_FILES")));
await step("delete_big", async () => (await os.delete("big.bin")).success);
await step("info_big_deleted", async () => info(await os.info("big.bin")));
await step("get_big_deleted", async () => await os.getBlob("big.bin"));
await step("list_after_delete", async () => (await os.list()).map((i) => i.name).sort());
await step("state_after_delete", async () => state(await jsm.streams.info("OBJ_FILES")));
await step("status_after", async () => {
  const s = await os.status();
  return { bucket: s.bucket, size_gt0: s.size > 0, sealed: s.sealed };
});
await step("seal", async () => {
  const s = await os.seal();
  return { bucket: s.bucket, sealed: s.sealed };
});
await step("stream_config_sealed", async () => {
  const c = (await jsm.streams.info("OBJ_FILES")).config;
  return { sealed: c.sealed, deny_delete: c.deny_delete, deny_purge: c.deny_purge, discard: c.discard,
    allow_rollup_hdrs: c.allow_rollup_hdrs };
});
await step("put_after_seal", async () => info(await os.putBlob({ name: "late.txt" }, te.encode("late"))));
await step("delete_after_seal", async () => (await os.delete("small.txt")).success);
await step("get_after_seal", async () => td.decode(await os.getBlob("small.txt")));
await step("state_after_seal", async () => state(await jsm.streams.info("OBJ_FILES")));

await nc.close();
process.stdout.write(JSON.stringify(out) + "\n");
