// js.mjs - JetStream interop checks for tide's streams with the nats.js
// client (npm package "nats"): js.publish() and its PubAcks, msgID
// deduplication, expected last (subject) sequences and stream, 1000
// publishes in flight, and a push consumer's deliveries acked, nak'd, held
// with working() and terminated through the client's own JsMsg.
//
// Usage: node js.mjs <port> [--create]
//
// The server must already have these streams and consumers (tide: declared
// in its config, see tests/interop_js_spec.lua); --create makes them first
// through the JetStream API (jetstreamManager), which is how the very same
// checks run against nats-server -js:
//
//   stream   PUBS  { subjects = { "js.pub.>" } }
//   stream   ASYNC { subjects = { "js.async.>" } }
//   stream   WORK  { subjects = { "js.work.>" } }
//   consumer acks  { stream = WORK, filter = js.work.acks,  deliver = js.dlv.acks,  ack_wait = 1s }
//   consumer naks  { stream = WORK, filter = js.work.naks,  deliver = js.dlv.naks,  ack_wait = 5s }
//   consumer wpis  { stream = WORK, filter = js.work.wpis,  deliver = js.dlv.wpis,  ack_wait = 1s }
//   consumer terms { stream = WORK, filter = js.work.terms, deliver = js.dlv.terms, ack_wait = 1s }
//
// Every stream must be empty at the start: the checks expect exact sequences.
//
// Deliveries are read from a plain nc.subscribe() on the deliver subject (tide
// has no consumers API yet, so js.subscribe() cannot bind to the consumer) and wrapped
// with the package's own toJsMsg(), so ack() / ackAck() / nak() / working() /
// term() and the delivery info are the client's code, not ours.
//
// Every check prints one TAP line ("ok N - name" or "not ok N - name # why"),
// then "1..N" closes the run.  Exit status 0 iff every check passed.  Every
// wait is bounded: each check has its own deadline, and a global timer ends
// the program ("Bail out!", exit 2) whatever the server does.
import { AckPolicy, DeliverPolicy, nanos, StorageType, StringCodec } from "nats";
import { assert, CheckFailed, describe, startChecks, withTimeout } from "./tap.mjs";
import { toJsMsg } from "nats/lib/jetstream/jsmsg.js";

const GLOBAL_TIMEOUT_MS = 50000;
const CHECK_TIMEOUT_MS = 12000;
const CONNECT_TIMEOUT_MS = 2000;
const MSG_TIMEOUT_MS = 2000; // waiting for messages that must come
const QUIET_MS = 300; // waiting to make sure nothing more comes
const ASYNC_N = 1000;
const ASYNC_DUPS = 10;

const port = Number(process.argv[2]);
const create = process.argv[3] === "--create";
if (!Number.isInteger(port) || port <= 0 || port > 65535 || (process.argv.length > 3 && !create)) {
  console.error("usage: node js.mjs <port> [--create]");
  process.exit(2);
}
const server = `127.0.0.1:${port}`;

const { conn, check, keepOpen, finish } = startChecks({
  server,
  globalTimeoutMs: GLOBAL_TIMEOUT_MS,
  checkTimeoutMs: CHECK_TIMEOUT_MS,
  connectTimeoutMs: CONNECT_TIMEOUT_MS,
});

const sc = StringCodec();
const enc = (s) => sc.encode(s);
const dec = (b) => sc.decode(b);

// ---------------------------------------------------------------------------

const flush = (nc, what = "flush") => withTimeout(nc.flush(), MSG_TIMEOUT_MS, what);

// js.publish that must succeed with a PubAck from `stream`, sequence `seq`
// and the given duplicate flag.
async function publishExpect(js, subject, data, opts, stream, seq, duplicate) {
  let pa;
  try {
    pa = await js.publish(subject, enc(data), { timeout: MSG_TIMEOUT_MS, ...opts });
  } catch (e) {
    throw new CheckFailed(`publish ${subject} '${data}': ${describe(e)}`);
  }
  assert(pa.stream === stream, `publish ${subject} '${data}': PubAck stream '${pa.stream}', expected '${stream}'`);
  assert(pa.seq === seq, `publish ${subject} '${data}': PubAck seq ${pa.seq}, expected ${seq}`);
  assert(
    pa.duplicate === duplicate,
    `publish ${subject} '${data}' (seq ${seq}): duplicate ${pa.duplicate}, expected ${duplicate}`,
  );
  assert(!pa.domain, `PubAck domain '${pa.domain}'`);
}

// js.publish that the server must refuse with the JetStream error errCode
// (HTTP-like code `code`) and a description containing `text`.
async function publishRefused(js, subject, data, opts, code, errCode, text) {
  let pa;
  try {
    pa = await js.publish(subject, enc(data), { timeout: MSG_TIMEOUT_MS, ...opts });
  } catch (e) {
    const api = e && e.api_error;
    assert(api, `publish ${subject} '${data}': ${describe(e)}, expected JetStream error ${errCode}`);
    assert(
      api.code === code && api.err_code === errCode,
      `publish ${subject} '${data}': error ${api.code}/${api.err_code} (${api.description}), expected ${code}/${errCode}`,
    );
    assert(
      typeof api.description === "string" && api.description.includes(text) && e.message.includes(text),
      `publish ${subject}: error '${api.description}' / '${e.message}', expected it to contain '${text}'`,
    );
    return;
  }
  throw new CheckFailed(`publish ${subject} '${data}' was accepted (seq ${pa.seq}), expected error ${errCode}`);
}

// Deliveries on a consumer's deliver subject, as the client's JsMsg.
function deliveries(nc, subject) {
  const q = [];
  const waiters = [];
  nc.subscribe(subject, {
    callback: (err, m) => {
      if (err) return;
      q.push(toJsMsg(m, MSG_TIMEOUT_MS));
      while (waiters.length) waiters.shift()();
    },
  });
  // The next delivery within ms, or null.
  const next = async (ms) => {
    const end = Date.now() + ms;
    while (!q.length) {
      const left = end - Date.now();
      if (left <= 0) return null;
      await new Promise((r) => {
        const t = setTimeout(r, left);
        waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return q.shift();
  };
  return { next };
}

// A delivery that must come within MSG_TIMEOUT_MS with this payload, from
// WORK/consumer, with these sequences and delivery count.
async function expectDelivery(d, subject, consumer, data, sseq, cseq, delivered) {
  const m = await d.next(MSG_TIMEOUT_MS);
  assert(m, `'${data}' (seq ${sseq}, delivery ${delivered}) not delivered on ${consumer}`);
  assert(m.subject === subject, `'${data}' delivered with subject '${m.subject}', expected '${subject}'`);
  assert(dec(m.data) === data, `delivered '${dec(m.data)}', expected '${data}' (seq ${sseq}, delivery ${delivered})`);
  let info;
  try {
    info = m.info;
  } catch (e) {
    throw new CheckFailed(`'${data}': delivery info: ${describe(e)}; reply subject '${m.reply}'`);
  }
  assert(
    info.stream === "WORK" && info.consumer === consumer,
    `'${data}': info stream '${info.stream}' consumer '${info.consumer}', expected WORK/${consumer} (reply ${m.reply})`,
  );
  assert(
    info.streamSequence === sseq && info.deliverySequence === cseq && info.deliveryCount === delivered,
    `'${data}': stream seq ${info.streamSequence}, consumer seq ${info.deliverySequence}, delivered ` +
      `${info.deliveryCount}; expected ${sseq}, ${cseq}, ${delivered} (reply ${m.reply})`,
  );
  assert(m.seq === sseq && m.redelivered === delivered > 1, `'${data}': seq ${m.seq}, redelivered ${m.redelivered}`);
  assert(info.timestampNanos > 1600000000 * 1e9, `'${data}': timestamp ${info.timestampNanos} ns`);
  return m;
}

// Nothing more may arrive within ms.
async function expectQuiet(d, ms, after) {
  const m = await d.next(ms);
  assert(
    !m,
    m && `${after}: '${dec(m.data)}' delivered again (stream seq ${m.info.streamSequence}, ` +
      `delivered ${m.info.deliveryCount}) within ${ms} ms`,
  );
}

// JsMsg.ackAck(): "+ACK" as a request, resolved once the server confirms.
async function ackSync(m, what) {
  let r;
  try {
    r = await m.ackAck({ timeout: MSG_TIMEOUT_MS });
  } catch (e) {
    throw new CheckFailed(`ackAck of ${what} (${m.reply}): ${describe(e)}`);
  }
  assert(r === true, `ackAck of ${what} resolved ${r}`);
}

// ---------------------------------------------------------------------------

async function createAssets() {
  const nc = await conn("interop-js-create");
  const jsm = await nc.jetstreamManager();
  for (const [name, subject] of [
    ["PUBS", "js.pub.>"],
    ["ASYNC", "js.async.>"],
    ["WORK", "js.work.>"],
  ]) {
    await jsm.streams.add({ name, subjects: [subject], storage: StorageType.File });
  }
  for (const [name, ackWait] of [
    ["acks", 1000],
    ["naks", 5000],
    ["wpis", 1000],
    ["terms", 1000],
  ]) {
    await jsm.consumers.add("WORK", {
      durable_name: name,
      deliver_subject: `js.dlv.${name}`,
      filter_subject: `js.work.${name}`,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(ackWait),
    });
  }
  await nc.close();
}

if (create) {
  try {
    await withTimeout(createAssets(), CHECK_TIMEOUT_MS, "create");
  } catch (e) {
    console.log(`Bail out! creating the streams and consumers: ${describe(e)}`);
    process.exit(2);
  }
  keepOpen();
}

// ---------------------------------------------------------------------------

await check("js.publish: PubAcks from stream PUBS with sequences 1, 2, 3, 4", async () => {
  const js = (await conn("interop-js-publish")).jetstream();
  await publishExpect(js, "js.pub.a", "first", {}, "PUBS", 1, false);
  await publishExpect(js, "js.pub.b", "second", {}, "PUBS", 2, false);
  await publishExpect(js, "js.pub.a", "third", {}, "PUBS", 3, false);
  await publishExpect(js, "js.pub.c.deep", "", {}, "PUBS", 4, false);
});

await check("js.publish with msgID: a repeated id is a duplicate with the first seq", async () => {
  const js = (await conn("interop-js-dedup")).jetstream();
  await publishExpect(js, "js.pub.a", "order one", { msgID: "order-1" }, "PUBS", 5, false);
  await publishExpect(js, "js.pub.a", "order one again", { msgID: "order-1" }, "PUBS", 5, true);
  await publishExpect(js, "js.pub.b", "same id, other subject", { msgID: "order-1" }, "PUBS", 5, true);
  await publishExpect(js, "js.pub.a", "order two", { msgID: "order-2" }, "PUBS", 6, false);
  await publishExpect(js, "js.pub.a", "order one, third time", { msgID: "order-1" }, "PUBS", 5, true);
  // duplicates took no sequence
  await publishExpect(js, "js.pub.a", "no id", {}, "PUBS", 7, false);
});

await check("js.publish with expect.lastSequence: a mismatch is JetStream error 10071", async () => {
  const js = (await conn("interop-js-expect-seq")).jetstream();
  await publishRefused(js, "js.pub.a", "stale", { expect: { lastSequence: 6 } }, 400, 10071, "wrong last sequence: 7");
  await publishRefused(js, "js.pub.a", "ahead", { expect: { lastSequence: 70 } }, 400, 10071, "wrong last sequence: 7");
  await publishExpect(js, "js.pub.a", "in order", { expect: { lastSequence: 7 } }, "PUBS", 8, false);
});

await check("js.publish with expect.lastSubjectSequence: per-subject check", async () => {
  const js = (await conn("interop-js-expect-subject-seq")).jetstream();
  // js.pub.b was last stored at 2 (seq 5 was a duplicate); js.pub.a at 8
  await publishRefused(js, "js.pub.b", "b, wrong", { expect: { lastSubjectSequence: 8 } }, 400, 10071,
    "wrong last sequence: 2");
  await publishExpect(js, "js.pub.b", "b, right", { expect: { lastSubjectSequence: 2 } }, "PUBS", 9, false);
  await publishExpect(js, "js.pub.b", "b, right again", { expect: { lastSubjectSequence: 9 } }, "PUBS", 10, false);
  await publishExpect(js, "js.pub.a", "a, right", { expect: { lastSubjectSequence: 8 } }, "PUBS", 11, false);
});

await check("js.publish with expect.streamName: a mismatch is JetStream error 10060", async () => {
  const js = (await conn("interop-js-expect-stream")).jetstream();
  await publishRefused(js, "js.pub.a", "wrong stream", { expect: { streamName: "ORDERS" } }, 400, 10060,
    "expected stream does not match");
  await publishExpect(js, "js.pub.a", "right stream", { expect: { streamName: "PUBS" } }, "PUBS", 12, false);
});

await check("js.publish: 1000 in flight acked in order, repeated ids duplicates", async () => {
  const js = (await conn("interop-js-async")).jetstream();
  const sent = [];
  for (let i = 0; i < ASYNC_N; i++) {
    sent.push(js.publish("js.async.x", enc(String(i)), { msgID: `async-${i}`, timeout: 10000 }));
  }
  for (let i = 0; i < ASYNC_DUPS; i++) {
    sent.push(js.publish("js.async.x", enc(`d${i}`), { msgID: `async-${i}`, timeout: 10000 }));
  }
  const res = await Promise.allSettled(sent);
  const errors = res.filter((r) => r.status === "rejected");
  assert(errors.length === 0, `${errors.length} publishes failed; first: ${errors[0] && describe(errors[0].reason)}`);
  res.forEach((r, i) => {
    const pa = r.value;
    const dup = i >= ASYNC_N;
    const seq = dup ? i - ASYNC_N + 1 : i + 1;
    assert(pa.stream === "ASYNC", `message ${i}: PubAck stream '${pa.stream}'`);
    assert(
      pa.seq === seq && pa.duplicate === dup,
      `message ${i}: seq ${pa.seq}, duplicate ${pa.duplicate}; expected seq ${seq}, duplicate ${dup}`,
    );
  });
});

await check("push consumer: info, ack() and ackAck(), no redelivery after ack", async () => {
  const nc = await conn("interop-js-acks");
  const js = nc.jetstream();
  // WORK is empty: these are its sequences 1..4, published before anyone
  // listens on the deliver subject; seq 2 is outside the consumer's filter
  await publishExpect(js, "js.work.acks", "job 1", {}, "WORK", 1, false);
  await publishExpect(js, "js.work.noise", "not for acks", {}, "WORK", 2, false);
  await publishExpect(js, "js.work.acks", "job 2", {}, "WORK", 3, false);
  await publishExpect(js, "js.work.acks", "job 3", {}, "WORK", 4, false);
  const d = deliveries(nc, "js.dlv.acks");
  await flush(nc);
  const got = [];
  const sseq = [1, 3, 4];
  for (let i = 1; i <= 3; i++) {
    const m = await expectDelivery(d, "js.work.acks", "acks", `job ${i}`, sseq[i - 1], i, 1);
    // pending: the consumer's messages (its filter) still to deliver
    assert(m.info.pending === 3 - i, `'job ${i}': pending ${m.info.pending}, expected ${3 - i} (reply ${m.reply})`);
    got.push(m);
  }
  got[0].ack();
  await flush(nc);
  await ackSync(got[1], "'job 2'");
  await ackSync(got[2], "'job 3'");
  // ack_wait is 1 s: nothing comes back after it
  await expectQuiet(d, 1600, "after ack()/ackAck(), past ack_wait");
});

await check("push consumer: nak() redelivers now, nak(800) after the delay", async () => {
  const nc = await conn("interop-js-naks");
  const js = nc.jetstream();
  const d = deliveries(nc, "js.dlv.naks");
  await flush(nc);
  await publishExpect(js, "js.work.naks", "retry me", {}, "WORK", 5, false);
  let m = await expectDelivery(d, "js.work.naks", "naks", "retry me", 5, 1, 1);

  let t0 = Date.now();
  m.nak();
  await flush(nc);
  m = await expectDelivery(d, "js.work.naks", "naks", "retry me", 5, 2, 2);
  let took = Date.now() - t0;
  assert(took < 1000, `redelivered ${took} ms after the NAK`);

  t0 = Date.now();
  m.nak(800);
  await flush(nc);
  await expectQuiet(d, 500, "NAK with an 800 ms delay");
  m = await expectDelivery(d, "js.work.naks", "naks", "retry me", 5, 3, 3);
  took = Date.now() - t0;
  assert(took >= 750 && took < 2500, `redelivered ${took} ms after a NAK with an 800 ms delay`);

  await ackSync(m, "'retry me'");
  await expectQuiet(d, QUIET_MS, "after ackAck()");
});

await check("push consumer: working() holds redelivery past ack_wait", async () => {
  const nc = await conn("interop-js-wpis");
  const js = nc.jetstream();
  const d = deliveries(nc, "js.dlv.wpis");
  await flush(nc);
  await publishExpect(js, "js.work.wpis", "long job", {}, "WORK", 6, false);
  const m = await expectDelivery(d, "js.work.wpis", "wpis", "long job", 6, 1, 1);
  // ack_wait is 1 s; working() every 600 ms for 2.4 s
  for (let i = 0; i < 4; i++) {
    await expectQuiet(d, 600, "while in progress");
    m.working();
    await flush(nc);
  }
  m.ack();
  await flush(nc);
  await expectQuiet(d, 1500, "after working() then ack(), past ack_wait");
});

await check("push consumer: term() stops redelivery, an unacked message comes back", async () => {
  const nc = await conn("interop-js-terms");
  const js = nc.jetstream();
  const d = deliveries(nc, "js.dlv.terms");
  await flush(nc);
  await publishExpect(js, "js.work.terms", "poison", {}, "WORK", 7, false);
  await publishExpect(js, "js.work.terms", "forgotten", {}, "WORK", 8, false);
  const poison = await expectDelivery(d, "js.work.terms", "terms", "poison", 7, 1, 1);
  await expectDelivery(d, "js.work.terms", "terms", "forgotten", 8, 2, 1);
  const t0 = Date.now();
  poison.term();
  await flush(nc);
  // "forgotten" is neither acked nor nak'd: back after ack_wait (1 s)
  const again = await expectDelivery(d, "js.work.terms", "terms", "forgotten", 8, 3, 2);
  const took = Date.now() - t0;
  assert(took >= 700, `the unacked message came back after ${took} ms, before ack_wait (1 s)`);
  await ackSync(again, "'forgotten'");
  // "poison" never again
  await expectQuiet(d, 1500, "after term(), past ack_wait");
});

finish();
