// The broker: mailboxes with their depths, topics with their rates, spaces with their keys and access log,
// and the pipelines the daemon knows. Live: space changes reload it; rates refresh every 2 s.

import { get } from "../api.js";
import { ago, clear, debounce, h, link, section, table } from "../dom.js";

export function mount(main) {
  const state = { space: null };
  const head = h("div", { class: "page-head" }, h("h1", { text: "Broker" }));
  const counters = h("div", { class: "stats-row" });
  const mailboxes = h("div", {});
  const topics = h("div", {});
  const spaces = h("div", {});
  const spaceDetail = h("div", {});
  const pipelines = h("div", {});
  clear(main, head, counters,
    h("div", { class: "columns even" },
      h("div", {}, section("Mailboxes", mailboxes), section("Topics", topics)),
      h("div", {}, section("Spaces", spaces, spaceDetail))),
    section("Pipelines", pipelines));

  async function load() {
    let data;
    try {
      data = await get("/api/broker");
    } catch (err) {
      clear(counters, h("p", { class: "error", text: err.message }));
      return;
    }
    const s = data.stats;
    clear(counters, [["messages sent", s.counters.messages_sent], ["delivered", s.counters.messages_delivered],
      ["events published", s.counters.events_published], ["events/s", s.rates.events_published],
      ["messages/s", s.rates.messages_sent], ["subscribers", s.subscribers.length]]
      .map(([k, v]) => h("div", { class: "stat" }, h("div", { class: "num", text: v ?? 0 }), h("div", { class: "label", text: k }))));
    clear(mailboxes, table(["Mailbox", "Waiting", "Leased", "Dead letters", "Oldest"],
      s.mailboxes.map((m) => [m.name, depth(m.messages), m.leased, m.dead ? h("span", { class: "bad", text: m.dead }) : 0, m.oldest_ts ? ago(m.oldest_ts) : ""]),
      "no mailbox holds messages"));
    clear(topics, table(["Topic", "Events/s", `Events (last ${Math.round(data.topics.window_s)} s)`],
      data.topics.topics.map((t) => [h("span", { class: "mono", text: t.topic }), t.per_s.toFixed(2), t.count]),
      "no events since this page opened"),
      h("p", { class: "muted small", text: "Rates as the dashboard sees the event bus while this page is open." }));
    if (!state.space && s.spaces.length) state.space = s.spaces[0].name;
    clear(spaces, table(["Space", "Keys", "Bytes", "Allowed pipelines", "Log entries"],
      s.spaces.map((sp) => [h("a", { href: "#/broker", class: sp.name === state.space ? "selected" : "", text: sp.name,
        onclick: (e) => { e.preventDefault(); state.space = sp.name; load(); } }), sp.keys, sp.bytes, sp.allow ? sp.allow.join(", ") : "any", sp.log_entries]),
      "no shared space yet"));
    if (state.space) loadSpace();
    clear(pipelines, table(["Pipeline", "Capabilities", "Triggers", "Registered", "Runs in flight", "Workers"],
      data.pipelines.map((p) => [p.pipeline, p.capabilities.join(", "), p.triggers.join(", "), p.registered ? "yes" : "",
        p.run_ids.length ? p.run_ids.map((r) => link(`#/runs/${encodeURIComponent(r)}`, r)).reduce((a, b) => [a, " ", b]) : "", p.workers.join(", ")]),
      "no pipeline registered or running"));
  }

  async function loadSpace() {
    try {
      const sp = await get(`/api/broker/spaces/${encodeURIComponent(state.space)}`);
      clear(spaceDetail, h("h3", { text: `Space ${sp.name}` }),
        table(["Key", "Version", "Bytes"], sp.keys.map((k) => [h("span", { class: "mono", text: k.key }), k.version, k.bytes]), "no keys"),
        sp.more_keys ? h("p", { class: "muted small", text: `and ${sp.more_keys} more keys` }) : null,
        h("h3", { text: "Access log" }),
        table(["When", "Who", "Operation", "Key", "Version", ""], sp.log.map((l) => [ago(l[0]), who(l[1]), l[2], h("span", { class: "mono", text: l[3] }), l[4], l[5] ? "" : h("span", { class: "bad", text: l[6] || "refused" })]), "no access yet"));
    } catch (err) {
      clear(spaceDetail, h("p", { class: "error", text: err.message }));
    }
  }

  // "pipeline/run/step#attempt" (a step) as "step#attempt · pipeline", the whole in its tooltip.
  function who(text) {
    const m = /^([^/]+)\/([^/]+)\/(.+)$/.exec(text);
    if (!m) return text;
    return h("span", { title: text }, m[3], h("span", { class: "muted small", text: ` · ${m[1]}` }));
  }

  function depth(n) {
    const el = h("span", { class: "depth" }, h("span", { class: "depth-bar" }), h("span", { text: n }));
    el.firstChild.style.width = `${Math.min(100, 4 + Math.log10(1 + n) * 24)}px`;
    return el;
  }

  const reload = debounce(load, 300);
  load();
  const tick = setInterval(load, 2000);
  return { stream: { topics: "space.", rates: "1" }, onEvent: () => reload(), stop: () => clearInterval(tick) };
}
