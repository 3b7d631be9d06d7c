#!/usr/bin/env node
// End-to-end test of examples/browser in a real Chromium against `taskgate --demo`.
//
// It starts taskgate (TASKGATE_BIN, default target/debug/taskgate) with --demo on free loopback
// ports, serves examples/browser/ itself on two loopback ports (one the allowed CORS origin,
// one not), drives Debian's Chromium (CHROMIUM_BIN, default /usr/bin/chromium) with
// playwright-core, and checks:
//   (a) EventSource: the page follows the demo upload task to `completed`, events in phase order,
//       progress rising, and it never polled;
//   (b) the same through the polling fallback (?mode=poll), never opening a stream;
//   (c) from a disallowed origin the browser refuses the answers (CORS): the page shows an error
//       and never gets a phase;
//   (d) the demo key never reaches the page: DOM, every response header and body, every SSE
//       message (read through the DevTools protocol), the console;
//   (e) the tasks carrying secrets show them masked, as src/redact.rs writes them.
//   (f) by default the page follows the demo's direct upload asset to `ready` over EventSource
//       (`event: asset`): uploading, waiting, processing with rising progress and a playbackUrl,
//       then ready; (g) the same by polling; (h) assets carrying secrets show them masked and a
//       deleted asset ends in "asset not found". (a) to (e) follow tasks (?task=).
// Scenarios run in parallel pages, one browser context each. Prints one line per check and
// "N passed, M failed"; exits 1 on any failure, 2 on a setup error or the overall time-out.
// taskgate and Chromium are stopped on every exit path.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";
import { freePorts } from "./ports.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const PAGE_DIR = path.join(REPO, "examples", "browser");
const TASKGATE_BIN = path.resolve(
  REPO,
  process.env.TASKGATE_BIN || path.join("target", "debug", "taskgate"),
);
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The whole run, setup included. */
const OVERALL_TIMEOUT_MS = 120_000;
/** One page following one task to its end (the demo's slowest task takes about 16 s). */
const FOLLOW_TIMEOUT_MS = 50_000;

/** What `--demo` injects upstream (src/demo.rs DEMO_API_KEY): never for a browser's eyes. */
const DEMO_KEY = "demo-key-not-a-secret";
/** Task ids of src/demo.rs. */
const TASK = {
  upload: "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69",
  ipfsExport: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
  customExport: "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
  transcode: "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e",
};
const PHASE_ORDER = ["waiting", "running", "completed"];
/** Asset ids of src/demo/assets.rs. */
const ASSET = {
  upload: "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607",
  failed: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
  encrypted: "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7",
  deleted: "9f0a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c",
};
const ASSET_PHASE_ORDER = ["uploading", "waiting", "processing", "ready"];

// ---- bookkeeping: results, clean-up on every path --------------------------------------------

const started = Date.now();
const results = [];
const cleanups = [];
let taskgateLog = [];
let exiting = false;

function check(name, ok, detail = "") {
  results.push({ name, ok: Boolean(ok), detail });
}

function elapsed() {
  return `${((Date.now() - started) / 1000).toFixed(1)} s`;
}

async function cleanup() {
  while (cleanups.length) {
    const step = cleanups.pop();
    try {
      await withTimeout(Promise.resolve().then(step), 10_000, "clean-up step");
    } catch (error) {
      console.error(`clean-up: ${error.message}`);
    }
  }
}

/** Setup failure, time-out or signal: say why, show taskgate's last lines, stop everything. */
async function abort(message, code = 2) {
  if (exiting) return;
  exiting = true;
  console.error(`\nbrowser-e2e: ${message} (after ${elapsed()})`);
  printResults();
  if (taskgateLog.length) {
    console.error("--- taskgate's last output ---");
    console.error(taskgateLog.slice(-40).join("\n"));
  }
  await cleanup();
  process.exit(code);
}

function printResults() {
  for (const r of results) {
    console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name}${!r.ok && r.detail ? `\n       ${r.detail}` : ""}`);
  }
}

const overall = setTimeout(
  () => abort(`timed out: the whole run must finish within ${OVERALL_TIMEOUT_MS / 1000} s`),
  OVERALL_TIMEOUT_MS,
);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => abort(`stopped by ${signal}`, 130));
}
process.on("unhandledRejection", (error) => abort(`unexpected error: ${error?.stack || error}`));

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the page's origins: a static server for examples/browser/ ------------------------------

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".md": "text/plain; charset=utf-8",
};

function serveStatic(request, response) {
  const url = new URL(request.url, "http://page.invalid");
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD" }).end();
    return;
  }
  if (url.pathname === "/favicon.ico") {
    response.writeHead(204).end();
    return;
  }
  let relative;
  try {
    relative = decodeURIComponent(url.pathname);
  } catch {
    relative = "/";
  }
  if (relative.endsWith("/")) relative += "index.html";
  const file = path.join(PAGE_DIR, path.normalize(relative));
  if (!file.startsWith(PAGE_DIR + path.sep)) {
    response.writeHead(404).end();
    return;
  }
  fs.readFile(file, (error, data) => {
    if (error) {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    response.writeHead(200, {
      "content-type": TYPES[path.extname(file)] || "application/octet-stream",
      "cache-control": "no-store",
    });
    response.end(request.method === "HEAD" ? undefined : data);
  });
}

/** A static server on a free loopback port; returns its origin. */
async function startPageServer() {
  const server = http.createServer(serveStatic);
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  cleanups.push(
    () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return `http://127.0.0.1:${server.address().port}`;
}

// ---- taskgate --demo -------------------------------------------------------------------------

/**
 * Starts `taskgate --demo` allowing `origin`, and waits for its admin /readyz. Retries with new
 * ports when it exits at start (a port taken between probing and binding).
 */
async function startTaskgate(origin, workDir) {
  if (!fs.existsSync(TASKGATE_BIN)) {
    throw new Error(`no taskgate binary at ${TASKGATE_BIN}: build it (cargo build) or set TASKGATE_BIN`);
  }
  for (let attempt = 1; ; attempt++) {
    const [publicPort, adminPort] = await freePorts(2);
    // Only our settings: an unknown or stray TASKGATE_* variable would change the run.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith("TASKGATE_") && name !== "RUST_LOG"),
    );
    Object.assign(env, {
      TASKGATE_LISTEN: `127.0.0.1:${publicPort}`,
      TASKGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      TASKGATE_CORS_ORIGINS: origin,
      TASKGATE_LOG: "info",
    });
    taskgateLog = [];
    // The work directory has no config/taskgate.toml: defaults, then the variables above.
    const child = spawn(TASKGATE_BIN, ["--demo"], { cwd: workDir, env, stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.once("error", (error) => taskgateLog.push(`spawn error: ${error.message}`));
    for (const stream of [child.stdout, child.stderr]) {
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        taskgateLog.push(...chunk.split("\n").filter(Boolean));
        if (taskgateLog.length > 400) taskgateLog.splice(0, taskgateLog.length - 400);
      });
    }
    const stop = async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const gone = await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)]);
      if (!gone) {
        child.kill("SIGKILL");
        await exited;
      }
    };
    // Last resort when the process exits without the async clean-up (e.g. process.exit).
    const killNow = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    };
    process.on("exit", killNow);
    cleanups.push(stop);

    const base = `http://127.0.0.1:${publicPort}`;
    const ready = await waitReady(`http://127.0.0.1:${adminPort}/readyz`, exited);
    if (ready === true) return { base, adminPort, pid: child.pid };
    await stop();
    cleanups.splice(cleanups.indexOf(stop), 1);
    if (attempt >= 3 || ready.code !== 1) {
      throw new Error(`taskgate did not become ready: ${JSON.stringify(ready)}`);
    }
    console.log(`taskgate exited at start (${JSON.stringify(ready)}); trying other ports`);
    console.log(taskgateLog.slice(-5).join("\n"));
  }
}

/** true once readyz answers 200; else how the process ended, or a time-out. */
async function waitReady(url, exited) {
  let gone = null;
  exited.then((how) => (gone = how));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (gone) return gone;
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (response.status === 200) return true;
    } catch {
      // Not listening yet.
    }
    await sleep(100);
  }
  return gone || { timeout: "readyz did not answer 200 within 20 s" };
}

// ---- one scenario: a page in its own browser context, everything it receives recorded -------

async function openScenario(browser, name, pageOrigin, query) {
  // A context each: separate connection pools (EventSource holds one open) and cookies.
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = {
    name,
    requests: [],
    responses: [],
    failed: [],
    console: [],
    pageErrors: [],
    sse: [],
    pending: [],
  };
  page.on("request", (r) => seen.requests.push({ url: r.url(), method: r.method() }));
  page.on("requestfailed", (r) => seen.failed.push({ url: r.url(), error: r.failure()?.errorText }));
  page.on("console", (m) => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
  page.on("response", (r) => {
    const entry = { url: r.url(), status: r.status(), headers: null, body: null, bodyError: null };
    seen.responses.push(entry);
    seen.pending.push(
      (async () => {
        entry.headers = await r.allHeaders().catch(() => r.headers());
        try {
          entry.body = (await withTimeout(r.body(), 5_000, "response body")).toString("utf8");
        } catch (error) {
          // A stream closed by the page, or an answer the browser refused: the SSE messages
          // themselves are recorded below through the DevTools protocol.
          entry.bodyError = error.message.split("\n")[0];
        }
      })(),
    );
  });
  // Every EventSource message as Chromium's network layer parsed it, independent of the page.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.eventSourceMessageReceived", (m) =>
    seen.sse.push({ requestId: m.requestId, event: m.eventName, id: m.eventId, data: m.data }),
  );
  const url = `${pageOrigin}/index.html?${new URLSearchParams(query)}`;
  return { name, context, page, seen, url };
}

/** The page's state, as it shows it in the DOM. */
function readPage(page) {
  return page.evaluate(() => {
    const root = document.getElementById("watch");
    const error = document.getElementById("error");
    return {
      state: root.dataset.state,
      mode: root.dataset.mode,
      phase: root.dataset.phase,
      progress: root.dataset.progress,
      kind: root.dataset.kind,
      playback: root.dataset.playback,
      error: error.hidden ? null : error.textContent,
      body: document.getElementById("body").textContent,
      log: [...document.querySelectorAll("#log li")].map((li) => ({ ...li.dataset, text: li.textContent })),
    };
  });
}

function waitForEnd(page) {
  return page.waitForFunction(
    () => ["done", "error"].includes(document.getElementById("watch").dataset.state),
    null,
    { timeout: FOLLOW_TIMEOUT_MS, polling: 100 },
  );
}

const isTaskGet = (url, id) => new URL(url).pathname === `/task/${id}`;
const isTaskEvents = (url, id) => new URL(url).pathname === `/task/${id}/events`;
const isAssetGet = (url, id) => new URL(url).pathname === `/asset/${id}`;
const isAssetEvents = (url, id) => new URL(url).pathname === `/asset/${id}/events`;

/** Everything a scenario's page received, as text, for the leak checks. */
function received(s) {
  const parts = [s.html, JSON.stringify(s.state), ...s.seen.console, ...s.seen.pageErrors];
  for (const r of s.seen.responses) {
    parts.push(r.url, JSON.stringify(r.headers), r.body ?? "");
  }
  for (const m of s.seen.sse) parts.push(m.event, m.id, m.data);
  return parts.join("\n");
}

// ---- the checks ------------------------------------------------------------------------------

/** (a) and (b): the page followed the upload task to completed through `source` only. */
function checkFollowed(label, s, source, allowedOrigin) {
  const { state, seen } = s;
  const tasks = state.log.filter((e) => e.kind === "task");
  const phases = tasks.map((e) => e.phase);
  const summary = `log: ${state.log.map((e) => e.text).join(" | ") || "(empty)"}`;

  check(`${label}: page ended at completed (data-state=done, data-phase=completed)`,
    state.state === "done" && state.phase === "completed", `state=${state.state} phase=${state.phase}; ${summary}`);
  check(`${label}: used ${source} only (data-mode=${source}, every log entry from ${source})`,
    state.mode === source && tasks.length > 0 && state.log.every((e) => e.source === source || e.kind === "info"),
    `mode=${state.mode}; ${summary}`);

  const ranks = phases.map((p) => PHASE_ORDER.indexOf(p));
  const ordered = ranks.every((r, i) => r >= 0 && (i === 0 || r >= ranks[i - 1]));
  check(`${label}: phases arrived in order waiting -> running -> completed, completed once and last`,
    ordered && phases[0] === "waiting" && phases.includes("running") &&
      phases.at(-1) === "completed" && phases.filter((p) => p === "completed").length === 1,
    `phases: ${phases.join(", ")}`);

  const progress = tasks.filter((e) => e.phase === "running").map((e) => Number(e.progress));
  const rising = progress.length >= 2 && progress.every((p, i) => i === 0 || p > progress[i - 1]);
  check(`${label}: progress rose while running (at least 2 running answers, each higher)`,
    rising, `running progress: ${progress.join(", ") || "(none)"}`);

  let body = null;
  try {
    body = JSON.parse(state.body);
  } catch {
    // Checked below.
  }
  check(`${label}: the last raw body is the completed upload task with its output`,
    body?.id === TASK.upload && body?.status?.phase === "completed" && body?.output?.upload?.assetSpec,
    `body: ${state.body.slice(0, 200)}`);

  const gets = seen.requests.filter((r) => isTaskGet(r.url, TASK.upload));
  const streams = seen.requests.filter((r) => isTaskEvents(r.url, TASK.upload));
  const sseTasks = seen.sse.filter((m) => m.event === "task");
  if (source === "events") {
    check(`${label}: one EventSource request, no polling GET`, streams.length === 1 && gets.length === 0,
      `${streams.length} /events requests, ${gets.length} GETs`);
    check(`${label}: the page logged every SSE 'task' message Chromium received, in the same order`,
      sseTasks.length === tasks.length &&
        sseTasks.every((m, i) => JSON.parse(m.data).status.phase === tasks[i].phase &&
          String(JSON.parse(m.data).status.updatedAt) === tasks[i].updatedAt && m.id === tasks[i].updatedAt),
      `${sseTasks.length} SSE messages, ${tasks.length} logged`);
  } else {
    check(`${label}: polled with GET (more GETs than status changes), never opened /events`,
      streams.length === 0 && sseTasks.length === 0 && gets.length >= tasks.length && gets.length >= 3,
      `${streams.length} /events requests, ${gets.length} GETs, ${tasks.length} status changes`);
  }
  const fromTaskgate = seen.responses.filter((r) => isTaskGet(r.url, TASK.upload) || isTaskEvents(r.url, TASK.upload));
  check(`${label}: taskgate's answers carried Access-Control-Allow-Origin: ${allowedOrigin}`,
    fromTaskgate.length > 0 && fromTaskgate.every((r) => r.headers?.["access-control-allow-origin"] === allowedOrigin),
    fromTaskgate.map((r) => `${r.status} ${r.headers?.["access-control-allow-origin"]}`).join(", ") || "no answers");
  check(`${label}: no script error on the page`, seen.pageErrors.length === 0, seen.pageErrors.join("; "));
}

/** (f) and (g): the page followed the demo's upload asset (its default) to ready through `source`. */
function checkAssetFollowed(label, s, source, allowedOrigin) {
  const { state, seen } = s;
  const assets = state.log.filter((e) => e.kind === "asset");
  const phases = assets.map((e) => e.phase);
  const summary = `log: ${state.log.map((e) => e.text).join(" | ") || "(empty)"}`;

  check(`${label}: page followed an asset by default and ended at ready (data-kind=asset, data-state=done)`,
    state.kind === "asset" && state.state === "done" && state.phase === "ready",
    `kind=${state.kind} state=${state.state} phase=${state.phase}; ${summary}`);
  check(`${label}: used ${source} only`,
    state.mode === source && assets.length > 0 && state.log.every((e) => e.source === source || e.kind === "info"),
    `mode=${state.mode}; ${summary}`);
  const ranks = phases.map((p) => ASSET_PHASE_ORDER.indexOf(p));
  check(`${label}: phases arrived in order uploading -> waiting -> processing -> ready, ready once and last`,
    ranks.every((r, i) => r >= 0 && (i === 0 || r >= ranks[i - 1])) && phases[0] === "uploading" &&
      phases.includes("waiting") && phases.includes("processing") &&
      phases.at(-1) === "ready" && phases.filter((p) => p === "ready").length === 1,
    `phases: ${phases.join(", ")}`);
  const progress = assets.filter((e) => e.phase === "processing").map((e) => Number(e.progress));
  check(`${label}: progress rose while processing`,
    progress.length >= 2 && progress.every((p, i) => i === 0 || p >= progress[i - 1]) && progress.at(-1) > progress[0],
    `processing progress: ${progress.join(", ") || "(none)"}`);
  check(`${label}: the asset became playable while processing (playbackUrl before ready)`,
    assets.some((e) => e.phase === "processing" && e.playback === "yes") && state.playback.startsWith("https://"),
    summary);
  let body = null;
  try {
    body = JSON.parse(state.body);
  } catch {
    // Checked below.
  }
  check(`${label}: the last raw body is the ready upload asset with its downloadUrl`,
    body?.id === ASSET.upload && body?.status?.phase === "ready" && typeof body?.downloadUrl === "string",
    `body: ${state.body.slice(0, 200)}`);
  const gets = seen.requests.filter((r) => isAssetGet(r.url, ASSET.upload));
  const streams = seen.requests.filter((r) => isAssetEvents(r.url, ASSET.upload));
  const sseAssets = seen.sse.filter((m) => m.event === "asset");
  if (source === "events") {
    check(`${label}: one EventSource request on /asset/{id}/events, no polling GET`,
      streams.length === 1 && gets.length === 0, `${streams.length} /events requests, ${gets.length} GETs`);
    check(`${label}: the page logged every SSE 'asset' message Chromium received, in the same order`,
      sseAssets.length === assets.length &&
        sseAssets.every((m, i) => JSON.parse(m.data).status.phase === assets[i].phase && m.id === assets[i].updatedAt),
      `${sseAssets.length} SSE messages, ${assets.length} logged`);
  } else {
    check(`${label}: polled GET /asset/{id}, never opened /events`,
      streams.length === 0 && sseAssets.length === 0 && gets.length >= assets.length && gets.length >= 3,
      `${streams.length} /events requests, ${gets.length} GETs, ${assets.length} changes`);
  }
  const fromTaskgate = seen.responses.filter((r) => isAssetGet(r.url, ASSET.upload) || isAssetEvents(r.url, ASSET.upload));
  check(`${label}: taskgate's answers carried Access-Control-Allow-Origin: ${allowedOrigin}`,
    fromTaskgate.length > 0 && fromTaskgate.every((r) => r.headers?.["access-control-allow-origin"] === allowedOrigin),
    fromTaskgate.map((r) => `${r.status} ${r.headers?.["access-control-allow-origin"]}`).join(", ") || "no answers");
  check(`${label}: no script error on the page`, seen.pageErrors.length === 0, seen.pageErrors.join("; "));
}

/** (c): the browser refused taskgate's answers to a disallowed origin. */
function checkRefused(label, s) {
  const { state, seen } = s;
  const summary = `log: ${state.log.map((e) => e.text).join(" | ") || "(empty)"}`;
  check(`${label}: the page never got a phase (data-phase empty, no task in the log, no body)`,
    state.phase === "" && state.progress === "" && !state.log.some((e) => e.kind === "task") && state.body === "",
    `phase=${JSON.stringify(state.phase)}; body=${state.body.slice(0, 80)}; ${summary}`);
  const esFailed = state.log.some((e) => e.kind === "error" && e.source === "events");
  const fetchFailed = state.log.some((e) => e.kind === "error" && e.source === "poll" && /request failed/.test(e.text));
  check(`${label}: the page saw the refusal as errors (EventSource failed, then fetch failed) and shows one`,
    esFailed && fetchFailed && Boolean(state.error), `error=${JSON.stringify(state.error)}; ${summary}`);
  const corsConsole = seen.console.filter((line) => /blocked by CORS policy/i.test(line));
  check(`${label}: Chromium reported the CORS refusal (console: "blocked by CORS policy")`,
    corsConsole.length > 0, `console: ${seen.console.join(" | ") || "(empty)"}`);
  const fromTaskgate = seen.responses.filter((r) => isTaskGet(r.url, TASK.upload) || isTaskEvents(r.url, TASK.upload));
  check(`${label}: taskgate answered the disallowed origin without Access-Control-Allow-Origin`,
    fromTaskgate.every((r) => !r.headers || !("access-control-allow-origin" in r.headers)),
    fromTaskgate.map((r) => `${r.status} ${r.headers?.["access-control-allow-origin"]}`).join(", "));
}

/** (e): the task's secrets are masked as src/redact.rs writes them; the rest is intact. */
function checkRedacted(label, s, expect) {
  const { state } = s;
  let body = null;
  try {
    body = JSON.parse(state.body);
  } catch {
    // Checked below.
  }
  check(`${label}: followed to ${expect.phase}`, state.state === "done" && state.phase === expect.phase && body?.id === expect.id,
    `state=${state.state} phase=${state.phase}`);
  const problems = [];
  for (const [pointer, want] of expect.fields) {
    const got = pointer.split("/").slice(1).reduce((v, k) => (v == null ? undefined : v[k]), body);
    if (got !== want) problems.push(`${pointer}: ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
  check(`${label}: shows ${expect.fields.map(([p, v]) => `${p}=${JSON.stringify(v)}`).join(", ")}`,
    body && problems.length === 0, problems.join("; "));
  const everything = received(s);
  const leaked = expect.secrets.filter((secret) => everything.includes(secret));
  check(`${label}: none of the task's secrets reached the page (${expect.secrets.length} strings)`,
    leaked.length === 0, `leaked: ${leaked.join(", ")}`);
}

// ---- main --------------------------------------------------------------------------------------

async function main() {
  // A fresh, empty temporary tree for this run: taskgate's work directory, and Playwright's
  // profile (it makes its user-data-dir under os.tmpdir(), i.e. TMPDIR, and rejects one
  // passed in args). Removed on every exit path.
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), "taskgate-e2e-"));
  const removeRunDir = () => fs.rmSync(runDir, { recursive: true, force: true });
  process.on("exit", removeRunDir);
  cleanups.push(removeRunDir);
  const workDir = path.join(runDir, "work");
  const tmpDir = path.join(runDir, "tmp");
  fs.mkdirSync(workDir);
  fs.mkdirSync(tmpDir);

  const allowedOrigin = await startPageServer();
  const otherOrigin = await startPageServer();
  const taskgate = await startTaskgate(allowedOrigin, workDir);
  console.log(`taskgate --demo (pid ${taskgate.pid}) at ${taskgate.base}, admin :${taskgate.adminPort}`);
  console.log(`page served at ${allowedOrigin} (allowed origin) and ${otherOrigin} (not allowed)`);

  if (!fs.existsSync(CHROMIUM_BIN)) throw new Error(`no Chromium at ${CHROMIUM_BIN}`);
  process.env.TMPDIR = tmpDir;
  const browser = await chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  cleanups.push(() => browser.close());
  const profiles = fs.readdirSync(tmpDir).filter((d) => d.includes("profile"));
  console.log(`${CHROMIUM_BIN} ${browser.version()}, fresh profile ${profiles.map((p) => path.join(tmpDir, p)).join(", ")}`);

  const base = taskgate.base;
  const [events, polling, refused, ipfs, custom, transcode, assetEvents, assetPolling, encrypted, failedImport, deleted] = await Promise.all([
    openScenario(browser, "(a) EventSource", allowedOrigin, { taskgate: base, task: TASK.upload }),
    openScenario(browser, "(b) polling", allowedOrigin, { taskgate: base, task: TASK.upload, mode: "poll", interval: "1" }),
    openScenario(browser, "(c) disallowed origin", otherOrigin, { taskgate: base, task: TASK.upload }),
    openScenario(browser, "(e) IPFS export", allowedOrigin, { taskgate: base, task: TASK.ipfsExport }),
    openScenario(browser, "(e) presigned export", allowedOrigin, { taskgate: base, task: TASK.customExport }),
    openScenario(browser, "(e) transcode", allowedOrigin, { taskgate: base, task: TASK.transcode }),
    openScenario(browser, "(f) asset, EventSource", allowedOrigin, { taskgate: base }),
    openScenario(browser, "(g) asset, polling", allowedOrigin, { taskgate: base, mode: "poll", interval: "1" }),
    openScenario(browser, "(h) encrypted asset", allowedOrigin, { taskgate: base, asset: ASSET.encrypted }),
    openScenario(browser, "(h) failed import", allowedOrigin, { taskgate: base, asset: ASSET.failed }),
    openScenario(browser, "(h) deleted asset", allowedOrigin, { taskgate: base, asset: ASSET.deleted }),
  ]);
  const followers = [events, polling, ipfs, custom, transcode, assetEvents, assetPolling, encrypted, failedImport, deleted];
  const all = [...followers, refused];

  // All pages start together: the demo starts a task's clock at its first request, and the
  // upload task waits 3 s before running.
  console.log(`${all.length} pages following their tasks (${elapsed()})`);
  await Promise.all(all.map((s) => s.page.goto(s.url, { waitUntil: "domcontentloaded" })));
  await Promise.all(
    followers.map((s) =>
      waitForEnd(s.page).catch((error) => {
        s.waitError = error.message.split("\n")[0];
      }),
    ),
  );
  // The refused page has had as long as the others: it must have failed, not be slow.
  await refused.page
    .waitForFunction(() => document.querySelector('#log li[data-kind="error"][data-source="poll"]'), null, {
      timeout: 10_000,
      polling: 100,
    })
    .catch(() => {});
  console.log(`pages done (${elapsed()})`);

  for (const s of all) {
    s.state = await readPage(s.page);
    s.html = await s.page.content();
  }
  // Response bodies still being read (streams are closed by now).
  await withTimeout(Promise.all(all.flatMap((s) => s.seen.pending)), 15_000, "reading response bodies").catch(
    (error) => console.log(`note: ${error.message}`),
  );
  for (const s of followers) {
    if (s.waitError) check(`${s.name}: page finished in time`, false, `${s.waitError}; state=${JSON.stringify(s.state.state)}`);
  }

  checkFollowed("(a) EventSource", events, "events", allowedOrigin);
  checkFollowed("(b) polling fallback", polling, "poll", allowedOrigin);
  checkRefused("(c) disallowed origin", refused);

  // (d) The key, anywhere the pages received anything. The capture must not be empty.
  const bodies = all.flatMap((s) => s.seen.responses.filter((r) => r.body !== null && /\/task\//.test(r.url)));
  const sseCount = all.reduce((n, s) => n + s.seen.sse.length, 0);
  check(`(d) the capture is real: ${bodies.length} taskgate response bodies and ${sseCount} SSE messages read`,
    bodies.length >= 5 && sseCount >= 5 && bodies.some((r) => r.body.includes(TASK.upload)),
    `${bodies.length} bodies, ${sseCount} SSE messages`);
  const leaks = all.filter((s) => received(s).includes(DEMO_KEY)).map((s) => s.name);
  check(`(d) "${DEMO_KEY}" appears nowhere the pages received (DOM, headers, bodies, SSE, console)`,
    leaks.length === 0, `found in: ${leaks.join(", ")}`);

  // (e) What src/redact.rs writes for the demo's secret-bearing tasks (src/demo.rs).
  checkRedacted("(e) IPFS export: Pinata JWT", ipfs, {
    id: TASK.ipfsExport,
    phase: "completed",
    fields: [
      ["/params/export/ipfs/pinata/jwt", "***"],
      ["/params/export/ipfs/nftMetadata/name", "Demo video"],
    ],
    secrets: ["eyJhbGciOiJIUzI1NiJ9.eyJkZW1vIjp0cnVlfQ.PINATA"],
  });
  checkRedacted("(e) presigned export: URL signature and header", custom, {
    id: TASK.customExport,
    phase: "completed",
    fields: [
      ["/params/export/custom/url", "https://my-bucket.s3.amazonaws.com/path/file.mp4"],
      ["/params/export/custom/headers/Authorization", "***"],
      ["/params/export/custom/method", "PUT"],
    ],
    secrets: ["customer-secret", "d3m0516na7e", "AKIADEMO", "X-Amz-Signature"],
  });
  checkRedacted("(e) transcode: web3.storage proof", transcode, {
    id: TASK.transcode,
    phase: "failed",
    fields: [
      ["/params/transcode-file/storage/url", "w3s://***@/"],
      ["/params/transcode-file/input/url", "s3+https://***:***@in.example.com/inbucket/video.mp4"],
    ],
    secrets: ["EaJlcm9vdHOAZ3ZlcnNpb24BZGVtby11Y2Fu"],
  });

  checkAssetFollowed("(f) asset, EventSource", assetEvents, "events", allowedOrigin);
  checkAssetFollowed("(g) asset, polling fallback", assetPolling, "poll", allowedOrigin);
  // (h) What src/redact.rs writes for the demo's secret-bearing assets (src/demo/assets.rs).
  checkRedacted("(h) encrypted asset: encryptedKey, webhookContext, NFT metadata URL", encrypted, {
    id: ASSET.encrypted,
    phase: "ready",
    fields: [
      ["/source/encryption/encryptedKey", "***"],
      ["/source/encryption/key", "***"],
      ["/playbackPolicy/webhookContext/customer", "***"],
      ["/playbackPolicy/webhookContext/seats", 0],
      ["/playbackPolicy/type", "webhook"],
      ["/storage/ipfs/spec/nftMetadata/image", "https://img.example/private.png"],
    ],
    secrets: ["ZGVtby1lbmNyeXB0ZWQtYWVzLWtleS1ub3QtYS1zZWNyZXQ=", "acme-corp", "d3m0516na7e"],
  });
  checkRedacted("(h) failed import: presigned source.url", failedImport, {
    id: ASSET.failed,
    phase: "failed",
    fields: [["/source/url", "https://my-bucket.s3.amazonaws.com/in/broken.mkv"]],
    secrets: ["AKIADEMO", "d3m0516na7e", "X-Amz-Signature"],
  });
  check("(h) deleted asset: the page says the asset was not found (taskgate's generic 404)",
    deleted.state.state === "error" && deleted.state.error === "asset not found" && deleted.state.phase === "",
    `state=${deleted.state.state} error=${JSON.stringify(deleted.state.error)}`);

  if (process.env.E2E_VERBOSE) {
    for (const s of all) console.log(`--- ${s.name}\n${s.state.log.map((e) => e.text).join("\n")}`);
  }

  clearTimeout(overall);
  exiting = true;
  await cleanup();
  printResults();
  const failed = results.filter((r) => !r.ok).length;
  console.log(`\nbrowser-e2e: ${elapsed()}`);
  console.log(`${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((error) => abort(`setup failed: ${error?.stack || error}`));
