// One step's detail: state, error with traceback, inputs, output, log lines, and an agent's transcript.

import { badge, duration, h, pairs, when } from "../dom.js";

export function stepDetail(s) {
  return h("div", { class: "step-detail", dataset: { step: s.name } },
    h("h2", {}, h("span", { class: "muted", text: "Step " }), s.name, " ", badge(s.status)),
    pairs([["kind", s.kind], ["goal", s.goal], ["attempts", s.attempts], ["started", when(s.started_at)],
      ["finished", when(s.finished_at)], ["duration", duration(s.duration_s)],
      ["cost", s.cost ? `$${s.cost.toFixed(4)}` : null], ["tokens", s.tokens || null],
      ["skipped because", s.skip_reason], ["added by", s.added_by], ["compensation", s.compensation]]),
    s.error ? block("Error", h("p", { class: "error", text: s.error }),
      s.traceback ? h("pre", { class: "traceback", text: s.traceback }) : null) : null,
    block("Inputs",
      s.inputs.length ? h("ul", { class: "inputs" }, s.inputs.map((i) => h("li", {}, badge(i.status), ` ${i.step} `, h("span", { class: "muted small", text: `(${i.type})` }))))
        : h("p", { class: "muted small", text: "no dependencies" }),
      s.params ? h("pre", { class: "value", text: s.params }) : null),
    block("Output", s.output !== null ? h("pre", { class: "value", text: s.output }) : h("p", { class: "muted small", text: "no output (yet)" })),
    block(`Logs (${s.logs.length})`, s.logs.length
      ? h("pre", { class: "logs" }, s.logs.map((l) => h("span", { class: `log ${l.level.toLowerCase()}`,
        text: `${new Date(l.ts * 1000).toLocaleTimeString()} ${l.level.padEnd(7)} ${l.message}\n` })))
      : h("p", { class: "muted small", text: "no log lines" })),
    s.transcript.length ? block("Transcript", s.transcript.map(attempt)) : null);
}

function block(title, ...children) {
  return h("div", { class: "block" }, h("h3", { text: title }), ...children);
}

function attempt(a) {
  const head = `${a.phase === "condition" ? "condition check" : "attempt"} ${a.attempt ?? "?"}${a.item !== null && a.item !== undefined ? `, item ${a.item}` : ""}: ${a.status ?? "?"}${a.model ? ` (${a.model})` : ""}`;
  return h("div", { class: "transcript" }, h("h4", { text: head }),
    a.lines.map((l) => h("div", { class: "msg", dataset: { who: l.who } },
      h("span", { class: "who", text: l.tool ? `${l.who} ${l.tool}` : l.who }),
      h("pre", { class: "text", text: l.text }))));
}
