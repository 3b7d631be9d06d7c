//! Built-in simulated Livepeer Studio task and asset API, for `taskgate --demo` and for tests.
//!
//! A [`Simulator`] answers `GET` and `HEAD /api/task/{id}` and `/api/asset/{id}` on a listener of its own the way
//! Studio's Express app does: bearer auth with [`DEMO_API_KEY`], errors as
//! `{"errors": ["..."]}` (a 401 echoes the token it was given, as Studio's does), and Express's
//! headers: `content-type: application/json; charset=utf-8`, a weak `ETag` (same shape as
//! Express's, not the same hash), `X-Powered-By: Express`, `Vary: Authorization`, and a bodiless
//! 304 when `If-None-Match` matches a 200. Every other request is a 404 in the same shape.
//!
//! It holds a fixed set of [`tasks`] whose bodies have the shapes Studio returns (upload, IPFS
//! export, custom export, transcode-file, clip), including the secrets Studio really returns to
//! non-admins (export headers, Pinata keys, presigned URLs), so taskgate's redaction and its hiding of
//! 401 bodies can be seen; and a fixed set of [`assets`] (see the `assets` module), which move
//! with the same [`Timeline`].
//!
//! Guarantees:
//! - A task's clock starts the first time this simulator answers an authenticated request for
//!   it, so whoever tries the demo sees the task start at `waiting` however long after start they
//!   begin. Each simulator has its own clocks.
//! - The phase is computed from the time elapsed on that clock and the [`Timeline`]; there are
//!   no background timers, and a given elapsed time always gives the same body.
//! - `status.updatedAt` (ms) moves only when the status changes (each progress step counts), so
//!   reads within one step return identical bytes and the same `ETag`.
//! - Bad input (unknown paths, odd headers, a dropped connection) never panics the server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ApiKey, Config};
use crate::listener::{self, Limits};

mod assets;

pub use assets::{
    assets, DemoAsset, DELETED_ASSET_ID, ENCRYPTED_ASSET_ID, FAILED_ASSET_ID, UPLOAD_ASSET_ID,
};

/// The placeholder key `--demo` injects; the simulator accepts only this one.
pub const DEMO_API_KEY: &str = "demo-key-not-a-secret";

/// A well-formed id that no simulated task has: the simulator answers it 404.
pub const UNKNOWN_TASK_ID: &str = "00000000-0000-4000-8000-000000000000";

pub const UPLOAD_TASK_ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";
pub const IPFS_EXPORT_TASK_ID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
pub const CUSTOM_EXPORT_TASK_ID: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
pub const TRANSCODE_TASK_ID: &str = "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e";
pub const CLIP_TASK_ID: &str = "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a";

/// How fast the simulated tasks move. Each attempt of a task spends `waiting` queued, then a
/// share of `running` working (see [`tasks`]). `Timeline::new(Duration::ZERO, Duration::ZERO)`
/// gives tasks that are already finished when first asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub waiting: Duration,
    pub running: Duration,
}

impl Timeline {
    pub const fn new(waiting: Duration, running: Duration) -> Self {
        Self { waiting, running }
    }

    /// For a person with curl: about 3 s waiting, then about 10 s running.
    pub const fn demo() -> Self {
        Self::new(Duration::from_secs(3), Duration::from_secs(10))
    }

    /// For tests: 150 ms waiting, 600 ms running; every task has finished within 1 s.
    pub const fn fast() -> Self {
        Self::new(Duration::from_millis(150), Duration::from_millis(600))
    }
}

/// Progress moves in tenths: each tenth is one status update by the runner, with its own
/// `updatedAt`, like the frequent `POST /task/:id/status` calls of the real one.
const PROGRESS_STEPS: u32 = 10;

/// An unfinished stretch of a task's life.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Queued for `timeline.waiting`. An automatic retry carries its attempt count and, during
    /// the backoff, the error that caused it (Studio's `retryTask`).
    Waiting {
        retries: u32,
        error: Option<&'static str>,
    },
    /// Working for `percent`% of `timeline.running`; `retries` stays on the status.
    Running { retries: u32, percent: u32 },
}

/// How a task ends. Studio replaces the whole status object, so progress disappears.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Completed with this `output`.
    Completed(fn() -> Value),
    Failed {
        retries: u32,
        error: &'static str,
    },
}

const fn wait(retries: u32, error: Option<&'static str>) -> Step {
    Step::Waiting { retries, error }
}

const fn run(retries: u32, percent: u32) -> Step {
    Step::Running { retries, percent }
}

impl Step {
    fn duration(&self, timeline: &Timeline) -> Duration {
        match *self {
            Step::Waiting { .. } => timeline.waiting,
            Step::Running { percent, .. } => timeline.running.saturating_mul(percent) / 100,
        }
    }
}

/// One simulated task: its id, its `type`, what it shows, and its script.
#[derive(Debug)]
pub struct DemoTask {
    pub id: &'static str,
    /// The task's `type`, e.g. `transcode-file`.
    pub kind: &'static str,
    /// One line on what it does over time and what it shows.
    pub about: &'static str,
    steps: &'static [Step],
    end: End,
    /// Fields that never change (owner ids, `params`), given the clock's start in Unix ms.
    fixed: fn(u64) -> Value,
}

/// The simulated tasks, in the order the demo presents them.
pub fn tasks() -> &'static [DemoTask] {
    &TASKS
}

const FIRST_WAIT: Step = wait(0, None);
const USER_ID: &str = "2b7e1516-28ae-4d2a-a6ab-f7158809cf4f";
const PROJECT_ID: &str = "b3c1e2d4-5f60-4718-8a9b-0c1d2e3f4a5b";
const ASSET_ID: &str = "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607";
const VIDEO_CID: &str = "bafybeihhhndfxtursaadlvhuptet6zqni4uhg7ornjtlp5qwngv33ipv6m";

static TASKS: [DemoTask; 5] = [
    DemoTask {
        id: UPLOAD_TASK_ID,
        kind: "upload",
        about: "waiting, then running with rising progress, then completed with the asset's spec",
        steps: &[FIRST_WAIT, run(0, 100)],
        end: End::Completed(upload_output),
        fixed: |_| {
            json!({"userId": USER_ID, "projectId": PROJECT_ID, "outputAssetId": ASSET_ID,
                   "params": {"upload": {"url": "https://example.com/test.mp4",
                                         "thumbnails": true}}})
        },
    },
    DemoTask {
        id: IPFS_EXPORT_TASK_ID,
        kind: "export",
        about: "to IPFS; completes. Studio returns its Pinata JWT in params: taskgate masks it",
        steps: &[FIRST_WAIT, run(0, 50)],
        end: End::Completed(ipfs_export_output),
        fixed: |_| {
            json!({"userId": USER_ID, "projectId": PROJECT_ID, "inputAssetId": ASSET_ID,
                   "params": {"export": {"ipfs": {"nftMetadata": {"name": "Demo video"},
                       "pinata": {"jwt": "eyJhbGciOiJIUzI1NiJ9.eyJkZW1vIjp0cnVlfQ.PINATA"}}}}})
        },
    },
    DemoTask {
        id: CUSTOM_EXPORT_TASK_ID,
        kind: "export",
        about: "to a presigned URL; completes. Its signature and Authorization header get masked",
        steps: &[FIRST_WAIT, run(0, 50)],
        end: End::Completed(|| json!({"export": {"ipfs": {"videoFileCid": ""}}})),
        fixed: |_| {
            json!({"userId": USER_ID, "projectId": PROJECT_ID, "inputAssetId": ASSET_ID,
                   "params": {"export": {"custom": {
                       "url": concat!("https://my-bucket.s3.amazonaws.com/path/file.mp4",
                           "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600",
                           "&X-Amz-Credential=AKIADEMO%2F20240529%2Fus-east-1%2Fs3%2Faws4_request",
                           "&X-Amz-Signature=d3m0516na7e"),
                       "method": "PUT",
                       "headers": {"Authorization": "Bearer customer-secret"}}}}})
        },
    },
    DemoTask {
        id: TRANSCODE_TASK_ID,
        kind: "transcode-file",
        about: "fails, waits for an automatic retry (retries, errorMessage), then ends failed",
        steps: &[
            FIRST_WAIT,
            run(0, 50),
            wait(1, Some(RETRIABLE_ERROR)),
            run(1, 50),
        ],
        end: End::Failed {
            retries: 1,
            error: "error probing MP4 input file: invalid data found when processing input",
        },
        fixed: |_| {
            json!({"userId": USER_ID, "projectId": PROJECT_ID,
                   "params": {"transcode-file": {
                       // Studio scrubs an s3+https key pair, but not a web3.storage proof.
                       "input": {"url": "s3+https://***:***@in.example.com/inbucket/video.mp4"},
                       "storage": {"url": "w3s://EaJlcm9vdHOAZ3ZlcnNpb24BZGVtby11Y2Fu@/"},
                       "outputs": {"hls": {"path": "/output/hls"}}}}})
        },
    },
    DemoTask {
        id: CLIP_TASK_ID,
        kind: "clip",
        about: "waiting, then running, then completed with the clip's (uncleaned) output",
        steps: &[FIRST_WAIT, run(0, 100)],
        end: End::Completed(clip_output),
        fixed: |origin_ms| {
            json!({"userId": USER_ID, "projectId": PROJECT_ID,
                   "outputAssetId": "8e9f0a1b-2c3d-4e4f-9a5b-6c7d8e9f0a1b",
                   "requesterId": "c0ffee5e1f3a9b2d4c6e8f0a1b3c5d7e",
                   "params": {"clip": {
                       "url": concat!("https://recordings-cdn.example/hls/abcd1234efgh5678/",
                           "d32ae9e6-c459-4931-9898-e86e2f5e7e16/output.m3u8"),
                       // The viewer clipped the minute of the stream that ended just before.
                       "clipStrategy": {"playbackId": "abcd1234efgh5678",
                                        "startTime": origin_ms.saturating_sub(90_000),
                                        "endTime": origin_ms.saturating_sub(30_000)},
                       "sessionId": "d32ae9e6-c459-4931-9898-e86e2f5e7e16",
                       "inputId": "4f5a6b7c-8d9e-4f0a-b1c2-d3e4f5a6b7c8",
                       "sourceObjectStoreId": "recordings-os-id"}}})
        },
    },
];

const RETRIABLE_ERROR: &str = "error copying input file to storage: context deadline exceeded";

fn video_spec() -> Value {
    json!({"format": "mp4", "duration": 23.83, "bitrate": 1128000, "tracks": [
        {"type": "video", "codec": "h264", "duration": 23.83, "bitrate": 1000000,
         "width": 1920, "height": 1080, "pixelFormat": "yuv420p", "fps": 30},
        {"type": "audio", "codec": "aac", "duration": 23.83, "bitrate": 128000,
         "channels": 2, "sampleRate": 44100}]})
}

fn upload_output() -> Value {
    json!({"upload": {"assetSpec": {"name": "test.mp4", "type": "video", "size": 84934509,
                                    "hash": null, "videoSpec": video_spec()}}})
}

fn ipfs_export_output() -> Value {
    let gateway = "https://ipfs.livepeer.studio/ipfs";
    json!({"export": {"ipfs": {
        "videoFileCid": VIDEO_CID,
        "videoFileUrl": format!("ipfs://{VIDEO_CID}"),
        "videoFileGatewayUrl": format!("{gateway}/{VIDEO_CID}"),
        "nftMetadataCid": "bafkreiexample",
        "nftMetadataUrl": "ipfs://bafkreiexample",
        "nftMetadataGatewayUrl": format!("{gateway}/bafkreiexample")}}})
}

fn clip_output() -> Value {
    json!({"clip": {"videoFilePath": "", "metadataFilePath": "", "assetSpec": {
        "name": "clip-abcd1234efgh5678", "type": "video", "size": 4718592, "hash": null,
        "files": [{"type": "catalyst_hls_manifest", "path": "hls/index.m3u8"}],
        "videoSpec": video_spec()}}})
}

impl DemoTask {
    /// The non-admin body `elapsed` after the task's clock started at `origin_ms` (Unix ms).
    fn body_at(&self, timeline: &Timeline, elapsed: Duration, origin_ms: u64) -> Value {
        let (status, output) = self.status_at(timeline, elapsed, origin_ms);
        let mut body = (self.fixed)(origin_ms);
        if let Value::Object(fields) = &mut body {
            fields.insert("id".into(), self.id.into());
            fields.insert("type".into(), self.kind.into());
            // Created just before it was scheduled; the first `waiting` is written by scheduling.
            fields.insert("createdAt".into(), origin_ms.saturating_sub(20).into());
            fields.insert("scheduledAt".into(), origin_ms.into());
            fields.insert("status".into(), status);
            if let Some(output) = output {
                fields.insert("output".into(), output);
            }
        }
        body
    }

    /// The `status` object, and `output` once completed.
    fn status_at(
        &self,
        timeline: &Timeline,
        elapsed: Duration,
        origin_ms: u64,
    ) -> (Value, Option<Value>) {
        let at = |offset: Duration| origin_ms.saturating_add(offset.as_millis() as u64);
        let mut start = Duration::ZERO;
        for step in self.steps {
            let length = step.duration(timeline);
            let end = start.saturating_add(length);
            if elapsed >= end {
                start = end;
                continue;
            }
            // `length` is non-zero here: a zero-length step is always already over.
            let status = match *step {
                Step::Waiting { retries, error } => {
                    let mut status =
                        json!({"phase": "waiting", "updatedAt": at(start), "retries": retries});
                    if let Some(error) = error {
                        status["errorMessage"] = error.into();
                    }
                    status
                }
                Step::Running { retries, .. } => {
                    let tenth = length / PROGRESS_STEPS;
                    let done = (elapsed - start).as_nanos() * u128::from(PROGRESS_STEPS)
                        / length.as_nanos();
                    let done = done.min(u128::from(PROGRESS_STEPS - 1)) as u32;
                    let updated = at(start.saturating_add(tenth * done));
                    let progress = f64::from(done) / f64::from(PROGRESS_STEPS);
                    json!({"phase": "running", "updatedAt": updated, "retries": retries,
                           "progress": progress})
                }
            };
            return (status, None);
        }
        match self.end {
            End::Completed(output) => (
                json!({"phase": "completed", "updatedAt": at(start)}),
                Some(output()),
            ),
            End::Failed { retries, error } => (
                json!({"phase": "failed", "updatedAt": at(start), "errorMessage": error,
                       "retries": retries}),
                None,
            ),
        }
    }
}

/// The simulated API, serving on its own listener until [`Simulator::shutdown`] or drop.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    api: Arc<Api>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Simulator {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves HTTP/1.1 and h2c on a spawned task.
    pub async fn start(addr: SocketAddr, timeline: Timeline) -> io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let api = Arc::new(Api {
            timeline,
            calls: AtomicU64::new(0),
            clocks: Mutex::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::clone(&api), stop_rx));
        Ok(Simulator {
            addr,
            api,
            stop,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base to give taskgate as its upstream: `http://127.0.0.1:PORT/api`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// How many `GET`/`HEAD /api/task/{id}` and `/api/asset/{id}` requests were answered, whatever the answer
    /// (401 and 404 included): what taskgate spent of the API's quota.
    pub fn upstream_calls(&self) -> u64 {
        self.api.calls.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes its connections; the port is closed when this returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.server).await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn serve(listener: TcpListener, api: Arc<Api>, stop: watch::Receiver<bool>) {
    // The same accept loop as taskgate's own listeners; a stop closes idle connections at
    // once and gives busy ones a moment.
    let limits = Limits::new(
        1024,
        Duration::from_secs(10),
        Duration::from_secs(60),
        Duration::from_millis(100),
    );
    let task = listener::serve(listener, limits, stop, None, move |request, _ends| {
        let response = api.answer(request.method(), request.uri().path(), request.headers());
        async move { response.map(Either::Left) }
    });
    let _ = task.await;
}

/// A clock's key: the kind (`task`, `asset`) and the id.
type ClockKey = (&'static str, &'static str);

#[derive(Debug)]
struct Api {
    timeline: Timeline,
    calls: AtomicU64,
    /// When each task or asset (kind, id) was first asked for: `Instant` for phases, Unix ms
    /// for timestamps.
    clocks: Mutex<HashMap<ClockKey, (Instant, u64)>>,
}

impl Api {
    fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let is_read = method == Method::GET || method == Method::HEAD;
        let routed = [("task", "/api/task/"), ("asset", "/api/asset/")]
            .into_iter()
            .find_map(|(kind, prefix)| Some((kind, path.strip_prefix(prefix)?)))
            .filter(|(_, id)| is_read && !id.is_empty() && !id.contains('/'));
        let Some((kind, id)) = routed else {
            // Express answers routes it does not have with the API's 404.
            return respond(StatusCode::NOT_FOUND, &errors("not found"), headers);
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(message) = authenticate(headers) {
            return respond(StatusCode::UNAUTHORIZED, &errors(&message), headers);
        }
        if kind == "asset" {
            return self.asset(id, headers);
        }
        let Some(task) = TASKS.iter().find(|task| task.id == id) else {
            return respond(StatusCode::NOT_FOUND, &errors("not found"), headers);
        };
        let (started, origin_ms) = self.clock("task", task.id);
        let body = task.body_at(&self.timeline, started.elapsed(), origin_ms);
        respond(StatusCode::OK, &body, headers)
    }

    /// An authenticated asset read: the deleted asset is `Asset not found` (Studio's text for a
    /// missing or deleted asset); any other unknown id is `not found`, Studio's text for an
    /// asset of another project.
    fn asset(&self, id: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        if id == DELETED_ASSET_ID {
            return respond(StatusCode::NOT_FOUND, &errors("Asset not found"), headers);
        }
        let Some(asset) = assets().iter().find(|asset| asset.id == id) else {
            return respond(StatusCode::NOT_FOUND, &errors("not found"), headers);
        };
        let (started, origin_ms) = self.clock("asset", asset.id);
        let body = asset.body_at(&self.timeline, started.elapsed(), origin_ms);
        respond(StatusCode::OK, &body, headers)
    }

    /// The clock of a task or asset, started now if this is its first request.
    fn clock(&self, kind: &'static str, id: &'static str) -> (Instant, u64) {
        // A poisoned map still holds valid instants; keep serving.
        let mut clocks = crate::sync::lock(&self.clocks);
        *clocks.entry((kind, id)).or_insert_with(|| {
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (Instant::now(), unix.as_millis() as u64)
        })
    }
}

/// Studio's bearer check (auth.ts), with its messages; the 401 for an unknown token echoes it.
fn authenticate(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err("request is not authenticated".into());
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((&value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!("unsupported authorization header scheme: {scheme}"));
    }
    let token = token.trim();
    if token == DEMO_API_KEY {
        Ok(())
    } else {
        Err(format!("no token {token} found"))
    }
}

fn errors(message: &str) -> Value {
    json!({ "errors": [message] })
}

/// A JSON answer with Express's headers; a 200 whose ETag the client already has becomes a
/// bodiless 304, as Express's `req.fresh` check does.
fn respond(status: StatusCode, body: &Value, request: &HeaderMap) -> Response<Full<Bytes>> {
    let body = Bytes::from(body.to_string());
    let etag = express_etag(&body);
    let fresh = status == StatusCode::OK
        && request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut response = Response::new(Full::new(if fresh { Bytes::new() } else { body }));
    *response.status_mut() = if fresh {
        StatusCode::NOT_MODIFIED
    } else {
        status
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-powered-by"),
        HeaderValue::from_static("Express"),
    );
    headers.insert(VARY, HeaderValue::from_static("Authorization"));
    if !fresh {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, etag);
    }
    response
}

/// `W/"<length in hex>-<hash>"`, the shape of Express's default ETag. The hash is FNV-1a, not
/// Express's SHA-1: only equality matters to a client.
fn express_etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("W/\"{:x}-{hash:016x}\"", body.len())
}

/// `taskgate --demo`: starts a simulator with [`Timeline::demo`] on a loopback port, points
/// `cfg` at it with [`DEMO_API_KEY`], and prints the [`curl_lines`] for `cfg.listen` to stdout.
/// The simulator stops when the returned value is dropped, so keep it while serving.
pub async fn start_for_cli(cfg: &mut Config) -> io::Result<Simulator> {
    let sim = Simulator::start(([127, 0, 0, 1], 0).into(), Timeline::demo()).await?;
    cfg.api_key = ApiKey::new(DEMO_API_KEY);
    cfg.upstream_url = sim.base_url();
    // An address curl can use, also when the listener is a wildcard.
    let public = crate::listener::local_address(cfg.listen);
    println!(
        "taskgate demo: simulated Studio API (tasks and assets) at {}\n",
        sim.base_url()
    );
    println!("{}", curl_lines(&format!("http://{public}")));
    Ok(sim)
}

/// What `taskgate --demo` prints at exit: the requests answered, the API calls they cost, and
/// the requests that cost none, by what saved them (`taskgate_upstream_calls_avoided_total`).
pub fn exit_summary(metrics: &crate::telemetry::Readout, upstream_calls: u64) -> String {
    // Counters, so whole numbers (and an empty sum is 0, not `-0`).
    let requests = metrics.sum("taskgate_requests_total", &[]) as u64;
    let avoided = metrics.sum_by("taskgate_upstream_calls_avoided_total", "reason");
    let avoided: Vec<(String, u64)> = avoided.into_iter().map(|(r, n)| (r, n as u64)).collect();
    let total: u64 = avoided.iter().map(|(_, n)| n).sum();
    let by_reason: Vec<String> = avoided
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let mut line = format!(
        "taskgate demo: requests answered {requests}, API calls {upstream_calls}, \
         requests that cost no API call {total}"
    );
    if !by_reason.is_empty() {
        line += &format!(" ({})", by_reason.join(", "));
    }
    line
}

/// What `taskgate --demo` prints for the user to try, against taskgate at `public_base`
/// (e.g. `http://127.0.0.1:8080`).
pub fn curl_lines(public_base: &str) -> String {
    let base = public_base.trim_end_matches('/');
    let url = |id: &str| format!("{base}/task/{id}");
    let upload = url(UPLOAD_TASK_ID);
    let mut lines =
        vec!["# Each task starts at `waiting` the first time it is asked for.".to_string()];
    for task in tasks() {
        lines.push(format!("# {}: {}", task.kind, task.about));
        lines.push(format!("curl -si {}", url(task.id)));
    }
    lines.extend([
        "# Watch the upload move (x-cache: PASS while it runs, MISS then HIT once completed):"
            .into(),
        format!("for i in $(seq 20); do curl -s {upload}; echo; sleep 1; done"),
        "# Ask again with the ETag taskgate gave: 304 and no body while the task is unchanged"
            .into(),
        format!(
            "etag=$(curl -sI {upload} | tr -d '\\r' | awk 'tolower($1)==\"etag:\" {{print $2}}'); \
             curl -si -H \"If-None-Match: $etag\" {upload}"
        ),
        "# An id the API does not know: 404, cached for a few seconds".into(),
        format!("curl -si {}", url(UNKNOWN_TASK_ID)),
        "# Assets, the same way: each starts the first time it is asked for.".into(),
    ]);
    let asset_url = |id: &str| format!("{base}/asset/{id}");
    for asset in assets() {
        lines.push(format!("# asset: {}", asset.about));
        lines.push(format!("curl -si {}", asset_url(asset.id)));
    }
    lines.extend([
        "# Follow the upload as Server-Sent Events (event: asset) until it is ready:".into(),
        format!("curl -sN {}/events", asset_url(UPLOAD_ASSET_ID)),
        "# A deleted asset: 404. Studio says `Asset not found` (and `not found` for another \
         project's asset); taskgate answers both with one generic body"
            .into(),
        format!("curl -si {}", asset_url(DELETED_ASSET_ID)),
    ]);
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    fn task(id: &str) -> &'static DemoTask {
        tasks()
            .iter()
            .find(|task| task.id == id)
            .expect("the test names a simulated task")
    }

    async fn start(timeline: Timeline) -> Simulator {
        Simulator::start(([127, 0, 0, 1], 0).into(), timeline)
            .await
            .expect("loopback bind")
    }

    fn bearer(key: &str) -> (HeaderName, String) {
        (AUTHORIZATION, format!("Bearer {key}"))
    }

    async fn call(
        sim: &Simulator,
        method: Method,
        path: &str,
        headers: &[(HeaderName, String)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", sim.addr()));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .expect("an answer");
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.expect("a whole body").to_bytes(),
        )
    }

    /// `GET /api/task/{id}` with this `Authorization` header, if any; the body as JSON.
    async fn get_as(
        sim: &Simulator,
        id: &str,
        authorization: Option<(HeaderName, String)>,
    ) -> (StatusCode, Value) {
        let headers: Vec<_> = authorization.into_iter().collect();
        let (status, _, body) = call(sim, Method::GET, &format!("/api/task/{id}"), &headers).await;
        (
            status,
            serde_json::from_slice(&body).expect("every answer is JSON"),
        )
    }

    async fn get(sim: &Simulator, id: &str) -> Value {
        let (status, body) = get_as(sim, id, Some(bearer(DEMO_API_KEY))).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    #[tokio::test]
    async fn upload_moves_from_waiting_through_running_to_completed() {
        let sim = start(Timeline::fast()).await;
        let (mut phases, mut progress, mut updated) = (Vec::<String>::new(), vec![], vec![]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while phases.last().map(String::as_str) != Some("completed") {
            assert!(
                Instant::now() < deadline,
                "upload never completed: {phases:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            let status = get(&sim, UPLOAD_TASK_ID).await["status"].take();
            let phase = status["phase"].as_str().expect("status.phase").to_string();
            if phases.last() != Some(&phase) {
                phases.push(phase);
            }
            progress.extend(status["progress"].as_f64());
            updated.push(
                status["updatedAt"]
                    .as_u64()
                    .expect("status.updatedAt in ms"),
            );
        }
        assert_eq!(phases, ["waiting", "running", "completed"]);
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]) && progress[0] < progress[progress.len() - 1],
            "{progress:?}"
        );
        assert!(
            updated.windows(2).all(|w| w[0] <= w[1]) && updated[0] < updated[updated.len() - 1]
        );
        let done = get(&sim, UPLOAD_TASK_ID).await;
        assert!(done["output"]["upload"]["assetSpec"]["videoSpec"].is_object());
        assert!(
            done["status"].get("progress").is_none(),
            "completed drops progress"
        );
    }

    #[test]
    fn phases_follow_the_timeline_exactly() {
        let timeline = Timeline::demo();
        let status = |id, ms| {
            task(id)
                .status_at(&timeline, Duration::from_millis(ms), 1_000_000)
                .0
        };
        assert_eq!(
            status(UPLOAD_TASK_ID, 0),
            json!({"phase": "waiting", "updatedAt": 1_000_000, "retries": 0})
        );
        assert_eq!(status(UPLOAD_TASK_ID, 3_000)["progress"], 0.0);
        assert_eq!(
            status(UPLOAD_TASK_ID, 8_500),
            json!({"phase": "running", "updatedAt": 1_008_000, "retries": 0, "progress": 0.5})
        );
        assert_eq!(
            status(UPLOAD_TASK_ID, 13_000),
            json!({"phase": "completed", "updatedAt": 1_013_000})
        );
        assert_eq!(status(CLIP_TASK_ID, 12_999)["progress"], 0.9);
        assert_eq!(status(IPFS_EXPORT_TASK_ID, 8_000)["phase"], "completed");
    }

    #[test]
    fn transcode_file_retries_once_then_fails_with_error_message() {
        let timeline = Timeline::demo();
        let status = |secs| {
            task(TRANSCODE_TASK_ID)
                .status_at(&timeline, Duration::from_secs(secs), 0)
                .0
        };
        assert_eq!(status(4)["phase"], "running");
        let backoff = json!({"phase": "waiting", "updatedAt": 8000, "retries": 1,
                             "errorMessage": RETRIABLE_ERROR});
        assert_eq!(status(9), backoff);
        assert_eq!(
            status(12)["retries"],
            1,
            "retries stays on the status while running"
        );
        let failed = status(16);
        assert_eq!(
            (&failed["phase"], &failed["retries"]),
            (&json!("failed"), &json!(1))
        );
        assert!(failed["errorMessage"]
            .as_str()
            .is_some_and(|message| !message.is_empty()));
    }

    #[tokio::test]
    async fn failing_task_ends_failed_with_error_message_and_no_output() {
        let sim = start(Timeline::new(Duration::ZERO, Duration::ZERO)).await;
        let body = get(&sim, TRANSCODE_TASK_ID).await;
        assert_eq!(
            (&body["type"], &body["status"]["phase"]),
            (&json!("transcode-file"), &json!("failed"))
        );
        assert!(body["status"]["errorMessage"].is_string() && body.get("output").is_none());
    }

    #[test]
    fn every_body_is_json_with_phase_and_updated_at_and_progress_only_while_running() {
        for task in tasks() {
            assert!(
                task.id.len() <= 64
                    && task
                        .id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            );
            for ms in (0..=1600).step_by(25) {
                let text = task
                    .body_at(
                        &Timeline::fast(),
                        Duration::from_millis(ms),
                        1_717_000_000_000,
                    )
                    .to_string();
                let body: Value = serde_json::from_str(&text).expect("valid JSON");
                let phase = body["status"]["phase"].as_str().expect("status.phase");
                assert!(["waiting", "running", "completed", "failed"].contains(&phase));
                assert!(
                    body["status"]["updatedAt"].is_u64(),
                    "{} at {ms} ms",
                    task.id
                );
                assert_eq!(body["status"].get("progress").is_some(), phase == "running");
                assert_eq!(body.get("output").is_some(), phase == "completed");
                assert_eq!(
                    (body["id"].as_str(), body["type"].as_str()),
                    (Some(task.id), Some(task.kind))
                );
            }
        }
    }

    #[test]
    fn export_params_carry_the_secrets_studio_leaks() {
        let params =
            |id| task(id).body_at(&Timeline::fast(), Duration::ZERO, 0)["params"]["export"].take();
        assert!(params(IPFS_EXPORT_TASK_ID)["ipfs"]["pinata"]["jwt"].is_string());
        let custom = params(CUSTOM_EXPORT_TASK_ID)["custom"].take();
        assert!(custom["url"]
            .as_str()
            .is_some_and(|url| url.contains("X-Amz-Signature=")));
        assert!(custom["headers"]["Authorization"].is_string());
    }

    #[tokio::test]
    async fn clock_starts_at_the_first_request() {
        let sim = start(Timeline::new(
            Duration::from_millis(200),
            Duration::from_secs(1),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&sim, CLIP_TASK_ID).await["status"]["phase"], "waiting");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&sim, CLIP_TASK_ID).await["status"]["phase"], "running");
        assert_eq!(
            get(&sim, UPLOAD_TASK_ID).await["status"]["phase"],
            "waiting",
            "each task has its clock"
        );
    }

    #[tokio::test]
    async fn unknown_id_and_other_requests_are_404_in_studio_error_shape() {
        let sim = start(Timeline::fast()).await;
        let (status, body) = get_as(&sim, UNKNOWN_TASK_ID, Some(bearer(DEMO_API_KEY))).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, json!({"errors": ["not found"]}))
        );
        let task_path = format!("/api/task/{UPLOAD_TASK_ID}");
        for (method, path) in [
            (Method::GET, "/api/asset/x"),
            (Method::POST, &task_path),
            (Method::GET, &task_path[4..]),
        ] {
            let (status, _, body) = call(&sim, method, path, &[bearer(DEMO_API_KEY)]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body, r#"{"errors":["not found"]}"#);
        }
    }

    #[tokio::test]
    async fn assets_are_served_and_a_deleted_one_is_asset_not_found() {
        let sim = start(Timeline::new(Duration::ZERO, Duration::ZERO)).await;
        let key = [bearer(DEMO_API_KEY)];
        let read = |id: &str| format!("/api/asset/{id}");
        let (status, _, body) = call(&sim, Method::GET, &read(UPLOAD_ASSET_ID), &key).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, &body["status"]["phase"]),
            (StatusCode::OK, &json!("ready"))
        );
        let (_, _, failed) = call(&sim, Method::GET, &read(FAILED_ASSET_ID), &key).await;
        assert!(String::from_utf8_lossy(&failed).contains(r#""phase":"failed""#));
        let (status, _, body) = call(&sim, Method::GET, &read(DELETED_ASSET_ID), &key).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"errors":["Asset not found"]}"#);
        let (status, _, _) = call(&sim, Method::GET, &read(UPLOAD_ASSET_ID), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(sim.upstream_calls(), 4);
    }

    #[tokio::test]
    async fn wrong_key_is_401_echoing_the_token_like_studio() {
        let sim = start(Timeline::fast()).await;
        let (status, body) = get_as(&sim, UPLOAD_TASK_ID, Some(bearer("sk-live-123"))).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({"errors": ["no token sk-live-123 found"]})
            )
        );
    }

    #[tokio::test]
    async fn missing_key_is_401_not_authenticated() {
        let sim = start(Timeline::fast()).await;
        let (status, body) = get_as(&sim, UPLOAD_TASK_ID, None).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({"errors": ["request is not authenticated"]})
            )
        );
    }

    #[tokio::test]
    async fn answers_carry_express_headers_and_honour_if_none_match() {
        let sim = start(Timeline::new(Duration::ZERO, Duration::ZERO)).await;
        let path = format!("/api/task/{UPLOAD_TASK_ID}");
        let (_, headers, body) = call(&sim, Method::GET, &path, &[bearer(DEMO_API_KEY)]).await;
        assert_eq!(headers[CONTENT_TYPE], "application/json; charset=utf-8");
        assert_eq!(
            (&headers["x-powered-by"], &headers[VARY]),
            (
                &"Express".parse().unwrap(),
                &"Authorization".parse().unwrap()
            )
        );
        let etag = headers[ETAG].to_str().unwrap().to_string();
        assert!(
            etag.starts_with(&format!("W/\"{:x}-", body.len())),
            "{etag}"
        );

        let revalidate = [bearer(DEMO_API_KEY), (IF_NONE_MATCH, etag)];
        let (status, headers, body) = call(&sim, Method::GET, &path, &revalidate).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty() && !headers.contains_key(CONTENT_TYPE));

        let (status, headers, body) =
            call(&sim, Method::HEAD, &path, &[bearer(DEMO_API_KEY)]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty() && headers.contains_key(ETAG));
    }

    #[tokio::test]
    async fn upstream_calls_counts_every_task_request_whatever_the_answer() {
        let sim = start(Timeline::fast()).await;
        assert_eq!(sim.upstream_calls(), 0);
        get(&sim, UPLOAD_TASK_ID).await;
        get_as(&sim, UNKNOWN_TASK_ID, Some(bearer(DEMO_API_KEY))).await;
        get_as(&sim, UPLOAD_TASK_ID, None).await;
        call(&sim, Method::GET, "/api/healthz", &[]).await;
        assert_eq!(sim.upstream_calls(), 3);
    }

    #[tokio::test]
    async fn shutdown_closes_the_port() {
        let sim = start(Timeline::fast()).await;
        let addr = sim.addr();
        assert_eq!(
            sim.base_url(),
            format!("http://127.0.0.1:{}/api", addr.port())
        );
        sim.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn exit_summary_counts_requests_calls_and_what_saved_them() {
        let metrics = crate::telemetry::Readout::parse(
            "taskgate_requests_total{route=\"task\",status=\"200\"} 7\n\
             taskgate_requests_total{route=\"asset\",status=\"304\"} 3\n\
             taskgate_upstream_calls_avoided_total{reason=\"hit\"} 5\n\
             taskgate_upstream_calls_avoided_total{reason=\"coalesced\"} 0\n\
             taskgate_upstream_calls_avoided_total{reason=\"not_modified\"} 2\n",
        );
        assert_eq!(
            exit_summary(&metrics, 3),
            "taskgate demo: requests answered 10, API calls 3, requests that cost no API call 7 \
             (hit 5, not_modified 2)"
        );
        assert_eq!(
            exit_summary(&crate::telemetry::Readout::default(), 0),
            "taskgate demo: requests answered 0, API calls 0, requests that cost no API call 0"
        );
    }

    #[test]
    fn curl_lines_name_every_task_through_the_public_base() {
        let lines = curl_lines("http://127.0.0.1:8080/");
        for task in tasks() {
            assert!(lines.contains(&format!(
                "curl -si http://127.0.0.1:8080/task/{}\n",
                task.id
            )));
        }
        assert!(lines.contains("If-None-Match") && lines.contains(UNKNOWN_TASK_ID));
        for asset in assets() {
            assert!(lines.contains(&format!(
                "curl -si http://127.0.0.1:8080/asset/{}\n",
                asset.id
            )));
        }
        assert!(lines.contains(DELETED_ASSET_ID) && lines.contains("/events"));
        assert!(
            !lines.contains("/api/"),
            "the user talks to taskgate, not to the API"
        );
    }
}
