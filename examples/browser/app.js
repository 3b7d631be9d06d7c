// Follows one Livepeer Studio task through taskgate until it finishes.
//
// The page talks to taskgate only; taskgate adds the API key upstream, so there is no key here.
// First choice: an EventSource on GET {taskgate}/task/{id}/events. Its first `task` event is
// the current answer, a new one comes each time the status changes, and the stream closes after
// a finished phase; a 404 or an upstream failure comes as `event: error` with {"errors": [...]}.
// Fallback: plain fetch() polling of GET {taskgate}/task/{id}, when the browser has no
// EventSource, when ?mode=poll asks for it, or when the stream fails. Polling honours
// Retry-After on 429 and backs off on 5xx and network errors.
//
// Query string: taskgate (base URL), task (id), mode=poll, interval (poll period, seconds),
// token (a viewer token, when taskgate has viewer access on: sent as ?access_token= on the
// EventSource, which cannot set headers, and as Authorization: Bearer on fetch).

const DEMO_UPLOAD_TASK = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const TASK_ID = /^[A-Za-z0-9-]{1,64}$/;
/** Consecutive failed polls (network errors, 5xx) before the page gives up. */
const MAX_FAILURES = 5;
/** Longest pause between polls after failures, seconds. */
const MAX_BACKOFF = 30;
/** Stream interruptions in a row (without an event between them) before polling instead. */
const MAX_RECONNECTS = 3;

const query = new URLSearchParams(location.search);
const base = (query.get("taskgate") || "http://127.0.0.1:8080").replace(/\/+$/, "");
const taskId = query.get("task") || DEMO_UPLOAD_TASK;
const forcePoll = query.get("mode") === "poll";
const interval = clamp(Number(query.get("interval")), 0.5, 60, 3);
/** A viewer token minted by the app's server (`taskgate token --id ID` for a try). */
const token = query.get("token") || "";

const root = document.getElementById("watch");
const $ = (id) => document.getElementById(id);

/** The last status shown, serialised: the log gets an entry only when it changes. */
let lastStatus = null;
let polling = false;

start();

function start() {
  $("base").textContent = base;
  $("task").textContent = taskId;
  if (!TASK_ID.test(taskId)) {
    return fail(`"${taskId}" is not a task id`);
  }
  let url;
  try {
    url = new URL(base);
  } catch {
    url = null;
  }
  if (!url || !["http:", "https:"].includes(url.protocol)) {
    return fail(`"${base}" is not an http(s) URL for taskgate`);
  }
  if (forcePoll) {
    log("info", "polling, as ?mode=poll asks");
    startPolling();
  } else if (typeof EventSource !== "function") {
    log("info", "this browser has no EventSource: polling");
    startPolling();
  } else {
    watch();
  }
}

// ---- push: EventSource ---------------------------------------------------------------------

function watch() {
  setMode("events", "EventSource on /events");
  setState("watching");
  const access = token ? `?access_token=${encodeURIComponent(token)}` : "";
  const source = new EventSource(`${base}/task/${encodeURIComponent(taskId)}/events${access}`);
  let reconnects = 0;

  source.addEventListener("task", (event) => {
    reconnects = 0;
    const phase = showTask(event.data, "events");
    if (phase === null) {
      source.close();
      log("error", "the stream sent something that is not a task: polling instead", "events");
      startPolling();
    } else if (FINISHED.has(phase)) {
      // taskgate closes the stream after a finished phase; closing first stops a reconnect.
      source.close();
      finish();
    }
  });

  source.addEventListener("error", (event) => {
    if (typeof event.data === "string") {
      // taskgate's own `event: error` (a 404 or an upstream failure); the stream ends after it.
      // One GET tells which it was: a 404 stops the page, a 5xx is retried with back-off.
      source.close();
      log("error", `event: error: ${errorText(event.data)}; asking with GET`, "events");
      startPolling();
    } else if (source.readyState === EventSource.CLOSED) {
      // The browser gave up on the stream: refused by CORS, or an answer that is not a stream
      // (429 rate limit, 503 too many watches, ...).
      log("error", "EventSource failed (refused by CORS, or not a stream): polling instead", "events");
      startPolling();
    } else if (++reconnects > MAX_RECONNECTS) {
      source.close();
      log("error", `the stream broke ${reconnects} times in a row: polling instead`, "events");
      startPolling();
    } else {
      // The browser reconnects by itself, sending Last-Event-ID.
      log("info", `stream interrupted, reconnecting (${reconnects})`, "events");
    }
  });
}

// ---- fallback: polling GET -----------------------------------------------------------------

function startPolling() {
  if (polling) return;
  polling = true;
  setMode("poll", `polling GET every ${interval} s`);
  setState("polling");
  poll().catch((error) => fail(`polling stopped: ${error}`));
}

async function poll() {
  const url = `${base}/task/${encodeURIComponent(taskId)}`;
  let failures = 0;
  const failed = async (message) => {
    failures += 1;
    log("error", message, "poll");
    showError(message);
    if (failures >= MAX_FAILURES) {
      fail(`gave up after ${failures} failed requests in a row`);
      return false;
    }
    await sleep(Math.min(interval * 2 ** (failures - 1), MAX_BACKOFF));
    return true;
  };

  for (;;) {
    let response;
    try {
      // Without a token, a simple GET with no custom header: no CORS preflight, no credentials.
      // With one, `Authorization: Bearer` (as the official SDKs send their apiKey): taskgate
      // answers the preflight that this header causes.
      const headers = { accept: "application/json" };
      if (token) headers.authorization = `Bearer ${token}`;
      response = await fetch(url, { headers });
    } catch (error) {
      // fetch() gives no detail on purpose; the console says which (e.g. "blocked by CORS").
      if (await failed(`request failed (refused by CORS, or taskgate unreachable): ${error}`)) continue;
      return;
    }
    const text = await response.text().catch(() => "");
    if (response.ok) {
      const phase = showTask(text, "poll");
      if (phase === null) {
        if (await failed(`${response.status}: the answer is not a task`)) continue;
        return;
      }
      failures = 0;
      if (FINISHED.has(phase)) return finish();
      await sleep(interval);
    } else if (response.status === 429) {
      // Rate limited by taskgate, or the API's back-off: wait as long as it says.
      const after = retryAfter(response.headers.get("retry-after"));
      const pause = Math.max(after ?? interval * 2, interval);
      log("info", `429: waiting ${pause} s (Retry-After: ${after ?? "none"})`, "poll");
      await sleep(pause);
    } else if (response.status >= 500) {
      // 502 upstream error, 503 no upstream slot, 504 upstream timeout: try again later.
      if (await failed(`${response.status}: ${errorText(text)}`)) continue;
      return;
    } else {
      // 404: no such task. 400: a bad id. 401: no valid viewer token. 403: the token (or the
      // key) may not see it. Asking again won't help.
      log("error", `${response.status}: ${errorText(text)}`, "poll");
      return fail(response.status === 404 ? "task not found" : `${response.status}: ${errorText(text)}`);
    }
  }
}

// ---- showing it ----------------------------------------------------------------------------

/** Shows a task body; returns its phase, or null when the text is not a task. */
function showTask(text, source) {
  $("body").textContent = text;
  let task = null;
  try {
    task = JSON.parse(text);
  } catch {
    // Not JSON: not a task.
  }
  const status = task && typeof task === "object" ? task.status : null;
  const phase = status && typeof status.phase === "string" ? status.phase : null;
  if (phase === null) return null;

  const progress = typeof status.progress === "number" ? status.progress : null;
  root.dataset.phase = phase;
  root.dataset.progress = progress ?? "";
  $("phase").textContent = phase;
  $("error").hidden = true;
  // No progress: full when completed, empty when failed, indeterminate while queued.
  const shown = phase === "completed" ? 1 : (progress ?? (FINISHED.has(phase) ? 0 : null));
  const bar = $("progress");
  if (shown === null) bar.removeAttribute("value");
  else bar.value = shown;
  $("percent").textContent = shown === null ? "" : `${Math.round(shown * 100)}%`;

  const key = JSON.stringify(status);
  if (key !== lastStatus) {
    lastStatus = key;
    let line = phase;
    if (progress !== null) line += ` ${Math.round(progress * 100)}%`;
    if (typeof status.errorMessage === "string") line += `: ${status.errorMessage}`;
    log("task", line, source, {
      phase,
      progress: progress ?? "",
      updatedAt: status.updatedAt ?? "",
    });
  }
  return phase;
}

function log(kind, text, source = "", fields = {}) {
  const item = document.createElement("li");
  item.dataset.kind = kind;
  if (source) item.dataset.source = source;
  for (const [name, value] of Object.entries(fields)) item.dataset[name] = String(value);
  const time = new Date().toISOString().slice(11, 23);
  item.textContent = `${time} ${source ? `[${source}] ` : ""}${text}`;
  $("log").append(item);
}

function setMode(mode, label) {
  root.dataset.mode = mode;
  $("mode").textContent = label;
}

function setState(state) {
  root.dataset.state = state;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function finish() {
  setState("done");
}

function fail(message) {
  showError(message);
  setState("error");
}

// ---- helpers -------------------------------------------------------------------------------

/** The first message of an {"errors": [...]} body, else the text itself. */
function errorText(text) {
  try {
    const errors = JSON.parse(text).errors;
    if (Array.isArray(errors) && errors.length) return String(errors[0]);
  } catch {
    // Not JSON.
  }
  return text.slice(0, 200) || "(empty answer)";
}

/** Retry-After in seconds: delta-seconds or an HTTP date; null when absent or unreadable. */
function retryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

/** value within [low, high]; otherwise when it is not a number (or 0, i.e. absent). */
function clamp(value, low, high, otherwise) {
  return Number.isFinite(value) && value !== 0 ? Math.min(Math.max(value, low), high) : otherwise;
}
