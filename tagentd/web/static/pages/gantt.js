// The timing bars (a Gantt chart): one row per step, one bar per attempt, placed by time; bars are divs
// positioned through the CSSOM (no inline style markup: the page's Content-Security-Policy holds).

import { duration, h } from "../dom.js";

export function gantt(chart, order, onSelect) {
  if (!chart.bars.length) return h("p", { class: "empty", text: "no step has started yet" });
  const span = Math.max(chart.end - chart.start, 0.001);
  const byStep = new Map(order.map((name) => [name, []]));
  for (const bar of chart.bars) {
    if (!byStep.has(bar.step)) byStep.set(bar.step, []);
    byStep.get(bar.step).push(bar);
  }
  const rows = [...byStep.entries()].map(([step, bars]) => {
    const track = h("div", { class: "track" });
    for (const bar of bars) {
      const el = h("div", { class: "gbar", dataset: { state: bar.outcome },
        title: `${step} attempt ${bar.attempt}: ${bar.outcome}, ${duration(bar.end - bar.start)}` });
      el.style.left = `${(100 * (bar.start - chart.start)) / span}%`;
      el.style.width = `max(3px, ${(100 * (bar.end - bar.start)) / span}%)`;
      if (bars.length > 1) el.textContent = `#${bar.attempt}`;
      track.append(el);
    }
    return h("div", { class: "grow", onclick: () => onSelect(step) }, h("div", { class: "glabel", title: step, text: step }), track);
  });
  const axis = h("div", { class: "gaxis" }, h("span", { text: "0" }), h("span", { text: duration(span / 2) }), h("span", { text: duration(span) }));
  return h("div", { class: "gantt" }, rows, h("div", { class: "grow" }, h("div", { class: "glabel" }), axis));
}
