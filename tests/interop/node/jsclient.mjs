// jsclient.mjs - what the JetStream comparison programs (jsapi.mjs,
// jscons.mjs, kv.mjs, obj.mjs) share: their command line
// "<port> [--v3]" with a global timeout, the nats.js client of either major
// version, and the steps that record what the server answered.

// The port and --v3 of "node <script> <port> [--v3]" (else the usage and
// exit status 2), and a timer that prints bail() as JSON and exits 2 once
// timeoutMs have passed.
export function parseArgs(script, timeoutMs, bail = () => ({ bail: "global timeout" })) {
  const port = Number(process.argv[2]);
  const v3 = process.argv[3] === "--v3";
  if (!Number.isInteger(port) || port <= 0 || port > 65535 || (process.argv.length > 3 && !v3)) {
    console.error(`usage: node ${script} <port> [--v3]`);
    process.exit(2);
  }
  setTimeout(() => {
    process.stdout.write(JSON.stringify(bail()) + "\n", () => process.exit(2));
  }, timeoutMs).unref();
  return { port, v3 };
}

// The client: nats.js v2 (package "nats"), or with v3 the v3 packages
// (@nats-io/transport-node and @nats-io/jetstream; @nats-io/kv and
// @nats-io/obj when a bucket or an object store is first opened).
// bucketOf and storeOf create the bucket or store, or bind to it.
export async function loadClient(v3) {
  if (v3) {
    const core = await import("@nats-io/transport-node");
    const jsmod = await import("@nats-io/jetstream");
    return {
      connect: core.connect,
      headers: core.headers,
      createInbox: core.createInbox,
      managerOf: (nc) => jsmod.jetstreamManager(nc),
      jetstreamOf: (nc) => jsmod.jetstream(nc),
      bucketOf: async (nc, name, opts) => new (await import("@nats-io/kv")).Kvm(nc).create(name, opts),
      storeOf: async (nc, name, opts) => new (await import("@nats-io/obj")).Objm(nc).create(name, opts),
    };
  }
  const nats = await import("nats");
  return {
    connect: nats.connect,
    headers: nats.headers,
    createInbox: nats.createInbox,
    managerOf: (nc) => nc.jetstreamManager(),
    jetstreamOf: (nc) => nc.jetstream(),
    bucketOf: (nc, name, opts) => nc.jetstream().views.kv(name, opts),
    storeOf: (nc, name, opts) => nc.jetstream().views.os(name, opts),
  };
}

// What an error says: its JetStream err_code, else its message.
export function errCode(e) {
  if (e && e.api_error && e.api_error.err_code) return e.api_error.err_code;
  if (e && typeof e.code === "number") return e.code; // v3's JetStreamApiError
  const m = /err_code[=: ]+(\d+)/.exec(String(e && e.message));
  if (m) return Number(m[1]);
  return `error: ${e && (e.code || e.message)}`;
}

// step(name, fn) for a program: out[name] becomes fn's result, or
// {err: code(e)} when it threw.
export function stepsInto(out, code = errCode) {
  return async function step(name, fn) {
    try {
      out[name] = await fn();
    } catch (e) {
      out[name] = { err: code(e) };
    }
  };
}
