// The console end to end, in Debian's chromium driven by playwright-core:
//   node tests/console/e2e.mjs NATS_PORT HTTP_BASE SHOTS_DIR ORDERS_BASE
// against a tide serving examples/tour (with a stream for its dead
// letters) and one serving examples/order-filter with its candidate
// shadowing it (ORDERS_BASE, 3 events seen: 2 differ), started by
// tests/console_browser_spec.lua.  Prints one line per
// check ("ok - ..."), and exits 1 at the first that fails.
import net from "node:net";
import { pathToFileURL } from "node:url";

const [natsPort, base, shots, orders] = process.argv.slice(2);
const root = new URL("../..", import.meta.url).pathname;
const { chromium } = await import(pathToFileURL(root + "console/node_modules/playwright-core/index.mjs").href);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, what) {
  if (!cond) throw new Error("not ok - " + what);
  console.log("ok - " + what);
}
async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("not ok - " + what + " (timed out)");
    await sleep(150);
  }
}
const api = async (path) => (await fetch(base + path)).json();
const api2 = async (path) => (await fetch(orders + path)).json();

// One NATS publish without a CloudEvents id: the tour's payment handler
// raises on it, so it becomes a dead letter.
function natsPublish(subject, payload) {
  return new Promise((resolve, reject) => {
    const s = net.connect(+natsPort, "127.0.0.1");
    let got = "";
    s.on("data", (d) => {
      got += d;
      if (got.includes("PONG")) {
        s.end();
        resolve();
      }
    });
    s.on("error", reject);
    s.write(`CONNECT {"verbose":false}\r\nPUB ${subject} ${Buffer.byteLength(payload)}\r\n${payload}\r\nPING\r\n`);
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const outside = [];
  ctx.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith(orders) && !r.url().startsWith("data:")) outside.push(r.url());
  });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // Flow: every rule of the entry file is a node, with its label.
  await page.goto(base + "/#/flow");
  await page.waitForSelector("svg g.node");
  const rules = await api("/v1/rules");
  const flow = await api("/api/flow");
  const shown = await page.$$eval("svg g.node", (gs) => gs.map((g) => ({ id: g.dataset.id, label: g.querySelector(".label").textContent })));
  for (let i = 0; i < rules.length; i++) {
    const node = flow.nodes.find((n) => n.id === "rule:" + i);
    const s = shown.find((x) => x.id === "rule:" + i);
    check(node && s && s.label === node.label && s.label.includes(rules[i].pattern || rules[i].type), `the graph shows rule ${i} (${s && s.label})`);
  }
  check(rules.length === 6, "the tour has 6 rules");
  await page.screenshot({ path: `${shots}/console-flow.png` });

  // Rates rise while a publisher runs, and fall to zero after.
  const rateSel = 'text.rate[data-from="subject:order.created"][data-to="rule:2"]';
  let stop = false;
  const publisher = (async () => {
    while (!stop) {
      await Promise.all(
        Array.from({ length: 5 }, () =>
          fetch(base + "/v1/publish/order.created", { method: "POST", headers: { "Content-Type": "application/json" }, body: '{"amount":150}' }),
        ),
      );
      await sleep(40);
    }
  })();
  const risen = await until(async () => {
    const t = await page.textContent(rateSel);
    return t !== "0/s" && t;
  }, 8000, "the rate into the filter rises while events come");
  check(true, `the rate into the filter rose to ${risen}`);
  check(await page.$eval(rateSel, (t) => t.classList.contains("live")), "a live edge is drawn as live");
  await page.screenshot({ path: `${shots}/console-flow-live.png` });
  stop = true;
  await publisher;
  await until(async () => (await page.textContent(rateSel)) === "0/s", 10000, "the rate falls to zero after the publisher stops");
  check(true, "the rate fell to 0/s");

  // A rule's details, chosen with the keyboard.
  await page.focus('g.node[data-id="rule:2"]');
  await page.keyboard.press("Enter");
  const where = await page.textContent('.details dd[data-field="where"]');
  check(where && where.includes("order-filter/rules.lua:4"), `Enter on the filter shows its file:line (${where})`);
  const here = await until(async () => page.textContent(".details pre.source .here").catch(() => null), 5000, "the filter's source shows");
  check(here.includes('filter("order.created"'), `its source excerpt marks its line (${here.trim()})`);

  // Tail in one page, Trace publishing from another: the event shows in
  // the tail, and its trace has the filter's decision.
  const tail = await ctx.newPage();
  await tail.goto(base + "/#/tail/" + encodeURIComponent("order.>"));
  await tail.waitForFunction(() => document.querySelector("#tail-info")?.textContent?.startsWith("Following"));
  await sleep(300);
  await page.goto(base + "/#/trace");
  await page.fill("#trace-subject", "order.created");
  await page.fill("#trace-data", '{"amount": 777, "from": "the console"}');
  await page.click("text=Publish and trace");
  const trace = await until(async () => {
    const t = await page.textContent("#trace-out");
    return t && t.includes("filter") && t;
  }, 5000, "the trace answers");
  check(/filter\s+order\.created\s+\S+rules\.lua:4\s+kept/.test(trace), "the trace shows the filter keeping the event");
  check(/route\s+order\.created/.test(trace), "the trace shows the route");
  await page.screenshot({ path: `${shots}/console-trace.png` });
  await until(async () => (await tail.textContent("#tail-events")).includes('"the console"'), 5000, "the published event appears in the tail");
  check(true, "the event published from the page is in the tail");
  await tail.click("#tail-pause");
  check((await tail.getAttribute("#tail-pause", "aria-pressed")) === "true", "the tail pauses");
  await tail.screenshot({ path: `${shots}/console-tail.png` });
  await tail.close();

  // A dead letter replayed from the page.
  await natsPublish("payment.authorized", '{"data":{"payment_id":"p1","amount":5}}');
  await until(async () => (await api("/api/dlq?stream=dead")).dead_letters.length > 0, 5000, "the failed event is dead-lettered");
  const callsBefore = (await api("/api/flow")).nodes.find((n) => n.id === "rule:5").calls;
  await page.goto(base + "/#/streams/dead");
  await page.waitForSelector("#dlq-list button[data-seq]");
  await page.click("text=Show messages");
  await page.waitForSelector("#ev-list table");
  check((await page.textContent("#ev-list")).includes("payment.authorized"), "the stream's messages can be browsed");
  await page.screenshot({ path: `${shots}/console-streams.png`, fullPage: true });
  await page.click("#dlq-list button[data-seq]");
  const note = await until(async () => {
    const t = await page.textContent("#dlq-note");
    return t && t.startsWith("Replayed") && t;
  }, 5000, "the replay answers");
  check(note.includes('"replayed":1'), `the dead letter was replayed (${note})`);
  await until(async () => (await api("/api/flow")).nodes.find((n) => n.id === "rule:5").calls === callsBefore + 1, 5000, "the replay reaches the handler again");
  check(true, "the replayed event reached its handler again");

  // Rules: the reload history.
  await page.goto(base + "/#/rules");
  await page.waitForSelector("table");
  check((await page.textContent("main")).includes("Generation 1 serves now"), "the rules view shows the generation serving");
  await page.screenshot({ path: `${shots}/console-rules.png` });

  // Rules on examples/order-filter: the shadow's diff, Promote, Rollback.
  await page.goto(orders + "/#/rules");
  await page.waitForSelector("#shadow-differ");
  check((await page.textContent("#shadow-differ")) === "2", "the rules view shows the shadow's 2 differing events");
  check((await page.textContent("#rules-shadow")).includes("dropped by rules.lua:5"), "the diff shows the samples side by side");
  await page.screenshot({ path: `${shots}/console-rules-shadow.png`, fullPage: true });
  await page.click("#shadow-promote");
  // rev 2 is the shadow's own entry; the promoted rules are rev 3.
  await until(async () => (await page.textContent("#rules-history caption")) === "Revision 3 is live", 5000, "Promote makes rev 3 live");
  check((await api2("/api/rules/history")).live === 3, "Promote made the candidate live (history: rev 3)");
  check((await page.$('#rules-history button[data-rev="2"]')) === null, "a shadow's entry has no Rollback button");
  check((await page.textContent("#rules-shadow")).includes("No shadow is running"), "the shadow ended");
  await page.click('#rules-history button[data-rev="1"]');
  await until(async () => (await page.textContent("#rules-history caption")) === "Revision 1 is live", 5000, "Rollback makes rev 1 live");
  check((await api2("/api/rules/history")).live === 1, "Rollback from the page restored revision 1");

  // A phone: no sideways scroll in any view.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 1 });
  const p2 = await phone.newPage();
  for (const v of ["flow", "tail", "trace", "streams/dead", "rules"]) {
    await p2.goto(base + "/#/" + v);
    await p2.waitForTimeout(600);
    const [sw, cw] = await p2.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    check(sw <= cw, `#/${v} at 390 px: no sideways scroll (${sw} <= ${cw})`);
    if (v === "flow") await p2.screenshot({ path: `${shots}/console-phone.png` });
  }
  await phone.close();
  check(outside.length === 0, "no request left the node: " + outside.join(" "));
  check(errors.length === 0, "no script error: " + errors.join(" | "));
} catch (e) {
  failed = true;
  console.log(e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
