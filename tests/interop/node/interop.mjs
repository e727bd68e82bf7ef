// interop.mjs - interop acceptance checks for tide with the nats.js client
// (npm package "nats").
//
// Usage: node interop.mjs <port>      connects to 127.0.0.1:<port>
//
// Every check prints one TAP line ("ok N - name" or "not ok N - name # why"),
// then "1..N" closes the run.  Exit status 0 iff every check passed.  Every
// wait is bounded: each check has its own deadline, and a global timer ends
// the program ("Bail out!", exit 2) whatever the server does.
import { headers, StringCodec } from "nats";
import { assert, sleep, startChecks, withTimeout } from "./tap.mjs";

const GLOBAL_TIMEOUT_MS = 25000; // well under 30 s
const CHECK_TIMEOUT_MS = 8000;
const CONNECT_TIMEOUT_MS = 2000;
const MSG_TIMEOUT_MS = 2000; // waiting for messages that must come
const QUIET_MS = 300; // waiting to make sure nothing more comes

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node interop.mjs <port>");
  process.exit(2);
}
const server = `127.0.0.1:${port}`;

const { conn, check, finish } = startChecks({
  server,
  globalTimeoutMs: GLOBAL_TIMEOUT_MS,
  checkTimeoutMs: CHECK_TIMEOUT_MS,
  connectTimeoutMs: CONNECT_TIMEOUT_MS,
});

// Every subject of a run starts with a token of its own, so runs sharing a
// server never see each other's messages.
const prefix = `interop${process.pid.toString(16)}${Math.floor(Math.random() * 0xffffff).toString(16)}`;
const S = (subject) => `${prefix}.${subject}`;
const unprefixed = (subject) => (subject.startsWith(`${prefix}.`) ? subject.slice(prefix.length + 1) : subject);

const sc = StringCodec();
const enc = (s) => sc.encode(s);
const dec = (b) => sc.decode(b);

// ---------------------------------------------------------------------------

// Resolves once cond() holds, or after ms (no error: the caller asserts).
async function waitFor(cond, ms = MSG_TIMEOUT_MS) {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(5);
  return cond();
}

const flush = (nc, what = "flush") => withTimeout(nc.flush(), MSG_TIMEOUT_MS, what);

// Subscribes with a callback that stores every message; returns {sub, msgs}.
function collect(nc, subject, opts = {}) {
  const msgs = [];
  const sub = nc.subscribe(subject, {
    ...opts,
    callback: (err, m) => {
      if (!err) msgs.push(m);
    },
  });
  return { sub, msgs };
}

const eqBytes = (a, b) => a.length === b.length && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

// ---------------------------------------------------------------------------

await check("publish/subscribe: payloads intact (empty, binary, 100 KiB)", async () => {
  const big = new Uint8Array(100 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 8)) & 0xff;
  const sent = [
    { data: enc("hello") },
    { data: new Uint8Array(0) },
    { data: enc("with\r\nCRLF and a NUL\0 inside") },
    { data: enc("MSG x 1 5\r\nfake\r\n") },
    { data: enc("to be answered"), reply: "pubsub.reply.to" },
    { data: big },
    { data: enc("last") },
  ];
  const subc = await conn("interop-pubsub-sub");
  const pub = await conn("interop-pubsub-pub");
  assert(pub.info.max_payload >= big.length, `server max_payload ${pub.info.max_payload} is below ${big.length}`);
  const { msgs } = collect(subc, S("pubsub.data"));
  await flush(subc);
  for (const s of sent) pub.publish(S("pubsub.data"), s.data, s.reply ? { reply: S(s.reply) } : undefined);
  await flush(pub);
  await waitFor(() => msgs.length >= sent.length);
  await sleep(QUIET_MS);
  assert(msgs.length === sent.length, `received ${msgs.length} messages, expected ${sent.length}`);
  sent.forEach((s, i) => {
    const m = msgs[i];
    assert(m.subject === S("pubsub.data"), `message ${i + 1}: subject '${m.subject}'`);
    assert(
      eqBytes(m.data, s.data),
      `message ${i + 1}: ${m.data.length} bytes, expected ${s.data.length}, or bytes differ`,
    );
    if (s.reply) assert(m.reply === S(s.reply), `message ${i + 1}: reply '${m.reply}', expected '${S(s.reply)}'`);
    else assert(!m.reply, `message ${i + 1}: unexpected reply '${m.reply}'`);
  });
});

await check("wildcards: '*' is one token, '>' one or more trailing tokens", async () => {
  const published = [
    "wc", "wc.a", "wc.a.end", "wc.b.c", "wc.a.b.c.d",
    "wcx.a", "x.wc.a", "wc.a.end.more", "w.a", "wc.b.end",
  ];
  const expected = {
    "wc.*": ["wc.a"],
    "wc.>": ["wc.a", "wc.a.end", "wc.b.c", "wc.a.b.c.d", "wc.a.end.more", "wc.b.end"],
    "wc.*.end": ["wc.a.end", "wc.b.end"],
    "wc.a.>": ["wc.a.end", "wc.a.b.c.d", "wc.a.end.more"],
    "*.a.end": ["wc.a.end"],
  };
  const subc = await conn("interop-wildcards-sub");
  const pub = await conn("interop-wildcards-pub");
  const got = {};
  for (const p of Object.keys(expected)) got[p] = collect(subc, S(p)).msgs;
  await flush(subc);
  for (const s of published) pub.publish(S(s), enc(s));
  await flush(pub);
  await waitFor(() => Object.keys(expected).every((p) => got[p].length >= expected[p].length));
  await sleep(QUIET_MS);
  for (const [p, want] of Object.entries(expected)) {
    const subjects = got[p].map((m) => unprefixed(m.subject));
    assert(
      subjects.join(",") === want.join(","),
      `'${p}' received [${subjects.join(",")}], expected [${want.join(",")}]`,
    );
    for (const m of got[p]) assert(dec(m.data) === unprefixed(m.subject), `'${p}': payload of ${m.subject} differs`);
  }
});

await check("queue groups: each message to exactly one member, plain subscriber gets all", async () => {
  const N = 300;
  const members = [];
  for (let i = 0; i < 3; i++) {
    const nc = await conn(`interop-queue-member-${i + 1}`);
    members.push(collect(nc, S("queue.work"), { queue: "workers" }).msgs);
    await flush(nc);
  }
  const pc = await conn("interop-queue-plain");
  const plain = collect(pc, S("queue.work")).msgs;
  await flush(pc);
  const pub = await conn("interop-queue-pub");
  for (let i = 0; i < N; i++) pub.publish(S("queue.work"), enc(String(i)));
  await flush(pub);
  const qtotal = () => members.reduce((a, m) => a + m.length, 0);
  await waitFor(() => qtotal() >= N && plain.length >= N, 5000);
  await sleep(QUIET_MS); // duplicates would show up now
  const spread = members.map((m) => m.length).join("/");
  const seen = new Array(N).fill(0);
  for (const m of members.flat()) {
    const v = Number(dec(m.data));
    assert(Number.isInteger(v) && v >= 0 && v < N, `unexpected payload '${dec(m.data)}'`);
    seen[v]++;
  }
  seen.forEach((c, v) =>
    assert(c === 1, `message ${v} reached ${c} queue members (queue total ${qtotal()}: ${spread})`),
  );
  assert(qtotal() === N, `queue members received ${qtotal()} messages, expected ${N}`);
  members.forEach((m, i) => assert(m.length > 0, `queue member ${i + 1} got no message (spread ${spread})`));
  const pseen = new Array(N).fill(0);
  for (const m of plain) pseen[Number(dec(m.data))]++;
  pseen.forEach((c, v) => assert(c === 1, `plain subscriber got message ${v} ${c} times (total ${plain.length})`));
  assert(plain.length === N, `plain subscriber received ${plain.length}, expected ${N}`);
});

await check("headers: single and multi-valued headers round-trip", async () => {
  const subc = await conn("interop-headers-sub");
  const pub = await conn("interop-headers-pub");
  assert(pub.info.headers === true, `server INFO headers is ${pub.info.headers}`);
  const { msgs } = collect(subc, S("hdr.test"));
  await flush(subc);
  const h = headers();
  h.set("X-Single", "one");
  h.append("X-Multi", "first");
  h.append("X-Multi", "second");
  h.append("X-Multi", "third value");
  h.set("X-Spaces", "a b  c");
  pub.publish(S("hdr.test"), enc("body bytes"), { headers: h, reply: S("hdr.reply") });
  const h2 = headers();
  h2.set("X-Empty-Body", "yes");
  pub.publish(S("hdr.test"), new Uint8Array(0), { headers: h2 });
  await flush(pub);
  await waitFor(() => msgs.length >= 2);
  await sleep(QUIET_MS);
  assert(msgs.length === 2, `received ${msgs.length} messages, expected 2`);
  const [m, e] = msgs;
  assert(dec(m.data) === "body bytes", `payload '${dec(m.data)}'`);
  assert(m.reply === S("hdr.reply"), `reply '${m.reply}'`);
  assert(m.headers, "first message arrived without headers");
  assert(m.headers.get("X-Single") === "one", `X-Single is '${m.headers.get("X-Single")}'`);
  assert(m.headers.get("X-Spaces") === "a b  c", `X-Spaces is '${m.headers.get("X-Spaces")}'`);
  const multi = m.headers.values("X-Multi");
  assert(
    multi.join("|") === "first|second|third value",
    `X-Multi values [${multi.join("|")}]`,
  );
  assert(e.data.length === 0, `headers-only message has ${e.data.length} payload bytes`);
  assert(e.headers && e.headers.get("X-Empty-Body") === "yes", "headers-only message lost its header");
});

await check("request/reply: sequential requests answered", async () => {
  const svc = await conn("interop-responder");
  svc.subscribe(S("svc.echo"), {
    callback: (err, m) => {
      if (!err && m.reply) m.respond(enc(`re:${dec(m.data)}`));
    },
  });
  await flush(svc);
  const cli = await conn("interop-requester");
  for (let i = 0; i < 6; i++) {
    // the first requests share one wildcard inbox, the last ones use their own
    const noMux = i >= 4;
    const r = await cli.request(S("svc.echo"), enc(`question ${i}`), { timeout: MSG_TIMEOUT_MS, noMux });
    assert(dec(r.data) === `re:question ${i}`, `request ${i + 1}: reply '${dec(r.data)}'`);
  }
});

await check("subscribe with max: 5 of 10 messages", async () => {
  const subc = await conn("interop-max-sub");
  const pub = await conn("interop-max-pub");
  const { sub, msgs } = collect(subc, S("auto.unsub"), { max: 5 });
  await flush(subc);
  const before = subc.stats().inMsgs;
  for (let i = 0; i < 10; i++) pub.publish(S("auto.unsub"), enc(String(i)));
  await flush(pub);
  await waitFor(() => msgs.length >= 5);
  await sleep(QUIET_MS);
  await flush(subc);
  assert(msgs.length === 5, `received ${msgs.length} messages, expected exactly 5`);
  assert(
    msgs.map((m) => dec(m.data)).join(",") === "0,1,2,3,4",
    `received [${msgs.map((m) => dec(m.data)).join(",")}]`,
  );
  assert(sub.isClosed(), "subscription still open after its max");
  // the client drops extras itself; check the server did not send them
  const sent = subc.stats().inMsgs - before;
  assert(sent === 5, `server delivered ${sent} messages to the connection, expected 5 (UNSUB <sid> 5 not honoured)`);
});

await check("flush and round-trip time", async () => {
  const nc = await conn("interop-flush");
  for (let i = 0; i < 3; i++) await flush(nc);
  nc.publish(S("flush.nobody"), enc("data"));
  await flush(nc);
  const rtt = await withTimeout(nc.rtt(), MSG_TIMEOUT_MS, "rtt");
  assert(typeof rtt === "number" && rtt >= 0 && rtt < MSG_TIMEOUT_MS, `rtt ${rtt}`);
  assert(!nc.isClosed(), "connection closed after flushes");
});

await check("server info: id, max payload, proto, headers, version", async () => {
  const nc = await conn("interop-info");
  const i = nc.info;
  assert(i, "no server info");
  assert(typeof i.server_id === "string" && i.server_id.length > 0, `server_id '${i.server_id}'`);
  assert(Number.isInteger(i.max_payload) && i.max_payload > 0, `max_payload ${i.max_payload}`);
  assert(Number.isInteger(i.proto) && i.proto >= 1, `proto ${i.proto}`);
  assert(i.headers === true, `headers ${i.headers}`);
  assert(typeof i.version === "string" && /^\d+\.\d+\.\d+/.test(i.version), `version '${i.version}'`);
  assert(nc.getServer() === server, `connected to '${nc.getServer()}'`);
});

await check("no echo: own messages are not delivered back", async () => {
  const quiet = await conn("interop-noecho", { noEcho: true });
  const other = await conn("interop-echo-other");
  const mine = collect(quiet, S("echo.test")).msgs;
  const theirs = collect(other, S("echo.test")).msgs;
  await flush(quiet);
  await flush(other);
  const before = quiet.stats().inMsgs;
  for (let i = 0; i < 3; i++) quiet.publish(S("echo.test"), enc("mine"));
  await flush(quiet);
  await waitFor(() => theirs.length >= 3);
  await sleep(QUIET_MS);
  await flush(quiet);
  assert(theirs.length === 3, `the other connection received ${theirs.length} of 3 messages`);
  assert(mine.length === 0, `the noEcho connection received ${mine.length} of its own messages`);
  assert(quiet.stats().inMsgs === before, `server sent ${quiet.stats().inMsgs - before} messages to the noEcho publisher`);
  other.publish(S("echo.test"), enc("theirs"));
  await flush(other);
  await waitFor(() => mine.length >= 1);
  assert(mine.length === 1 && dec(mine[0].data) === "theirs", "the noEcho connection did not get another connection's message");
});

await check("unsubscribe: no message after UNSUB", async () => {
  const subc = await conn("interop-unsub-sub");
  const pub = await conn("interop-unsub-pub");
  const { sub, msgs } = collect(subc, S("unsub.test"));
  const keep = collect(subc, S("unsub.other")).msgs;
  await flush(subc);
  pub.publish(S("unsub.test"), enc("before"));
  await flush(pub);
  await waitFor(() => msgs.length >= 1);
  assert(msgs.length === 1, `received ${msgs.length} messages before unsubscribe, expected 1`);
  sub.unsubscribe();
  await flush(subc);
  const before = subc.stats().inMsgs;
  for (let i = 0; i < 5; i++) pub.publish(S("unsub.test"), enc("after"));
  pub.publish(S("unsub.other"), enc("still here"));
  await flush(pub);
  await waitFor(() => keep.length >= 1);
  await sleep(QUIET_MS);
  await flush(subc);
  assert(keep.length === 1, `the remaining subscription received ${keep.length}, expected 1`);
  assert(msgs.length === 1, `${msgs.length - 1} messages arrived after unsubscribe`);
  const delivered = subc.stats().inMsgs - before;
  assert(delivered === 1, `server delivered ${delivered} messages after UNSUB, expected only the 1 for the other subject`);
});

await check("drain: subscription and connection drain deliver pending messages", async () => {
  const subc = await conn("interop-drain-sub");
  const pub = await conn("interop-drain-pub");
  const { sub, msgs } = collect(subc, S("drain.sub"));
  await flush(subc);
  for (let i = 0; i < 50; i++) pub.publish(S("drain.sub"), enc(String(i)));
  await flush(pub);
  await withTimeout(sub.drain(), MSG_TIMEOUT_MS, "subscription drain");
  assert(msgs.length === 50, `subscription drain: ${msgs.length} of 50 messages processed`);
  assert(sub.isClosed(), "subscription not closed after drain");
  pub.publish(S("drain.sub"), enc("late"));
  await flush(pub);
  await sleep(QUIET_MS);
  assert(msgs.length === 50, "a message arrived after the subscription drained");

  const dc = await conn("interop-drain-conn");
  const got = collect(dc, S("drain.conn")).msgs;
  await flush(dc);
  for (let i = 0; i < 50; i++) pub.publish(S("drain.conn"), enc(String(i)));
  await flush(pub);
  await withTimeout(dc.drain(), MSG_TIMEOUT_MS, "connection drain");
  assert(got.length === 50, `connection drain: ${got.length} of 50 messages processed`);
  const err = await withTimeout(dc.closed(), MSG_TIMEOUT_MS, "closed after drain");
  assert(!err, `connection closed with error: ${err}`);
  assert(dc.isClosed(), "connection not closed after drain");
});

finish();
