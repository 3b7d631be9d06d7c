#!/usr/bin/env node
// SDK drop-in check: the official TypeScript (npm `livepeer@3.5.0`) and Python (PyPI
// `livepeer==0.3.0`) SDKs read the demo's assets through `taskgate --demo`, each phase of them.
//
// Starts taskgate (TASKGATE_BIN, default target/debug/taskgate) with --demo on free loopback
// ports, runs ts_asset.mjs (node) and py_asset.py (PYTHON, default target/sdk-venv/bin/python)
// at the same time, and checks each report the same way:
//   - every read of the direct upload parsed (the SDK accepted taskgate's 200), and the reads
//     went uploading → waiting → processing (progress rising, playbackUrl appearing) → ready
//     (downloadUrl); reads of the cached ready asset parse too: no 304, no non-JSON 200;
//   - a server URL with a `/api/` prefix works;
//   - the failed import parses, with its errorMessage, and its presigned source.url stripped;
//   - the encrypted, webhook-gated asset parses with its webhookContext values masked;
//   - a deleted asset and an unknown id: the SDK raises its API error with status 404.
// Prints one line per check and "N passed, M failed"; exits 1 on a failed check, 2 on a setup
// error or time-out. taskgate is stopped on every exit path.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePorts } from "../e2e/ports.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const TASKGATE_BIN = path.resolve(REPO, process.env.TASKGATE_BIN || "target/debug/taskgate");
const PYTHON = path.resolve(REPO, process.env.PYTHON || "target/sdk-venv/bin/python");
const OVERALL_TIMEOUT_MS = 120_000;

/** The demo's assets (src/demo/assets.rs). */
const ASSET_IDS = {
  upload: "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607",
  failed: "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f",
  encrypted: "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7",
  deleted: "9f0a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c",
  unknown: "00000000-0000-4000-8000-000000000000",
};
const PHASES = ["uploading", "waiting", "processing", "ready"];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const started = Date.now();
const results = [];
let child = null;
let log = [];

function check(name, ok, detail = "") {
  results.push({ name, ok: Boolean(ok), detail });
}

function stopTaskgate() {
  if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
}
process.on("exit", stopTaskgate);

function abort(message) {
  console.error(`sdk-check: ${message} (after ${((Date.now() - started) / 1000).toFixed(1)} s)`);
  if (log.length) console.error(`--- taskgate's last output ---\n${log.slice(-30).join("\n")}`);
  stopTaskgate();
  process.exit(2);
}
setTimeout(() => abort(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`), OVERALL_TIMEOUT_MS).unref();

async function startTaskgate() {
  if (!fs.existsSync(TASKGATE_BIN)) abort(`no taskgate binary at ${TASKGATE_BIN}`);
  const [publicPort, adminPort] = await freePorts(2);
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("TASKGATE_") && name !== "RUST_LOG"),
  );
  Object.assign(env, {
    TASKGATE_LISTEN: `127.0.0.1:${publicPort}`,
    TASKGATE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    TASKGATE_LOG: "warn",
  });
  // A work directory without config/taskgate.toml: defaults, then the variables above.
  child = spawn(TASKGATE_BIN, ["--demo"], { cwd: os.tmpdir(), env, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => log.push(...chunk.split("\n").filter(Boolean)));
  }
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) abort(`taskgate exited with ${child.exitCode}`);
    try {
      const res = await fetch(`http://127.0.0.1:${adminPort}/readyz`, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) return `http://127.0.0.1:${publicPort}`;
    } catch {
      // Not listening yet.
    }
    await sleep(100);
  }
  abort("taskgate did not become ready within 20 s");
}

/** Runs one SDK script; resolves to its JSON report. */
function runSdk(name, command, args, env) {
  return new Promise((resolve) => {
    const proc = spawn(command, args, { cwd: HERE, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    proc.stdout.on("data", (c) => (out += c));
    proc.stderr.on("data", (c) => (err += c));
    proc.on("error", (e) => resolve({ error: `${name}: cannot run ${command}: ${e.message}` }));
    proc.on("exit", (code) => {
      const last = out.trim().split("\n").pop();
      try {
        resolve(JSON.parse(last));
      } catch {
        resolve({ error: `${name} exited ${code} without a report:\n${out}\n${err}` });
      }
    });
  });
}

function checkReport(sdk, r) {
  const polls = r.polls || [];
  const bad = polls.filter((p) => !p.ok);
  check(`${sdk}: every read of the upload parsed (${polls.length} reads)`, polls.length > 3 && !bad.length,
    JSON.stringify(bad[0] || r.error));
  check(`${sdk}: every 200 is application/json`, polls.every((p) => p.status === 200 && /^application\/json/.test(p.contentType || "")),
    JSON.stringify(polls.find((p) => p.status !== 200) || {}));
  const phases = [];
  for (const p of polls) if (p.phase && phases[phases.length - 1] !== p.phase) phases.push(p.phase);
  check(`${sdk}: the upload went ${PHASES.join(" → ")}`, JSON.stringify(phases) === JSON.stringify(PHASES), phases.join(", "));
  const progress = polls.filter((p) => p.phase === "processing").map((p) => p.progress);
  check(`${sdk}: progress while processing, never going down`,
    progress.length > 0 && progress.every((v, i) => typeof v === "number" && (i === 0 || v >= progress[i - 1])),
    JSON.stringify(progress));
  check(`${sdk}: playbackUrl appears while processing`, polls.some((p) => p.phase === "processing" && p.playbackUrl));
  const ready = polls.filter((p) => p.phase === "ready");
  check(`${sdk}: ready has downloadUrl and playbackUrl, read ${ready.length} times`,
    ready.length >= 4 && ready.every((p) => p.downloadUrl && p.playbackUrl));
  check(`${sdk}: a server URL ending in /api/ works`, r.underApi?.ok && r.underApi.phase === "ready", JSON.stringify(r.underApi));
  const failed = r.failed || {};
  check(`${sdk}: the failed import parses with its errorMessage`, failed.ok && failed.phase === "failed" && failed.errorMessage,
    JSON.stringify(failed));
  check(`${sdk}: its presigned source.url comes without query`,
    failed.sourceUrl === "https://my-bucket.s3.amazonaws.com/in/broken.mkv", failed.sourceUrl);
  const enc = r.encrypted || {};
  check(`${sdk}: the encrypted, webhook-gated asset parses`, enc.ok && enc.phase === "ready", JSON.stringify(enc));
  check(`${sdk}: its webhookContext values are masked, types kept`,
    JSON.stringify(enc.webhookContext) === JSON.stringify({ customer: "***", plan: "***", seats: 0 }),
    JSON.stringify(enc.webhookContext));
  for (const [name, what] of [["deleted", "a deleted asset"], ["unknown", "an unknown id"]]) {
    const nf = r[name] || {};
    check(`${sdk}: ${what} raises the SDK's API error with 404`, !nf.ok && nf.status === 404, JSON.stringify(nf));
  }
}

const base = await startTaskgate();
console.log(`taskgate --demo at ${base}`);
const env = { TASKGATE_URL: base, ASSET_IDS: JSON.stringify(ASSET_IDS) };
const [ts, py] = await Promise.all([
  runSdk("ts", process.execPath, ["ts_asset.mjs"], env),
  runSdk("py", PYTHON, ["py_asset.py"], env),
]);
for (const [sdk, report] of [["ts", ts], ["py", py]]) {
  if (report.error) check(`${sdk}: produced a report`, false, report.error);
  else checkReport(sdk, report);
}
stopTaskgate();
for (const r of results) console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name}${!r.ok && r.detail ? `\n       ${r.detail}` : ""}`);
const failed = results.filter((r) => !r.ok).length;
console.log(`sdk-check: ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
