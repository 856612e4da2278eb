// Every data request of the page: the API's own routes, relative to the page
// (so the dashboard works behind a reverse proxy under a path prefix), with
// the bearer token when one was given.
//
// No cookies: the token is asked for on a 401, kept in sessionStorage (this
// tab only, gone when it closes) and sent as `Authorization: Bearer`.

const TOKEN_KEY = "httprunner.token";

/** The API's root: the page is served at <root>/ui/. */
export const API_ROOT = new URL("../", document.baseURI);

/** The absolute URL of an API path such as "jobs?limit=5" or "<id>/stdout". */
export function apiUrl(path) {
  return new URL(path.replace(/^\/+/, ""), API_ROOT).href;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives as long as this page
  }
  memoryToken = token || null;
}

let memoryToken = null;

function currentToken() {
  return getToken() || memoryToken;
}

// The token prompt, set by app.js: (message) -> Promise<string|null>.
let askForToken = async () => null;
let pendingAsk = null;
// The user closed the prompt without a token: do not ask at every refresh.
let declined = false;

/** Whether the user declined to give a token (the page then waits for them). */
export function tokenDeclined() {
  return declined;
}

/** Ask for a token again at the next 401 (the user asked to enter one). */
export function askAgain() {
  declined = false;
}

export function setTokenPrompt(prompt) {
  askForToken = prompt;
}

// One prompt at a time: every request refused meanwhile waits for it.
function promptOnce(message) {
  if (!pendingAsk) {
    pendingAsk = Promise.resolve(askForToken(message)).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through
  }
  return response.status + " " + response.statusText;
}

/**
 * fetch() an API path; on a 401 ask for a token and try again.  Returns the
 * Response of any other status; throws ApiError(401) if no token is given.
 */
export async function send(path, { method = "GET", signal, accept = "application/json" } = {}) {
  for (;;) {
    const token = currentToken();
    const headers = { Accept: accept };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(apiUrl(path), { method, headers, signal, cache: "no-store" });
    if (response.status !== 401) return response;
    const reason = await errorMessage(response);
    const message = token
      ? "The daemon refused this token (" + reason + "). Enter another one."
      : "This daemon needs an API token (--token-file).";
    if (token && currentToken() !== token) continue; // another request got a new token meanwhile
    const given = declined ? null : await promptOnce(message);
    if (!given) {
      declined = true;
      throw new ApiError(401, "no API token: the daemon answers 401 without one");
    }
  }
}

/** A JSON API call: the decoded body, or ApiError with the API's message. */
export async function getJSON(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response.json();
}
