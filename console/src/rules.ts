// The Rules view: forms that start a shadow or a canary of a candidate on
// the node (POST /api/rules/shadow, /api/rules/canary), the running
// shadow's diff with Promote / Stop or the running canary's state with
// Finish / Stop (GET /api/rules/diff), the revision history with a
// Rollback button for each revision that is not live (GET
// /api/rules/history), the reload history (GET /api/reloads) and the rules
// of the current generation with their counters (from /api/flow).
import { ApiError, Flow, getJSON, postJSON, setStatus } from "./api";
import { h, table } from "./dom";

interface Reload {
  time: string;
  generation: number;
  ok: boolean;
  error?: string;
}

interface Revision {
  rev: number;
  hash: string;
  files: string[];
  at: string;
  by: string;
  state: string;
  reason: string;
  cause: string;
}

interface History {
  live: number;
  revisions: Revision[];
}

interface Sample {
  kinds: string[];
  subject: string;
  live: string[];
  candidate: string[];
}

interface Side {
  events: number;
  dead_letters: number;
}

interface Diff {
  mode: "shadow" | "canary";
  path: string;
  percent?: number;
  key?: string;
  max_error_rate?: number;
  window?: number;
  live?: Side;
  candidate?: Side;
  since: string;
  events: number;
  differ: number;
  kinds: Record<string, number>;
  rules: Record<string, number>;
  samples: Sample[];
}

type Act = (path: string, body: unknown) => void;

const baseName = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const lines = (l: string[]) => h("pre", {}, l.join("\n"));

function button(id: string, text: string, onClick: () => void, attrs: Record<string, string> = {}): HTMLButtonElement {
  const b = h("button", { type: "button", id, ...attrs }, text);
  b.addEventListener("click", onClick);
  return b;
}

function diffView(d: Diff, act: Act): HTMLElement {
  const kinds = Object.entries(d.kinds).filter(([, n]) => n > 0);
  const rules = Object.entries(d.rules).map(([r, n]) => [h("code", {}, r), String(n)]);
  const differ = h("strong", { id: "shadow-differ" }, String(d.differ));
  const summary = kinds.length ? ` (${kinds.map(([k, n]) => `${k} ${n}`).join(", ")})` : "";
  return h(
    "div",
    {},
    h("p", {}, "Shadow of ", h("code", {}, d.path), ` since ${d.since}: ${d.events} events, `, differ, ` differ${summary}.`),
    h(
      "p",
      {},
      button("shadow-promote", "Promote", () => act("/api/rules/promote", {})),
      " ",
      button("shadow-stop", "Stop", () => act("/api/rules/stop", {})),
    ),
    rules.length ? table(["rule", "differing events"], rules, "Differing events by the rule that decided them") : null,
    d.samples.length
      ? table(
          ["subject", "kinds", "live", "candidate"],
          d.samples.map((s) => [s.subject, s.kinds.join(", "), lines(s.live), lines(s.candidate)]),
          `The first ${d.samples.length} differing events`,
        )
      : null,
  );
}

function canaryView(d: Diff, act: Act): HTMLElement {
  const sides = (["live", "candidate"] as const).map((k) => {
    const x = d[k] ?? { events: 0, dead_letters: 0 };
    return [k, h("span", { id: `canary-events-${k}` }, String(x.events)), h("span", { id: `canary-dead-${k}` }, String(x.dead_letters))];
  });
  return h(
    "div",
    {},
    h(
      "p",
      {},
      "Canary of ",
      h("code", {}, d.path),
      ` since ${d.since}: `,
      h("strong", { id: "canary-percent" }, `${d.percent}%`),
      " of the events go through it for real, by ",
      h("code", {}, d.key ?? "id"),
      `; rolled back by itself when its dead-letter rate is ${((d.max_error_rate ?? 0) * 100).toFixed(1)} points over the live rules' in a ${d.window}s window.`,
    ),
    h(
      "p",
      {},
      button("canary-finish", "Finish (100%)", () => act("/api/rules/canary", { percent: 100 })),
      " ",
      button("shadow-stop", "Stop", () => act("/api/rules/stop", {})),
    ),
    table(["side", "events", "dead letters"], sides, "Events by side"),
  );
}

// A labelled input for the start forms.
function field(id: string, label: string, attrs: Record<string, string>): HTMLElement[] {
  return [h("label", { for: id }, label), h("input", { id, autocomplete: "off", spellcheck: "false", ...attrs })];
}

const valueOf = (root: HTMLElement, id: string) => (root.querySelector(`#${id}`) as HTMLInputElement).value.trim();

// The forms that start a candidate; they stay as typed while the state
// above them refreshes.
function startForms(act: Act): HTMLElement {
  const shadow = h(
    "form",
    { class: "stack", id: "shadow-form" },
    ...field("shadow-path", "Candidate (an entry file or directory on the node; relative: from the entry file's directory)", {
      placeholder: "candidate",
    }),
    h("div", {}, h("button", { type: "submit", id: "shadow-start" }, "Start shadow")),
  );
  shadow.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("/api/rules/shadow", { path: valueOf(shadow, "shadow-path") });
  });
  const canary = h(
    "form",
    { class: "stack", id: "canary-form" },
    ...field("canary-path", "Candidate", { placeholder: "candidate" }),
    ...field("canary-share", "Percent of the events (0 to 100)", { type: "number", min: "0", max: "100", step: "any", value: "10" }),
    ...field("canary-key", "Key (a dotted path into the event)", { placeholder: "id" }),
    ...field("canary-rate", "Max error rate (a fraction: 0.01 is one point)", { type: "number", min: "0", max: "1", step: "any", value: "0.01" }),
    ...field("canary-window", "Window (seconds)", { type: "number", min: "1", step: "any", value: "60" }),
    h(
      "div",
      {},
      h("button", { type: "submit", id: "canary-start" }, "Start canary"),
      " ",
      button("canary-set", "Set the running canary's percent", () => {
        act("/api/rules/canary", { percent: Number(valueOf(canary, "canary-share")) });
      }),
    ),
  );
  canary.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = valueOf(canary, "canary-key");
    act("/api/rules/canary", {
      path: valueOf(canary, "canary-path"),
      percent: Number(valueOf(canary, "canary-share")),
      ...(key ? { key } : {}),
      max_error_rate: Number(valueOf(canary, "canary-rate")),
      window: Number(valueOf(canary, "canary-window")),
    });
  });
  return h(
    "div",
    { id: "rules-start" },
    h("p", { class: "hint" }, "Starting a shadow or a canary replaces the one running."),
    h("h3", {}, "Shadow"),
    shadow,
    h("h3", {}, "Canary"),
    canary,
  );
}

function historyView(hist: History, act: Act): HTMLElement {
  const rows = hist.revisions.map((r) => [
    r.rev === hist.live ? `*${r.rev}` : String(r.rev),
    h("code", {}, r.hash),
    h("span", { title: r.files.join("\n") }, r.files.map(baseName).join(", ")),
    r.at,
    r.by || "-",
    r.state,
    r.reason,
    r.rev === hist.live || r.cause === "shadow" || r.cause === "canary" // a candidate's entry keeps no files
      ? ""
      : button(`rollback-${r.rev}`, "Rollback", () => act("/api/rules/rollback", { rev: r.rev }), {
          "data-rev": String(r.rev),
        }),
  ]);
  return table(["rev", "hash", "files", "at", "by", "state", "reason", ""], rows, `Revision ${hist.live} is live`);
}

export function mountRules(root: HTMLElement): () => void {
  const shadow = h("div", { id: "rules-shadow" });
  const note = h("p", { id: "rules-note", role: "status" });
  const revs = h("div", { id: "rules-history" });
  const hist = h("div");
  const rules = h("div");
  let gone = false;

  const act: Act = async (path, body) => {
    try {
      const a = await postJSON<Partial<Diff>>(path, body);
      note.textContent = a.mode ? `${a.mode} of ${a.path} running` : `${baseName(path)}: ${JSON.stringify(a)}`;
    } catch (e) {
      note.replaceChildren(h("span", { class: "error" }, `${baseName(path)}: ${(e as Error).message}`));
    }
    await load();
  };

  root.append(h("h2", {}, "Shadow or canary"), shadow, note, h("h2", {}, "Start a candidate"), startForms(act),
    h("h2", {}, "Revisions"), revs, h("h2", {}, "Reloads"), hist, h("h2", {}, "Rules"), rules);

  async function loadDeploys() {
    try {
      const d = await getJSON<Diff>("/api/rules/diff");
      shadow.replaceChildren(d.mode === "canary" ? canaryView(d, act) : diffView(d, act));
    } catch (e) {
      const none = e instanceof ApiError && e.status === 409;
      shadow.replaceChildren(
        none
          ? h("p", {}, "No shadow or canary is running (start one below, or with ", h("code", {}, "tide rules shadow PATH"), ").")
          : h("p", { class: "error" }, (e as Error).message),
      );
    }
    try {
      revs.replaceChildren(historyView(await getJSON<History>("/api/rules/history"), act));
    } catch (e) {
      revs.replaceChildren(h("p", { class: "error" }, (e as Error).message));
    }
  }

  async function load() {
    if (gone) return;
    await loadDeploys();
    try {
      const [r, f] = await Promise.all([getJSON<{ generation: number; reloads: Reload[] }>("/api/reloads"), getJSON<Flow>("/api/flow")]);
      hist.replaceChildren(
        table(
          ["time", "generation", "result"],
          r.reloads
            .slice()
            .reverse()
            .map((x) => [x.time, String(x.generation), x.ok ? "ok" : h("span", { class: "error" }, x.error || "failed")]),
          `Generation ${r.generation} serves now`,
        ),
      );
      const rows = f.nodes
        .filter((n) => n.id.startsWith("rule:"))
        .map((n) => [n.kind, n.label, h("code", {}, String(n.where ?? "")), String(n.calls ?? 0), String(n.errors ?? 0), String(n.dropped ?? "")]);
      rules.replaceChildren(table(["kind", "rule", "where", "calls", "errors", "dropped"], rows, `${rows.length} rules`));
      setStatus("");
    } catch (e) {
      hist.replaceChildren(h("p", { class: "error" }, (e as Error).message));
    }
  }

  load();
  // The diff grows while the shadow runs: refreshed every two seconds.
  const timer = window.setInterval(() => {
    if (!gone) loadDeploys();
  }, 2000);
  return () => {
    gone = true;
    window.clearInterval(timer);
  };
}
