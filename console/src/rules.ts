// The Rules view: the reload history (GET /api/reloads) and the rules of
// the current generation with their counters (from /api/flow).
import { Flow, getJSON, setStatus } from "./api";
import { h, table } from "./dom";

interface Reload {
  time: string;
  generation: number;
  ok: boolean;
  error?: string;
}

export function mountRules(root: HTMLElement): () => void {
  const hist = h("div");
  const rules = h("div");
  root.append(h("h2", {}, "Reloads"), hist, h("h2", {}, "Rules"), rules);
  (async () => {
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
  })();
  return () => {};
}
