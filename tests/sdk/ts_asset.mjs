// The official TypeScript SDK (npm `livepeer@3.5.0`) reading the demo's assets through taskgate,
// as a page or a server would: `new Livepeer({ apiKey, serverURL })`, `livepeer.asset.get(id)`.
// Run by tests/sdk/run.mjs with TASKGATE_URL (taskgate's public base) and ASSET_IDS (JSON); it
// prints one JSON report of what the SDK returned or threw, which run.mjs checks.
//
// The SDK validates every 200 with its zod schema and throws on a 304, a non-JSON 200 or a body
// its schema refuses (LIVEPEER-ASSETS §6.1): each successful read is a body it accepts.

import { Livepeer } from "livepeer";
import { SDKError } from "livepeer/models/errors/index.js";

const base = process.env.TASKGATE_URL;
const ids = JSON.parse(process.env.ASSET_IDS);
// A placeholder key: taskgate injects the real one upstream.
const livepeer = new Livepeer({ apiKey: "placeholder", serverURL: base });
const underApi = new Livepeer({ apiKey: "placeholder", serverURL: `${base}/api/` });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One read, reduced to what run.mjs checks. */
async function read(client, id) {
  try {
    const res = await client.asset.get(id);
    const a = res.asset;
    return {
      ok: res.statusCode === 200 && a !== undefined,
      status: res.statusCode,
      contentType: res.contentType,
      id: a?.id,
      phase: a?.status?.phase,
      progress: a?.status?.progress ?? null,
      errorMessage: a?.status?.errorMessage ?? null,
      playbackUrl: a?.playbackUrl ?? null,
      downloadUrl: a?.downloadUrl ?? null,
      sourceUrl: a?.source?.url ?? null,
      webhookContext: a?.playbackPolicy?.webhookContext ?? null,
    };
  } catch (error) {
    return {
      ok: false,
      status: error instanceof SDKError ? error.statusCode : null,
      thrown: `${error?.constructor?.name}: ${String(error?.message).split("\n")[0]}`,
    };
  }
}

const report = { sdk: "ts", start: [], polls: [] };
// Start the clocks of the other assets, then follow the upload until it is ready.
report.start.push(await read(livepeer, ids.failed), await read(livepeer, ids.encrypted));
const deadline = Date.now() + 45_000;
for (;;) {
  const r = await read(livepeer, ids.upload);
  report.polls.push(r);
  if (r.phase === "ready" || !r.ok || Date.now() > deadline) break;
  await sleep(400);
}
// Once cached: the same answer, never a 304 (the SDK sends no If-None-Match).
for (let i = 0; i < 3; i++) report.polls.push(await read(livepeer, ids.upload));
report.underApi = await read(underApi, ids.upload);
report.failed = await read(livepeer, ids.failed);
report.encrypted = await read(livepeer, ids.encrypted);
report.deleted = await read(livepeer, ids.deleted);
report.unknown = await read(livepeer, ids.unknown);
console.log(JSON.stringify(report));
