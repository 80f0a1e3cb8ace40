// The watched folders and each pipeline file seen in them: what became of its latest content.

import { get } from "../api.js";
import { ago, badge, clear, debounce, h, link, section, table } from "../dom.js";

export function mount(main) {
  const body = h("div", {});
  clear(main, h("div", { class: "page-head" }, h("h1", { text: "Watched folders" })), body);

  async function load() {
    let w;
    try {
      w = await get("/api/watch");
    } catch (err) {
      clear(body, h("p", { class: "error", text: err.message }));
      return;
    }
    clear(body,
      section("Folders", table(["Folder", "State", "Subfolders", "Note"],
        w.folders.map((f) => [h("span", { class: "mono", text: f.path }), badge(f.status), f.recursive ? "yes" : "no", f.message || ""]),
        "no folder is watched"),
        h("p", { class: "muted small", text: `a changed file: ${w.on_change}; a deleted file: ${w.on_delete}` }),
        w.problems.length ? h("ul", { class: "bad" }, w.problems.map((p) => h("li", { text: p }))) : null),
      section("Files", table(["File", "State", "Run", "Message", "Since", "Checked"],
        w.files.map((f) => [h("span", { class: "mono", text: f.path }), badge(f.status),
          f.run_id ? link(`#/runs/${encodeURIComponent(f.run_id)}`, f.run_id) : "", f.message || "", ago(f.at), ago(f.checked_at)]),
        "no pipeline file seen yet: drop one into a watched folder"),
        w.settling.length ? h("p", { class: "muted small", text: `settling: ${w.settling.join(", ")}` }) : null));
  }

  const reload = debounce(load, 200);
  load();
  const tick = setInterval(reload, 5000);
  return { stream: { topics: "watch." }, onEvent: () => reload(), stop: () => clearInterval(tick) };
}
