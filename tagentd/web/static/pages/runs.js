// The runs list: newest first, filtered by status and pipeline, searched by id; live (a new run shows within a
// second: the list reloads on run and step events, at most every 150 ms).

import { get } from "../api.js";
import { ago, badge, clear, debounce, duration, h, link } from "../dom.js";

const STATUSES = ["", "pending", "running", "completed", "failed", "cancelled", "rolling_back", "rolled_back"];

export function mount(main) {
  const filters = { status: "", pipeline: "", q: "" };
  const pipelineSelect = h("select", { "aria-label": "pipeline", onchange: (e) => { filters.pipeline = e.target.value; load(); } },
    h("option", { value: "", text: "all pipelines" }));
  const statusSelect = h("select", { "aria-label": "status", onchange: (e) => { filters.status = e.target.value; load(); } },
    STATUSES.map((s) => h("option", { value: s, text: s || "any status" })));
  const search = h("input", { type: "search", placeholder: "search run id", "aria-label": "search run id",
    oninput: (e) => { filters.q = e.target.value.trim(); load(); } });
  const body = h("div", { class: "card flush" });
  const count = h("span", { class: "muted" });
  clear(main,
    h("div", { class: "page-head" }, h("h1", { text: "Runs" }), count),
    h("div", { class: "filters" }, statusSelect, pipelineSelect, search),
    body);

  let seq = 0;
  async function load() {
    const mine = ++seq;
    let data;
    try {
      data = await get("/api/runs", filters);
    } catch (err) {
      clear(body, h("p", { class: "error", text: err.message }));
      return;
    }
    if (mine !== seq) return;
    const known = new Set([...pipelineSelect.options].map((o) => o.value));
    for (const p of data.pipelines) if (!known.has(p)) pipelineSelect.append(h("option", { value: p, text: p }));
    count.textContent = `${data.runs.length} shown`;
    if (!data.runs.length) {
      clear(body, h("p", { class: "empty", text: "No runs yet. Submit one with 'tagent submit FILE'." }));
      return;
    }
    clear(body, h("table", { class: "grid runs" },
      h("thead", {}, h("tr", {}, ["Run", "Pipeline", "Status", "Progress", "Started", "Duration"].map((t) => h("th", { text: t })))),
      h("tbody", {}, data.runs.map(row))));
  }

  function row(r) {
    const end = r.finished_at || Date.now() / 1000;
    const bar = h("span", { class: "bar" }, h("span", { class: "fill", dataset: { state: r.status } }));
    bar.firstChild.style.width = `${r.steps_total ? (100 * r.steps_done) / r.steps_total : 0}%`;
    return h("tr", { dataset: { run: r.run_id, status: r.status } },
      h("td", { class: "mono" }, link(`#/runs/${encodeURIComponent(r.run_id)}`, r.run_id),
        r.parent_id ? h("span", { class: "muted small", text: ` child of ${r.parent_id}` }) : null),
      h("td", { text: r.pipeline }),
      h("td", {}, badge(r.status)),
      h("td", { class: "progress" }, bar, h("span", { class: "small", text: `${r.steps_done}/${r.steps_total}` })),
      h("td", { title: new Date(r.created_at * 1000).toLocaleString(), text: ago(r.created_at) }),
      h("td", { text: duration(end - r.created_at) }));
  }

  const reload = debounce(load, 150);
  load();
  const tick = setInterval(reload, 5000);  // durations and "ago" move on
  return {
    stream: { topics: "run.,step.completed,step.failed,step.skipped,steps." },
    onEvent: () => reload(),
    stop: () => clearInterval(tick),
  };
}
