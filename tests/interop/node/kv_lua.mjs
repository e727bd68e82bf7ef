// kv_lua.mjs - the other side of tide.kv.bucket: nats.js v2's KV API on a
// bucket a Lua handler writes (tests/kv_bucket_spec.lua).
//
// Usage: node kv_lua.mjs <port> <bucket> read <key>...   prints {key: entry|null}
//        node kv_lua.mjs <port> <bucket> put <key> <value>  prints the revision
//        node kv_lua.mjs <port> <bucket> delete <key>       prints true
//        node kv_lua.mjs <port> <bucket> dump <prefix>      prints {key: value} of the
//                                                           keys <prefix>.*
import { connect } from "nats";

const [port, bucket, op, ...args] = process.argv.slice(2);
const td = new TextDecoder();
const te = new TextEncoder();
const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 5000 });
const kv = await nc.jetstream().views.kv(bucket, { bindOnly: true });
let out;
if (op === "read") {
  out = {};
  for (const k of args) {
    const e = await kv.get(k);
    out[k] = e && { value: td.decode(e.value), revision: e.revision, operation: e.operation };
  }
} else if (op === "put") {
  out = await kv.put(args[0], te.encode(args[1]));
} else if (op === "dump") {
  out = {};
  const keys = [];
  for await (const k of await kv.keys(`${args[0]}.*`)) keys.push(k);
  for (const k of keys) {
    const e = await kv.get(k);
    if (e && e.operation === "PUT") out[k] = td.decode(e.value);
  }
} else if (op === "delete") {
  await kv.delete(args[0]);
  out = true;
}
await nc.close();
process.stdout.write(JSON.stringify(out) + "\n");
