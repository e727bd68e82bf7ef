// tide's web console: one page, five views chosen by the URL fragment
// (#/flow, #/tail/<pattern>, #/trace, #/streams/<stream>, #/rules).
import "./style.css";
import { mountFlow } from "./flow";
import { mountRules } from "./rules";
import { mountStreams } from "./streams";
import { mountTail } from "./tail";
import { mountTrace } from "./trace";

type Mount = (root: HTMLElement, arg: string) => () => void;

const views: Record<string, Mount> = {
  flow: mountFlow,
  tail: mountTail,
  trace: mountTrace,
  streams: mountStreams,
  rules: mountRules,
};

let unmount: () => void = () => {};

function route() {
  const m = location.hash.match(/^#\/([a-z]+)(?:\/(.*))?$/);
  const name = m && views[m[1]] ? m[1] : "flow";
  const arg = m && m[2] ? decodeURIComponent(m[2]) : "";
  unmount();
  const root = document.getElementById("view")!;
  root.replaceChildren();
  root.dataset.view = name;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    if (a.getAttribute("href") === "#/" + name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `tide · ${name}`;
  unmount = views[name](root, arg);
}

window.addEventListener("hashchange", route);
route();
