//! An HTTPS upstream: certificates are always verified, extra roots come from
//! `TASKGATE_UPSTREAM_CA_FILE`, and HTTP/2 is chosen by ALPN.

mod common;

use std::sync::Arc;

use common::{HttpClient, MockUpstream, Reply};
use http::{StatusCode, Version};

const ID: &str = "tls-task-1";

/// A self-signed certificate for `localhost`, its PEM written to a temp file.
fn self_signed() -> (rustls::ServerConfig, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    // One file per certificate: tests run in parallel in this process.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pem_path =
        std::env::temp_dir().join(format!("taskgate-test-ca-{}-{n}.pem", std::process::id()));
    std::fs::write(&pem_path, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tls, pem_path)
}

async fn https_mock() -> (MockUpstream, std::path::PathBuf, String) {
    let (tls, pem) = self_signed();
    let mock = MockUpstream::start_tls(tls).await;
    mock.set(ID, Reply::task(ID, "completed"));
    let url = format!("https://localhost:{}/api", mock.addr().port());
    (mock, pem, url)
}

#[tokio::test]
async fn a_private_ca_from_the_ca_file_is_trusted_and_h2_is_negotiated() {
    let (mock, pem, url) = https_mock().await;
    let mut cfg = common::config(&url);
    cfg.upstream_ca_file = Some(pem);
    let tg = taskgate::start(cfg).await.unwrap();
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["status"]["phase"], "completed");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {}", common::KEY).as_str()
    );
}

#[tokio::test]
async fn a_self_signed_upstream_is_refused_without_the_ca_file() {
    let (mock, _pem, url) = https_mock().await;
    let tg = taskgate::start(common::config(&url)).await.unwrap();
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.json()["errors"][0], "upstream unavailable");
    assert_eq!(
        mock.calls(),
        0,
        "no request was sent over the unverified connection"
    );
}

#[tokio::test]
async fn a_ca_file_without_certificates_is_a_start_up_error() {
    let path = std::env::temp_dir().join(format!("taskgate-test-empty-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate\n").unwrap();
    let mut cfg = common::config("https://localhost:1/api");
    cfg.upstream_ca_file = Some(path);
    let err = taskgate::start(cfg).await.err().expect("start-up fails");
    assert!(
        err.to_string().contains("TASKGATE_UPSTREAM_CA_FILE"),
        "{err}"
    );
}

#[tokio::test]
async fn h2_stream_resets_and_goaway_are_502_then_recovered() {
    let (mock, pem, url) = https_mock().await;
    let mut cfg = common::config(&url);
    cfg.upstream_ca_file = Some(pem);
    let tg = taskgate::start(cfg).await.unwrap();
    let c = HttpClient::default();
    let path = format!("/task/{ID}");
    // A stream reset on the shared h2 connection: that request fails, nothing is cached...
    mock.set(ID, Reply::reset());
    assert_eq!(
        c.get(tg.public_addr(), &path).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert!(tg.proxy().cache().get(&common::task_key(ID)).is_none());
    // ...and the next one works.
    mock.set(ID, Reply::task(ID, "running"));
    assert_eq!(c.get(tg.public_addr(), &path).await.status, StatusCode::OK);
    // A GOAWAY closes the pooled connection; the next request opens a new one.
    mock.goaway();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got = c.get(tg.public_addr(), &path).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(mock.seen().iter().all(|s| s.version == Version::HTTP_2));
}
