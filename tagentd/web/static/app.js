// The dashboard's shell: a hash router over the pages, and one live stream per tab for the page shown.
// A page module exports `mount(main, params)` returning { stream: {topics, run, rates}, onEvent(ev), stop() }.

import { stream } from "./api.js";
import { clear, h } from "./dom.js";
import * as broker from "./pages/broker.js";
import * as daemon from "./pages/daemon.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as watch from "./pages/watch.js";

const routes = [
  [/^#\/runs\/([^/]+)(?:\/steps\/(.+))?$/, run, (m) => ({ runId: decodeURIComponent(m[1]), step: m[2] ? decodeURIComponent(m[2]) : null })],
  [/^#\/broker$/, broker, () => ({})],
  [/^#\/watch$/, watch, () => ({})],
  [/^#\/daemon$/, daemon, () => ({})],
  [/^(#\/runs)?$/, runs, () => ({})],
];

const main = document.getElementById("main");
const live = document.getElementById("live");
let current = null;

function setLive(state) {
  live.dataset.live = state;
  live.textContent = state;
}

function show() {
  const hash = location.hash || "#/runs";
  const [, page, params] = routes.map(([re, mod, args]) => {
    const m = hash.match(re);
    return m ? [re, mod, args(m)] : null;
  }).find(Boolean) || [null, null, null];
  if (current) {
    current.source?.close();
    current.view.stop?.();
    current = null;
  }
  if (!page) {
    clear(main, h("p", { class: "empty", text: `no page ${hash}` }));
    return;
  }
  const name = page === run ? "runs" : Object.entries({ runs, broker, watch, daemon }).find(([, m]) => m === page)[0];
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === name);
  const view = page.mount(main, params);
  const entry = { view, source: null };
  if (view.stream) {
    let opened = false;
    entry.source = stream(view.stream, (ev) => view.onEvent(ev), (state) => {
      setLive(state);
      if (state === "live") {
        if (opened) view.onEvent({ topic: "resync" });  // events may have been missed while reconnecting
        opened = true;
      }
    });
  } else {
    setLive("polling");
  }
  current = entry;
}

// A page that changes the route itself (e.g. selecting a step) keeps its view when only the step changes.
window.addEventListener("hashchange", () => {
  if (current?.view.route?.(location.hash)) return;
  show();
});
show();
