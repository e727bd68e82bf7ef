// NATS connect rate over TLS (run by scripts/bench-tls.sh):
//
//   node bench/tls_connect.mjs PORT CA N CONCURRENCY
//
// Makes N connections to 127.0.0.1:PORT, CONCURRENCY of them in flight at
// any time; each reads the server's INFO line in the clear, makes the TLS
// handshake (trusting the CA file; "-": no TLS), sends CONNECT and PING,
// waits for the PONG and closes.  Prints
// "RESULT tls_connect n=.. ok=.. secs=.. rate=.." (connections/s that got
// their PONG).  Each connection is given 30 s; the run ends within N / 10 +
// 60 s.
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";

const [port, caFile, n, conc] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4]),
                                 Number(process.argv[5])];
const ca = caFile === "-" ? null : fs.readFileSync(caFile);

function one() {
  return new Promise((resolve) => {
    const raw = net.connect(port, "127.0.0.1");
    raw.setNoDelay(true);
    let sock = raw, buf = "", state = "info";
    const timer = setTimeout(() => done(false), 30000);
    function done(ok) {
      clearTimeout(timer);
      sock.destroy();
      raw.destroy();
      resolve(ok);
    }
    function onData(d) {
      buf += d.toString("latin1");
      if (state === "info") {
        if (!buf.includes("\r\n")) return;
        buf = "";
        state = "pong";
        if (ca) {
          raw.removeListener("data", onData);
          sock = tls.connect({ socket: raw, ca, servername: "localhost" });
          sock.on("error", () => done(false));
          sock.on("data", onData);
          sock.on("secureConnect", () => sock.write('CONNECT {"verbose":false}\r\nPING\r\n'));
        } else {
          sock.write('CONNECT {"verbose":false}\r\nPING\r\n');
        }
        return;
      }
      if (buf.includes("PONG\r\n")) done(true);
      else if (buf.includes("-ERR")) done(false);
    }
    raw.on("data", onData);
    raw.on("error", () => done(false));
  });
}

const deadline = setTimeout(() => { console.log("ERROR tls_connect TIMEOUT"); process.exit(1); }, (n / 10 + 60) * 1000);
let started = 0, ok = 0;
const t0 = process.hrtime.bigint();
async function worker() {
  while (started < n) {
    started++;
    if (await one()) ok++;
  }
}
await Promise.all(Array.from({ length: Math.min(conc, n) }, worker));
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
clearTimeout(deadline);
console.log(`RESULT tls_connect n=${n} ok=${ok} secs=${secs.toFixed(3)} rate=${Math.round(ok / secs)}`);
