// The console end to end in a real browser:
//   node tests/console/e2e.mjs NATS_PORT HTTP_BASE SHOTS_DIR [ORDERS_BASE]
// BROWSER=chromium (the default): Debian's chromium driven by
// playwright-core, every check.  BROWSER=firefox: Debian's firefox-esr
// driven by puppeteer-core over WebDriver BiDi, the main checks (the graph,
// the rates, tail and trace, a phone's width); screenshots are named
// console-firefox-*.png.  HTTP_BASE is a tide serving examples/tour (with
// a stream for its dead letters); ORDERS_BASE (chromium) one serving
// examples/order-filter with no shadow running, for the Rules view's
// shadow, canary, Promote and Rollback.  Both are started by
// tests/console_browser_spec.lua.  Prints one line per check ("ok - ..."),
// and exits 1 at the first that fails.
import net from "node:net";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const [natsPort, base, shots, orders] = process.argv.slice(2);
const browserName = process.env.BROWSER || "chromium";
const firefox = browserName === "firefox";
const shot = (name) => `${shots}/console-${firefox ? "firefox-" : ""}${name}.png`;
const root = new URL("../..", import.meta.url).pathname;
const modules = root + "console/node_modules/";

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
const publish = (to, subject, data) =>
  fetch(to + "/v1/publish/" + subject, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

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

// The browser, with newPage(viewport) and close().  The checks use only
// what playwright's and puppeteer's pages both have ($eval, $$eval, click,
// focus, keyboard, waitForSelector, waitForFunction, screenshot, goto).
async function openBrowser() {
  if (firefox) {
    const puppeteer = createRequire(modules)("puppeteer-core");
    const b = await puppeteer.launch({
      browser: "firefox",
      executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
      headless: true,
    });
    return {
      version: await b.version(),
      async newPage(viewport) {
        const p = await b.newPage();
        await p.setViewport(viewport);
        return p;
      },
      close: () => b.close(),
    };
  }
  const { chromium } = await import(pathToFileURL(modules + "playwright-core/index.mjs").href);
  const b = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  return {
    version: "chromium/" + b.version(),
    async newPage(viewport) {
      const ctx = await b.newContext({ viewport, deviceScaleFactor: 1 });
      return ctx.newPage();
    },
    close: () => b.close(),
  };
}

const text = (p, sel) => p.$eval(sel, (e) => e.textContent).catch(() => null);
const attr = (p, sel, name) => p.$eval(sel, (e, n) => e.getAttribute(n), name);
const fill = (p, sel, value) =>
  p.$eval(
    sel,
    (e, v) => {
      e.value = v;
      e.dispatchEvent(new Event("input", { bubbles: true }));
    },
    value,
  );

const outside = [];
const errors = [];
// Notes the page's script errors and its requests to anywhere but the nodes.
function watch(p) {
  p.on("pageerror", (e) => errors.push(e.message));
  p.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(base) && !(orders && u.startsWith(orders)) && !u.startsWith("data:")) outside.push(u);
  });
  return p;
}

// Flow: every rule of the entry file is a node, with its label; the rate
// into the filter rises while a publisher runs and falls to zero after;
// Enter on a rule shows its details.
async function flowChecks(page) {
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
  await page.screenshot({ path: shot("flow") });

  const rateSel = 'text.rate[data-from="subject:order.created"][data-to="rule:2"]';
  let stop = false;
  const publisher = (async () => {
    while (!stop) {
      await Promise.all(Array.from({ length: 5 }, () => publish(base, "order.created", { amount: 150 })));
      await sleep(40);
    }
  })();
  try {
    const risen = await until(async () => {
      const t = await text(page, rateSel);
      return t !== "0/s" && t;
    }, 8000, "the rate into the filter rises while events come");
    check(true, `the rate into the filter rose to ${risen}`);
    check(await page.$eval(rateSel, (t) => t.classList.contains("live")), "a live edge is drawn as live");
    await page.screenshot({ path: shot("flow-live") });
  } finally {
    stop = true;
    await publisher;
  }
  await until(async () => (await text(page, rateSel)) === "0/s", 10000, "the rate falls to zero after the publisher stops");
  check(true, "the rate fell to 0/s");

  await page.$eval('g.node[data-id="rule:2"]', (g) => g.focus()); // an SVG element: puppeteer's focus() will not
  check(await page.evaluate(() => document.activeElement?.dataset?.id === "rule:2"), "the filter's node takes the focus");
  await page.keyboard.press("Enter");
  const where = await text(page, '.details dd[data-field="where"]');
  check(where && where.includes("order-filter/rules.lua:4"), `Enter on the filter shows its file:line (${where})`);
  const here = await until(async () => text(page, ".details pre.source .here"), 5000, "the filter's source shows");
  check(here.includes('filter("order.created"'), `its source excerpt marks its line (${here.trim()})`);
}

// Tail in one page, Trace publishing from another: the event shows in the
// tail, and its trace has the filter's decision.
async function tailAndTrace(browser, page) {
  const tail = watch(await browser.newPage({ width: 1280, height: 800 }));
  await tail.goto(base + "/#/tail/" + encodeURIComponent("order.>"));
  await tail.waitForFunction(() => document.querySelector("#tail-info")?.textContent?.startsWith("Following"));
  await sleep(300);
  await page.goto(base + "/#/trace");
  await page.waitForSelector("#trace-subject");
  await fill(page, "#trace-subject", "order.created");
  await fill(page, "#trace-data", '{"amount": 777, "from": "the console"}');
  await page.click("#trace-headers + div > button");
  const trace = await until(async () => {
    const t = await text(page, "#trace-out");
    return t && t.includes("filter") && t;
  }, 5000, "the trace answers");
  check(/filter\s+order\.created\s+\S+rules\.lua:4\s+kept/.test(trace), "the trace shows the filter keeping the event");
  check(/route\s+order\.created/.test(trace), "the trace shows the route");
  await page.screenshot({ path: shot("trace") });
  await until(async () => ((await text(tail, "#tail-events")) || "").includes('"the console"'), 5000, "the published event appears in the tail");
  check(true, "the event published from the page is in the tail");
  await tail.click("#tail-pause");
  check((await attr(tail, "#tail-pause", "aria-pressed")) === "true", "the tail pauses");
  await tail.screenshot({ path: shot("tail") });
  await tail.close();
}

// A dead letter replayed from the page, and the Rules view of the tour.
async function streamsAndRules(page) {
  await natsPublish("payment.authorized", '{"data":{"payment_id":"p1","amount":5}}');
  await until(async () => (await api("/api/dlq?stream=dead")).dead_letters.length > 0, 5000, "the failed event is dead-lettered");
  const callsBefore = (await api("/api/flow")).nodes.find((n) => n.id === "rule:5").calls;
  await page.goto(base + "/#/streams/dead");
  await page.waitForSelector("#dlq-list button[data-seq]");
  await page.click("#ev-subject + button");
  await page.waitForSelector("#ev-list table");
  check((await text(page, "#ev-list")).includes("payment.authorized"), "the stream's messages can be browsed");
  await page.screenshot({ path: shot("streams"), fullPage: true });
  await page.click("#dlq-list button[data-seq]");
  const note = await until(async () => {
    const t = await text(page, "#dlq-note");
    return t && t.startsWith("Replayed") && t;
  }, 5000, "the replay answers");
  check(note.includes('"replayed":1'), `the dead letter was replayed (${note})`);
  await until(async () => (await api("/api/flow")).nodes.find((n) => n.id === "rule:5").calls === callsBefore + 1, 5000, "the replay reaches the handler again");
  check(true, "the replayed event reached its handler again");

  await page.goto(base + "/#/rules");
  await until(async () => ((await text(page, "main")) || "").includes("Generation 1 serves now"), 5000, "the rules view loads");
  check(true, "the rules view shows the generation serving");
  await page.screenshot({ path: shot("rules") });
}

const NONE = "No shadow or canary is running";
const caption = (p) => text(p, "#rules-history caption");

// Rules on examples/order-filter: a shadow of its candidate started from
// the page, its diff, Stop; again, Promote and Rollback; then a canary
// started at 50%, its share changed, and finished.
async function deploys(page) {
  await page.goto(orders + "/#/rules");
  await page.waitForSelector("#shadow-form");
  await until(async () => ((await text(page, "#rules-shadow")) || "").includes(NONE), 5000, "the view says no shadow runs");
  await fill(page, "#shadow-path", "candidate");
  await page.click("#shadow-start");
  await until(async () => ((await text(page, "#rules-shadow")) || "").includes("Shadow of"), 5000, "the shadow started from the page shows");
  check((await api2("/api/rules/diff")).path.endsWith("/examples/order-filter/candidate"), "Start shadow started the candidate's shadow");
  for (const amount of [40, 250, 500]) await publish(orders, "order.created", { amount });
  await until(async () => (await text(page, "#shadow-differ")) === "2", 6000, "the diff shows 2 differing events");
  check(true, "the rules view shows the shadow's 2 differing events");
  check((await text(page, "#rules-shadow")).includes("dropped by rules.lua:5"), "the diff shows the samples side by side");
  await page.screenshot({ path: shot("rules-shadow"), fullPage: true });
  await page.click("#shadow-stop");
  await until(async () => ((await text(page, "#rules-shadow")) || "").includes(NONE), 5000, "Stop ends the shadow");
  check((await fetch(orders + "/api/rules/diff")).status === 409, "Stop from the page ended the shadow");

  await page.click("#shadow-start"); // the path is still typed in
  await page.waitForSelector("#shadow-promote");
  await page.click("#shadow-promote");
  // rev 2 is the stopped shadow's entry, rev 3 the promoted one's; the promoted rules are rev 4.
  await until(async () => (await caption(page)) === "Revision 4 is live", 5000, "Promote makes rev 4 live");
  check((await api2("/api/rules/history")).live === 4, "Promote made the candidate live (history: rev 4)");
  check((await page.$('#rules-history button[data-rev="2"]')) === null && (await page.$('#rules-history button[data-rev="3"]')) === null, "a shadow's entry has no Rollback button");
  check((await text(page, "#rules-shadow")).includes(NONE), "the shadow ended");
  await page.click('#rules-history button[data-rev="1"]');
  await until(async () => (await caption(page)) === "Revision 1 is live", 5000, "Rollback makes rev 1 live");
  check((await api2("/api/rules/history")).live === 1, "Rollback from the page restored revision 1");

  await fill(page, "#canary-path", "candidate");
  await fill(page, "#canary-share", "50");
  await page.click("#canary-start");
  await until(async () => (await text(page, "#canary-percent")) === "50%", 5000, "the canary started from the page shows 50%");
  const c = await api2("/api/rules/diff");
  check(c.mode === "canary" && c.percent === 50 && c.key === "id" && c.window === 60, `Start canary started it at 50% by id (${c.mode} ${c.percent}% ${c.key} ${c.window}s)`);
  for (let i = 0; i < 20; i++) await publish(orders, "order.created", { amount: 150 + i });
  const sides = await until(async () => {
    const d = await api2("/api/rules/diff");
    return d.live.events + d.candidate.events === 20 && d;
  }, 5000, "the canary saw the 20 events");
  check(sides.live.events > 0 && sides.candidate.events > 0, `both sides took events (live ${sides.live.events}, candidate ${sides.candidate.events})`);
  await until(
    async () =>
      (await text(page, "#canary-events-live")) === String(sides.live.events) &&
      (await text(page, "#canary-events-candidate")) === String(sides.candidate.events),
    5000,
    "the page shows the events of each side",
  );
  check(true, "the page shows the events of each side");
  await page.screenshot({ path: shot("rules-canary"), fullPage: true });
  await fill(page, "#canary-share", "20");
  await page.click("#canary-set");
  await until(async () => (await text(page, "#canary-percent")) === "20%", 5000, "Set changes the canary's share to 20%");
  check((await api2("/api/rules/diff")).percent === 20, "the canary's share is 20% now");
  await page.click("#canary-finish");
  await until(async () => ((await text(page, "#rules-shadow")) || "").includes(NONE), 5000, "Finish ends the canary");
  const hist = await api2("/api/rules/history");
  const finished = hist.revisions.filter((r) => r.state === "promoted").sort((x, y) => y.rev - x.rev)[0]; // the canary's, after the shadow's
  check(hist.live > 2 && finished && finished.files[0].endsWith("/candidate"), `Finish made the candidate live (rev ${hist.live}, ${finished && finished.reason})`);
  await until(async () => (await caption(page)) === `Revision ${hist.live} is live`, 5000, "the history shows the new live revision");
  check(true, "the canary was finished from the page");
}

// A phone: no sideways scroll in any view.
async function phoneChecks(browser) {
  const p2 = watch(await browser.newPage({ width: 390, height: 844 }));
  for (const v of ["flow", "tail", "trace", "streams/dead", "rules"]) {
    await p2.goto(base + "/#/" + v);
    await sleep(600);
    const [sw, cw] = await p2.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    check(sw <= cw, `#/${v} at 390 px: no sideways scroll (${sw} <= ${cw})`);
    if (v === "flow") await p2.screenshot({ path: shot("phone") });
  }
  await p2.close();
}

const browser = await openBrowser();
let failed = false;
try {
  console.log(`# ${browser.version}`);
  const page = watch(await browser.newPage({ width: 1280, height: 800 }));
  await flowChecks(page);
  await tailAndTrace(browser, page);
  if (!firefox) {
    await streamsAndRules(page);
    await deploys(page);
  }
  await phoneChecks(browser);
  check(outside.length === 0, "no request left the node: " + outside.join(" "));
  check(errors.length === 0, "no script error: " + errors.join(" | "));
} catch (e) {
  failed = true;
  console.log(e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
