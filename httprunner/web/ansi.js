// Terminal output -> styled lines: ANSI SGR colours and attributes, carriage
// returns as a terminal shows them, every other escape sequence dropped.
//
// Pure: no DOM here.  `ansiToSpans(text)` is the whole renderer as one
// function; `AnsiTerminal` is the same state machine fed chunk by chunk (an
// escape sequence or a progress line may be split across chunks).

/** The style of text that no SGR sequence touched. */
export const PLAIN = Object.freeze(makeStyle({}));

const ESC = "\x1b";
// A line longer than this is broken (without a newline: the text is joined
// again when copied) so that one endless line cannot grow without bound.
export const LINE_MAX = 16384;

function makeStyle({ fg = null, bg = null, bold = false, faint = false, italic = false, underline = false,
  inverse = false, strike = false }) {
  const style = { fg, bg, bold, faint, italic, underline, inverse, strike };
  style.key = [fg, bg, +bold, +faint, +italic, +underline, +inverse, +strike].join("|");
  return style;
}

function withChanges(style, changes) {
  return Object.freeze(makeStyle({ ...style, ...changes }));
}

/** The RGB of a 256-colour palette index 16..255 (6x6x6 cube, then greys). */
export function paletteRGB(index) {
  if (index >= 232) {
    const level = 8 + (index - 232) * 10;
    return [level, level, level];
  }
  const cube = index - 16;
  const steps = [0, 95, 135, 175, 215, 255];
  return [steps[Math.floor(cube / 36)], steps[Math.floor(cube / 6) % 6], steps[cube % 6]];
}

function hex2(n) {
  return Math.max(0, Math.min(255, n)).toString(16).padStart(2, "0");
}

// An extended colour after 38/48: "5;n" or "2;r;g;b" (also the colon forms,
// where 2 may carry a colour-space id first).  Returns [colour, used].
function extendedColour(params, i) {
  const mode = params[i];
  if (mode === 5 && params.length > i + 1) {
    const n = params[i + 1];
    return [n >= 0 && n <= 255 ? n : null, 2];
  }
  if (mode === 2 && params.length > i + 3) {
    const [r, g, b] = params.slice(i + 1, i + 4);
    return ["#" + hex2(r) + hex2(g) + hex2(b), 4];
  }
  return [null, params.length - i];
}

/** Apply one SGR parameter string ("1;31", "38;5;208", "") to a style. */
export function applySgr(style, paramText) {
  // Colon sub-parameters ("38:2::255:0:0") are one group: flatten them, dropping
  // an empty colour-space slot.
  const groups = paramText === "" ? [""] : paramText.split(";");
  let s = style;
  for (let g = 0; g < groups.length; g++) {
    const group = groups[g];
    if (group.includes(":")) {
      const parts = group.split(":");
      const head = Number(parts[0] || 0);
      if (head === 38 || head === 48) {
        let rest = parts.slice(1);
        if (rest[0] === "2" && rest.length === 5) rest = [rest[0], ...rest.slice(2)];
        const [colour] = extendedColour(rest.map((p) => Number(p || 0)), 0);
        s = withChanges(s, head === 38 ? { fg: colour } : { bg: colour });
      } else if (head === 4) {
        s = withChanges(s, { underline: Number(parts[1] || 0) !== 0 });
      }
      continue;
    }
    const code = group === "" ? 0 : Number(group);
    if (!Number.isInteger(code)) continue;
    if (code === 38 || code === 48) {
      const rest = groups.slice(g + 1).map((p) => Number(p || 0));
      const [colour, used] = extendedColour(rest, 0);
      g += used;
      s = withChanges(s, code === 38 ? { fg: colour } : { bg: colour });
    } else if (code === 0) s = PLAIN;
    else if (code === 1) s = withChanges(s, { bold: true });
    else if (code === 2) s = withChanges(s, { faint: true });
    else if (code === 3) s = withChanges(s, { italic: true });
    else if (code === 4 || code === 21) s = withChanges(s, { underline: true });
    else if (code === 7) s = withChanges(s, { inverse: true });
    else if (code === 9) s = withChanges(s, { strike: true });
    else if (code === 22) s = withChanges(s, { bold: false, faint: false });
    else if (code === 23) s = withChanges(s, { italic: false });
    else if (code === 24) s = withChanges(s, { underline: false });
    else if (code === 27) s = withChanges(s, { inverse: false });
    else if (code === 29) s = withChanges(s, { strike: false });
    else if (code >= 30 && code <= 37) s = withChanges(s, { fg: code - 30 });
    else if (code === 39) s = withChanges(s, { fg: null });
    else if (code >= 40 && code <= 47) s = withChanges(s, { bg: code - 40 });
    else if (code === 49) s = withChanges(s, { bg: null });
    else if (code >= 90 && code <= 97) s = withChanges(s, { fg: code - 90 + 8 });
    else if (code >= 100 && code <= 107) s = withChanges(s, { bg: code - 100 + 8 });
    // anything else (blink, fonts, frames...) is ignored
  }
  return s;
}

// Parser states
const TEXT = 0;
const ESCAPE = 1; // after ESC
const CSI = 2; // after ESC [
const STRING = 3; // OSC, DCS, SOS, PM, APC: up to BEL or ESC \
const STRING_ESC = 4; // ESC seen inside a string
const CHARSET = 5; // ESC ( B and friends: one more character

// Printable runs: everything but C0 controls, DEL and C1 controls.
// eslint-disable-next-line no-control-regex
const PRINTABLE = /[^\x00-\x1f\x7f-\x9f]+/y;

/**
 * A one-line-deep terminal: completed lines are handed out by `write`, the
 * current line (which a carriage return may still rewrite) by `current()`.
 * A line is an array of spans `{text, style}`; a line that ended with a
 * newline has `newline: true` (a line broken at LINE_MAX has false).
 */
export class AnsiTerminal {
  constructor() {
    this.style = PLAIN;
    this.state = TEXT;
    this.params = "";
    this.runs = []; // the current line: [{text, style}]
    this.length = 0; // characters in the current line
    this.cursor = 0;
  }

  /** Feed text; return the lines it completed. */
  write(text) {
    const done = [];
    let i = 0;
    const n = text.length;
    while (i < n) {
      const state = this.state;
      if (state === TEXT) {
        PRINTABLE.lastIndex = i;
        const match = PRINTABLE.exec(text);
        if (match) {
          this.put(match[0], done);
          i += match[0].length;
          continue;
        }
        const c = text[i++];
        if (c === "\n") this.endLine(done, true);
        else if (c === "\r") this.cursor = 0;
        else if (c === "\b") this.cursor = Math.max(0, this.cursor - 1);
        else if (c === "\t") this.put("\t", done);
        else if (c === ESC) this.state = ESCAPE;
        else if (c === "\x9b") { this.state = CSI; this.params = ""; }
        // other controls (BEL, NUL, ...) are dropped
      } else if (state === ESCAPE) {
        const c = text[i++];
        if (c === "[") { this.state = CSI; this.params = ""; }
        else if (c === "]" || c === "P" || c === "X" || c === "^" || c === "_") this.state = STRING;
        else if (c === "(" || c === ")" || c === "*" || c === "+" || c === "#" || c === "%") this.state = CHARSET;
        else this.state = TEXT; // a two-character escape (ESC 7, ESC =, ...): dropped
      } else if (state === CSI) {
        const c = text[i++];
        const code = c.charCodeAt(0);
        if (code >= 0x40 && code <= 0x7e) {
          this.state = TEXT;
          this.control(c, this.params);
        } else if (code < 0x20 || code > 0x7e || this.params.length > 64) {
          // not a well-formed sequence: give it up (the character is dropped)
          this.state = TEXT;
        } else {
          this.params += c;
        }
      } else if (state === STRING) {
        const c = text[i++];
        if (c === "\x07" || c === "\x9c") this.state = TEXT;
        else if (c === ESC) this.state = STRING_ESC;
      } else if (state === STRING_ESC) {
        const c = text[i++];
        this.state = c === "\\" ? TEXT : STRING;
      } else {
        i++; // CHARSET: the designator character
        this.state = TEXT;
      }
    }
    return done;
  }

  /** The line being written (not yet ended by a newline). */
  current() {
    return this.runs.slice();
  }

  /** End the input: the current line, if any, as a completed line. */
  flush() {
    const done = [];
    if (this.length > 0) this.endLine(done, false);
    return done;
  }

  control(final, params) {
    const first = params.charCodeAt(0);
    const isPrivate = first >= 0x3c && first <= 0x3f; // < = > ?
    if (isPrivate) return;
    if (final === "m") {
      this.style = applySgr(this.style, params);
      return;
    }
    const n = params === "" ? 0 : parseInt(params, 10) || 0;
    if (final === "K") {
      // erase in line: 0 to the end, 1 to the start, 2 all (the cursor stays)
      if (n === 0) this.truncate(this.cursor);
      else if (n === 2) this.replaceRange(0, this.length, "");
      else if (n === 1) this.overwrite(" ".repeat(Math.min(this.cursor + 1, this.length)), 0, PLAIN);
    } else if (final === "G") {
      this.cursor = Math.min(Math.max(n, 1) - 1, LINE_MAX);
    } else if (final === "C") {
      this.cursor = Math.min(this.cursor + Math.max(n, 1), LINE_MAX);
    } else if (final === "D") {
      this.cursor = Math.max(0, this.cursor - Math.max(n, 1));
    }
    // other sequences (cursor up, clear screen, modes...) are dropped
  }

  put(text, done) {
    while (text.length > 0) {
      const room = LINE_MAX - this.cursor;
      if (room <= 0) {
        this.endLine(done, false);
        continue;
      }
      const part = text.length > room ? text.slice(0, room) : text;
      text = text.slice(part.length);
      if (this.cursor >= this.length) {
        // the cursor may have been moved past the end: what lies between is blank
        if (this.cursor > this.length) this.pushRun(" ".repeat(this.cursor - this.length), PLAIN);
        this.pushRun(part, this.style);
      } else {
        this.overwrite(part, this.cursor, this.style);
      }
      this.cursor += part.length;
    }
  }

  pushRun(text, style) {
    const last = this.runs[this.runs.length - 1];
    if (last && last.style.key === style.key) last.text += text;
    else this.runs.push({ text, style });
    this.length += text.length;
  }

  // The slow path, for text written over text (after \r, \b or cursor moves).
  overwrite(text, at, style) {
    if (at > this.length) this.pushRun(" ".repeat(at - this.length), PLAIN);
    this.replaceRange(at, Math.min(at + text.length, this.length), text, style);
  }

  truncate(at) {
    if (at < this.length) this.replaceRange(at, this.length, "");
  }

  replaceRange(from, to, text, style = PLAIN) {
    const chars = [];
    const styles = [];
    for (const run of this.runs) {
      for (let k = 0; k < run.text.length; k++) {
        chars.push(run.text[k]);
        styles.push(run.style);
      }
    }
    const inserted = Array.from({ length: text.length }, (_, k) => text[k]);
    chars.splice(from, to - from, ...inserted);
    styles.splice(from, to - from, ...inserted.map(() => style));
    this.runs = [];
    this.length = 0;
    for (let k = 0; k < chars.length; k++) this.pushRun(chars[k], styles[k]);
  }

  endLine(done, newline) {
    const line = this.runs;
    line.newline = newline;
    done.push(line);
    this.runs = [];
    this.length = 0;
    this.cursor = 0;
  }
}

/**
 * The whole renderer as one pure function: bytes (UTF-8) or text -> spans
 * `{text, style}`.  Lines end with "\n" in the text of their last span;
 * adjacent spans of the same style are merged.
 */
export function ansiToSpans(input) {
  const text = typeof input === "string" ? input : new TextDecoder("utf-8").decode(input);
  const terminal = new AnsiTerminal();
  const lines = terminal.write(text).concat(terminal.flush());
  const spans = [];
  const add = (t, style) => {
    const last = spans[spans.length - 1];
    if (last && last.style.key === style.key) last.text += t;
    else spans.push({ text: t, style });
  };
  for (const line of lines) {
    for (const run of line) add(run.text, run.style);
    if (line.newline) add("\n", line.length ? line[line.length - 1].style : PLAIN);
  }
  return spans;
}

/** The CSS classes and inline colours (CSSOM, which CSP allows) of a style. */
export function styleToCss(style) {
  let fg = style.fg;
  let bg = style.bg;
  const classes = [];
  if (style.inverse) {
    [fg, bg] = [bg, fg];
    if (fg === null) classes.push("fg-rev");
    if (bg === null) classes.push("bg-rev");
  }
  const css = {};
  if (typeof fg === "number" && fg < 16) classes.push("fg-" + fg);
  else if (typeof fg === "number") css.color = "rgb(" + paletteRGB(fg).join(", ") + ")";
  else if (typeof fg === "string") css.color = fg;
  if (typeof bg === "number" && bg < 16) classes.push("bg-" + bg);
  else if (typeof bg === "number") css.backgroundColor = "rgb(" + paletteRGB(bg).join(", ") + ")";
  else if (typeof bg === "string") css.backgroundColor = bg;
  if (style.bold) classes.push("sgr-bold");
  if (style.faint) classes.push("sgr-faint");
  if (style.italic) classes.push("sgr-italic");
  if (style.underline) classes.push("sgr-underline");
  if (style.strike) classes.push("sgr-strike");
  return { classes, css };
}
