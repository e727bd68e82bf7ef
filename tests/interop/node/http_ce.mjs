// CloudEvents over tide's HTTP face, produced by the `cloudevents` SDK (a
// real client) in binary and structured mode, received by a NATS
// subscriber (nats.js) with every attribute intact; then /metrics parsed
// with `parse-prometheus-text-format` and checked against the workload.
// Usage: node http_ce.mjs <nats-port> <http-port>.  TAP output.
import { CloudEvent, HTTP } from "cloudevents";
import { connect, StringCodec } from "nats";
import parsePrometheusTextFormat from "parse-prometheus-text-format";

const [natsPort, httpPort] = process.argv.slice(2).map(Number);
const base = `http://127.0.0.1:${httpPort}`;
const sc = StringCodec();
let n = 0, failed = 0;
const ok = (cond, name, why = "") => {
  n++;
  if (cond) console.log(`ok ${n} - ${name}`);
  else { failed++; console.log(`not ok ${n} - ${name}${why ? " # " + why : ""}`); }
};
setTimeout(() => { console.log("Bail out! timed out"); process.exit(1); }, 20000);

const nc = await connect({ servers: `127.0.0.1:${natsPort}` });
const sub = nc.subscribe("sdk.>");
const it = sub[Symbol.asyncIterator](); // one iterator for the whole run
await nc.flush();

async function post(message) {
  const res = await fetch(base + "/", { method: "POST", headers: message.headers, body: message.body });
  return res.status;
}

async function next() {
  const r = await Promise.race([it.next(), new Promise((res) => setTimeout(() => res(null), 3000))]);
  return r && r.value;
}

const attrs = { id: "sdk-1", source: "/tests/sdk", type: "sdk.binary", subject: "orders/42",
                datacontenttype: "application/json", data: { amount: 150, tags: ["a", "b"] }, traceid: "t-9" };

let status = await post(HTTP.binary(new CloudEvent(attrs)));
ok(status === 202, "binary mode accepted", `status ${status}`);
let m = await next();
let env = m && JSON.parse(sc.decode(m.data));
ok(m && m.subject === "sdk.binary", "binary event delivered on its type", m && m.subject);
for (const k of ["id", "source", "type", "subject", "traceid"])
  ok(env && env[k] === attrs[k], `binary: attribute ${k} intact`, env && JSON.stringify(env[k]));
ok(env && env.specversion === "1.0", "binary: specversion intact");
ok(env && JSON.stringify(env.data) === JSON.stringify(attrs.data), "binary: data intact", env && JSON.stringify(env.data));

status = await post(HTTP.structured(new CloudEvent({ ...attrs, id: "sdk-2", type: "sdk.structured" })));
ok(status === 202, "structured mode accepted", `status ${status}`);
m = await next();
env = m && JSON.parse(sc.decode(m.data));
ok(m && m.subject === "sdk.structured", "structured event delivered on its type");
for (const k of ["id", "source", "subject", "traceid", "datacontenttype"])
  ok(env && env[k] === (k === "id" ? "sdk-2" : attrs[k]), `structured: attribute ${k} intact`);
ok(env && JSON.stringify(env.data) === JSON.stringify(attrs.data), "structured: data intact");

// The SDK's own parser reads what tide delivered as a CloudEvent again.
const back = HTTP.toEvent({ headers: { "content-type": "application/cloudevents+json" }, body: sc.decode(m.data) });
ok(back.id === "sdk-2" && back.traceid === "t-9", "the delivered envelope parses back as a CloudEvent");

const bad = await fetch(base + "/", { method: "POST", headers: { "content-type": "application/cloudevents+json" },
                                       body: JSON.stringify({ specversion: "1.0", type: "x" }) });
ok(bad.status === 400, "a structured event without id/source is refused with 400", `status ${bad.status}`);

const text = await (await fetch(base + "/metrics")).text();
const families = parsePrometheusTextFormat(text);
const byName = Object.fromEntries(families.map((f) => [f.name, f]));
const value = (name) => byName[name] && Number(byName[name].metrics[0].value);
ok(families.length > 10, "metrics parse as Prometheus text", `${families.length} families`);
ok(value("tide_http_events_total") >= 2, "tide_http_events_total counts the events", value("tide_http_events_total"));
ok(value("tide_http_rejected_total") >= 1, "tide_http_rejected_total counts the refusal");
ok(byName.tide_script_call_seconds && byName.tide_script_call_seconds.type === "HISTOGRAM",
   "the rule call time is a histogram");
ok(byName.tide_messages_in_total && byName.tide_messages_in_total.type === "COUNTER", "counters are typed");

await nc.close();
console.log(`1..${n}`);
process.exit(failed ? 1 : 0);
