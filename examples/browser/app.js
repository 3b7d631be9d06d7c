// Follows one Livepeer Studio asset (by default) or task through taskgate until it finishes.
//
// The page talks to taskgate only; taskgate adds the API key upstream, so there is no key here.
// First choice: an EventSource on GET {taskgate}/{kind}/{id}/events (kind: asset or task). Its
// first `asset` (or `task`) event is the current answer, a new one comes each time the status
// (or an asset's playbackUrl) changes, and the stream closes after a finished phase (asset:
// ready or failed; task: completed, failed or cancelled); a 404 or an upstream failure comes as
// `event: error` with {"errors": [...]}.
// Fallback: plain fetch() polling of GET {taskgate}/{kind}/{id}, when the browser has no
// EventSource, when ?mode=poll asks for it, or when the stream fails. Polling honours
// Retry-After on 429 and backs off on 5xx and network errors.
//
// Query string: taskgate (base URL), asset (id) or task (id; follows a task instead),
// mode=poll, interval (poll period, seconds), token (a viewer token, when taskgate has viewer
// access on: sent as ?access_token= on the EventSource, which cannot set headers, and as
// Authorization: Bearer on fetch). Without asset or task: the demo's direct upload asset (an
// empty task= follows the demo's upload task).

const DEMO_UPLOAD_ASSET = "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607";
const DEMO_UPLOAD_TASK = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";
/** Per kind: the phases after which nothing changes by itself, and the one that is success. */
const KINDS = {
  asset: { finished: new Set(["ready", "failed"]), done: "ready" },
  task: { finished: new Set(["completed", "failed", "cancelled"]), done: "completed" },
};
const RESOURCE_ID = /^[A-Za-z0-9-]{1,64}$/;
/** Consecutive failed polls (network errors, 5xx) before the page gives up. */
const MAX_FAILURES = 5;
/** Longest pause between polls after failures, seconds. */
const MAX_BACKOFF = 30;
/** Stream interruptions in a row (without an event between them) before polling instead. */
const MAX_RECONNECTS = 3;

const query = new URLSearchParams(location.search);
const base = (query.get("taskgate") || "http://127.0.0.1:8080").replace(/\/+$/, "");
const kind = query.has("task") ? "task" : "asset";
const resourceId = query.get(kind) || (kind === "task" ? DEMO_UPLOAD_TASK : DEMO_UPLOAD_ASSET);
const { finished: FINISHED, done: DONE } = KINDS[kind];
const resourcePath = `${base}/${kind}/${encodeURIComponent(resourceId)}`;
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
  root.dataset.kind = kind;
  $("kind").textContent = kind;
  $("task").textContent = resourceId;
  if (!RESOURCE_ID.test(resourceId)) {
    return fail(`"${resourceId}" is not ${kind === "task" ? "a task" : "an asset"} id`);
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
  const source = new EventSource(`${resourcePath}/events${access}`);
  let reconnects = 0;

  source.addEventListener(kind, (event) => {
    reconnects = 0;
    const phase = show(event.data, "events");
    if (phase === null) {
      source.close();
      log("error", `the stream sent something that is not ${article()}: polling instead`, "events");
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
  const url = resourcePath;
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
      const phase = show(text, "poll");
      if (phase === null) {
        if (await failed(`${response.status}: the answer is not ${article()}`)) continue;
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
      // 404: no such task or asset. 400: a bad id. 401: no valid viewer token. 403: the token
      // (or the key) may not see it. Asking again won't help.
      log("error", `${response.status}: ${errorText(text)}`, "poll");
      return fail(response.status === 404 ? `${kind} not found` : `${response.status}: ${errorText(text)}`);
    }
  }
}

// ---- showing it ----------------------------------------------------------------------------

/** Shows a task or asset body; returns its phase, or null when the text is not one. */
function show(text, source) {
  $("body").textContent = text;
  let resource = null;
  try {
    resource = JSON.parse(text);
  } catch {
    // Not JSON: not a task or an asset.
  }
  const status = resource && typeof resource === "object" ? resource.status : null;
  const phase = status && typeof status.phase === "string" ? status.phase : null;
  if (phase === null) return null;

  const progress = typeof status.progress === "number" ? status.progress : null;
  root.dataset.phase = phase;
  root.dataset.progress = progress ?? "";
  $("phase").textContent = phase;
  $("error").hidden = true;
  // No progress: full when done, empty when failed, indeterminate while queued.
  const shown = phase === DONE ? 1 : (progress ?? (FINISHED.has(phase) ? 0 : null));
  const bar = $("progress");
  if (shown === null) bar.removeAttribute("value");
  else bar.value = shown;
  $("percent").textContent = shown === null ? "" : `${Math.round(shown * 100)}%`;

  // An asset can be played before it is ready (source playback), and downloaded once ready.
  const playback = typeof resource.playbackUrl === "string" ? resource.playbackUrl : "";
  const download = typeof resource.downloadUrl === "string" ? resource.downloadUrl : "";
  root.dataset.playback = playback;
  showLink("playback", playback);
  showLink("download", download);

  const key = JSON.stringify([status, playback, download]);
  if (key !== lastStatus) {
    lastStatus = key;
    let line = phase;
    if (progress !== null) line += ` ${Math.round(progress * 100)}%`;
    if (typeof status.errorMessage === "string") line += `: ${status.errorMessage}`;
    if (playback) line += " (playable)";
    log(kind, line, source, {
      phase,
      progress: progress ?? "",
      updatedAt: status.updatedAt ?? "",
      playback: playback ? "yes" : "",
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

/** Shows an asset's URL as a link (https only), or nothing. */
function showLink(id, url) {
  const cell = $(id);
  cell.textContent = "";
  if (!/^https:\/\//.test(url)) return;
  const link = document.createElement("a");
  link.href = url;
  link.rel = "noopener noreferrer";
  link.textContent = url;
  cell.append(link);
}

function article() {
  return kind === "task" ? "a task" : "an asset";
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
