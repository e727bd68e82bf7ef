// The Rules view: the running shadow's diff with Promote / Stop
// (GET /api/rules/diff), the revision history with a Rollback button for
// each revision that is not live (GET /api/rules/history), the reload
// history (GET /api/reloads) and the rules of the current generation with
// their counters (from /api/flow).
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

interface Diff {
  path: string;
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
  root.append(h("h2", {}, "Shadow"), shadow, note, h("h2", {}, "Revisions"), revs, h("h2", {}, "Reloads"), hist,
    h("h2", {}, "Rules"), rules);
  let gone = false;

  const act: Act = async (path, body) => {
    try {
      note.textContent = `${baseName(path)}: ${JSON.stringify(await postJSON<unknown>(path, body))}`;
    } catch (e) {
      note.replaceChildren(h("span", { class: "error" }, `${baseName(path)}: ${(e as Error).message}`));
    }
    await load();
  };

  async function loadDeploys() {
    try {
      shadow.replaceChildren(diffView(await getJSON<Diff>("/api/rules/diff"), act));
    } catch (e) {
      const none = e instanceof ApiError && e.status === 409;
      shadow.replaceChildren(
        none
          ? h("p", {}, "No shadow is running (", h("code", {}, "tide rules shadow PATH"), " starts one).")
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
