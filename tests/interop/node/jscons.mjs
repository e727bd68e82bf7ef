// jscons.mjs - consumers through the JetStream API with the nats.js client
// (npm package "nats", v2, or v3 with --v3): the manager's consumers.add /
// info / list / delete, pull fetches (v2: js.fetch and js.pullSubscribe; v3:
// consumers.get + fetch / consume), push subscriptions, acks of every kind,
// and raw CONSUMER.MSG.NEXT requests for the status messages (404, 408,
// 409, 100) and the errors a client library would not let through.
//
// Usage: node jscons.mjs <port> [--v3]
//
// Runs the same steps against any server with JetStream on an empty store
// (tests/jsapi_consumer_spec.lua runs it against tide and against
// nats-server -js) and prints one JSON object: step name -> what the
// server answered, reduced to what both implement (no timestamps, no
// generated names), errors as their err_code.  Exit status 0 when every
// step got an answer; 2 on a global timeout.
import { errCode, loadClient, parseArgs, stepsInto } from "./jsclient.mjs";

const GLOBAL_TIMEOUT_MS = 60000;
const { port, v3 } = parseArgs("jscons.mjs", GLOBAL_TIMEOUT_MS);
const { connect, headers, createInbox, managerOf, jetstreamOf } = await loadClient(v3);
const te = new TextEncoder();
const td = new TextDecoder();
const enc = (s) => te.encode(s);
const dec = (b) => td.decode(b);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = {};
const step = stepsInto(out);

// The configuration fields both servers implement.
function cfg(c) {
  const keys = ["durable_name", "deliver_policy", "opt_start_seq", "ack_policy", "ack_wait", "max_deliver",
    "backoff", "filter_subject", "replay_policy", "max_waiting", "max_ack_pending", "idle_heartbeat",
    "flow_control", "headers_only", "max_batch", "max_expires", "max_bytes", "deliver_group",
    "inactive_threshold", "description"];
  const o = {};
  for (const k of keys) if (c[k] !== undefined) o[k] = c[k];
  o.push = !!c.deliver_subject;
  return o;
}
function state(ci) {
  return { delivered: [ci.delivered.consumer_seq, ci.delivered.stream_seq],
    ack_floor: [ci.ack_floor.consumer_seq, ci.ack_floor.stream_seq], num_ack_pending: ci.num_ack_pending,
    num_redelivered: ci.num_redelivered, num_pending: ci.num_pending };
}
function info(ci) {
  return { stream: ci.stream_name, name: ci.config.durable_name ? ci.name : "(ephemeral)", config: cfg(ci.config),
    state: state(ci) };
}

// A raw API request: the answer's err_code, or the answer reduced by fn.
async function raw(nc, subject, body, fn) {
  const m = await nc.request(subject, typeof body === "string" ? enc(body) : enc(JSON.stringify(body)),
    { timeout: 3000 });
  const r = JSON.parse(dec(m.data));
  if (r.error) return { err: r.error.err_code, code: r.error.code, type: r.type };
  return fn ? fn(r) : r;
}

// A message as the tests compare it: subject, stream sequence, deliveries, data.
function msg(m) {
  const t = m.reply ? m.reply.split(".") : [];
  return { subject: m.subject, seq: Number(t[t.length - 4] || 0), deliveries: Number(t[t.length - 7] || 0),
    data: dec(m.data) };
}

// A raw pull request (body as given) collected for at most ms, or until a
// status of 400 or more: the messages and statuses in order.
async function pull(nc, stream, consumer, body, ms, ack = true) {
  const inbox = createInbox();
  const got = [];
  const sub = nc.subscribe(inbox);
  const done = (async () => {
    for await (const m of sub) {
      const code = m.headers ? m.headers.code : 0;
      if (code) {
        const e = { status: code, description: m.headers.description };
        const pm = m.headers.get("Nats-Pending-Messages");
        if (pm) e.pending_messages = Number(pm);
        if (m.headers.get("Nats-Last-Consumer")) e.last_consumer = Number(m.headers.get("Nats-Last-Consumer"));
        got.push(e);
        if (code >= 400) break;
      } else {
        const x = msg(m);
        if (m.headers && m.headers.get("Nats-Msg-Size")) x.size = Number(m.headers.get("Nats-Msg-Size"));
        got.push(x);
        if (ack) m.respond(enc("+ACK"));
      }
    }
  })();
  nc.publish(`$JS.API.CONSUMER.MSG.NEXT.${stream}.${consumer}`, typeof body === "string" ? enc(body)
    : enc(JSON.stringify(body)), { reply: inbox });
  await Promise.race([done, sleep(ms)]);
  sub.unsubscribe();
  return got;
}

// Fetches with the client's own pull API; ack: "ack", "nak", "term", "none".
async function fetch(js, stream, consumer, opts, ack = "ackAck") {
  const got = [];
  let it;
  if (v3) {
    const c = await js.consumers.get(stream, consumer);
    it = await c.fetch({ max_messages: opts.batch, expires: Math.max(opts.expires || 0, 1000) }); // v3's least
  } else {
    it = js.fetch(stream, consumer, opts);
  }
  for await (const m of it) {
    got.push({ subject: m.subject, seq: m.seq, deliveries: m.info.deliveryCount, data: dec(m.data) });
    if (ack === "ack") m.ack();
    else if (ack === "nak") m.nak();
    else if (ack === "term") m.term();
    else if (ack === "ackAck") await m.ackAck();
  }
  return got;
}

const nc = await connect({ servers: `127.0.0.1:${port}`, timeout: 3000 });
const jsm = await managerOf(nc);
const js = jetstreamOf(nc);
const AP = { explicit: "explicit", none: "none", all: "all" };

await jsm.streams.add({ name: "ORDERS", subjects: ["orders.>"] });
for (let i = 1; i <= 6; i++) {
  const h = headers();
  h.set("N", String(i));
  await js.publish(`orders.${i % 2 ? "eu" : "us"}.${i}`, enc(`order ${i}`), { headers: h });
}

// ---- CRUD --------------------------------------------------------------------
await step("add_pull", async () => info(await jsm.consumers.add("ORDERS", { durable_name: "PULL",
  ack_policy: AP.explicit })));
await step("add_pull_same", async () => info(await jsm.consumers.add("ORDERS", { durable_name: "PULL",
  ack_policy: AP.explicit })));
await step("update_pull_ack_wait", async () => cfg((await jsm.consumers.update("ORDERS", "PULL",
  { ack_wait: 20e9 })).config));
// nats-server 2.10 answers 10148 (the client's action is "create"); 2.9 ignores the action
await step("add_pull_other_ack_wait", () => jsm.consumers.add("ORDERS", { durable_name: "PULL",
  ack_policy: AP.explicit, ack_wait: 10e9 }));
await step("update_pull_other_policy", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.PULL",
  { stream_name: "ORDERS", config: { durable_name: "PULL", ack_policy: "explicit", deliver_policy: "new" } }));
await step("update_pull_to_push", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.PULL",
  { stream_name: "ORDERS", config: { durable_name: "PULL", ack_policy: "explicit", deliver_subject: "push.here" } }));
await step("add_missing_stream", () => jsm.consumers.add("MISSING", { durable_name: "X", ack_policy: AP.explicit }));
await step("info_missing", () => jsm.consumers.info("ORDERS", "NOPE"));
await step("info_missing_stream", () => jsm.consumers.info("MISSING", "NOPE"));
await step("create_bad_json", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X", "{nope"));
await step("create_stream_mismatch", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X",
  { stream_name: "OTHER", config: { durable_name: "X", ack_policy: "explicit" } }));
await step("create_durable_mismatch", () => raw(nc, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { durable_name: "Y", ack_policy: "explicit" } }));
await step("create_durable_unset", () => raw(nc, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { ack_policy: "explicit" } }));
await step("create_filter_mismatch", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X.orders.eu.*",
  { stream_name: "ORDERS", config: { durable_name: "X", ack_policy: "explicit", filter_subject: "orders.us.*" } }));
await step("create_hb_on_pull", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { durable_name: "X", ack_policy: "explicit", idle_heartbeat: 1e9 } }));
await step("create_backoff_max_deliver", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { durable_name: "X", ack_policy: "explicit", backoff: [1e9, 2e9], max_deliver: 2 } }));
await step("create_by_seq_without_seq", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { durable_name: "X", ack_policy: "explicit", deliver_policy: "by_start_sequence" } }));
await step("create_fc_without_hb", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.X",
  { stream_name: "ORDERS", config: { durable_name: "X", ack_policy: "explicit", deliver_subject: "d.x",
    flow_control: true } }));
// over max_payload: the client library refuses to send it; on a raw
// connection the server's answer
await step("create_over_max_payload_client", async () => {
  try {
    await raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.BIG", "x".repeat(nc.info.max_payload + 1));
    return "sent";
  } catch (e) {
    return { error: String(e.code) };
  }
});
await step("create_over_max_payload_raw", async () => {
  const net = await import("node:net");
  const n = nc.info.max_payload + 1;
  return await new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    let text = "";
    sock.on("data", (d) => {
      text += d.toString();
      const m = /-ERR[^\r\n]*/.exec(text);
      if (m) {
        sock.destroy();
        resolve(m[0]);
      }
    });
    sock.on("error", () => resolve("error"));
    // (both servers answer the control line; the payload is not sent)
    sock.write(`CONNECT {"verbose":false}\r\nPUB $JS.API.CONSUMER.CREATE.ORDERS.BIG _INBOX.big ${n}\r\n`);
    setTimeout(() => { sock.destroy(); resolve(text.includes("-ERR") ? text : "no error"); }, 2000);
  });
});
await step("create_bad_name", () => raw(nc, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.a*b",
  { stream_name: "ORDERS", config: { durable_name: "a*b", ack_policy: "explicit" } }));
await step("create_filter_in_subject", () => raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS.EU.orders.eu.>",
  { stream_name: "ORDERS", config: { durable_name: "EU", ack_policy: "explicit", filter_subject: "orders.eu.>" } },
  (r) => ({ type: r.type, ...info(r) })));
await step("names", async () => {
  const names = [];
  for await (const n of jsm.consumers.list("ORDERS")) names.push(n.name);
  return names.sort();
});
await step("names_raw", () => raw(nc, "$JS.API.CONSUMER.NAMES.ORDERS", "",
  (r) => ({ type: r.type, total: r.total, consumers: r.consumers.sort() })));
await step("list_raw", () => raw(nc, "$JS.API.CONSUMER.LIST.ORDERS", { offset: 1 },
  (r) => ({ type: r.type, total: r.total, offset: r.offset, n: r.consumers.length })));
await step("names_missing_stream", () => raw(nc, "$JS.API.CONSUMER.NAMES.MISSING", ""));
await step("stream_consumer_count", async () => (await jsm.streams.info("ORDERS")).state.consumer_count);
await step("account_consumers", async () => (await jsm.getAccountInfo()).consumers);

// ---- pull --------------------------------------------------------------------
await step("fetch_3", () => fetch(js, "ORDERS", "PULL", { batch: 3, expires: 1000 }));
await step("info_after_fetch_3", async () => state(await jsm.consumers.info("ORDERS", "PULL")));
await step("fetch_rest", () => fetch(js, "ORDERS", "PULL", { batch: 10, expires: 1000 }));
await step("info_after_rest", async () => state(await jsm.consumers.info("ORDERS", "PULL")));
await step("raw_no_wait_empty", () => pull(nc, "ORDERS", "PULL", { batch: 2, no_wait: true }, 2000));
await step("raw_expires_empty", () => pull(nc, "ORDERS", "PULL", { batch: 2, expires: 300e6 }, 3000));
await step("raw_heartbeat", () => pull(nc, "ORDERS", "PULL", { batch: 1, expires: 700e6, idle_heartbeat: 200e6 }, 3000)
  .then((g) => ({ heartbeats_gt0: g.filter((x) => x.status === 100).length > 0, last: g[g.length - 1] })));
await step("raw_bad_heartbeat", () => pull(nc, "ORDERS", "PULL", { batch: 1, expires: 100e6, idle_heartbeat: 200e6 },
  2000));
await step("raw_held_then_published", async () => {
  const p = pull(nc, "ORDERS", "PULL", { batch: 1, expires: 3000e6 }, 3000);
  await sleep(200);
  await js.publish("orders.eu.7", enc("order 7"));
  return p;
});
await step("raw_number_body", async () => {
  await js.publish("orders.us.8", enc("order 8"));
  await sleep(20); // by_start_time below starts at 9's time, to the millisecond
  await js.publish("orders.eu.9", enc("order 9"));
  return pull(nc, "ORDERS", "PULL", "2", 1000);
});
await step("raw_max_bytes_small", async () => {
  await js.publish("orders.us.10", enc("order 10 with a longer body than the limit allows"));
  return pull(nc, "ORDERS", "PULL", { batch: 1, max_bytes: 10, expires: 1000e6 }, 2000);
});
await step("raw_after_max_bytes", () => pull(nc, "ORDERS", "PULL", { batch: 5, expires: 300e6 }, 2000));
await step("raw_missing_consumer", async () => {
  try {
    const m = await nc.request("$JS.API.CONSUMER.MSG.NEXT.ORDERS.NOPE", enc(""), { timeout: 1000 });
    return { status: m.headers && m.headers.code };
  } catch (e) {
    return { error: String(e.code || e.message) };
  }
});

// max_waiting, max_batch and a consumer deleted under a waiting request
await step("add_small", async () => cfg((await jsm.consumers.add("ORDERS", { durable_name: "SMALL",
  ack_policy: AP.explicit, deliver_policy: "new", max_waiting: 1, max_batch: 5 })).config));
await step("raw_max_waiting", async () => {
  const first = pull(nc, "ORDERS", "SMALL", { batch: 1, expires: 2000e6 }, 3000);
  await sleep(100);
  const second = await pull(nc, "ORDERS", "SMALL", { batch: 1, expires: 2000e6 }, 1000);
  await jsm.consumers.delete("ORDERS", "SMALL");
  return { second, first: await first };
});
await step("raw_max_batch", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "SMALL2", ack_policy: AP.explicit, max_batch: 5 });
  return pull(nc, "ORDERS", "SMALL2", { batch: 6, expires: 500e6 }, 2000);
});

// acks: nak, term, ack policies none and all, ack_wait and max_deliver
await step("nak_then_redelivered", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "NAK", ack_policy: AP.explicit, filter_subject: "orders.eu.*" });
  const a = await fetch(js, "ORDERS", "NAK", { batch: 1, expires: 500 }, "nak");
  await sleep(100); // (nats-server takes acks on a queue of their own: let the nak land first)
  const b = await fetch(js, "ORDERS", "NAK", { batch: 1, expires: 500 }, "term");
  await sleep(100);
  const c = await fetch(js, "ORDERS", "NAK", { batch: 1, expires: 500 });
  return { a, b, c, state: state(await jsm.consumers.info("ORDERS", "NAK")) };
});
await step("ack_none", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "NONE", ack_policy: AP.none });
  const got = await fetch(js, "ORDERS", "NONE", { batch: 3, expires: 500 }, "none");
  return { got: got.map((m) => m.seq), state: state(await jsm.consumers.info("ORDERS", "NONE")) };
});
await step("ack_all", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "ALL", ack_policy: AP.all });
  const got = await pull(nc, "ORDERS", "ALL", { batch: 3, expires: 300e6 }, 2000);
  const before = state(await jsm.consumers.info("ORDERS", "ALL"));
  // the raw pull acked each; ack again the last only on a fresh batch
  const inbox = createInbox();
  const sub = nc.subscribe(inbox, { max: 3 });
  nc.publish("$JS.API.CONSUMER.MSG.NEXT.ORDERS.ALL", enc(JSON.stringify({ batch: 3, expires: 1e9 })), { reply: inbox });
  const ms = [];
  for await (const m of sub) ms.push(m);
  await nc.request(ms[2].reply, enc("+ACK"), { timeout: 1000 });
  return { got: got.map((m) => m.seq), before, after: state(await jsm.consumers.info("ORDERS", "ALL")) };
});
await step("ack_wait_max_deliver", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "WAIT", ack_policy: AP.explicit, ack_wait: 400e6, max_deliver: 2,
    filter_subject: "orders.us.2" });
  const a = await fetch(js, "ORDERS", "WAIT", { batch: 1, expires: 300 }, "none");
  await sleep(600);
  const b = await fetch(js, "ORDERS", "WAIT", { batch: 1, expires: 300 }, "none");
  await sleep(600);
  const c = await fetch(js, "ORDERS", "WAIT", { batch: 1, expires: 300 }, "none");
  const st = state(await jsm.consumers.info("ORDERS", "WAIT"));
  // (nats-server leaves ack_floor at 0 and counts the given-up message as redelivered; tide does not)
  return { a, b, c, num_ack_pending: st.num_ack_pending, num_pending: st.num_pending };
});
await step("in_progress_holds", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "WPI", ack_policy: AP.explicit, ack_wait: 600e6,
    filter_subject: "orders.eu.3" });
  const inbox = createInbox();
  const sub = nc.subscribe(inbox, { max: 1 });
  nc.publish("$JS.API.CONSUMER.MSG.NEXT.ORDERS.WPI", enc(JSON.stringify({ batch: 1, expires: 1e9 })), { reply: inbox });
  let m;
  for await (const x of sub) m = x;
  for (let i = 0; i < 3; i++) { // 3 x 400 ms, each within ack_wait of the last +WPI
    await sleep(400);
    await nc.request(m.reply, enc("+WPI"), { timeout: 1000 });
  }
  const before = state(await jsm.consumers.info("ORDERS", "WPI"));
  await nc.request(m.reply, enc("+ACK"), { timeout: 1000 });
  const again = await pull(nc, "ORDERS", "WPI", { batch: 1, expires: 300e6 }, 1000);
  return { before, again };
});
await step("max_ack_pending", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "MAP", ack_policy: AP.explicit, max_ack_pending: 2 });
  const got = await pull(nc, "ORDERS", "MAP", { batch: 5, expires: 300e6 }, 2000, false);
  return { got: got.map((m) => m.seq || m.status),
    num_ack_pending: (await jsm.consumers.info("ORDERS", "MAP")).num_ack_pending };
});

// deliver policies, filters, headers_only
for (const [name, extra] of [["last", { deliver_policy: "last" }], ["new", { deliver_policy: "new" }],
  ["by_seq", { deliver_policy: "by_start_sequence", opt_start_seq: 8 }],
  ["last_per_subject", { deliver_policy: "last_per_subject", filter_subject: "orders.eu.*" }],
  ["filter_us", { filter_subject: "orders.us.*" }], ["headers_only", { headers_only: true }]]) {
  await step(`policy_${name}`, async () => {
    const ci = await jsm.consumers.add("ORDERS", { durable_name: `P_${name}`, ack_policy: AP.explicit, ...extra });
    const got = await pull(nc, "ORDERS", `P_${name}`, { batch: 20, expires: 300e6 }, 2000);
    return { config: cfg(ci.config), pending: ci.num_pending, got };
  });
}
await step("policy_by_time", async () => {
  const si = await jsm.streams.getMessage("ORDERS", { seq: 9 });
  const ci = await jsm.consumers.add("ORDERS", { durable_name: "P_time", ack_policy: AP.explicit,
    deliver_policy: "by_start_time", opt_start_time: si.time.toISOString ? si.time.toISOString() : si.time });
  return { pending: ci.num_pending,
    got: (await pull(nc, "ORDERS", "P_time", { batch: 20, expires: 300e6 }, 2000)).map((m) => m.seq) };
});

// the client's own pull subscriptions and consume
if (v3) {
  await step("consume", async () => {
    await jsm.consumers.add("ORDERS", { durable_name: "CONSUME", ack_policy: AP.explicit });
    const c = await js.consumers.get("ORDERS", "CONSUME");
    const it = await c.consume({ max_messages: 4 });
    const seqs = [];
    for await (const m of it) {
      seqs.push(m.seq);
      m.ack();
      if (seqs.length === 10) break;
    }
    await it.close();
    return seqs;
  });
} else {
  await step("pull_subscribe", async () => {
    const ps = await js.pullSubscribe("orders.eu.*", { config: { durable_name: "PS", ack_policy: AP.explicit } });
    const seqs = [];
    const done = (async () => {
      for await (const m of ps) {
        seqs.push(m.seq);
        m.ack();
        if (seqs.length === 5) break;
      }
    })();
    ps.pull({ batch: 3, expires: 1000 });
    await sleep(300);
    ps.pull({ batch: 3, expires: 1000 });
    await Promise.race([done, sleep(2500)]);
    ps.unsubscribe();
    return { seqs, config: cfg((await jsm.consumers.info("ORDERS", "PS")).config) };
  });
}

// ---- push --------------------------------------------------------------------
await step("push_durable", async () => {
  const inbox = createInbox();
  const ci = await jsm.consumers.add("ORDERS", { durable_name: "PUSH", ack_policy: AP.explicit,
    deliver_subject: inbox, filter_subject: "orders.us.*" });
  const sub = nc.subscribe(inbox);
  const got = [];
  const done = (async () => {
    for await (const m of sub) {
      got.push(msg(m));
      m.respond(enc("+ACK"));
      if (got.length === 4) break;
    }
  })();
  await Promise.race([done, sleep(2000)]);
  sub.unsubscribe();
  await sleep(100);
  return { config: cfg(ci.config), got, state: state(await jsm.consumers.info("ORDERS", "PUSH")) };
});
await step("push_pull_request", () => pull(nc, "ORDERS", "PUSH", { batch: 1, expires: 300e6 }, 1000));
await step("push_heartbeat", async () => {
  const inbox = createInbox();
  const sub = nc.subscribe(inbox);
  await jsm.consumers.add("ORDERS", { durable_name: "HB", ack_policy: AP.explicit, deliver_subject: inbox,
    deliver_policy: "new", idle_heartbeat: 200e6, flow_control: true });
  const got = [];
  const done = (async () => {
    for await (const m of sub) {
      got.push(m.headers ? { status: m.headers.code, description: m.headers.description,
        has_last_consumer: m.headers.get("Nats-Last-Consumer") !== "" } : msg(m));
      if (got.length === 2) break;
    }
  })();
  await Promise.race([done, sleep(1500)]);
  sub.unsubscribe();
  return got.slice(0, 2);
});
if (!v3) {
  await step("js_subscribe_durable", async () => {
    const { consumerOpts } = await import("nats");
    const opts = consumerOpts();
    opts.durable("SUBD");
    opts.manualAck();
    opts.ackExplicit();
    opts.deliverTo(createInbox());
    opts.filterSubject("orders.eu.*");
    const sub = await js.subscribe("orders.eu.*", opts);
    const seqs = [];
    const done = (async () => {
      for await (const m of sub) {
        seqs.push(m.seq);
        m.ack();
        if (seqs.length === 5) break;
      }
    })();
    await Promise.race([done, sleep(2000)]);
    return seqs;
  });
  await step("js_subscribe_queue", async () => {
    const { consumerOpts } = await import("nats");
    const inbox = createInbox();
    const subs = [];
    for (let i = 0; i < 2; i++) {
      const opts = consumerOpts();
      opts.durable("QG");
      opts.queue("workers");
      opts.manualAck();
      opts.ackExplicit();
      opts.deliverTo(inbox);
      opts.filterSubject("orders.eu.*");
      subs.push(await js.subscribe("orders.eu.*", opts));
    }
    const seqs = [];
    const done = subs.map((sub) => (async () => {
      for await (const m of sub) {
        seqs.push(m.seq);
        m.ack();
      }
    })());
    await sleep(1000);
    subs.forEach((sub) => sub.unsubscribe());
    await Promise.all(done);
    const ci = await jsm.consumers.info("ORDERS", "QG");
    return { seqs: seqs.sort((a, b) => a - b), deliver_group: ci.config.deliver_group };
  });
  await step("js_subscribe_ordered", async () => {
    const { consumerOpts } = await import("nats");
    const opts = consumerOpts();
    opts.orderedConsumer();
    const sub = await js.subscribe("orders.us.*", opts);
    const seqs = [];
    const done = (async () => {
      for await (const m of sub) {
        seqs.push(m.seq);
        if (seqs.length === 5) break;
      }
    })();
    await Promise.race([done, sleep(2000)]);
    sub.unsubscribe();
    return seqs;
  });
}

// ---- a workqueue stream -------------------------------------------------------
await step("wq_stream", async () => (await jsm.streams.add({ name: "WQ", subjects: ["wq.>"],
  retention: "workqueue" })).config.retention);
await step("wq_ack_none", () => jsm.consumers.add("WQ", { durable_name: "N", ack_policy: AP.none }));
await step("wq_first", async () => cfg((await jsm.consumers.add("WQ", { durable_name: "A", ack_policy: AP.explicit,
  filter_subject: "wq.a.*" })).config));
await step("wq_overlap", () => jsm.consumers.add("WQ", { durable_name: "B", ack_policy: AP.explicit,
  filter_subject: "wq.>" }));
await step("wq_unfiltered", () => jsm.consumers.add("WQ", { durable_name: "C", ack_policy: AP.explicit }));
await step("wq_deliver_new", () => jsm.consumers.add("WQ", { durable_name: "D", ack_policy: AP.explicit,
  filter_subject: "wq.d", deliver_policy: "new" }));
await step("wq_fetch_removes", async () => {
  for (let i = 1; i <= 3; i++) await js.publish(`wq.a.${i}`, enc(`job ${i}`));
  const got = await fetch(js, "WQ", "A", { batch: 2, expires: 1000 });
  await sleep(100);
  const st = (await jsm.streams.info("WQ")).state;
  return { got: got.map((m) => m.seq), messages: st.messages, first_seq: st.first_seq };
});

// ---- KV calls that read through consumers (keys, history, watch) -------------
await step("kv_through_consumers", async () => {
  let kv;
  if (v3) {
    const { Kvm } = await import("@nats-io/kv");
    kv = await new Kvm(nc).create("probe", { history: 5 });
  } else {
    kv = await js.views.kv("probe", { history: 5 });
  }
  await kv.put("a", enc("1"));
  await kv.put("b", enc("2"));
  await kv.put("a", enc("3"));
  const res = { keys: [], history: [], watch: [], keys_after_delete: [] };
  for await (const k of await kv.keys()) res.keys.push(k);
  for await (const e of await kv.history({ key: "a" })) res.history.push(`${e.operation}:${dec(e.value)}`);
  const w = await kv.watch();
  const done = (async () => {
    for await (const e of w) {
      res.watch.push(`${e.key}=${dec(e.value)}`);
      if (res.watch.length === 3) break;
    }
  })();
  await sleep(200);
  await kv.put("c", enc("4"));
  await Promise.race([done, sleep(2000)]);
  await kv.delete("b");
  for await (const k of await kv.keys()) res.keys_after_delete.push(k);
  res.keys.sort();
  res.keys_after_delete.sort();
  return res;
});

// ---- ephemerals and delete ---------------------------------------------------
await step("ephemeral", async () => {
  const ci = await jsm.consumers.add("ORDERS", { ack_policy: AP.explicit, inactive_threshold: 500e6 });
  const first = { info: info(ci), name_len_gt0: ci.name.length > 0 };
  await sleep(1500);
  let after;
  try {
    await jsm.consumers.info("ORDERS", ci.name);
    after = "still there";
  } catch (e) {
    after = { err: errCode(e) };
  }
  return { first, after };
});
await step("ephemeral_default_threshold", async () => {
  const r = await raw(nc, "$JS.API.CONSUMER.CREATE.ORDERS", { stream_name: "ORDERS", config: { ack_policy: "explicit" } });
  return { inactive_threshold: r.config.inactive_threshold, durable: r.config.durable_name || "" };
});
await step("delete_with_waiting", async () => {
  await jsm.consumers.add("ORDERS", { durable_name: "GONE", ack_policy: AP.explicit, deliver_policy: "new" });
  const p = pull(nc, "ORDERS", "GONE", { batch: 1, expires: 2000e6 }, 2500);
  await sleep(200);
  const ok = await jsm.consumers.delete("ORDERS", "GONE");
  return { ok, waiting: await p };
});
await step("delete_again", () => jsm.consumers.delete("ORDERS", "GONE"));
await step("names_final", async () => {
  const names = [];
  for await (const n of jsm.consumers.list("ORDERS")) if (n.config.durable_name) names.push(n.name);
  return names.sort();
});

process.stdout.write(JSON.stringify(out) + "\n", () => nc.close().then(() => process.exit(0)));
