// The Flow view: the graph of /api/flow laid out by dagre and drawn as SVG
// with text labels, live rates on the edges from /api/rates (once a
// second), and the details of a node when it is clicked or chosen with
// Enter.
import dagre from "@dagrejs/dagre";
import { Edge, Flow, FlowNode, getJSON, setStatus } from "./api";
import { fmtRate, h, s } from "./dom";

const NODE_H = 44;
const CHAR_W = 7.8;

function shape(f: Flow): string {
  return f.nodes.map((n) => n.id).join("|") + "#" + f.edges.map((e) => e.from + ">" + e.to).join("|");
}

function nodeLine(n: FlowNode): string {
  const num = (k: string) => (typeof n[k] === "number" ? (n[k] as number) : undefined);
  switch (n.kind) {
    case "subject":
      return "subject";
    case "stream":
      return `${num("messages") ?? 0} msgs`;
    case "consumer":
      return `lag ${num("pending") ?? 0} · ${num("delivered") ?? 0} delivered`;
    case "dlq":
      return `depth ${num("depth") ?? 0}`;
    default: {
      const parts = [`${num("calls") ?? 0} calls`];
      if (num("dropped")) parts.push(`${num("dropped")} dropped`);
      if (num("errors")) parts.push(`${num("errors")} errors`);
      return parts.join(" · ");
    }
  }
}

function details(n: FlowNode): HTMLElement {
  const box = h("section", { class: "details", "aria-label": "Details of " + n.label });
  box.append(h("h2", {}, n.label));
  const dl = h("dl");
  for (const [k, v] of Object.entries(n)) {
    if (k === "id" || k === "label" || k === "last_error" || typeof v === "object") continue;
    dl.append(h("dt", {}, k), h("dd", { "data-field": k }, String(v)));
  }
  box.append(dl);
  const le = n.last_error as { message?: string; at?: string; time?: string; traceback?: string[] } | undefined;
  if (le) {
    box.append(h("h3", {}, "Last error"));
    box.append(h("p", { class: "error" }, le.message || ""));
    if (le.at) box.append(h("p", {}, "raised at ", h("code", {}, le.at), le.time ? " · " + le.time : ""));
    if (le.traceback && le.traceback.length) box.append(h("pre", { class: "trace" }, le.traceback.join("\n")));
  }
  return box;
}

export function mountFlow(root: HTMLElement): () => void {
  const pane = h("div", { class: "graph", role: "region", "aria-label": "Flow graph", tabindex: "0" });
  const side = h("div", { class: "side" }, h("p", { class: "hint" }, "Choose a node (click, or Tab and Enter) to see its details."));
  root.append(h("h2", { class: "vh" }, "Flow"), h("div", { class: "flow" }, pane, side));
  let flow: Flow | null = null;
  let current = "";
  let selected = "";
  let rateEls: SVGTextElement[] = [];
  let pathEls: SVGPathElement[] = [];
  const nodeEls = new Map<string, SVGTextElement>();
  let stopped = false;

  function draw(f: Flow) {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 70, marginx: 10, marginy: 10 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const n of f.nodes) g.setNode(n.id, { width: Math.max(110, n.label.length * CHAR_W + 24), height: NODE_H });
    for (const e of f.edges) g.setEdge(e.from, e.to, { width: 44, height: 14, labelpos: "c" });
    dagre.layout(g);
    const gl = g.graph();
    const svg = s("svg", { width: Math.ceil(gl.width || 0), height: Math.ceil(gl.height || 0), role: "group" });
    svg.append(s("title"));
    svg.querySelector("title")!.textContent = `Flow of generation ${f.generation}: ${f.nodes.length} nodes, ${f.edges.length} edges`;
    const defs = s("defs");
    const marker = s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    marker.append(s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.append(marker);
    svg.append(defs);
    rateEls = [];
    pathEls = [];
    f.edges.forEach((e) => {
      const ed = g.edge(e.from, e.to);
      const pts = ed.points || [];
      const d = pts.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
      const path = s("path", { d, class: "edge", "marker-end": "url(#arrow)", "data-from": e.from, "data-to": e.to });
      const t = s("text", { x: (ed.x ?? 0).toFixed(1), y: ((ed.y ?? 0) - 3).toFixed(1), class: "rate", "data-from": e.from, "data-to": e.to, "text-anchor": "middle" });
      t.textContent = fmtRate(e.rate);
      svg.append(path, t);
      rateEls.push(t);
      pathEls.push(path);
    });
    nodeEls.clear();
    for (const n of f.nodes) {
      const p = g.node(n.id);
      const grp = s("g", { class: `node kind-${n.kind}`, transform: `translate(${(p.x - p.width / 2).toFixed(1)},${(p.y - p.height / 2).toFixed(1)})`, tabindex: 0, role: "button", "data-id": n.id, "data-kind": n.kind });
      grp.append(s("rect", { width: p.width.toFixed(1), height: p.height, rx: 6 }));
      const t1 = s("text", { x: 10, y: 18, class: "label" });
      t1.textContent = n.label;
      const t2 = s("text", { x: 10, y: 35, class: "sub" });
      t2.textContent = nodeLine(n);
      grp.append(t1, t2);
      const pick = () => select(n.id);
      grp.addEventListener("click", pick);
      grp.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          pick();
        }
      });
      nodeEls.set(n.id, t2);
      svg.append(grp);
    }
    pane.replaceChildren(svg);
  }

  function select(id: string) {
    const fresh = id !== selected;
    selected = id;
    const n = flow?.nodes.find((x) => x.id === id);
    const box = n ? details(n) : h("p", { class: "hint" }, "That node is gone.");
    const old = side.querySelector(".source");
    side.replaceChildren(box);
    if (n && id.startsWith("rule:")) {
      if (old && !fresh) box.append(old);
      else showSource(box, id.slice(5));
    }
  }

  async function showSource(box: HTMLElement, rule: string) {
    try {
      const src = await getJSON<{ where: string; line: number; first_line: number; lines?: string[]; error?: string }>(
        "/api/source?rule=" + rule,
      );
      const pre = h("pre", { class: "source", "aria-label": "Source around " + src.where });
      (src.lines || []).forEach((text, i) => {
        const no = src.first_line + i;
        const line = h("span", { class: no === src.line ? "here" : "" }, `${String(no).padStart(4)}  ${text}\n`);
        pre.append(line);
      });
      if (src.error) pre.textContent = src.error;
      if (selected === "rule:" + rule && box.isConnected) box.append(h("h3", {}, "Source"), pre);
    } catch {
      /* the node's details stand without it */
    }
  }

  function setRates(edges: Edge[]) {
    if (!flow || edges.length !== rateEls.length) return;
    edges.forEach((e, i) => {
      if (e.from !== flow!.edges[i].from || e.to !== flow!.edges[i].to) return;
      rateEls[i].textContent = fmtRate(e.rate);
      pathEls[i].classList.toggle("live", e.rate > 0);
      rateEls[i].classList.toggle("live", e.rate > 0);
    });
  }

  async function loadFlow() {
    try {
      const f = await getJSON<Flow>("/api/flow");
      if (stopped) return;
      flow = f;
      const sh = shape(f);
      if (sh !== current) {
        current = sh;
        draw(f);
      } else {
        for (const n of f.nodes) {
          const el = nodeEls.get(n.id);
          if (el) el.textContent = nodeLine(n);
        }
        setRates(f.edges);
      }
      if (selected) select(selected);
      setStatus(`generation ${f.generation} · ${f.nodes.filter((n) => n.id.startsWith("rule:")).length} rules`);
    } catch (e) {
      setStatus(String((e as Error).message));
    }
  }

  async function loadRates() {
    try {
      const r = await getJSON<{ edges: Edge[] }>("/api/rates");
      if (!stopped) setRates(r.edges);
    } catch (e) {
      setStatus(String((e as Error).message));
    }
  }

  loadFlow();
  const t1 = window.setInterval(loadRates, 1000);
  const t2 = window.setInterval(loadFlow, 2000);
  return () => {
    stopped = true;
    window.clearInterval(t1);
    window.clearInterval(t2);
  };
}
