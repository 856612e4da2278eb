// The page: routes (in the URL's fragment, so a view can be shared), the
// 2-second refresh while the tab is visible, the pause toggle, the token
// prompt, keyboard shortcuts.

import { askAgain, getJSON, getToken, setToken, setTokenPrompt, tokenDeclined } from "./api.js";
import { isTyping, replace } from "./dom.js";
import { JobView } from "./job.js";
import { JobsView } from "./jobs.js";
import { OverviewView } from "./overview.js";

export const REFRESH_MS = 2000;

const main = document.getElementById("main");
const pauseButton = document.getElementById("pause");
const counts = document.getElementById("now-counts");
const status = document.getElementById("status");
const forgetButton = document.getElementById("forget-token");
const enterButton = document.getElementById("enter-token");

/** What every view gets: the latest /stats, the clock, the status line. */
export const app = {
  stats: null,
  // server clock - client clock, in ms (from /stats "now"), for ticking durations
  skew: 0,
  paused: false,
  serverNow() {
    return Date.now() + this.skew;
  },
  setStatus(message, isError = false) {
    status.textContent = message;
    status.classList.toggle("error", isError);
  },
  /** Route to a fragment: "#/job/<id>", "#/jobs?state=failed". */
  go(hash) {
    location.hash = hash;
  },
  /** Change the URL to describe the view without a new history entry. */
  describe(hash) {
    history.replaceState(null, "", hash);
  },
};

// -- routing -------------------------------------------------------------

let view = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean);
  return { parts, params: new URLSearchParams(query) };
}

function route() {
  const { parts, params } = parseHash();
  if (view) view.destroy();
  let name = parts[0] || "jobs";
  if (name === "job" && /^[0-9a-f]{40}$/.test(parts[1] || "")) {
    view = new JobView(main, app, parts[1]);
  } else if (name === "overview") {
    view = new OverviewView(main, app);
  } else {
    name = "jobs";
    view = new JobsView(main, app, params);
  }
  for (const link of document.querySelectorAll("nav.views a")) {
    if (link.dataset.view === (name === "job" ? "jobs" : name)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  refresh();
}

// -- refreshing ----------------------------------------------------------

let refreshing = false;
let again = false;

// One refresh at a time; a request for another while one runs (a new view,
// the tab coming back) runs once more right after it.
async function refresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    do {
      again = false;
      await refreshOnce();
    } while (again);
  } finally {
    refreshing = false;
  }
}

async function refreshOnce() {
  const current = view;
  try {
    const stats = await getJSON("stats");
    app.stats = stats;
    app.skew = new Date(stats.now).getTime() - Date.now();
    replace(counts, stats.running + " running \u00b7 " + stats.queued + " queued");
    if (current && current === view) await current.refresh(stats);
    app.setStatus("");
  } catch (error) {
    app.setStatus("Cannot refresh: " + error.message, true);
  } finally {
    updateForget();
  }
}

function visible() {
  return document.visibilityState === "visible";
}

setInterval(() => {
  if (!app.paused && visible()) refresh();
}, REFRESH_MS);

// Durations of running jobs tick every second, from the page's own clock.
setInterval(() => {
  if (view && view.tick) view.tick();
}, 1000);

document.addEventListener("visibilitychange", () => {
  if (visible() && !app.paused) refresh();
});

function setPaused(paused) {
  app.paused = paused;
  pauseButton.setAttribute("aria-pressed", String(paused));
  pauseButton.textContent = paused ? "Resume" : "Pause";
  document.body.classList.toggle("paused", paused);
  if (!paused) refresh();
}

pauseButton.addEventListener("click", () => setPaused(!app.paused));

// -- the token -----------------------------------------------------------

const tokenDialog = document.getElementById("token-dialog");
const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token-input");
const tokenMessage = document.getElementById("token-message");

setTokenPrompt(
  (message) =>
    new Promise((resolve) => {
      tokenMessage.textContent = message;
      tokenInput.value = "";
      const finish = (token) => {
        tokenForm.removeEventListener("submit", onSubmit);
        tokenDialog.removeEventListener("close", onClose);
        if (tokenDialog.open) tokenDialog.close();
        if (token) setToken(token);
        updateForget();
        resolve(token);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        finish(tokenInput.value.trim() || null);
      };
      const onClose = () => finish(null);
      tokenForm.addEventListener("submit", onSubmit);
      tokenDialog.addEventListener("close", onClose);
      tokenDialog.showModal();
      tokenInput.focus();
    }),
);

document.getElementById("token-cancel").addEventListener("click", () => tokenDialog.close());

function updateForget() {
  forgetButton.hidden = !getToken();
  enterButton.hidden = !tokenDeclined();
}

enterButton.addEventListener("click", () => {
  askAgain();
  route(); // start the view again, now with a token to ask for
});

forgetButton.addEventListener("click", () => {
  setToken(null);
  updateForget();
  app.setStatus("Token forgotten: the next request asks for one.");
});

// -- keyboard ------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (isTyping(event) || document.querySelector("dialog[open]")) return;
  if (event.key === "p") {
    setPaused(!app.paused);
    event.preventDefault();
  } else if (event.key === "/") {
    const filter = document.getElementById("filter");
    if (filter) {
      filter.focus();
      event.preventDefault();
    }
  } else if (event.key === "g") {
    app.go("#/jobs");
  } else if (event.key === "o") {
    app.go("#/overview");
  } else if (event.key === "r") {
    refresh();
  }
});

window.addEventListener("hashchange", route);
route();
