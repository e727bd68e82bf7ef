// The Trace view: publishes one event from the page (POST /api/trace) and
// shows its way through the pipeline step by step, as the prompt's
// trace() does.  Publishing is an action: it needs an admin user.
import { postJSON, setStatus } from "./api";
import { h } from "./dom";

interface TraceAnswer {
  subject: string;
  id: string;
  steps: string[];
}

function parseHeaders(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

export function mountTrace(root: HTMLElement, arg: string): () => void {
  const subject = h("input", { id: "trace-subject", value: arg || "order.created", autocomplete: "off", spellcheck: "false" });
  const data = h("textarea", { id: "trace-data", rows: 5, spellcheck: "false" });
  data.value = '{"amount": 150}';
  const headers = h("textarea", { id: "trace-headers", rows: 2, spellcheck: "false", placeholder: "Name: value, one a line" });
  const go = h("button", { type: "submit" }, "Publish and trace");
  const out = h("pre", { id: "trace-out", class: "trace", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "stack" },
    h("label", { for: "trace-subject" }, "Subject"),
    subject,
    h("label", { for: "trace-data" }, "Data (JSON)"),
    data,
    h("label", { for: "trace-headers" }, "Headers"),
    headers,
    h("div", {}, go),
  );
  root.append(h("h2", {}, "Trace"), h("p", { class: "hint" }, "The event is published for real, as the data of a new CloudEvent."), form, out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let d: unknown;
    try {
      d = JSON.parse(data.value || "null");
    } catch (e) {
      out.textContent = "The data is not JSON: " + (e as Error).message;
      return;
    }
    out.textContent = "…";
    try {
      const r = await postJSON<TraceAnswer>("/api/trace", { subject: subject.value.trim(), data: d, headers: parseHeaders(headers.value) });
      out.textContent = `${r.subject}  (id ${r.id})\n` + (r.steps.length ? r.steps.join("\n") : "(no step: no rule, no subscriber)");
    } catch (e) {
      out.textContent = (e as Error).message;
    }
  });
  setStatus("");
  return () => {};
}
