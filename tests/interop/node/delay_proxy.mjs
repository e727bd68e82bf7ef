// A TCP proxy on 127.0.0.1:LISTEN to 127.0.0.1:TARGET that holds what the
// target sends back for DELAY ms once a connection is AFTER ms old (so a
// client's handshake goes through at once, and every answer after it
// comes late), in order.  Prints "ready" when it listens; runs until
// killed.  Usage: node delay_proxy.mjs LISTEN TARGET DELAY AFTER
import net from "node:net";

const [listen, target, delay, after] = process.argv.slice(2).map(Number);

const server = net.createServer((down) => {
  const born = Date.now();
  const up = net.connect(target, "127.0.0.1");
  let last = 0; // when the previous chunk goes out: chunks keep their order
  up.on("data", (chunk) => {
    const now = Date.now();
    const at = Math.max(now - born < after ? now : now + delay, last);
    last = at;
    setTimeout(() => { if (!down.destroyed) down.write(chunk); }, at - now);
  });
  down.on("data", (chunk) => { if (!up.destroyed) up.write(chunk); });
  const end = () => { up.destroy(); down.destroy(); };
  up.on("error", end);
  down.on("error", end);
  up.on("close", () => setTimeout(end, delay + 10));
  down.on("close", end);
});
server.listen(listen, "127.0.0.1", () => console.log("ready"));
