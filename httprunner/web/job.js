// The job view: every field, stdout and stderr live, Cancel, the callback
// delivery record and a curl command that resubmits the job.

import { AnsiTerminal, styleToCss } from "./ansi.js";
import { API_ROOT, ApiError, apiUrl, getJSON, getToken, send } from "./api.js";
import { confirmAction } from "./dialogs.js";
import {
  DASH,
  commandLine,
  exitText,
  formatBytes,
  formatCpu,
  formatDuration,
  formatFullTime,
  h,
  orDash,
  replace,
  shellQuote,
  stateBadge,
} from "./dom.js";
import { elapsed } from "./jobs.js";

/** The most output one pane keeps; beyond it the oldest lines go. */
export const PANE_CAP = 1024 * 1024;
// Trim to this much below the cap, so trimming is not done for every chunk.
const TRIM_TO = PANE_CAP - 64 * 1024;
// The most bytes handed to the renderer in one go, so that input events
// are answered between two pieces of a large burst.
const SLICE = 64 * 1024;
// When loading starts in the middle of a stream, skip to the next newline
// (not in the middle of a line or an escape sequence) within this many bytes.
const RESYNC_LIMIT = 64 * 1024;
// How often a busy pane is redrawn.
const FLUSH_MS = 100;
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10000;
// A long-poll for the end of the job (the daemon caps it at --max-wait).
const WAIT_SECONDS = 300;

const ACTIVE = new Set(["queued", "running"]);
const RANK = { queued: 0, running: 1 };

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function yieldToInput() {
  // A macrotask: lets the browser answer input events and paint.
  return new Promise((resolve) => setTimeout(resolve, 0));
}

function rank(state) {
  return RANK[state] ?? 2;
}

/** One stream of a job, followed live with `?follow=1&offset=N`. */
class OutputPane {
  constructor(view, stream) {
    this.view = view;
    this.stream = stream;
    this.abort = new AbortController();
    this.offset = 0;
    this.started = false;
    this.resync = false;
    this.kept = 0;
    this.sizes = []; // characters of each line element, oldest first
    this.pending = []; // completed lines not drawn yet
    this.pendingSize = 0;
    this.flushTimer = null;
    this.dropped = false; // lines of a burst were never drawn
    this.trimmed = false; // the pane does not hold the whole stream
    this.terminal = new AnsiTerminal();
    this.decoder = new TextDecoder("utf-8");
    this.done = false;

    const id = view.id;
    this.rawLink = h(
      "a",
      { href: apiUrl(id + "/" + stream), download: id + "." + stream, class: "raw" },
      "raw " + stream,
    );
    this.rawLink.addEventListener("click", (event) => this.download(event));
    this.bytes = h("span", { class: "bytes" });
    this.live = h("span", { class: "live", hidden: true });
    this.notice = h("p", { class: "notice", hidden: true, role: "note" });
    this.current = h("span", { class: "line current" });
    this.pre = h(
      "pre",
      { class: "output", tabindex: "0", "aria-label": stream + " of the job", "data-stream": stream },
      this.current,
    );
    this.element = h(
      "section",
      { class: "pane pane-" + stream, "aria-label": stream },
      h("h2", {}, stream, " ", this.bytes, " ", this.live, " ", this.rawLink),
      this.notice,
      this.pre,
    );
  }

  start(job) {
    if (this.started) return;
    this.started = true;
    const total = job[this.stream + "_bytes"] || 0;
    if (total > PANE_CAP) {
      // Load only the last ~1 MiB of a long stream.
      this.offset = total - PANE_CAP;
      this.resync = true;
      this.trimmed = true;
    }
    this.update(job);
    this.follow();
  }

  update(job) {
    this.total = job[this.stream + "_bytes"] ?? 0;
    this.showSize();
    this.renderNotice(job);
  }

  /** The stream's size: what the job last reported, or what arrived since. */
  size() {
    return Math.max(this.total || 0, this.offset);
  }

  showSize() {
    const text = formatBytes(this.size());
    if (this.bytes.textContent !== text) this.bytes.textContent = text;
  }

  renderNotice(job) {
    const parts = [];
    if (this.trimmed) {
      parts.push(
        "This page keeps the last ~1 MiB of each stream: earlier output is not shown here. ",
      );
    }
    const dropped = job ? job[this.stream + "_dropped"] : 0;
    if (dropped > 0) {
      parts.push(
        "The daemon kept only the head and tail of this stream: " +
          formatBytes(dropped) +
          " in the middle were dropped (--max-output). ",
      );
    }
    if (!parts.length) {
      this.notice.hidden = true;
      return;
    }
    const link = h("a", { href: this.rawLink.href, download: this.rawLink.getAttribute("download") }, "Download the raw output");
    link.addEventListener("click", (event) => this.download(event));
    replace(this.notice, parts.join(""), link, ".");
    this.notice.hidden = false;
  }

  setLive(text) {
    this.live.hidden = !text;
    this.live.textContent = text || "";
  }

  async follow() {
    const signal = this.abort.signal;
    let retry = RETRY_FIRST_MS;
    while (!signal.aborted && !this.done) {
      try {
        const response = await send(this.view.id + "/" + this.stream + "?follow=1&offset=" + this.offset, {
          signal,
          accept: "application/octet-stream",
        });
        if (!response.ok) {
          let message = response.status + " " + response.statusText;
          try {
            message = (await response.json()).error || message;
          } catch {
            // keep the status line
          }
          throw new ApiError(response.status, message);
        }
        const start = Number.parseInt(response.headers.get("X-Output-Offset") || "", 10);
        if (Number.isFinite(start) && start > this.offset) this.gap(start - this.offset);
        if (Number.isFinite(start)) this.offset = start;
        this.setLive(this.view.active() ? "live" : "");
        const reader = response.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          retry = RETRY_FIRST_MS;
          await this.receive(value);
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status === 404) {
          this.setLive("");
          this.done = true;
          return;
        }
        this.setLive("connection dropped; resuming at byte " + this.offset + "\u2026");
      }
      // The stream ended: the job is finished (and everything was sent),
      // or the connection was cut (a proxy, an idle timeout, the network).
      const job = await this.view.reload();
      if (signal.aborted) return;
      if (job && !ACTIVE.has(job.state) && this.offset >= (job[this.stream + "_bytes"] || 0)) break;
      await sleep(retry, signal);
      retry = Math.min(retry * 2, RETRY_MAX_MS);
    }
    this.finish();
  }

  finish() {
    this.done = true;
    this.setLive("");
    const text = this.decoder.decode();
    this.queue(this.terminal.write(text).concat(this.terminal.flush()));
    this.flush();
  }

  gap(bytes) {
    // Bytes the daemon no longer has (or the part of a long stream this
    // page did not load): the decoder and the terminal start afresh.
    this.decoder = new TextDecoder("utf-8");
    const lines = this.terminal.flush();
    this.terminal = new AnsiTerminal();
    if (!this.resync) {
      const marker = [{ text: "[\u2026 " + bytes + " bytes dropped by the daemon \u2026]", style: { key: "gap", gap: true } }];
      marker.newline = true;
      lines.push(marker);
    }
    this.queue(lines);
    this.flush();
  }

  async receive(bytes) {
    this.offset += bytes.length;
    if (this.resync) {
      const newline = bytes.indexOf(10);
      this.skipped = (this.skipped || 0) + (newline < 0 ? bytes.length : newline + 1);
      if (newline < 0 && this.skipped < RESYNC_LIMIT) return;
      this.resync = false;
      if (newline >= 0) bytes = bytes.subarray(newline + 1);
    }
    for (let at = 0; at < bytes.length; at += SLICE) {
      const text = this.decoder.decode(bytes.subarray(at, at + SLICE), { stream: true });
      this.queue(this.terminal.write(text));
      if (bytes.length > SLICE) await yieldToInput();
    }
    // The page is drawn at most every FLUSH_MS, however fast output comes.
    if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  // Completed lines wait here until the next flush.  Lines that would be
  // trimmed at once (a burst larger than the cap) never become elements.
  queue(lines) {
    for (const line of lines) {
      let size = line.newline ? 1 : 0;
      for (const run of line) size += run.text.length;
      line.size = size;
      this.pending.push(line);
      this.pendingSize += size;
    }
    let first = 0;
    while (this.pendingSize - this.pending[first]?.size > TRIM_TO) {
      this.pendingSize -= this.pending[first].size;
      first += 1;
    }
    if (first > 0) {
      this.pending.splice(0, first);
      this.dropped = true;
    }
  }

  atBottom() {
    const pre = this.pre;
    return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  }

  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const follow = this.atBottom();
    if (this.pending.length) {
      const fragment = document.createDocumentFragment();
      for (const line of this.pending) {
        fragment.append(renderLine(line, line.newline));
        this.sizes.push(line.size);
        this.kept += line.size;
      }
      this.pending = [];
      this.pendingSize = 0;
      this.pre.insertBefore(fragment, this.current);
    }
    this.current.replaceChildren(...renderRuns(this.terminal.current()));
    this.trim();
    this.showSize();
    if (follow) this.pre.scrollTop = this.pre.scrollHeight;
  }

  trim() {
    let removed = 0;
    if (this.kept > PANE_CAP) {
      while (this.kept > TRIM_TO && this.pre.firstChild !== this.current) {
        this.pre.firstChild.remove();
        this.kept -= this.sizes[removed];
        removed += 1;
      }
      this.sizes.splice(0, removed);
    }
    if ((removed || this.dropped) && !this.trimmed) {
      this.trimmed = true;
      this.renderNotice(this.view.job);
    }
  }

  async download(event) {
    // Without a token the link itself works; with one, fetch with the header.
    if (!getToken()) return;
    event.preventDefault();
    try {
      const response = await send(this.view.id + "/" + this.stream, { accept: "application/octet-stream" });
      if (!response.ok) throw new ApiError(response.status, response.status + " " + response.statusText);
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: this.view.id + "." + this.stream, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (error) {
      this.view.app.setStatus("Cannot download the output: " + error.message, true);
    }
  }

  stop() {
    this.abort.abort();
    clearTimeout(this.flushTimer);
  }
}

function renderRuns(runs) {
  const nodes = [];
  for (const run of runs) {
    if (run.style.gap) {
      nodes.push(h("span", { class: "gap" }, run.text));
      continue;
    }
    const { classes, css } = styleToCss(run.style);
    if (!classes.length && !css.color && !css.backgroundColor) {
      nodes.push(document.createTextNode(run.text));
      continue;
    }
    const span = h("span", classes.length ? { class: classes.join(" ") } : {}, run.text);
    // CSSOM properties, not a style attribute: the CSP allows these.
    if (css.color) span.style.color = css.color;
    if (css.backgroundColor) span.style.backgroundColor = css.backgroundColor;
    nodes.push(span);
  }
  return nodes;
}

function renderLine(runs, newline) {
  const line = h("span", { class: "line" }, ...renderRuns(runs));
  if (newline) line.append("\n");
  return line;
}

/** A curl command that submits the same job again. */
export function resubmitCommand(job, root = API_ROOT.href, withToken = false) {
  const body = { command: job.command, args: job.arguments || [] };
  if (job.timeout !== null && job.timeout !== undefined) body.timeout = job.timeout;
  if (job.callback) body.callback = job.callback;
  const words = ["curl", "-s"];
  if (withToken) words.push("-H", '"Authorization: Bearer $HTTPRUNNER_TOKEN"');
  words.push("-d", shellQuote(JSON.stringify(body)), shellQuote(root));
  return words.join(" ");
}

const FIELDS = [
  ["id", "Id"],
  ["state", "State"],
  ["command", "Command"],
  ["arguments", "Arguments"],
  ["code", "Exit code"],
  ["signal", "Signal"],
  ["err", "Error"],
  ["pid", "Pid"],
  ["node", "Node"],
  ["created_at", "Created"],
  ["started_at", "Started"],
  ["finished_at", "Finished"],
  ["duration", "Duration"],
  ["timeout", "Timeout"],
  ["cpu_seconds", "CPU time"],
  ["max_rss_bytes", "Max RSS"],
  ["stdout_bytes", "Stdout"],
  ["stderr_bytes", "Stderr"],
  ["callback", "Callback"],
];
const NOT_FIELDS = new Set(["stdout", "stderr", "callback_delivery", "stdout_dropped", "stderr_dropped"]);

export class JobView {
  constructor(root, app, id) {
    this.app = app;
    this.id = id;
    this.job = null;
    this.abort = new AbortController();
    this.reloading = null;
    this.watching = false;
    this.panes = [new OutputPane(this, "stdout"), new OutputPane(this, "stderr")];
    this.build(root);
    this.reload().then((job) => {
      if (!job) return;
      for (const pane of this.panes) pane.start(job);
      this.watch();
    });
  }

  build(root) {
    this.heading = h("h1", { class: "job-title" }, h("code", {}, this.id));
    this.cancelButton = h("button", { type: "button", class: "danger", hidden: true }, "Cancel job\u2026");
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.fields = h("dl", { class: "fields" });
    this.callback = h("section", { class: "callback", hidden: true, "aria-labelledby": "callback-title" });
    this.curl = h("textarea", {
      class: "curl",
      readonly: true,
      rows: "3",
      spellcheck: "false",
      "aria-label": "curl command that submits this job again",
    });
    this.copyButton = h("button", { type: "button" }, "Copy");
    this.copyButton.addEventListener("click", () => this.copy());
    this.copyStatus = h("span", { class: "hint", role: "status" });
    replace(
      root,
      h(
        "article",
        { class: "job-view" },
        h("nav", { class: "crumbs", "aria-label": "Back" }, h("a", { href: "#/jobs" }, "\u2190 Jobs")),
        h("header", { class: "job-head" }, this.heading, h("div", { class: "actions" }, this.cancelButton)),
        this.fields,
        h("div", { class: "outputs" }, this.panes.map((pane) => pane.element)),
        this.callback,
        h(
          "section",
          { class: "resubmit", "aria-labelledby": "resubmit-title" },
          h("h2", { id: "resubmit-title" }, "Submit again"),
          this.curl,
          h(
            "div",
            { class: "row" },
            this.copyButton,
            this.copyStatus,
            h("span", { class: "hint" }, "stdin and env are not kept with a job, so they are not in this command."),
          ),
        ),
      ),
    );
  }

  active() {
    return this.job !== null && ACTIVE.has(this.job.state);
  }

  /** GET the job (one request at a time); show it; resolve to it. */
  reload() {
    if (!this.reloading) {
      this.reloading = getJSON(this.id, { signal: this.abort.signal })
        .then((job) => {
          this.show(job);
          return job;
        })
        .catch((error) => {
          if (!this.abort.signal.aborted) this.failed(error);
          return null;
        })
        .finally(() => {
          this.reloading = null;
        });
    }
    return this.reloading;
  }

  failed(error) {
    if (error instanceof ApiError && error.status === 404) {
      replace(this.heading, "No job ", h("code", {}, this.id));
      this.app.setStatus(error.message, true);
      for (const pane of this.panes) pane.stop();
      return;
    }
    this.app.setStatus("Cannot load the job: " + error.message, true);
  }

  /** Wait for the job to end with a long-poll; the 2-second refresh covers queued -> running. */
  async watch() {
    if (this.watching) return;
    this.watching = true;
    const signal = this.abort.signal;
    while (!signal.aborted && this.active()) {
      try {
        const job = await getJSON(this.id + "?wait=" + WAIT_SECONDS, { signal });
        this.show(job);
      } catch (error) {
        if (signal.aborted) break;
        await sleep(RETRY_MAX_MS / 2, signal);
      }
    }
    this.watching = false;
  }

  show(job) {
    // Answers can cross: never go back from running to queued, or from an end.
    if (this.job && rank(job.state) < rank(this.job.state)) return;
    this.job = job;
    replace(this.heading, stateBadge(job.state), " ", h("code", { class: "cmd" }, commandLine(job)));
    document.title = commandLine(job).slice(0, 60) + " \u2014 httprunner";
    this.cancelButton.hidden = !ACTIVE.has(job.state);
    this.renderFields(job);
    this.renderCallback(job);
    this.curl.value = resubmitCommand(job, API_ROOT.href, Boolean(getToken()));
    for (const pane of this.panes) {
      pane.update(job);
      if (!ACTIVE.has(job.state) && !pane.done) pane.setLive("");
    }
  }

  renderFields(job) {
    const rows = [];
    const add = (label, value, title) => {
      rows.push(h("div", { class: "field field-" + label.toLowerCase().replaceAll(" ", "-") }, h("dt", {}, label), h("dd", title ? { title } : {}, value)));
    };
    for (const [key, label] of FIELDS) {
      const value = job[key];
      if (key === "callback" && !("callback" in job)) continue;
      if (key === "state") add(label, stateBadge(value));
      else if (key === "id") add(label, h("code", {}, value));
      else if (key === "command") add(label, h("code", {}, orDash(value)));
      else if (key === "arguments") add(label, h("code", {}, JSON.stringify(value ?? [])));
      else if (key === "code") add(label, exitText(job));
      else if (key === "err") add(label, value ? value.code + ": " + value.message : DASH);
      else if (key.endsWith("_at")) add(label, value ? formatFullTime(value) : DASH, value || undefined);
      else if (key === "duration") add(label, h("span", { "data-duration": "" }, formatDuration(elapsed(job, this.app.serverNow()))));
      else if (key === "timeout") add(label, value ? formatDuration(value) : "none");
      else if (key === "cpu_seconds") add(label, formatCpu(value));
      else if (key === "max_rss_bytes") add(label, formatBytes(value));
      else if (key.endsWith("_bytes")) {
        const dropped = job[key.replace("_bytes", "_dropped")];
        add(label, formatBytes(value) + (dropped ? " (" + formatBytes(dropped) + " dropped by the daemon)" : ""));
      } else add(label, orDash(value));
    }
    // Fields this page does not know yet (a newer daemon) are shown as they are.
    const known = new Set(FIELDS.map(([key]) => key));
    for (const [key, value] of Object.entries(job)) {
      if (known.has(key) || NOT_FIELDS.has(key)) continue;
      add(key, value !== null && typeof value === "object" ? JSON.stringify(value) : orDash(value));
    }
    this.fields.replaceChildren(...rows);
  }

  renderCallback(job) {
    if (!job.callback) {
      this.callback.hidden = true;
      return;
    }
    const delivery = job.callback_delivery || {};
    const item = (label, value) => h("div", { class: "field" }, h("dt", {}, label), h("dd", {}, value));
    replace(
      this.callback,
      h("h2", { id: "callback-title" }, "Callback"),
      h(
        "dl",
        { class: "fields" },
        item("URL", h("code", {}, job.callback)),
        item("Delivery", orDash(delivery.state)),
        item("Attempts", orDash(delivery.attempts)),
        item("Last status", orDash(delivery.last_status)),
        item("Last error", orDash(delivery.last_error)),
      ),
    );
    this.callback.hidden = false;
  }

  async cancel() {
    const yes = await confirmAction({
      heading: "Cancel this job?",
      message:
        commandLine(this.job) +
        "\n\nIts process group gets SIGTERM, then SIGKILL after the daemon's --kill-grace. A queued job never starts.",
      yesLabel: "Cancel job",
      noLabel: "Keep it",
    });
    if (!yes) return;
    try {
      const response = await send(this.id, { method: "DELETE" });
      if (!response.ok) throw new ApiError(response.status, response.status + " " + response.statusText);
      this.show(await response.json());
      this.app.setStatus("Cancel requested.");
    } catch (error) {
      this.app.setStatus("Cannot cancel: " + error.message, true);
    }
  }

  async copy() {
    this.curl.select();
    try {
      await navigator.clipboard.writeText(this.curl.value);
      this.copyStatus.textContent = "Copied.";
    } catch {
      // No clipboard API (plain http on a non-local address): the text is
      // selected, Ctrl+C copies it.
      this.copyStatus.textContent = "Selected: press Ctrl+C to copy.";
    }
  }

  async refresh() {
    // The listing's 2-second beat: a queued job is polled until it starts
    // (cheap: it has no output yet); a running one is watched by a long-poll.
    if (this.job && this.job.state === "queued") {
      const job = await this.reload();
      if (job && job.state !== "queued") this.watch();
    }
  }

  tick() {
    const cell = this.fields.querySelector("[data-duration]");
    if (cell && this.job) cell.textContent = formatDuration(elapsed(this.job, this.app.serverNow()));
  }

  destroy() {
    this.abort.abort();
    for (const pane of this.panes) pane.stop();
    document.title = "httprunner";
  }
}
