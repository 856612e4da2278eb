// The overview: running and queued now, finished per minute by state over
// the last hour (an SVG chart drawn here), and the nodes of a cluster.
// Everything comes from GET /stats, which scripts can read as well.

import { formatTime, h, replace, stateLabel, svg } from "./dom.js";

export const FINISHED = ["succeeded", "failed", "timed_out", "canceled", "spawn_failed", "lost"];

const HEIGHT = 200;
const LEFT = 36;
const BOTTOM = 22;
const TOP = 10;

/** A round upper bound for the y axis: 1, 2, 5, 10, 20, 50... */
export function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/** The chart of `finished_per_minute`: stacked bars, one a minute. */
export function finishedChart(minutes, width = 720) {
  const totals = minutes.map((m) => FINISHED.reduce((sum, state) => sum + (m[state] || 0), 0));
  const top = niceMax(Math.max(0, ...totals));
  const plotWidth = width - LEFT - 4;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const slot = plotWidth / Math.max(minutes.length, 1);
  const barWidth = Math.max(slot - 2, 1);
  const y = (count) => TOP + plotHeight - (count / top) * plotHeight;
  const finished = totals.reduce((a, b) => a + b, 0);
  const chart = svg("svg", {
    class: "chart",
    viewBox: "0 0 " + width + " " + HEIGHT,
    role: "img",
    "aria-label": "Jobs finished per minute over the last hour, by state: " + finished + " in all",
    width: width,
    height: HEIGHT,
  });
  // grid lines and the y labels
  for (const value of [0, top / 2, top]) {
    chart.append(svg("line", { class: "grid", x1: LEFT, x2: width, y1: y(value), y2: y(value) }));
    chart.append(svg("text", { class: "axis", x: LEFT - 6, y: y(value) + 4, "text-anchor": "end" }, String(value)));
  }
  minutes.forEach((minute, index) => {
    const x = LEFT + index * slot + 1;
    let base = 0;
    const label = formatTime(minute.minute).slice(0, 5);
    const parts = FINISHED.filter((state) => minute[state]).map((state) => minute[state] + " " + stateLabel(state));
    const group = svg("g", { class: "minute" }, svg("title", {}, label + ": " + (parts.join(", ") || "none finished")));
    // an invisible full-height target, so the tooltip is there for empty minutes too
    group.append(svg("rect", { class: "hover", x, y: TOP, width: barWidth, height: plotHeight }));
    for (const state of FINISHED) {
      const count = minute[state] || 0;
      if (!count) continue;
      group.append(
        svg("rect", {
          class: "bar bar-" + state,
          x,
          y: y(base + count),
          width: barWidth,
          height: Math.max(y(base) - y(base + count), 1),
        }),
      );
      base += count;
    }
    chart.append(group);
  });
  const labels = [
    [0, minutes[0]],
    [Math.floor(minutes.length / 2), minutes[Math.floor(minutes.length / 2)]],
    [minutes.length - 1, minutes[minutes.length - 1]],
  ];
  for (const [index, minute] of labels) {
    if (!minute) continue;
    const anchor = index === 0 ? "start" : index === minutes.length - 1 ? "end" : "middle";
    const x = LEFT + index * slot + (anchor === "end" ? slot : anchor === "start" ? 0 : slot / 2);
    chart.append(
      svg("text", { class: "axis", x, y: HEIGHT - 6, "text-anchor": anchor }, formatTime(minute.minute).slice(0, 5)),
    );
  }
  return chart;
}

function legend() {
  return h(
    "ul",
    { class: "legend", "aria-label": "Colours" },
    FINISHED.map((state) => h("li", {}, h("span", { class: "swatch bar-" + state, "aria-hidden": "true" }), stateLabel(state))),
  );
}

export class OverviewView {
  constructor(root, app) {
    this.app = app;
    this.now = h("div", { class: "cards" });
    this.chart = h("div", { class: "chart-wrap" });
    this.nodes = h("section", { class: "nodes", hidden: true, "aria-labelledby": "nodes-title" });
    replace(
      root,
      h(
        "section",
        { class: "overview", "aria-labelledby": "overview-title" },
        h("h1", { id: "overview-title" }, "Overview"),
        this.now,
        h("h2", {}, "Finished per minute, last hour"),
        this.chart,
        legend(),
        this.nodes,
      ),
    );
    if (app.stats) this.refresh(app.stats);
  }

  refresh(stats) {
    const card = (label, value, cls, href) =>
      h("a", { class: "card " + cls, href }, h("span", { class: "value" }, String(value)), h("span", { class: "label" }, label));
    const retained = FINISHED.reduce((sum, state) => sum + (stats.states[state] || 0), 0);
    const failing = ["failed", "timed_out", "spawn_failed", "lost"].reduce((sum, s) => sum + (stats.states[s] || 0), 0);
    replace(
      this.now,
      card("running", stats.running, "card-running", "#/jobs?state=running"),
      card("queued", stats.queued, "card-queued", "#/jobs?state=queued"),
      card("finished (kept)", retained, "card-finished", "#/jobs"),
      card("failed in any way (kept)", failing, "card-failed", "#/jobs?state=failed,timed_out,spawn_failed,lost"),
    );
    // Drawn in the pixels it has, so the labels stay crisp on any screen.
    const width = Math.max(this.chart.clientWidth - 16, 240);
    replace(this.chart, finishedChart(stats.finished_per_minute || [], width));
    this.renderNodes(stats.nodes || []);
  }

  renderNodes(nodes) {
    if (!nodes.length) {
      this.nodes.hidden = true;
      return;
    }
    const now = this.app.serverNow();
    const rows = nodes.map((node) => {
      const age = node.last_heartbeat ? Math.max(0, (now - new Date(node.last_heartbeat).getTime()) / 1000) : null;
      return h(
        "tr",
        { class: node.alive ? "alive" : "dead" },
        h("td", {}, String(node.name)),
        h("td", { title: node.last_heartbeat || "" }, age === null ? "\u2014" : Math.round(age) + " s ago"),
        h("td", {}, node.alive ? "alive" : "not answering"),
        h("td", { class: "num" }, String(node.running ?? "\u2014")),
      );
    });
    replace(
      this.nodes,
      h("h2", { id: "nodes-title" }, "Nodes"),
      h(
        "table",
        { class: "nodes-table" },
        h(
          "thead",
          {},
          h("tr", {}, ["Node", "Last heartbeat", "State", "Running"].map((t) => h("th", { scope: "col" }, t))),
        ),
        h("tbody", {}, rows),
      ),
    );
    this.nodes.hidden = false;
  }

  destroy() {}
}
