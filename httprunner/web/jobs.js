// The jobs view: newest first, a state filter with counts, a text filter on
// the command line, "older" paging with the `before` cursor.  The filters
// live in the URL (#/jobs?state=failed&q=backup) so a view can be shared.

import { ApiError, getJSON } from "./api.js";
import {
  DASH,
  commandLine,
  exitText,
  formatBytes,
  formatCpu,
  formatDuration,
  formatFullTime,
  formatTime,
  h,
  replace,
  stateBadge,
  stateLabel,
} from "./dom.js";

export const STATES = ["queued", "running", "succeeded", "failed", "timed_out", "canceled", "spawn_failed", "lost"];
const JOB_ID = /^[0-9a-f]{40}$/;
const DEFAULT_LIMIT = 50;
const TYPING_PAUSE_MS = 250;

/** Seconds a job has run: its duration once finished, else since it started. */
export function elapsed(job, serverNow) {
  if (job.duration !== null && job.duration !== undefined) return job.duration;
  if (job.state === "running" && job.started_at) return (serverNow - new Date(job.started_at).getTime()) / 1000;
  return null;
}

export class JobsView {
  constructor(root, app, params) {
    this.app = app;
    this.generation = 0;
    this.typingTimer = null;
    const wanted = (params.get("state") || "").split(",");
    this.states = new Set(STATES.filter((state) => wanted.includes(state)));
    this.text = params.get("q") || "";
    this.before = JOB_ID.test(params.get("before") || "") ? params.get("before") : null;
    const limit = Number.parseInt(params.get("limit") || "", 10);
    this.limit = Number.isFinite(limit) && limit >= 1 && limit <= 1000 ? limit : DEFAULT_LIMIT;
    // the cursors of the newer pages, to go back to them
    this.newer = [];
    this.rows = new Map();
    this.jobs = [];
    // the `before` cursor of the next (older) page, from the listing's `next`
    this.next = null;
    this.clustered = false;
    this.build(root);
    this.describe();
  }

  build(root) {
    this.stateButtons = new Map();
    const group = h("div", { class: "state-filter", role: "group", "aria-label": "Show jobs in state" });
    this.allButton = h("button", { type: "button", class: "chip", "data-state": "" });
    this.allButton.addEventListener("click", () => this.setStates(new Set()));
    group.append(this.allButton);
    for (const state of STATES) {
      const button = h("button", { type: "button", class: "chip chip-" + state, "data-state": state });
      button.addEventListener("click", () => {
        const states = new Set(this.states);
        if (states.has(state)) states.delete(state);
        else states.add(state);
        this.setStates(states);
      });
      this.stateButtons.set(state, button);
      group.append(button);
    }
    this.filter = h("input", {
      type: "search",
      id: "filter",
      placeholder: "command or argument",
      autocomplete: "off",
      spellcheck: "false",
      value: this.text,
      "aria-describedby": "filter-help",
    });
    this.filter.addEventListener("input", () => {
      clearTimeout(this.typingTimer);
      this.typingTimer = setTimeout(() => this.setText(this.filter.value), TYPING_PAUSE_MS);
    });
    this.filter.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(this.typingTimer);
        this.setText(this.filter.value);
      }
    });
    const search = h(
      "div",
      { class: "search" },
      h("label", { for: "filter" }, "Filter"),
      this.filter,
      h("span", { id: "filter-help", class: "hint" }, "part of the command line, any case (press / to focus)"),
    );
    this.headRow = h("tr");
    this.body = h("tbody");
    this.table = h("table", { class: "jobs-table" }, h("thead", {}, this.headRow), this.body);
    this.empty = h("p", { class: "empty", hidden: true });
    this.newerButton = h("button", { type: "button", class: "pager-newer" }, "\u2190 Newer");
    this.newestButton = h("button", { type: "button", class: "pager-newest" }, "Newest");
    this.olderButton = h("button", { type: "button", class: "pager-older" }, "Older \u2192");
    this.newerButton.addEventListener("click", () => this.page(this.newer.length ? this.newer.pop() : null));
    this.newestButton.addEventListener("click", () => {
      this.newer = [];
      this.page(null);
    });
    this.olderButton.addEventListener("click", () => {
      if (!this.next) return;
      this.newer.push(this.before);
      this.page(this.next);
    });
    this.pageInfo = h("span", { class: "page-info", "aria-live": "polite" });
    const pager = h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      this.newestButton,
      this.newerButton,
      this.pageInfo,
      this.olderButton,
    );
    replace(
      root,
      h(
        "section",
        { class: "jobs-view", "aria-labelledby": "jobs-title" },
        h("h1", { id: "jobs-title", class: "visually-hidden" }, "Jobs"),
        h("div", { class: "filters" }, group, search),
        h("div", { class: "table-wrap" }, this.table),
        this.empty,
        pager,
      ),
    );
    this.renderHead();
    this.renderCounts(null);
    this.renderPager();
  }

  describe() {
    const query = new URLSearchParams();
    if (this.states.size) query.set("state", [...this.states].join(","));
    if (this.text) query.set("q", this.text);
    if (this.before) query.set("before", this.before);
    if (this.limit !== DEFAULT_LIMIT) query.set("limit", String(this.limit));
    const text = query.toString();
    this.app.describe("#/jobs" + (text ? "?" + text : ""));
  }

  setStates(states) {
    this.states = states;
    this.before = null;
    this.newer = [];
    this.describe();
    this.renderCounts(this.app.stats);
    this.load();
  }

  setText(text) {
    if (text === this.text) return;
    this.text = text;
    this.before = null;
    this.newer = [];
    this.describe();
    this.load();
  }

  page(before) {
    this.before = before;
    this.describe();
    this.load();
  }

  query() {
    const query = new URLSearchParams({ limit: String(this.limit) });
    if (this.states.size) query.set("state", [...this.states].join(","));
    if (this.text) query.set("q", this.text);
    if (this.before) query.set("before", this.before);
    return "jobs?" + query.toString();
  }

  /** Fetch the listing for the current filters and show it. */
  async load() {
    const generation = ++this.generation;
    try {
      const answer = await getJSON(this.query());
      // a newer request (the filter changed meanwhile) wins
      if (generation !== this.generation) return;
      this.jobs = answer.jobs;
      // A daemon without `next` (older than the cursor) pages by the last id.
      const last = this.jobs[this.jobs.length - 1];
      this.next = "next" in answer ? answer.next : this.jobs.length === this.limit && last ? last.id : null;
      this.renderRows();
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof ApiError && error.status === 400 && this.before) {
        // The cursor's job was evicted meanwhile: back to the newest page.
        this.app.setStatus("That page is gone (its jobs were evicted); showing the newest jobs.", true);
        this.newer = [];
        this.page(null);
        return;
      }
      this.app.setStatus("Cannot list jobs: " + error.message, true);
    }
  }

  async refresh(stats) {
    const clustered = Array.isArray(stats.nodes) && stats.nodes.length > 0;
    if (clustered !== this.clustered) {
      this.clustered = clustered;
      this.renderHead();
      this.rows.clear();
      this.body.replaceChildren();
    }
    this.renderCounts(stats);
    await this.load();
  }

  renderCounts(stats) {
    const counts = (stats && stats.states) || {};
    const total = STATES.reduce((sum, state) => sum + (counts[state] || 0), 0);
    replace(this.allButton, "All ", h("span", { class: "count" }, stats ? String(total) : ""));
    this.allButton.setAttribute("aria-pressed", String(this.states.size === 0));
    for (const [state, button] of this.stateButtons) {
      replace(button, stateLabel(state) + " ", h("span", { class: "count" }, stats ? String(counts[state] || 0) : ""));
      button.setAttribute("aria-pressed", String(this.states.has(state)));
    }
  }

  columns() {
    const columns = [
      ["State", "col-state"],
      ["Job", "col-id"],
      ["Command", "col-command"],
      ["Created", "col-created"],
      ["Duration", "col-duration"],
      ["Exit", "col-exit"],
      ["CPU", "col-cpu"],
      ["Max RSS", "col-rss"],
    ];
    if (this.clustered) columns.splice(3, 0, ["Node", "col-node"]);
    return columns;
  }

  renderHead() {
    replace(
      this.headRow,
      this.columns().map(([title, cls]) => h("th", { scope: "col", class: cls }, title)),
    );
  }

  renderRows() {
    const seen = new Set();
    this.jobs.forEach((job, index) => {
      seen.add(job.id);
      let row = this.rows.get(job.id);
      if (!row) {
        row = this.newRow(job);
        this.rows.set(job.id, row);
      }
      this.updateRow(row, job);
      // Move only what is out of place: a moved element loses the focus.
      const at = this.body.children[index];
      if (at !== row) this.body.insertBefore(row, at || null);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    this.empty.hidden = this.jobs.length > 0;
    if (!this.jobs.length) {
      const filtered = this.states.size || this.text || this.before;
      replace(
        this.empty,
        filtered ? "No jobs match these filters." : "No jobs yet. Submit one with POST / (see the README) and it shows up here.",
      );
    }
    this.renderPager();
    this.tick();
  }

  newRow(job) {
    const cells = {};
    const row = h("tr", { "data-id": job.id });
    for (const [, cls] of this.columns()) {
      cells[cls] = h("td", { class: cls });
      row.append(cells[cls]);
    }
    // Both the short id and the command line link to the job; the command is
    // the row's one tab stop (it is there on a phone, where the id column is not).
    replace(
      cells["col-id"],
      h("a", { href: "#/job/" + job.id, class: "job-link", title: job.id, tabindex: "-1" }, h("code", {}, job.id.slice(0, 8))),
    );
    row.commandLink_ = h("a", { href: "#/job/" + job.id, class: "command-link" });
    cells["col-command"].append(row.commandLink_);
    row.cells_ = cells;
    return row;
  }

  updateRow(row, job) {
    const cells = row.cells_;
    const set = (cls, text, title) => {
      const cell = cells[cls];
      if (!cell) return;
      if (cell.textContent !== text) cell.textContent = text;
      if (title !== undefined && cell.title !== title) cell.title = title;
    };
    if (row.dataset.state !== job.state) {
      row.dataset.state = job.state;
      replace(cells["col-state"], stateBadge(job.state));
    }
    const line = commandLine(job);
    if (row.commandLink_.textContent !== line) {
      row.commandLink_.textContent = line;
      row.commandLink_.title = line;
    }
    set("col-node", job.node ?? DASH);
    set("col-created", formatTime(job.created_at), formatFullTime(job.created_at));
    set("col-exit", exitText(job), job.err ? job.err.code + ": " + job.err.message : "");
    set("col-cpu", formatCpu(job.cpu_seconds));
    set("col-rss", formatBytes(job.max_rss_bytes));
    row.job_ = job;
  }

  /** Update the durations (running ones tick). */
  tick() {
    const now = this.app.serverNow();
    for (const row of this.rows.values()) {
      const cell = row.cells_["col-duration"];
      const text = formatDuration(elapsed(row.job_, now));
      if (cell.textContent !== text) cell.textContent = text;
    }
  }

  renderPager() {
    this.olderButton.hidden = !this.next;
    this.newerButton.hidden = this.newer.length < 2;
    this.newestButton.hidden = !this.before;
    const first = this.jobs[0];
    const last = this.jobs[this.jobs.length - 1];
    this.pageInfo.textContent =
      this.before && first ? "older jobs, from " + formatTime(first.created_at) + " back to " + formatTime(last.created_at) : "";
  }

  destroy() {
    clearTimeout(this.typingTimer);
    this.generation += 1;
  }
}
