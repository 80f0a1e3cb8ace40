// A run: its DAG with each step's live state, the timing bars of steps and attempts, the failure analysis,
// the steps, one step's detail, and the actions (cancel, resume, retry a step, rollback).

import { get, post } from "../api.js";
import { badge, clear, debounce, duration, h, pairs, section, when } from "../dom.js";
import { gantt } from "./gantt.js";
import { stepDetail } from "./step.js";

const LIVE_STATE = { "step.started": "running", "step.completed": "completed", "step.failed": "failed",
  "step.retrying": "retrying", "step.skipped": "skipped" };
const FINISHED = ["completed", "failed", "cancelled", "rolled_back", "rollback_failed"];

// The end of a traceback, as `tagent why` shows it: its innermost frames and the error.
function lastFrames(traceback, lines = 8) {
  const kept = traceback.trimEnd().split("\n");
  return (kept.length > lines ? ["  ..."] : []).concat(kept.slice(-lines)).join("\n");
}

export function mount(main, { runId, step }) {
  const state = { runId, step, page: null };
  const head = h("div", { class: "page-head" });
  const actions = h("div", { class: "actions" });
  const notice = h("div", { class: "notice", role: "status" });
  const graph = h("div", { class: "dag-box" });
  const timing = h("div", {});
  const why = h("div", {});
  const steps = h("div", {});
  const detail = h("div", { class: "card detail" });
  clear(main, head, h("div", { class: "toolbar" }, actions, notice),
    h("div", { class: "columns" },
      h("div", { class: "col-main" }, section("Graph", graph), section("Timing", timing), section("Steps", steps)),
      h("div", { class: "col-side" }, why, detail)));

  let seq = 0;
  async function load() {
    const mine = ++seq;
    let page;
    try {
      page = await get(`/api/runs/${encodeURIComponent(state.runId)}`);
    } catch (err) {
      clear(head, h("h1", { text: `Run ${state.runId}` }), h("p", { class: "error", text: err.message }));
      return;
    }
    if (mine !== seq) return;
    state.page = page;
    render(page);
    if (state.step) loadStep();
  }

  function render(page) {
    const run = page.run;
    const totals = page.steps.reduce((t, s) => ({ cost: t.cost + (s.cost || 0), tokens: t.tokens + (s.tokens || 0) }), { cost: 0, tokens: 0 });
    clear(head,
      h("h1", {}, h("span", { class: "muted", text: "Run " }), h("span", { class: "mono", text: run.run_id })),
      badge(run.status),
      pairs([["pipeline", run.pipeline], ["started", when(run.started_at || run.created_at)],
        ["duration", duration((run.finished_at || Date.now() / 1000) - (run.started_at || run.created_at))],
        ["cost", totals.cost ? `$${totals.cost.toFixed(4)}` : null], ["tokens", totals.tokens || null],
        ["parent", run.parent_id ? h("a", { href: `#/runs/${encodeURIComponent(run.parent_id)}`, text: run.parent_id }) : null],
        ["error", run.error]]));
    renderActions(run);
    renderGraph(page.graph);
    for (const s of page.steps) recolour(s.name, s.status);
    clear(timing, gantt(page.gantt, page.steps.map((s) => s.name), select));
    renderWhy(page.why);
    renderSteps(page);
  }

  function renderActions(run) {
    const finished = FINISHED.includes(run.status);
    clear(actions,
      button("Cancel", "cancel", !finished, "danger"),
      button("Resume", "resume", ["failed", "cancelled"].includes(run.status)),
      button("Rollback", "rollback", finished && run.status !== "rolled_back"));
  }

  function button(label, action, enabled, kind = "") {
    return h("button", { class: `btn ${kind}`, "data-action": action, disabled: !enabled,
      onclick: () => act(`/api/runs/${encodeURIComponent(state.runId)}/${action}`, label) }, label);
  }

  async function act(path, label) {
    notice.className = "notice";
    notice.textContent = `${label}…`;
    try {
      await post(path);
      notice.className = "notice ok";
      notice.textContent = `${label}: done`;
    } catch (err) {
      notice.className = "notice bad";
      notice.textContent = `${label} refused: ${err.message}`;
    }
    load();
  }

  let drawn = null;
  function renderGraph(svg) {
    if (!svg) {
      clear(graph, h("p", { class: "empty", text: "the daemon sent no plan for this run" }));
      return;
    }
    if (svg === drawn) return;  // the same drawing: keep it (and its scroll position); states are set after
    drawn = svg;
    const doc = new DOMParser().parseFromString(svg, "image/svg+xml");
    const node = document.importNode(doc.documentElement, true);
    nodes = new Map([...node.querySelectorAll("g.step")].map((g) => [g.dataset.step, g]));
    for (const g of nodes.values()) {
      g.addEventListener("click", () => select(g.dataset.step));
      g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(g.dataset.step); });
      g.classList.toggle("selected", g.dataset.step === state.step);
    }
    clear(graph, node);
  }

  let nodes = new Map();  // step name -> its <g class="step"> in the drawing
  function recolour(stepName, stepState) {
    const g = nodes.get(stepName);
    if (!g || g.dataset.state === stepState) return;
    g.dataset.state = stepState;
    const word = g.querySelector("text.state");
    if (word) word.textContent = stepState;
  }

  function renderWhy(diagnosis) {
    if (!diagnosis.failures.length) {
      clear(why);
      return;
    }
    clear(why, section(`Why it ${diagnosis.status === "running" ? "is failing" : "failed"}`,
      h("p", { class: "muted small", text: "Root failures first: the steps that failed for their own reason." }),
      diagnosis.failures.map((f, i) => h("div", { class: "failure" },
        h("h3", {}, `${i + 1}. `, h("a", { href: stepHref(f.step), text: f.step }), `: ${f.error_type}`),
        h("p", { class: "error", text: f.message }),
        f.attempts.length ? h("ul", { class: "attempts" }, f.attempts.map((a) => h("li", {
          text: `attempt ${a.number}: ${a.error}${a.retry_in_s !== null ? `; retried after ${a.retry_in_s.toFixed(1)} s` : ""}` }))) : null,
        f.traceback ? h("details", { class: "trace", open: i === 0 }, h("summary", { text: "traceback (innermost frames)" }),
          h("pre", { class: "traceback", text: lastFrames(f.traceback) })) : null,
        f.affected.length ? h("p", { class: "small", text: `because of it: ${f.affected.join(", ")}` }) : null,
        h("p", { class: "next small" }, h("strong", { text: "next: " }), f.next)))));
  }

  function renderSteps(page) {
    const finished = FINISHED.includes(page.run.status);
    clear(steps, h("table", { class: "grid steps" },
      h("thead", {}, h("tr", {}, ["Step", "Kind", "State", "Attempts", "Duration", "Cost", "Tokens", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, page.steps.map((s) => h("tr", { class: s.name === state.step ? "selected" : "", dataset: { step: s.name } },
        h("td", {}, h("a", { href: stepHref(s.name), text: s.name }), s.added_by ? h("span", { class: "muted small", text: ` added by ${s.added_by}` }) : null),
        h("td", { class: "muted", text: s.kind || "" }),
        h("td", {}, badge(s.status)),
        h("td", { text: s.attempts }),
        h("td", { text: duration(s.duration_s) }),
        h("td", { text: s.cost ? `$${s.cost.toFixed(4)}` : "" }),
        h("td", { text: s.tokens || "" }),
        h("td", {}, finished ? h("button", { class: "btn small", "data-retry": s.name,
          onclick: () => act(`/api/runs/${encodeURIComponent(state.runId)}/steps/${encodeURIComponent(s.name)}/retry`, `Retry ${s.name}`) }, "Retry") : null))))));
  }

  function stepHref(name) {
    return `#/runs/${encodeURIComponent(state.runId)}/steps/${encodeURIComponent(name)}`;
  }

  function select(name) {
    location.hash = stepHref(name);
  }

  let stepSeq = 0;
  async function loadStep() {
    const mine = ++stepSeq;
    for (const g of graph.querySelectorAll("g.step")) g.classList.toggle("selected", g.dataset.step === state.step);
    for (const tr of steps.querySelectorAll("tr[data-step]")) tr.classList.toggle("selected", tr.dataset.step === state.step);
    try {
      const data = await get(`/api/runs/${encodeURIComponent(state.runId)}/steps/${encodeURIComponent(state.step)}`);
      if (mine === stepSeq) clear(detail, stepDetail(data));
    } catch (err) {
      if (mine === stepSeq) clear(detail, h("p", { class: "error", text: err.message }));
    }
  }

  if (!state.step) clear(detail, h("h2", { text: "Step" }), h("p", { class: "empty", text: "Select a step in the graph or the table." }));
  // The DAG is recoloured by each event at once; the whole page reloads at most every 0.2 s, and less often for
  // a big run (2 ms per step, at most 2 s), which keeps what a watched fan-out costs the daemon small.
  const reload = debounce(load, () => Math.min(2000, 200 + 2 * (state.page ? state.page.steps.length : 0)));
  load();
  return {
    stream: { topics: "run.,step.,steps.", run: runId },
    onEvent(ev) {
      const data = ev.data || {};
      if (LIVE_STATE[ev.topic] && data.step) recolour(data.step, LIVE_STATE[ev.topic]);
      reload();
    },
    route(hash) {
      const m = hash.match(/^#\/runs\/([^/]+)(?:\/steps\/(.+))?$/);
      if (!m || decodeURIComponent(m[1]) !== state.runId) return false;
      state.step = m[2] ? decodeURIComponent(m[2]) : null;
      if (state.step) loadStep();
      return true;
    },
  };
}
