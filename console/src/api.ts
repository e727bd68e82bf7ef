// The console's requests to tide's /api/ (docs/console.md).  Same origin
// only: the page is served by the node it shows.

export interface FlowNode {
  id: string;
  kind: string;
  label: string;
  [key: string]: unknown;
}

export interface Edge {
  from: string;
  to: string;
  rate: number;
}

export interface Flow {
  generation: number;
  nodes: FlowNode[];
  edges: Edge[];
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

async function answer<T>(r: Response): Promise<T> {
  const text = await r.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!r.ok) {
    const d = (body as { error?: { description?: string } } | null)?.error?.description;
    throw new ApiError(r.status, `${r.status}: ${d || r.statusText}`);
  }
  return body as T;
}

export async function getJSON<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" }));
}

export async function postJSON<T>(path: string, body: unknown): Promise<T> {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  return answer<T>(r);
}

export function setStatus(text: string): void {
  const s = document.getElementById("status");
  if (s) s.textContent = text;
}
