// A TCP proxy on 127.0.0.1:LISTEN to 127.0.0.1:TARGET that, on the
// connections made in its first AFTER ms, once they are AFTER ms old, drops
// every message (MSG, HMSG) the target sends whose subject starts with
// PREFIX ("" for all; JetStream's deliveries carry their own subject, not
// the inbox's), and passes the rest (INFO, PING, PONG, +OK, -ERR, other
// messages): a connection whose pings are answered while its answers never
// come.  Later connections pass everything.  Prints "ready" when it listens, "muted N" as it drops.
// Usage: node mute_proxy.mjs LISTEN TARGET AFTER PREFIX
import net from "node:net";

const [listen, target, after] = process.argv.slice(2, 5).map(Number);
const prefix = process.argv[5];
const started = Date.now();
let dropped = 0;

// Splits buf into whole protocol units; returns [units, rest].
function units(buf) {
  const out = [];
  let at = 0;
  for (;;) {
    const eol = buf.indexOf("\r\n", at);
    if (eol < 0) break;
    const line = buf.subarray(at, eol).toString("latin1");
    let end = eol + 2;
    const m = /^(H?MSG) (\S+) \S+(?: \S+)?(?: \d+)? (\d+)$/.exec(line);
    if (m) {
      end = eol + 2 + Number(m[3]) + 2;
      if (end > buf.length) break;
    }
    out.push({ subject: m ? m[2] : null, bytes: buf.subarray(at, end) });
    at = end;
  }
  return [out, buf.subarray(at)];
}

net.createServer((down) => {
  const muting = Date.now() - started < after;
  const born = Date.now();
  const up = net.connect(target, "127.0.0.1");
  let rest = Buffer.alloc(0);
  up.on("data", (chunk) => {
    const [list, left] = units(Buffer.concat([rest, chunk]));
    rest = left;
    for (const u of list) {
      if (muting && Date.now() - born >= after && u.subject && u.subject.startsWith(prefix)) {
        if (++dropped % 50 === 1) console.log("muted", dropped);
        continue;
      }
      if (!down.destroyed) down.write(u.bytes);
    }
  });
  down.on("data", (chunk) => { if (!up.destroyed) up.write(chunk); });
  const end = () => { up.destroy(); down.destroy(); };
  up.on("error", end);
  down.on("error", end);
  up.on("close", end);
  down.on("close", end);
}).listen(listen, "127.0.0.1", () => console.log("ready"));
