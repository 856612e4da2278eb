// Small helpers shared by the views: building elements and formatting values.
//
// Every piece of text goes in as a text node (`textContent`), never as HTML:
// job output, commands and arguments are whatever a job or a client chose.

/** An element: `h("a", {href: "#/jobs", class: "x"}, "text", child, ...)`. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    // No event-handler or style attributes: the CSP would refuse them and
    // they are never needed (listeners are added in code).
    if (name.startsWith("on") || name === "style") throw new Error("attribute not allowed: " + name);
    element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** An SVG element, with the same rules as `h`. */
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined) continue;
    if (name.startsWith("on") || name === "style") throw new Error("attribute not allowed: " + name);
    element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

export const DASH = "\u2014";

/** A value for display: null, undefined and "" are an em dash. */
export function orDash(value) {
  return value === null || value === undefined || value === "" ? DASH : String(value);
}

/** Seconds as "0.42 s", "12.3 s", "4m 05s", "2h 03m". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return Math.round(seconds * 1000) + " ms";
  if (seconds < 10) return seconds.toFixed(2) + " s";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const s = Math.floor(seconds);
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d " + String(Math.floor(s / 3600) % 24).padStart(2, "0") + "h";
}

/** Bytes as "512 B", "1.5 KiB", "12.0 MiB". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? value + " B" : value.toFixed(value < 10 ? 2 : 1) + " " + units[unit];
}

/** CPU seconds as "0.013 s"; null -> em dash. */
export function formatCpu(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  return seconds < 10 ? seconds.toFixed(3) + " s" : formatDuration(seconds);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** An RFC 3339 time as local "HH:MM:SS" today, "YYYY-MM-DD HH:MM" before. */
export function formatTime(iso, now = new Date()) {
  if (!iso) return DASH;
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  const clock = pad(t.getHours()) + ":" + pad(t.getMinutes()) + ":" + pad(t.getSeconds());
  if (t.toDateString() === now.toDateString()) return clock;
  return t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " + clock.slice(0, 5);
}

/** An RFC 3339 time in full, local: "2026-11-30 10:15:07.093". */
export function formatFullTime(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return (
    t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " +
    pad(t.getHours()) + ":" + pad(t.getMinutes()) + ":" + pad(t.getSeconds()) + "." +
    String(t.getMilliseconds()).padStart(3, "0")
  );
}

/** Quote one word for a POSIX shell, only if it needs it. */
export function shellQuote(word) {
  if (word !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return "'" + word.replaceAll("'", "'\\''") + "'";
}

/** A job's command line as a shell would take it back. */
export function commandLine(job) {
  return [job.command, ...(job.arguments || [])].map(shellQuote).join(" ");
}

/** How a job ended, for the exit column: "0", "137 (SIGKILL)", or a dash. */
export function exitText(job) {
  if (job.code === null || job.code === undefined) return DASH;
  return job.signal ? job.code + " (" + job.signal + ")" : String(job.code);
}

/** A state name for people: "timed_out" -> "timed out". */
export function stateLabel(state) {
  return String(state).replaceAll("_", " ");
}

/** A badge for a job state. */
export function stateBadge(state) {
  return h("span", { class: "state state-" + String(state).replace(/[^a-z_]/g, "") }, stateLabel(state));
}

/** Whether the user is typing (keyboard shortcuts stay out of the way). */
export function isTyping(event) {
  const target = event.target;
  return (
    target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))
  );
}
