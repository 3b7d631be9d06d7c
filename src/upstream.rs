//! The one exchange taskgate has with the Studio API: `GET {base}/{kind}/{id}`.
//!
//! The request is built from nothing — no client header is ever copied — over a pooled
//! hyper-util client (one per worker) speaking HTTP/1.1 or HTTP/2 (by ALPN) through rustls.
//! Certificates and host names are always verified; redirects are never followed (the legacy
//! client does not follow them, and a 3xx is classified as an upstream fault). The whole
//! exchange, headers and body, runs under one deadline, and the body is read through a size
//! limit.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::Semaphore;

use crate::{
    config::Config,
    ids::{TRACEPARENT, X_REQUEST_ID},
    resource::Key,
    secrets::Secrets,
    workers,
};

type BoxError = Box<dyn StdError + Send + Sync>;
type Connector = ConnectTimeout<HttpsConnector<HttpConnector>>;

pub const USER_AGENT: &str = concat!("taskgate/", env!("CARGO_PKG_VERSION"));

/// What the API answered, already read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// What the upstream exchange behind a fetch looked like, for logs and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamReport {
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub elapsed: Duration,
}

impl UpstreamReport {
    pub fn of(reply: &Result<Reply, FetchError>, elapsed: Duration) -> Self {
        Self {
            status: reply.as_ref().ok().map(|r| r.status.as_u16()),
            error: reply.as_ref().err().map(|e| e.as_str()),
            elapsed,
        }
    }
}

/// Why no answer came back. Each kind maps to one client status in `answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// No complete answer within `TASKGATE_UPSTREAM_TIMEOUT` (or connect timeout): 504.
    Timeout,
    /// TCP or TLS connection could not be made: 502.
    Connect,
    /// The connection broke or spoke nonsense mid-exchange: 502.
    Reset,
    /// The body is larger than `TASKGATE_MAX_BODY`: 502.
    TooLarge,
    /// No upstream slot came free within the timeout (`TASKGATE_UPSTREAM_CONCURRENCY`): 503.
    Saturated,
}

impl FetchError {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Connect => "connect",
            FetchError::Reset => "reset",
            FetchError::TooLarge => "too_large",
            FetchError::Saturated => "saturated",
        }
    }
}

/// Set-up failures: a CA file that cannot be used, a base URL that cannot be built upon.
#[derive(Debug)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for SetupError {}

pub struct Upstream {
    /// One client (so one connection pool) per worker, and the last for any other thread: a
    /// pooled connection is driven by a task on the runtime that opened it, so a worker that
    /// borrowed another's would hand every exchange to that thread and back.
    clients: Box<[Client<Connector, Empty<Bytes>>]>,
    base: String,
    /// The API key in force (`Authorization`), read per request so a rotation takes effect
    /// at the next fetch.
    secrets: Arc<Secrets>,
    user_agent: HeaderValue,
    timeout: Duration,
    max_body: usize,
    slots: Semaphore,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("authorization", &"***")
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(cfg: &Config, secrets: Arc<Secrets>) -> Result<Self, SetupError> {
        let tls = tls_config(cfg.upstream_ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false); // the scheme is checked by the TLS layer, not here
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http() // config only admits http:// for loopback hosts
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = ConnectTimeout {
            inner: https,
            timeout: cfg.connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.upstream_concurrency)
            // The pool enforces its idle timeout only when it has a timer.
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let clients = (0..=workers::count())
            .map(|_| builder.build(connector.clone()))
            .collect();

        let base = cfg.upstream_url.trim_end_matches('/').to_owned();
        format!("{base}/task/x")
            .parse::<Uri>()
            .map_err(|e| SetupError(format!("TASKGATE_UPSTREAM_URL: {e}")))?;
        Ok(Self {
            clients,
            base,
            secrets,
            user_agent: HeaderValue::from_static(USER_AGENT),
            timeout: cfg.upstream_timeout,
            max_body: cfg.max_body,
            slots: Semaphore::new(cfg.upstream_concurrency.max(1)),
        })
    }

    /// The calling worker's client (the last one off the workers, and for a worker started
    /// outside `taskgate::start`, numbered past [`workers::count`]).
    fn client(&self) -> &Client<Connector, Empty<Bytes>> {
        let last = self.clients.len() - 1;
        &self.clients[workers::current().map_or(last, |i| i.min(last))]
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Fetches one resource.
    pub async fn fetch(
        &self,
        key: Key,
        request_id: &HeaderValue,
        traceparent: HeaderValue,
    ) -> Result<Reply, FetchError> {
        let _slot = tokio::time::timeout(self.timeout, self.slots.acquire())
            .await
            .map_err(|_| FetchError::Saturated)?
            .expect("the upstream semaphore is never closed");

        let uri: Uri = format!("{}/{}/{}", self.base, key.kind(), key.id())
            .parse()
            .expect("base was checked at start-up and ids are [A-Za-z0-9-]");
        let mut req = Request::get(uri)
            .body(Empty::new())
            .expect("a GET with a valid uri is a valid request");
        let headers = req.headers_mut();
        let authorization = self.secrets.current().authorization.clone();
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        headers.insert(TRACEPARENT.clone(), traceparent);

        let exchange = async {
            let resp = self
                .client()
                .request(req)
                .await
                .map_err(classify_client_error)?;
            let (parts, body) = resp.into_parts();
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.max_body as u64) {
                return Err(FetchError::TooLarge);
            }
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Reset
                    }
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

/// Times a fetch for logs and metrics.
pub async fn timed<F: Future>(f: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

fn classify_client_error(e: hyper_util::client::legacy::Error) -> FetchError {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if s.is::<ConnectTimedOut>() {
            return FetchError::Timeout;
        }
        source = s.source();
    }
    if e.is_connect() {
        FetchError::Connect
    } else {
        FetchError::Reset
    }
}

fn tls_config(extra_roots: Option<&Path>) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        let shown = path.display();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| SetupError(format!("TASKGATE_UPSTREAM_CA_FILE: {shown}: {e}")))?
        {
            let cert =
                cert.map_err(|e| SetupError(format!("TASKGATE_UPSTREAM_CA_FILE: {shown}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SetupError(format!("TASKGATE_UPSTREAM_CA_FILE: {shown}: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(SetupError(format!(
                "TASKGATE_UPSTREAM_CA_FILE: {shown}: no PEM certificate found"
            )));
        }
    }
    // Built with an explicit provider: if another crate ever enables aws-lc-rs too, the
    // process-wide default would be ambiguous and rustls would panic at the first handshake.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Debug)]
struct ConnectTimedOut;

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect timed out")
    }
}

impl StdError for ConnectTimedOut {}

/// Bounds TCP connect *and* TLS handshake by `TASKGATE_CONNECT_TIMEOUT` (the HTTP connector's
/// own timeout would cover the TCP part only).
#[derive(Clone)]
struct ConnectTimeout<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for ConnectTimeout<C>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(ConnectTimedOut.into()),
            }
        })
    }
}
