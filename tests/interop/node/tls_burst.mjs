// A burst of TLS handshakes against a NATS server, for tests/tls_spec.lua.
//
//   node tls_burst.mjs PORT CA N [https]
//
// Opens N connections at once; each reads the server's INFO line in the
// clear, as NATS clients do (with "https": starts at once, as an HTTPS
// client does), then makes the TLS handshake (trusting CA) and closes.
// Prints "handshakes OK of N" and exits.
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";

const [port, caFile, n, https] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4]),
                                  process.argv[5] === "https"];
const ca = fs.readFileSync(caFile);

function one() {
  if (https) {
    return new Promise((resolve) => {
      const t = tls.connect({ port, host: "127.0.0.1", ca, servername: "localhost" });
      t.on("secureConnect", () => { t.destroy(); resolve(true); });
      t.on("error", () => resolve(false));
    });
  }
  return new Promise((resolve) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = "";
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.on("error", () => done(false));
    sock.on("data", function onData(d) {
      buf += d.toString("latin1");
      if (!buf.includes("\r\n")) return;
      sock.removeListener("data", onData);
      sock.pause();
      const t = tls.connect({ socket: sock, ca, servername: "localhost" });
      t.on("secureConnect", () => { t.destroy(); done(true); });
      t.on("error", () => done(false));
    });
  });
}

const timer = setTimeout(() => { console.log("error TIMEOUT"); process.exit(0); }, 60000);
const results = await Promise.all(Array.from({ length: n }, one));
clearTimeout(timer);
console.log(`handshakes ${results.filter(Boolean).length} of ${n}`);
