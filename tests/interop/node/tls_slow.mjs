// A TLS subscriber that stops reading while another client publishes,
// for tests/tls_spec.lua.
//
//   node tls_slow.mjs PORT CA MB
//
// The subscriber (a raw TLS socket: INFO in the clear, then the handshake)
// subscribes to "slow.>" and pauses; a publisher (npm "nats", TLS)
// publishes MB megabytes there in 64 KB messages.  Then the subscriber
// reads again, to the end of its connection, and the program prints
// "closed=BOOL slow_consumer=BOOL publisher_ok=BOOL".
import net from "node:net";
import tls from "node:tls";
import fs from "node:fs";
import { connect } from "nats";

const [port, caFile, mb] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const ca = fs.readFileSync(caFile);
const timer = setTimeout(() => { console.log("error TIMEOUT"); process.exit(0); }, 60000);

function subscriber() {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1");
    let buf = "";
    sock.on("error", reject);
    sock.on("data", function onData(d) {
      buf += d.toString("latin1");
      if (!buf.includes("\r\n")) return;
      sock.removeListener("data", onData);
      sock.pause();
      const t = tls.connect({ socket: sock, ca, servername: "localhost" });
      t.on("error", () => {});
      t.on("secureConnect", () => {
        let got = "";
        const onReply = (d) => {
          got += d.toString("latin1");
          if (got.includes("PONG\r\n")) { t.removeListener("data", onReply); t.pause(); resolve(t); }
        };
        t.on("data", onReply);
        t.write("CONNECT {\"verbose\":false}\r\nSUB slow.> 1\r\nPING\r\n");
      });
    });
  });
}

const sub = await subscriber();
let publisherOk = true;
try {
  const nc = await connect({ servers: `127.0.0.1:${port}`, tls: { caFile }, reconnect: false });
  const payload = new Uint8Array(64 * 1024);
  for (let i = 0; i < mb * 16; i++) {
    nc.publish("slow.x", payload);
    if (i % 64 === 0) await nc.flush();
  }
  await nc.flush();
  await nc.close();
} catch (e) {
  publisherOk = false;
}
let tail = "";
let closed = false;
sub.on("data", (d) => { tail = (tail + d.toString("latin1")).slice(-4096); });
sub.on("close", () => { closed = true; });
sub.resume();
await new Promise((r) => { if (closed) r(); else sub.on("close", r); setTimeout(r, 20000); });
clearTimeout(timer);
console.log(`closed=${closed} slow_consumer=${tail.includes("-ERR 'Slow Consumer'")} publisher_ok=${publisherOk}`);
process.exit(0);
