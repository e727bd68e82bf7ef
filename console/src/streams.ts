// The Streams view: streams and consumers (GET /api/streams), and the dead
// letters a stream holds (GET /api/dlq?stream=S) with a replay button each
// (POST /api/dlq/replay, an action: admin users only).
import { getJSON, postJSON, setStatus } from "./api";
import { h, table } from "./dom";

type Obj = Record<string, unknown>;

interface StreamsAnswer {
  streams: Obj[];
  consumers: Obj[];
  dead_letter_streams: string[];
}

interface DlqShow {
  stream: string;
  dead_letters: Obj[];
  next_seq: number;
  more: boolean;
}

const str = (v: unknown) => (v === undefined || v === null ? "" : Array.isArray(v) ? v.join(" ") : String(v));

export function mountStreams(root: HTMLElement, arg: string): () => void {
  const top = h("div");
  const pick = h("select", { id: "dlq-stream" });
  const show = h("button", { type: "submit" }, "Show dead letters");
  const dl = h("div", { id: "dlq-list" });
  const note = h("p", { role: "status", class: "hint", id: "dlq-note" });
  const form = h("form", { class: "row" }, h("label", { for: "dlq-stream" }, "Stream"), pick, show);
  const bStream = h("select", { id: "ev-stream" });
  const bFrom = h("input", { id: "ev-from", inputmode: "numeric", placeholder: "1", size: 8 });
  const bSince = h("input", { id: "ev-since", placeholder: "2026-12-01T00:00:00Z", size: 22 });
  const bSubject = h("input", { id: "ev-subject", placeholder: "order.>", size: 14 });
  const browse = h(
    "form",
    { class: "row" },
    h("label", { for: "ev-stream" }, "Stream"),
    bStream,
    h("label", { for: "ev-from" }, "from seq"),
    bFrom,
    h("label", { for: "ev-since" }, "since"),
    bSince,
    h("label", { for: "ev-subject" }, "subject"),
    bSubject,
    h("button", { type: "submit" }, "Show messages"),
  );
  const events = h("div", { id: "ev-list" });
  root.append(h("h2", {}, "Streams"), top, h("h2", {}, "Messages"), browse, events, h("h2", {}, "Dead letters"), form, note, dl);

  browse.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams({ stream: bStream.value });
    if (bFrom.value.trim()) q.set("from_seq", bFrom.value.trim());
    if (bSince.value.trim()) q.set("since", bSince.value.trim());
    if (bSubject.value.trim()) q.set("subject", bSubject.value.trim());
    try {
      const r = await getJSON<{ events: Obj[]; next_seq: number; more: boolean }>("/api/events?" + q.toString());
      const rows = r.events.map((e) => [
        str(e.seq),
        str(e.time),
        str(e.subject),
        h("pre", {}, e.data !== undefined ? JSON.stringify(e.data, null, 2) : str(e.payload)),
      ]);
      events.replaceChildren(
        rows.length ? table(["seq", "time", "subject", "data"], rows, r.more ? `Up to seq ${r.next_seq - 1}; more from ${r.next_seq}` : "Messages") : h("p", {}, "No messages there."),
      );
      if (r.more) bFrom.value = String(r.next_seq);
    } catch (e) {
      events.replaceChildren(h("p", { class: "error" }, (e as Error).message));
    }
  });

  async function showDlq(stream: string) {
    history.replaceState(null, "", "#/streams/" + encodeURIComponent(stream));
    try {
      const r = await getJSON<DlqShow>("/api/dlq?stream=" + encodeURIComponent(stream));
      const rows = r.dead_letters.map((d) => {
        const b = h("button", { type: "button", "data-seq": str(d.seq) }, "Replay");
        b.addEventListener("click", async () => {
          try {
            const a = await postJSON<Obj>("/api/dlq/replay", { stream, seq: d.seq });
            note.textContent = `Replayed ${stream} #${str(d.seq)} to ${str(d.original_subject)}: ${JSON.stringify(a)}`;
          } catch (e) {
            note.textContent = (e as Error).message;
          }
        });
        return [str(d.seq), str(d.time), str(d.original_subject), str(d.reason) + (d.stage ? " / " + str(d.stage) : ""), str(d.error), b];
      });
      dl.replaceChildren(
        rows.length
          ? table(["seq", "time", "subject", "reason", "error", ""], rows, `Dead letters in ${stream}` + (r.more ? " (first page)" : ""))
          : h("p", {}, `No dead letters in ${stream}.`),
      );
    } catch (e) {
      dl.replaceChildren(h("p", { class: "error" }, (e as Error).message));
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (pick.value) showDlq(pick.value);
  });

  (async () => {
    try {
      const r = await getJSON<StreamsAnswer>("/api/streams");
      const srows = r.streams.map((x) => [str(x.name), str(x.subjects), str(x.messages), str(x.bytes), str(x.first_seq), str(x.last_seq)]);
      const crows = r.consumers.map((x) => [
        str(x.name), str(x.stream), str(x.num_pending), str(x.num_ack_pending), str(x.delivered), str(x.redelivered), str(x.acked), str(x.dead_lettered),
      ]);
      top.replaceChildren(
        srows.length ? table(["name", "subjects", "messages", "bytes", "first seq", "last seq"], srows, "Streams") : h("p", {}, "No streams."),
        crows.length
          ? table(["name", "stream", "pending", "in flight", "delivered", "redelivered", "acked", "dead lettered"], crows, "Consumers")
          : h("p", {}, "No consumers."),
      );
      const names = [...r.dead_letter_streams, ...r.streams.map((x) => str(x.name)).filter((n) => !r.dead_letter_streams.includes(n))];
      pick.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
      bStream.replaceChildren(...r.streams.map((x) => h("option", { value: str(x.name) }, str(x.name))));
      const want = arg && names.includes(arg) ? arg : r.dead_letter_streams[0];
      if (want) {
        pick.value = want;
        showDlq(want);
      }
      setStatus("");
    } catch (e) {
      top.replaceChildren(h("p", { class: "error" }, (e as Error).message));
    }
  })();
  return () => {};
}
