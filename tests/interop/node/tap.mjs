// tap.mjs - the check harness of the interop programs that print TAP
// (interop.mjs, js.mjs): checks with a deadline each, the nats.js v2
// connections a check opens (closed when it ends), one "ok N - name" or
// "not ok N - name # why" line a check, "1..N" at the end, and a global
// timer that ends the program ("Bail out!", exit status 2) whatever the
// server does.
import { connect } from "nats";

// A failed expectation: its message is the check's reason.
export class CheckFailed extends Error {}

export function assert(cond, why) {
  if (!cond) throw new CheckFailed(why);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// promise, or a CheckFailed "WHAT: no answer within MS ms" once ms have passed.
export function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new CheckFailed(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// An error as a check's reason: a CheckFailed's message, else the
// client's code and message.
export function describe(e) {
  if (e instanceof CheckFailed) return e.message;
  const msg = e && e.message ? e.message : String(e);
  return e && e.code && e.code !== msg ? `${e.code}: ${msg}` : msg;
}

// The harness of one run against server ("host:port"): starts the global
// timer (globalTimeoutMs) and returns
//   conn(name, extra)  a connection (no reconnects; extra: more connect
//                      options) that the running check owns
//   check(name, fn)    runs fn within checkTimeoutMs, prints its TAP line
//                      and closes the connections it opened
//   keepOpen()         the connections opened so far are no check's (they
//                      stay open)
//   finish()           prints "1..N" and exits, 0 when every check passed
export function startChecks({ server, globalTimeoutMs, checkTimeoutMs, connectTimeoutMs }) {
  const globalTimer = setTimeout(() => {
    process.stdout.write("Bail out! global timeout: the checks did not finish in time\n", () =>
      process.exit(2),
    );
    setTimeout(() => process.exit(2), 500).unref();
  }, globalTimeoutMs);
  let num = 0;
  let failed = 0;
  let open = []; // the connections of the running check

  async function conn(name, extra = {}) {
    const nc = await withTimeout(
      connect({
        servers: server,
        name,
        timeout: connectTimeoutMs,
        reconnect: false,
        maxReconnectAttempts: 0,
        ...extra,
      }),
      connectTimeoutMs + 1000,
      `connect ${name}`,
    );
    open.push(nc);
    return nc;
  }

  async function check(name, fn) {
    open = [];
    let reason = null;
    try {
      await withTimeout(fn(), checkTimeoutMs, "check");
    } catch (e) {
      reason = describe(e);
    }
    const conns = open;
    open = [];
    await Promise.allSettled(conns.map((nc) => withTimeout(nc.close(), 2000, "close")));
    num++;
    if (reason === null) {
      console.log(`ok ${num} - ${name}`);
    } else {
      failed++;
      console.log(`not ok ${num} - ${name} # ${String(reason).replace(/[\r\n]+/g, " ")}`);
    }
  }

  function keepOpen() {
    open = [];
  }

  function finish() {
    console.log(`1..${num}`);
    clearTimeout(globalTimer);
    process.exitCode = failed ? 1 : 0;
    // leave no handle behind: exit once stdout is written
    process.stdout.write("", () => process.exit(failed ? 1 : 0));
  }

  return { conn, check, keepOpen, finish };
}
