//! Test harness: a scriptable mock Studio API and taskgate in front of it, both on
//! 127.0.0.1:0, plus a small HTTP client. Shared by the integration tests.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use taskgate::{
    config::{ApiKey, Config},
    Running,
};
use tokio::net::TcpListener;

pub mod jwt;

/// The key taskgate injects in tests: distinctive, so a leak is easy to find.
pub const KEY: &str = "sk_live_TOPSECRET_5f2b9c1e7a";

/// One request as the mock upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

/// A scripted upstream answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Abort the exchange instead of answering (h1: the connection closes; h2: RST_STREAM).
    pub reset: bool,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8".into())],
            body: Bytes::from(body.into()),
            delay: Duration::ZERO,
            reset: false,
        }
    }

    /// A task body in the given phase, with Express-like headers the proxy must not relay.
    pub fn task(id: &str, phase: &str) -> Self {
        Self::json(200, task_body(id, phase))
            .header("set-cookie", "sid=upstream-cookie")
            .header("vary", "Authorization")
            .header("x-powered-by", "Express")
            .header("etag", "W/\"1a-upstream\"")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::json(200, "")
        }
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

impl Reply {
    /// An asset body in the given phase (a url import, so `source.url` is there), with
    /// Express-like headers.
    pub fn asset(id: &str, phase: &str) -> Self {
        Self::json(200, asset_body(id, phase))
            .header("vary", "Authorization")
            .header("x-powered-by", "Express")
            .header("etag", "W/\"2b-upstream\"")
    }
}

/// A non-admin asset body as Studio returns it (LIVEPEER-ASSETS §7): `downloadUrl` only when
/// `ready`, `progress` only while `processing`.
pub fn asset_body(id: &str, phase: &str) -> String {
    let mut body = serde_json::json!({
        "id": id, "name": "v.mp4",
        "source": {"type": "url", "url": "https://example.com/v.mp4"},
        "status": {"phase": phase, "updatedAt": 1717000060000u64},
        "userId": "u1", "createdAt": 1717000000000u64, "projectId": "p1",
        "playbackId": "abcd1234", "createdByTokenName": "web-backend",
    });
    match phase {
        "processing" => body["status"]["progress"] = 0.5.into(),
        "ready" => {
            body["downloadUrl"] = "https://cdn.example/abcd1234/video/download.mp4".into();
            body["playbackUrl"] = "https://cdn.example/abcd1234/index.m3u8".into();
        }
        "failed" => body["status"]["errorMessage"] = "invalid video file codec".into(),
        _ => {}
    }
    body.to_string()
}

pub fn task_body(id: &str, phase: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"upload","userId":"u1","createdAt":1717000000000,"params":{{"upload":{{"url":"https://example.com/v.mp4"}}}},"status":{{"phase":"{phase}","updatedAt":1717000060000}}}}"#
    )
}

struct MockState {
    seen: Mutex<Vec<Seen>>,
    /// Bumped by `goaway()`: every open connection shuts down gracefully (h2: GOAWAY).
    goaway: tokio::sync::watch::Sender<u64>,
    replies: Mutex<HashMap<String, Reply>>,
}

/// A mock Studio API serving `GET /api/task/{id}` and `GET /api/asset/{id}` from a script
/// (404 for unknown ids: `not found` for tasks, `Asset not found` for assets, as Studio says).
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
    /// Every connection's task, aborted on drop: a dropped mock is an API that went away,
    /// kept-alive connections included.
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl MockUpstream {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Serves HTTPS with the given rustls config (ALPN decides h1 or h2).
    pub async fn start_tls(tls: rustls::ServerConfig) -> Self {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await
    }

    /// Serves on a given loopback port (for an upstream that comes up late).
    pub async fn start_on(port: u16) -> Self {
        Self::start_with_port(None, port).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self::start_with_port(tls, 0).await
    }

    async fn start_with_port(tls: Option<tokio_rustls::TlsAcceptor>, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            seen: Mutex::default(),
            goaway: tokio::sync::watch::channel(0).0,
            replies: Mutex::default(),
        });
        let st = Arc::clone(&state);
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let conns = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let mut goaway = st.goaway.subscribe();
                    let svc = service_fn(move |req| answer(Arc::clone(&st), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let io: Box<dyn IoStream> = match tls {
                        None => Box::new(tcp),
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = goaway.changed() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self {
            addr,
            state,
            task,
            connections,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Scripts `GET /api/asset/{id}`.
    pub fn set_asset(&self, id: &str, reply: Reply) {
        self.set(&format!("asset:{id}"), reply);
    }

    pub fn set(&self, id: &str, reply: Reply) {
        self.state
            .replies
            .lock()
            .unwrap()
            .insert(id.to_owned(), reply);
    }

    /// Shuts every open connection down gracefully: an HTTP/2 GOAWAY.
    pub fn goaway(&self) {
        self.state.goaway.send_modify(|n| *n += 1);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Connections taskgate has opened to this upstream so far.
    pub fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    pub fn calls(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> IoStream for T {}

async fn answer(
    st: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    st.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path();
    let (id, not_found) = match path.strip_prefix("/api/asset/") {
        Some(id) => (format!("asset:{id}"), r#"{"errors":["Asset not found"]}"#),
        None => (
            path.strip_prefix("/api/task/")
                .unwrap_or_default()
                .to_owned(),
            r#"{"errors":["not found"]}"#,
        ),
    };
    let reply = st
        .replies
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .unwrap_or_else(|| Reply::json(404, not_found));
    tokio::time::sleep(reply.delay).await;
    if reply.reset {
        return Err(std::io::Error::other("scripted reset"));
    }
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        resp.headers_mut()
            .append(name, HeaderValue::from_str(&value).unwrap());
    }
    Ok(resp)
}

/// A config for tests: both listeners on 127.0.0.1:0, in front of `upstream_url`.
pub fn config(upstream_url: &str) -> Config {
    let mut cfg = Config::new(ApiKey::new(KEY), upstream_url);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
    cfg
}

/// Starts taskgate in front of `mock`, after `tweak` adjusts the config.
pub async fn taskgate(mock: &MockUpstream, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut cfg = config(&mock.base_url());
    tweak(&mut cfg);
    taskgate::start(cfg).await.expect("taskgate starts")
}

/// A response as the client got it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// An HTTP/1.1 client for talking to taskgate.
#[derive(Clone)]
pub struct HttpClient(Client<HttpConnector, Empty<Bytes>>);

impl Default for HttpClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl HttpClient {
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Got {
        self.send(addr, "GET", path, &[]).await
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .0
            .request(req.body(Empty::new()).unwrap())
            .await
            .expect("request completes");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body completes").to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Sends raw bytes on a fresh connection and returns everything read until the server closes
/// it (or `wait` passes).
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads a `text/event-stream` response event by event.
pub struct SseReader {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: String,
    pub comments: usize,
}

impl SseReader {
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::get(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .expect("stream opens");
        let (parts, body) = resp.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended or `wait` passed first.
    pub async fn next(&mut self, wait: Duration) -> Option<Sse> {
        tokio::time::timeout(wait, self.next_event())
            .await
            .ok()
            .flatten()
    }

    async fn next_event(&mut self) -> Option<Sse> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut saw_field = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    saw_field = true;
                    let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                    match k {
                        "event" => ev.event = v.into(),
                        "id" => ev.id = Some(v.into()),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v)
                        }
                        _ => {}
                    }
                }
                if saw_field {
                    return Some(ev);
                }
                self.comments += 1;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// True when the server ended the stream within `wait`.
    pub async fn ended(&mut self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.next_event()).await,
            Ok(None)
        )
    }
}

/// The real binary, started with the key in its environment.
pub struct Binary {
    pub admin: SocketAddr,
    child: Child,
    pub public: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// Lines read before the public address was known.
    early: Vec<String>,
    stderr: std::process::ChildStderr,
}

fn spawn_inner(upstream_url: &str, extra: &[(&str, &str)]) -> Binary {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskgate"));
    cmd.env_clear().current_dir(dir);
    // A key file given instead stands alone (setting both is a configuration error).
    if !extra.iter().any(|(k, _)| *k == "TASKGATE_API_KEY_FILE") {
        cmd.env("TASKGATE_API_KEY", KEY);
    }
    cmd.env("TASKGATE_UPSTREAM_URL", upstream_url)
        .env("TASKGATE_LISTEN", "127.0.0.1:0")
        .env("TASKGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("TASKGATE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut public, mut admin) = (None, None);
    let mut early = Vec::new();
    while public.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("taskgate logs 'listening'");
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if v["message"] == "listening" {
            public = v["public"].as_str().map(|s| s.parse().unwrap());
            admin = v["admin"].as_str().map(|s| s.parse().unwrap());
        }
        early.push(line);
    }
    Binary {
        child,
        public: public.unwrap(),
        admin: admin.unwrap(),
        lines,
        early,
        stderr,
    }
}

impl Binary {
    /// Starts the binary in front of `upstream_url` and waits until it listens.
    pub fn spawn(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        spawn_inner(upstream_url, extra)
    }

    /// Sends a signal (`HUP`, …) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit code, every stdout line and stderr.
    pub fn terminate(mut self) -> (i32, Vec<String>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = self
            .child
            .wait()
            .unwrap()
            .code()
            .expect("exited, not killed");
        let mut stderr = String::new();
        self.stderr.read_to_string(&mut stderr).unwrap();
        let mut lines = self.early;
        // The reader thread ends at EOF, which the exit guarantees.
        lines.extend(self.lines.iter());
        (code, lines, stderr)
    }
}

/// The cache key of asset `id`.
#[allow(dead_code)]
pub fn asset_key(id: &str) -> taskgate::Key {
    taskgate::Key::new(taskgate::Kind::Asset, id).expect("a valid id")
}

/// The cache key of task `id`.
#[allow(dead_code)]
pub fn task_key(id: &str) -> taskgate::Key {
    taskgate::Key::new(taskgate::Kind::Task, id).expect("a valid id")
}

/// A Studio webhook signature tag: the hex HMAC-SHA256 of `body` under `secret`, computed with
/// the `hmac` and `sha2` crates, independently of taskgate's own (ring) implementation.
#[allow(dead_code)]
pub fn hmac_sha256_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Posts a signed `task.updated` Studio webhook for task `id` to taskgate at `addr`, announcing
/// `version` (`status.updatedAt`) in its snapshot. The HMAC is computed here with the `hmac`
/// and `sha2` crates, independently of taskgate's own (ring) implementation.
#[allow(dead_code)]
pub async fn task_updated(
    addr: SocketAddr,
    secret: &str,
    event_id: &str,
    id: &str,
    version: u64,
) -> http::StatusCode {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = format!(
        r#"{{"id":"{event_id}","webhookId":"wh1","createdAt":{now},"timestamp":{now},"event":"task.updated","payload":{{"task":{{"id":"{id}","type":"upload","snapshot":{{"id":"{id}","status":{{"phase":"running","updatedAt":{version}}}}}}}}}}}"#
    );
    let tag = hmac_sha256_hex(secret, body.as_bytes());
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{addr}/webhooks/livepeer"))
        .header("livepeer-signature", format!("t={now},v1={tag}"))
        .body(Full::from(body))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}
