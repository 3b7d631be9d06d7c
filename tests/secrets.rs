//! Secrets from files, rotated live: what the API sees after the key file changes (by an
//! atomic rename, a Kubernetes-style `..data` symlink swap, a re-read on demand, an upstream
//! 401), that no request fails meanwhile, that a broken file keeps the key in force, and that
//! webhook secrets rotate the same way. Deadlines, never timings: each wait polls.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{taskgate, HttpClient, MockUpstream, Reply};
use http::StatusCode;
use taskgate::config::Config;

const OLD: &str = "sk_old_key_1111";
const NEW: &str = "sk_new_key_2222";

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "taskgate-secrets-{}-{name}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` atomically: written beside it, then renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The key the API saw on its last call.
fn last_key(mock: &MockUpstream) -> String {
    mock.seen()
        .last()
        .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Polls `busy` (a running task: every read goes upstream) until the API sees `key`.
async fn until_api_sees(c: &HttpClient, tg: &taskgate::Running, mock: &MockUpstream, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.get(tg.public_addr(), "/task/busy").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        if last_key(mock) == format!("Bearer {key}") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API never saw the new key; last: {}",
            last_key(mock)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key_file(cfg: &mut Config, path: &Path, interval: Duration) {
    cfg.api_key = taskgate::secret::ApiKey::new(OLD);
    cfg.api_key_file = Some(path.to_owned());
    cfg.secret_reload_interval = interval;
}

async fn metrics(c: &HttpClient, tg: &taskgate::Running) -> String {
    c.get(tg.admin_addr(), "/metrics").await.text()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_replaced_by_an_atomic_rename_is_used_and_no_request_fails_meanwhile() {
    let dir = Dir::new("rename");
    let file = dir.path("api-key");
    std::fs::write(&file, format!("{OLD}\n")).unwrap();
    let mock = MockUpstream::start().await;
    mock.set("busy", Reply::task("busy", "running"));
    let tg = taskgate(&mock, |cfg| key_file(cfg, &file, Duration::from_millis(50))).await;
    let c = HttpClient::default();
    until_api_sees(&c, &tg, &mock, OLD).await;

    // Requests run all through the swap; every one must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (c, addr, stop) = (c.clone(), tg.public_addr(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = c.get(addr, "/task/busy").await;
                assert_eq!(got.status, StatusCode::OK, "{}", got.text());
                n += 1;
            }
            n
        })
    };
    replace(&file, &format!("{NEW}\n"));
    until_api_sees(&c, &tg, &mock, NEW).await;
    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    let m = metrics(&c, &tg).await;
    assert!(
        m.contains(
            r#"taskgate_secret_reloads_total{setting="TASKGATE_API_KEY_FILE",outcome="changed"}"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_seen() {
    // What the kubelet does: key -> ..data/key, ..data -> ..2026_v1; a rotation writes
    // ..2026_v2 and renames a new ..data symlink over the old one.
    let dir = Dir::new("k8s");
    let v1 = dir.path("..2026_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("key"), OLD).unwrap();
    std::os::unix::fs::symlink("..2026_v1", dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/key", dir.path("key")).unwrap();
    let mock = MockUpstream::start().await;
    mock.set("busy", Reply::task("busy", "running"));
    let file = dir.path("key");
    let tg = taskgate(&mock, |cfg| key_file(cfg, &file, Duration::from_millis(50))).await;
    let c = HttpClient::default();
    until_api_sees(&c, &tg, &mock, OLD).await;

    let v2 = dir.path("..2026_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("key"), NEW).unwrap();
    std::os::unix::fs::symlink("..2026_v2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    until_api_sees(&c, &tg, &mock, NEW).await;
}

#[tokio::test]
async fn a_broken_key_file_keeps_the_key_in_force_until_a_good_one_comes() {
    let dir = Dir::new("broken");
    let file = dir.path("api-key");
    std::fs::write(&file, OLD).unwrap();
    let mock = MockUpstream::start().await;
    mock.set("busy", Reply::task("busy", "running"));
    // A long interval: the re-reads here are the explicit ones (SIGHUP's).
    let tg = taskgate(&mock, |cfg| key_file(cfg, &file, Duration::from_secs(3600))).await;
    let c = HttpClient::default();
    for broken in ["", "\n", "has spaces in it\n"] {
        replace(&file, broken);
        tg.reload_secrets();
        let got = c.get(tg.public_addr(), "/task/busy").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(last_key(&mock), format!("Bearer {OLD}"), "{broken:?}");
    }
    std::fs::remove_file(&file).unwrap();
    tg.reload_secrets();
    let got = c.get(tg.public_addr(), "/task/busy").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(last_key(&mock), format!("Bearer {OLD}"), "missing file");
    let m = metrics(&c, &tg).await;
    assert!(
        m.contains(
            r#"taskgate_secret_reloads_total{setting="TASKGATE_API_KEY_FILE",outcome="failed"} 4"#
        ),
        "{m}"
    );
    replace(&file, NEW);
    tg.reload_secrets();
    until_api_sees(&c, &tg, &mock, NEW).await;
}

#[tokio::test]
async fn an_upstream_401_rereads_the_key_file_at_once() {
    let dir = Dir::new("401");
    let file = dir.path("api-key");
    std::fs::write(&file, OLD).unwrap();
    let mock = MockUpstream::start().await;
    mock.set("busy", Reply::task("busy", "running"));
    mock.set("denied", Reply::json(401, r#"{"errors":["invalid key"]}"#));
    let tg = taskgate(&mock, |cfg| key_file(cfg, &file, Duration::from_secs(3600))).await;
    let c = HttpClient::default();
    replace(&file, NEW);
    // No poll and no signal: only the 401 can make taskgate look at the file.
    let got = c.get(tg.public_addr(), "/task/denied").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    until_api_sees(&c, &tg, &mock, NEW).await;
}

use common::hmac_sha256_hex as sign;

async fn post_webhook(addr: std::net::SocketAddr, secret: &str, event_id: &str) -> StatusCode {
    use http_body_util::Full;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = format!(
        r#"{{"id":"{event_id}","webhookId":"wh1","createdAt":{now},"timestamp":{now},"event":"task.updated","payload":{{"task":{{"id":"t1","type":"upload","snapshot":{{}}}}}}}}"#
    );
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/webhooks/livepeer"))
        .header("content-type", "application/json")
        .header(
            "livepeer-signature",
            format!("t={now},v1={}", sign(secret, body.as_bytes())),
        )
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    client.request(req).await.unwrap().status()
}

#[tokio::test]
async fn two_webhook_secrets_are_both_accepted_and_a_removed_one_is_refused_after_reload() {
    let dir = Dir::new("webhook");
    let file = dir.path("webhook-secrets");
    std::fs::write(&file, "whsec_old\nwhsec_new\n").unwrap();
    let mock = MockUpstream::start().await;
    let path = file.clone();
    let tg = taskgate(&mock, move |cfg| {
        cfg.webhook_secret_file = Some(path);
        cfg.secret_reload_interval = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(
        post_webhook(tg.public_addr(), "whsec_old", "e1").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        post_webhook(tg.public_addr(), "whsec_new", "e2").await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        post_webhook(tg.public_addr(), "whsec_other", "e3").await,
        StatusCode::UNAUTHORIZED
    );
    replace(&file, "whsec_new\n");
    tg.reload_secrets();
    assert_eq!(
        post_webhook(tg.public_addr(), "whsec_old", "e4").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_webhook(tg.public_addr(), "whsec_new", "e5").await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn an_unreadable_secret_file_at_start_up_is_a_setup_error_naming_the_setting() {
    let mock = MockUpstream::start().await;
    let mut cfg = common::config(&mock.base_url());
    cfg.admin_token_file = Some("/nonexistent/admin-token".into());
    let e = match taskgate::start(cfg).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started with an unreadable admin token file"),
    };
    assert!(
        e.starts_with("TASKGATE_ADMIN_TOKEN_FILE: cannot read"),
        "{e}"
    );
}
