#!/usr/bin/env node
// The admin status page (GET / on the admin listener) in a real Chromium against `taskgate --demo`.
//
// It starts taskgate (TASKGATE_BIN, default target/debug/taskgate) with --demo on free loopback
// ports, makes a few public requests of different kinds (misses, hits, a coalesced pair, a 404, a
// refused bad id), then loads http://127.0.0.1:ADMIN/ in Debian's Chromium (CHROMIUM_BIN, default
// /usr/bin/chromium) through playwright-core, and checks:
//   - the answer: 200, text/html; charset=utf-8, no-store, a CSP with default-src 'none';
//   - the page loaded nothing but itself, ran no script, logged no console error (no CSP report);
//   - every figure in the DOM (its data-value) equals the value computed from /metrics, scraped
//     right before and after the page with no request in between (the two scrapes must agree);
//   - integer figures print as their value;
//   - no task id, no body text and not the demo key anywhere in the DOM;
//   - the page reloads itself (meta refresh) and its uptime moves on.
// A full-page screenshot is written to target/e2e/status-page.png (STATUS_SCREENSHOT to change)
// and its path printed, for CI to keep as an artifact. Prints one line per check and
// "N passed, M failed"; exits 1 on any failure, 2 on a setup error or the overall time-out.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";
import { freePorts } from "./ports.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TASKGATE_BIN = path.resolve(REPO, process.env.TASKGATE_BIN || path.join("target", "debug", "taskgate"));
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const SCREENSHOT = path.resolve(REPO, process.env.STATUS_SCREENSHOT || path.join("target", "e2e", "status-page.png"));
const OVERALL_TIMEOUT_MS = 90_000;

/** What `--demo` injects upstream (src/demo DEMO_API_KEY): never on the page. */
const DEMO_KEY = "demo-key-not-a-secret";
/** Task ids of src/demo, and an id the demo does not know. */
const TASKS = {
  upload: "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69",
  ipfsExport: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
  transcode: "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e",
  unknown: "00000000-0000-4000-8000-00000000dead",
};
/** Strings of the demo's task bodies: none may reach the page. */
const BODY_TEXT = ["Demo video", "assetSpec", "userId", "params", "my-bucket"];

const started = Date.now();
const results = [];
const cleanups = [];
let taskgateLog = [];
let exiting = false;

function check(name, ok, detail = "") {
  results.push({ name, ok: Boolean(ok), detail });
}

const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function cleanup() {
  while (cleanups.length) {
    const step = cleanups.pop();
    try {
      await Promise.race([Promise.resolve().then(step), sleep(10_000)]);
    } catch (error) {
      console.error(`clean-up: ${error.message}`);
    }
  }
}

function printResults() {
  for (const r of results) {
    console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name}${!r.ok && r.detail ? `\n       ${r.detail}` : ""}`);
  }
}

async function abort(message, code = 2) {
  if (exiting) return;
  exiting = true;
  console.error(`\nstatus-e2e: ${message} (after ${elapsed()})`);
  printResults();
  if (taskgateLog.length) console.error(`--- taskgate's last output ---\n${taskgateLog.slice(-40).join("\n")}`);
  await cleanup();
  process.exit(code);
}

const overall = setTimeout(() => abort(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`), OVERALL_TIMEOUT_MS);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => abort(`stopped by ${signal}`, 130));
process.on("unhandledRejection", (error) => abort(`unexpected error: ${error?.stack || error}`));

// ---- taskgate --demo ---------------------------------------------------------------------------

async function startTaskgate(workDir) {
  if (!fs.existsSync(TASKGATE_BIN)) throw new Error(`no taskgate binary at ${TASKGATE_BIN}: cargo build, or set TASKGATE_BIN`);
  for (let attempt = 1; ; attempt++) {
    const [publicPort, adminPort] = await freePorts(2);
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith("TASKGATE_") && name !== "RUST_LOG"),
    );
    Object.assign(env, {
      TASKGATE_LISTEN: `127.0.0.1:${publicPort}`,
      TASKGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      TASKGATE_LOG: "info",
    });
    taskgateLog = [];
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
      if (!(await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)]))) {
        child.kill("SIGKILL");
        await exited;
      }
    };
    process.on("exit", () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    });
    cleanups.push(stop);
    let gone = null;
    exited.then((how) => (gone = how));
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !gone) {
      try {
        const response = await fetch(`http://127.0.0.1:${adminPort}/readyz`, { signal: AbortSignal.timeout(1_000) });
        if (response.status === 200) return { publicPort, adminPort, pid: child.pid };
      } catch {
        // Not listening yet.
      }
      await sleep(100);
    }
    await stop();
    cleanups.splice(cleanups.indexOf(stop), 1);
    if (attempt >= 3 || gone?.code !== 1) throw new Error(`taskgate did not become ready: ${JSON.stringify(gone)}`);
    console.log(`taskgate exited at start (${JSON.stringify(gone)}); trying other ports`);
  }
}

/** One GET with the path sent as written (fetch() would normalise `/task/..`). */
function rawGet(port, pathname) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: pathname, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${pathname}: no answer in 10 s`)));
    req.on("error", reject);
  });
}

// ---- /metrics, and the figures the page must show ---------------------------------------------

/** Prometheus text → [{name, labels, value}]. */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    out.push({ name: m[1], labels, value: m[3] === "+Inf" ? Infinity : Number(m[3]) });
  }
  return out;
}

const sum = (samples, name, only = {}) =>
  samples
    .filter((s) => s.name === name && Object.entries(only).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
const ratio = (n, d) => (d > 0 ? n / d : 0);

/** The figures the page must show, by element id, computed from /metrics alone. */
function expectedFigures(samples, cacheMaxBytes) {
  const want = {};
  const requests = sum(samples, "taskgate_requests_total");
  want["q-requests"] = requests;
  want["q-upstream"] = sum(samples, "taskgate_upstream_requests_total");
  let avoided = 0;
  const avoidedSamples = samples.filter((s) => s.name === "taskgate_upstream_calls_avoided_total");
  if (avoidedSamples.length) {
    const byReason = {};
    for (const s of avoidedSamples) byReason[s.labels.reason] = (byReason[s.labels.reason] || 0) + s.value;
    for (const [reason, v] of Object.entries(byReason)) {
      want[`avoided-${reason}`] = v;
      avoided += v;
    }
  } else {
    want["avoided-hit"] = sum(samples, "taskgate_requests_total", { cache: "HIT" });
    want["avoided-coalesced"] = sum(samples, "taskgate_coalesced_waits_total");
    avoided = want["avoided-hit"] + want["avoided-coalesced"];
    if (samples.some((s) => s.name === "taskgate_requests_total" && s.labels.cache === "STALE")) {
      want["avoided-stale"] = sum(samples, "taskgate_requests_total", { cache: "STALE" });
      avoided += want["avoided-stale"];
    }
  }
  want["q-avoided"] = avoided;
  want["q-share"] = ratio(avoided, requests);
  const outcomes = ["HIT", "STALE", "MISS", "PASS"];
  const byCache = (c) => sum(samples, "taskgate_requests_total", { cache: c });
  const lookedUp = outcomes.reduce((a, c) => a + byCache(c), 0);
  for (const c of outcomes) {
    if (c === "STALE" && !samples.some((s) => s.name === "taskgate_requests_total" && s.labels.cache === c)) continue;
    want[`cache-${c}`] = byCache(c);
    want[`rate-${c}`] = ratio(byCache(c), lookedUp);
  }
  want["cache-none"] = byCache("none");
  const bytes = sum(samples, "taskgate_cache_bytes");
  want["cache-entries"] = sum(samples, "taskgate_cache_entries");
  want["cache-bytes"] = bytes;
  want["cache-max"] = cacheMaxBytes;
  want["cache-fill"] = ratio(bytes, cacheMaxBytes);
  want["up-calls"] = want["q-upstream"];
  want["up-in-flight"] = sum(samples, "taskgate_upstream_in_flight");
  want["up-errors"] = samples
    .filter((s) => s.name === "taskgate_upstream_requests_total" && s.labels.error !== "none")
    .reduce((a, s) => a + s.value, 0);
  want["up-5xx"] = sum(samples, "taskgate_upstream_requests_total", { status_class: "5xx" });
  want["up-4xx"] = sum(samples, "taskgate_upstream_requests_total", { status_class: "4xx" });
  want["up-mean"] = ratio(
    sum(samples, "taskgate_upstream_duration_seconds_sum"),
    sum(samples, "taskgate_upstream_duration_seconds_count"),
  );
  for (const s of samples.filter((s) => s.name === "taskgate_upstream_requests_total")) {
    want[`up-${s.labels.status_class}-${s.labels.error}`] = s.value;
  }
  want["watch-ids"] = sum(samples, "taskgate_watch_ids");
  want["watch-streams"] = sum(samples, "taskgate_watch_streams");
  want["watch-events"] = sum(samples, "taskgate_watch_events_sent_total");
  return want;
}

const close = (a, b) => a === b || Math.abs(a - b) <= 1e-12 * Math.max(Math.abs(a), Math.abs(b));

// ---- main ----------------------------------------------------------------------------------------

async function main() {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), "taskgate-status-e2e-"));
  const removeRunDir = () => fs.rmSync(runDir, { recursive: true, force: true });
  process.on("exit", removeRunDir);
  cleanups.push(removeRunDir);
  const workDir = path.join(runDir, "work");
  const tmpDir = path.join(runDir, "tmp");
  fs.mkdirSync(workDir);
  fs.mkdirSync(tmpDir);

  const tg = await startTaskgate(workDir);
  const admin = `http://127.0.0.1:${tg.adminPort}`;
  console.log(`taskgate --demo (pid ${tg.pid}) at 127.0.0.1:${tg.publicPort}, admin ${admin}`);

  // A few requests of different kinds.
  const get = (p) => rawGet(tg.publicPort, p);
  const statuses = [];
  for (const id of [TASKS.upload, TASKS.upload, TASKS.transcode, TASKS.transcode, TASKS.unknown, TASKS.unknown]) {
    statuses.push((await get(`/task/${id}`)).status);
  }
  const pair = await Promise.all([get(`/task/${TASKS.ipfsExport}`), get(`/task/${TASKS.ipfsExport}`)]);
  statuses.push(...pair.map((r) => r.status));
  statuses.push((await get("/task/..")).status);
  check(`public requests answered (${statuses.join(" ")})`, statuses.every((s) => s > 0), "");

  const before = await (await fetch(`${admin}/metrics`)).text();

  if (!fs.existsSync(CHROMIUM_BIN)) throw new Error(`no Chromium at ${CHROMIUM_BIN}`);
  process.env.TMPDIR = tmpDir;
  const browser = await chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
    timeout: 30_000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  cleanups.push(() => browser.close());
  console.log(`${CHROMIUM_BIN} ${browser.version()}`);
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  const requested = [];
  const consoleLines = [];
  const pageErrors = [];
  page.on("request", (r) => requested.push(r.url()));
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => pageErrors.push(String(e)));

  const response = await page.goto(`${admin}/`, { waitUntil: "load", timeout: 15_000 });
  const after = await (await fetch(`${admin}/metrics`)).text();
  const headers = response.headers();
  check("GET / answered 200 text/html; charset=utf-8 with Cache-Control: no-store",
    response.status() === 200 && headers["content-type"] === "text/html; charset=utf-8" &&
      headers["cache-control"] === "no-store",
    `${response.status()} ${headers["content-type"]} ${headers["cache-control"]}`);
  const csp = headers["content-security-policy"] || "";
  check("CSP: default-src 'none'; style-src 'unsafe-inline' (no script can run)",
    csp.startsWith("default-src 'none'; style-src 'unsafe-inline'") && !/script-src/.test(csp), csp);

  const figures = await page.$$eval("[data-value]", (els) =>
    els.map((e) => ({ id: e.id, value: e.dataset.value, text: e.textContent.trim() })),
  );
  const html = await page.content();
  const styled = await page.$eval("h2", (h) => getComputedStyle(h).borderBottomStyle);
  const scripts = await page.$$eval("script", (s) => s.length);
  const refresh = await page.$eval('meta[http-equiv="refresh"]', (m) => m.content).catch(() => null);

  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  const shot = fs.statSync(SCREENSHOT, { throwIfNoEntry: false });
  check(`screenshot written (${shot?.size ?? 0} bytes)`, shot && shot.size > 10_000, SCREENSHOT);
  console.log(`screenshot: ${path.relative(REPO, SCREENSHOT)} (${SCREENSHOT})`);

  check("the two /metrics scrapes around the page load agree (nothing moved in between)",
    before.replace(/^taskgate_\w*duration\w*.*\n/gm, "") === after.replace(/^taskgate_\w*duration\w*.*\n/gm, ""), "");

  // Every figure the page shows equals its value from /metrics.
  const samples = parseMetrics(after);
  const maxBytes = Number(figures.find((f) => f.id === "cache-max")?.value);
  check("the cache bound is the default TASKGATE_CACHE_MAX_BYTES (64 MiB)", maxBytes === 64 * 1024 * 1024, `${maxBytes}`);
  const want = expectedFigures(samples, 64 * 1024 * 1024);
  const shown = Object.fromEntries(figures.map((f) => [f.id, f]));
  const wrong = [];
  for (const [id, value] of Object.entries(want)) {
    const got = shown[id];
    if (!got) wrong.push(`${id}: missing, want ${value}`);
    else if (!close(Number(got.value), value)) wrong.push(`${id}: page ${got.value}, /metrics ${value}`);
  }
  check(`${Object.keys(want).length} figures on the page equal the values from /metrics`, wrong.length === 0, wrong.join("; "));
  const requestsFigure = Number(shown["q-requests"]?.value);
  check(`the requests were counted (${requestsFigure}; ${want["q-upstream"]} upstream calls, ${want["q-avoided"]} avoided)`,
    requestsFigure === statuses.length && want["q-avoided"] >= 2 && want["cache-none"] >= 1 && want["cache-entries"] >= 1,
    JSON.stringify(want));
  const textWrong = figures
    .filter((f) => /^(q-(requests|upstream|avoided)|avoided-|cache-(HIT|STALE|MISS|PASS|none|entries)$|up-(calls|errors|5xx|4xx)$|watch-)/.test(f.id))
    .filter((f) => f.text !== String(Number(f.value)));
  check("integer figures print as their value", textWrong.length === 0,
    textWrong.map((f) => `${f.id}: ${JSON.stringify(f.text)} vs ${f.value}`).join("; "));
  check(`the share that cost no API call prints as a percentage (${shown["q-share"]?.text})`,
    shown["q-share"]?.text === `${(Number(shown["q-share"]?.value) * 100).toFixed(1)} %`, "");

  // Nothing but the page itself; no script; the style applies.
  const foreign = requested.filter((u) => !u.startsWith(`${admin}/`) || (new URL(u).pathname !== "/" && new URL(u).pathname !== "/favicon.ico"));
  check(`the page loaded nothing else (${requested.length} requests)`, foreign.length === 0, foreign.join(", "));
  check("no script on the page, no page error, no console error (no CSP violation)",
    scripts === 0 && pageErrors.length === 0 && !consoleLines.some((l) => l.startsWith("error")),
    [...pageErrors, ...consoleLines].join(" | "));
  check("the inline style applies under the CSP", styled === "solid", `h2 border-bottom-style: ${styled}`);

  // Never an id, a body or the key.
  const ids = Object.values(TASKS).filter((id) => html.includes(id));
  check("no task id on the page", ids.length === 0, ids.join(", "));
  const bodies = BODY_TEXT.filter((t) => html.includes(t));
  check("no task body text on the page", bodies.length === 0, bodies.join(", "));
  check(`"${DEMO_KEY}" is not on the page`, !html.includes(DEMO_KEY), "");

  // It reloads itself.
  check(`meta refresh every 5 s (${refresh})`, refresh === "5", "");
  const uptime0 = Number(shown.uptime?.value);
  const reloaded = await page
    .waitForEvent("load", { timeout: 9_000 })
    .then(() => true)
    .catch(() => false);
  const uptime1 = reloaded ? Number(await page.$eval("#uptime", (e) => e.dataset.value)) : NaN;
  check(`the page reloaded itself within 9 s and its uptime moved on (${uptime0} s → ${uptime1} s)`,
    reloaded && uptime1 > uptime0, "");

  clearTimeout(overall);
  exiting = true;
  await cleanup();
  printResults();
  const failed = results.filter((r) => !r.ok).length;
  console.log(`\nstatus-e2e: ${elapsed()}; screenshot: ${path.relative(REPO, SCREENSHOT)}`);
  console.log(`${results.length - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((error) => abort(`setup failed: ${error?.stack || error}`));
