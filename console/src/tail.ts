// The Tail view: the events on a subject pattern, live from /api/tail
// (server-sent events), newest first, with pause.
import { setStatus } from "./api";
import { h } from "./dom";

const KEEP = 200;

export function mountTail(root: HTMLElement, arg: string): () => void {
  const input = h("input", { id: "tail-subject", name: "subject", value: arg || ">", autocomplete: "off", spellcheck: "false" });
  const start = h("button", { type: "submit" }, "Follow");
  const pause = h("button", { type: "button", "aria-pressed": "false", id: "tail-pause" }, "Pause");
  const clear = h("button", { type: "button" }, "Clear");
  const info = h("p", { class: "hint", role: "status", id: "tail-info" }, "");
  const list = h("ol", { class: "events", id: "tail-events", "aria-live": "off" });
  const form = h("form", { class: "row" }, h("label", { for: "tail-subject" }, "Subject pattern"), input, start, pause, clear);
  root.append(h("h2", {}, "Tail"), form, info, list);
  let es: EventSource | null = null;
  let paused = false;
  let held: { subject: string; body: string }[] = [];
  let heldTotal = 0;

  function show(ev: { subject: string; body: string }) {
    const li = h("li", {}, h("code", { class: "subject" }, ev.subject), h("pre", {}, ev.body));
    list.prepend(li);
    while (list.children.length > KEEP) list.lastElementChild!.remove();
  }

  function follow(pattern: string) {
    es?.close();
    held = [];
    es = new EventSource("/api/tail?subject=" + encodeURIComponent(pattern));
    info.textContent = `Following ${pattern}`;
    es.addEventListener("message", (m) => {
      let ev: { subject?: string; data?: unknown; payload?: string };
      try {
        ev = JSON.parse((m as MessageEvent).data);
      } catch {
        return;
      }
      const body = ev.data !== undefined ? JSON.stringify(ev.data, null, 2) : String(ev.payload ?? "");
      const item = { subject: ev.subject || "", body };
      if (paused) {
        held.push(item);
        heldTotal++;
        if (held.length > KEEP) held.shift(); /* only the newest are shown anyway */
        info.textContent = `Paused: ${heldTotal} event${heldTotal === 1 ? "" : "s"} held`;
      } else show(item);
    });
    es.addEventListener("error", () => {
      info.textContent = `The tail of ${pattern} stopped (refused, or the node is gone); Follow starts it again.`;
      es?.close();
    });
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = input.value.trim();
    history.replaceState(null, "", "#/tail/" + encodeURIComponent(p));
    follow(p);
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      for (const x of held) show(x);
      held = [];
      heldTotal = 0;
      info.textContent = "Following " + input.value;
    }
  });
  clear.addEventListener("click", () => list.replaceChildren());
  follow(input.value);
  setStatus("");
  return () => es?.close();
}
