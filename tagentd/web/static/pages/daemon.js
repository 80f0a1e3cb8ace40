// The daemon: workers, queue, LLM permits, circuit breakers, load. Each part is one entry of SECTIONS
// (a title and a function of the daemon's status), so a new part (e.g. a cluster) is one more entry.

import { get } from "../api.js";
import { ago, badge, clear, duration, h, pairs, section, table } from "../dom.js";

export const SECTIONS = [
  ["Workers", (d) => table(["Worker", "Pid", "State", "Running", "Capacity", "Completed", "Started"],
    d.workers.map((w) => [w.id, w.pid, badge(w.state), w.running, w.capacity, w.completed, ago(w.started_at)]), "no worker")],
  ["Queue and load", (d) => {
    const capacity = d.workers.reduce((n, w) => n + w.capacity, 0);
    const running = d.workers.reduce((n, w) => n + w.running, 0);
    return pairs([["tasks queued", d.stats.queued_tasks], ["tasks in flight", d.stats.in_flight_tasks],
      ["worker slots busy", `${running} of ${capacity}`], ["runs active", d.runs_active], ["runs known", d.runs_total],
      ["steps waiting on a dependency", (d.stats.dependency_waits || {}).parked ?? 0],
      ["machine load (1, 5, 15 min)", d.host ? d.host.load.map((x) => x.toFixed(2)).join(", ") : null],
      ["CPUs", d.host ? d.host.cpus : null]]);
  }],
  ["LLM permits", (d) => {
    const endpoints = Object.entries(d.stats.llm_endpoints || {});
    return [pairs([["permits granted", d.stats.llm_permits_granted]]),
      table(["Endpoint", ...new Set(endpoints.flatMap(([, v]) => Object.keys(v)))],
        endpoints.map(([name, v]) => [name, ...Object.values(v).map((x) => (typeof x === "number" ? Math.round(x * 100) / 100 : x))]),
        "no endpoint limits configured")];
  }],
  ["Circuit breakers", (d) => table(["Breaker", "State", "Failures", "Reopens in", "Times opened"],
    (d.stats.breakers || []).map((b) => [b.name, badge(b.state), b.failures, b.reopens_in ? duration(b.reopens_in) : "", b.opened]),
    "no circuit breaker used yet")],
  ["Cluster", (d) => {
    const c = d.cluster;
    if (!c) return pairs([["executor", "local process pool (tagentd start --executor ray runs steps on a Ray cluster)"]]);
    const resources = (r) => Object.entries(r || {}).map(([k, v]) => `${k} ${Math.round(v * 100) / 100}`).join(", ");
    return [pairs([["executor", c.kind], ["address", c.address], ["namespace", c.namespace],
      ["connected", c.connected ? "yes" : "no"], ["resources free", resources(c.available)], ["problem", c.problem]]),
      table(["Node", "Address", "State", "Resources", "Workers", "Steps running"],
        c.nodes.map((n) => [h("code", { class: "node-id", text: n.node_id.slice(0, 12) }), n.address,
          badge(n.alive ? "alive" : "dead"), resources(n.resources), n.workers, n.steps]), "no node")];
  }],
  ["Dashboard", (d) => pairs([["address", d.stats.web?.url], ["process", d.stats.web?.pid],
    ["restarts", d.stats.web?.restarts ?? 0], ["browsers following", d.dashboard?.tabs],
    ["events received", d.dashboard?.events_received]])],
  ["Storage", (d) => pairs([["durable", d.durable ? "yes" : "no"], ["state dir", d.state_dir], ["runtime dir", d.runtime_dir],
    ["state dir problem", d.stats.state_dir_problem], ["checkpoint problems", (d.stats.checkpoint_problems || []).join("; ")]])],
];

export function mount(main) {
  const head = h("div", { class: "page-head" }, h("h1", { text: "Daemon" }));
  const body = h("div", { class: "sections" });
  clear(main, head, body);

  async function load() {
    let d;
    try {
      d = await get("/api/daemon");
    } catch (err) {
      clear(body, h("p", { class: "error", text: err.message }));
      return;
    }
    clear(head, h("h1", { text: "Daemon" }), badge(d.stats.stopping?.stopping ? "stopping" : "running"),
      pairs([["version", d.version], ["pid", d.pid], ["up", duration(d.uptime_s)]]));
    clear(body, SECTIONS.map(([title, render]) => section(title, render(d))));
  }

  load();
  const tick = setInterval(load, 2000);
  return { onEvent: () => {}, stop: () => clearInterval(tick) };
}
