// Small helpers to build the views without a framework.

type Attrs = Record<string, string | number | boolean | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

export function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Attrs = {}): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== false) el.setAttribute(k, String(v));
  return el;
}

export function fmtRate(r: number): string {
  if (!r) return "0/s";
  return r >= 100 ? `${Math.round(r)}/s` : `${r.toFixed(r >= 10 ? 1 : 2)}/s`;
}

export function table(headers: string[], rows: (Node | string)[][], caption: string): HTMLElement {
  const t = h("table", {}, h("caption", {}, caption));
  const hr = h("tr");
  for (const x of headers) hr.append(h("th", { scope: "col" }, x));
  t.append(h("thead", {}, hr));
  const tb = h("tbody");
  for (const r of rows) {
    const tr = h("tr");
    for (const c of r) tr.append(h("td", {}, c));
    tb.append(tr);
  }
  t.append(tb);
  return h("div", { class: "scroll" }, t);
}
