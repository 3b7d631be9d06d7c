//! Viewer access: with an access secret or public key configured, every task read needs a
//! viewer token (a JWT) that grants its id. Tokens here are made by `common::jwt`, with the
//! `hmac`/`sha2` crates and `ring`'s signing keys, never by taskgate's own code.

mod common;

use std::{io::Write as _, time::Duration};

use common::{
    jwt::{self, claims, EdDsa, Es256},
    taskgate, HttpClient, MockUpstream, Reply, SseReader, KEY,
};
use http::StatusCode;
use serde_json::json;
use taskgate::config::{Config, CorsOrigins, Secret};

const SECRET: &str = "viewer-secret-9c1e";
const DONE: &str = "done-1";
const OTHER: &str = "done-2";

const INVALID: &str = r#"{"errors":["invalid access token"]}"#;
const REQUIRED: &str = r#"{"errors":["access token required"]}"#;
const NOT_GRANTED: &str = r#"{"errors":["access token does not grant this id"]}"#;

fn write_temp(name: &str, text: &str) -> tempfile_path::Path {
    tempfile_path::Path::new(name, text)
}

/// A file under the system temp dir, removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new(name: &str, text: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("taskgate-test-{}-{}", std::process::id(), name));
            let _ = std::fs::remove_file(&dir);
            std::fs::write(&dir, text).unwrap();
            Self(dir)
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

async fn mock() -> MockUpstream {
    let mock = MockUpstream::start().await;
    mock.set(DONE, Reply::task(DONE, "completed"));
    mock.set(OTHER, Reply::task(OTHER, "completed"));
    mock.set("busy", Reply::task("busy", "running"));
    mock
}

fn with_secret(cfg: &mut Config) {
    cfg.access_secret = Some(Secret::new(SECRET));
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn hs256_es256_and_eddsa_tokens_grant_their_ids_in_the_header_or_the_query() {
    let es = Es256::generate();
    let ed = EdDsa::generate();
    let keys = write_temp("keys.pem", &format!("{}{}", es.public_pem, ed.public_pem));
    let mock = mock().await;
    let tg = taskgate(&mock, |cfg| {
        with_secret(cfg);
        cfg.access_public_key_file = Some(keys.0.clone());
    })
    .await;
    let c = HttpClient::default();
    let hs = jwt::hs256(SECRET.as_bytes(), &claims(&[DONE], 600));
    let es256 = es.sign(&claims(&[DONE, OTHER], 600));
    let eddsa = ed.sign(&claims(&[OTHER], 600));

    // The official SDKs: the token as their apiKey, i.e. `Authorization: Bearer`, under /api.
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/api/task/{DONE}"),
            &[
                ("authorization", &bearer(&hs)),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["id"], DONE);
    assert_eq!(got.header("x-cache"), Some("MISS"));
    let cc = got.header("cache-control").unwrap();
    assert!(cc.starts_with("private, max-age="), "{cc}");

    // In the query (EventSource's way), ES256 under the public key; a hit is private too.
    let got = c
        .get(
            tg.public_addr(),
            &format!("/task/{DONE}?access_token={es256}"),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.header("x-cache"), Some("HIT"));
    assert!(got
        .header("cache-control")
        .unwrap()
        .starts_with("private, max-age="));
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{OTHER}"),
            &[("authorization", &bearer(&eddsa))],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());

    // The API saw taskgate's key, never the viewer's token, and no query string.
    for seen in mock.seen() {
        assert_eq!(seen.headers["authorization"], format!("Bearer {KEY}"));
        assert!(!seen.uri.contains('?'), "{}", seen.uri);
    }
    assert_eq!(mock.calls(), 2);

    let metrics = c.get(tg.admin_addr(), "/metrics").await.text();
    assert!(
        metrics.contains(r#"taskgate_access_total{outcome="granted"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn refused_tokens_get_401_or_403_and_never_reach_the_cache_or_the_api() {
    let es = Es256::generate();
    let keys = write_temp("refused.pem", &es.public_pem);
    let mock = mock().await;
    let tg = taskgate(&mock, |cfg| {
        with_secret(cfg);
        cfg.access_public_key_file = Some(keys.0.clone());
    })
    .await;
    let c = HttpClient::default();
    // A valid token fills the cache.
    let good = jwt::hs256(SECRET.as_bytes(), &claims(&[DONE], 600));
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{DONE}"),
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(mock.calls(), 1);

    let now = jwt::now();
    let invalid = [
        (
            "expired",
            jwt::hs256(
                SECRET.as_bytes(),
                &json!({"sub": DONE, "exp": now - 120, "iat": now - 720}),
            ),
        ),
        (
            "not yet valid",
            jwt::hs256(
                SECRET.as_bytes(),
                &json!({"sub": DONE, "exp": now + 600, "nbf": now + 120}),
            ),
        ),
        (
            "no exp",
            jwt::hs256(SECRET.as_bytes(), &json!({"sub": DONE})),
        ),
        (
            "wrong secret",
            jwt::hs256(b"not-the-secret", &claims(&[DONE], 600)),
        ),
        (
            "tampered payload",
            jwt::tampered(
                &jwt::hs256(SECRET.as_bytes(), &claims(&["someone-else"], 600)),
                &claims(&[DONE], 600),
            ),
        ),
        (
            "tampered ES256 payload",
            jwt::tampered(
                &es.sign(&claims(&["someone-else"], 600)),
                &claims(&[DONE], 600),
            ),
        ),
        ("alg none", jwt::unsigned(&claims(&[DONE], 600))),
        (
            "HS256 signed with the public key's bytes",
            jwt::hs256(es.public_pem.as_bytes(), &claims(&[DONE], 600)),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &invalid {
        for (path, headers) in [
            (
                format!("/task/{DONE}"),
                vec![("authorization", bearer(token))],
            ),
            (format!("/task/{DONE}?access_token={token}"), vec![]),
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = c.send(tg.public_addr(), "GET", &path, &headers).await;
            assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(got.text(), INVALID, "{what}");
            assert_eq!(
                got.header("www-authenticate"),
                Some(r#"Bearer realm="taskgate", error="invalid_token""#),
                "{what}"
            );
            assert_eq!(got.header("x-cache"), None, "{what}: no cached answer");
        }
    }

    // No token: 401 with the bare challenge, even for a cached id.
    let got = c.get(tg.public_addr(), &format!("/task/{DONE}")).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.text(), REQUIRED);
    assert_eq!(
        got.header("www-authenticate"),
        Some(r#"Bearer realm="taskgate""#)
    );
    // Another scheme carries no token.
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{DONE}"),
            &[("authorization", "Basic dXNlcjpwYXNz")],
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.text(), REQUIRED);

    // A valid token for another id: 403, no challenge.
    let other = jwt::hs256(SECRET.as_bytes(), &claims(&[OTHER], 600));
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{DONE}"),
            &[("authorization", &bearer(&other))],
        )
        .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.text(), NOT_GRANTED);
    assert_eq!(got.header("www-authenticate"), None);

    // The token in the header and in the query: 400.
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{DONE}?access_token={good}"),
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST, "{}", got.text());

    // An uncached id refused: no upstream call either.
    let got = c.get(tg.public_addr(), "/task/busy").await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.calls(), 1, "no refused request reached the API");

    let metrics = c.get(tg.admin_addr(), "/metrics").await.text();
    for outcome in ["missing", "invalid", "forbidden"] {
        assert!(
            metrics.contains(&format!(r#"taskgate_access_total{{outcome="{outcome}"}}"#)),
            "{outcome}: {metrics}"
        );
    }
}

#[tokio::test]
async fn preflights_need_no_token_and_access_off_stays_public() {
    let mock = mock().await;
    let tg = taskgate(&mock, |cfg| {
        with_secret(cfg);
        cfg.cors_origins = CorsOrigins::List(vec!["https://app.example.com".into()]);
    })
    .await;
    let c = HttpClient::default();
    let got = c
        .send(
            tg.public_addr(),
            "OPTIONS",
            &format!("/task/{DONE}"),
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
        )
        .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(
        got.header("access-control-allow-headers"),
        Some("authorization")
    );
    // A refusal still carries CORS headers, so the page can read the 401.
    let got = c
        .send(
            tg.public_addr(),
            "GET",
            &format!("/task/{DONE}"),
            &[("origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // Without access control, cached answers stay public and tokens are ignored.
    let open = taskgate(&mock, |_| {}).await;
    let got = c
        .send(
            open.public_addr(),
            "GET",
            &format!("/task/{DONE}"),
            &[("authorization", "Bearer whatever")],
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got
        .header("cache-control")
        .unwrap()
        .starts_with("public, max-age="));
}

#[tokio::test]
async fn a_watch_opens_with_the_token_in_the_query_and_not_without_one() {
    let mock = mock().await;
    let tg = taskgate(&mock, with_secret).await;
    let token = jwt::hs256(SECRET.as_bytes(), &claims(&[DONE], 600));
    let mut stream = SseReader::open(
        tg.public_addr(),
        &format!("/task/{DONE}/events?access_token={token}"),
        &[],
    )
    .await;
    assert_eq!(stream.status, StatusCode::OK);
    let event = stream
        .next(Duration::from_secs(10))
        .await
        .expect("the task is sent at once");
    assert_eq!(event.event, "task");
    assert!(event.data.contains(DONE));

    let refused = SseReader::open(tg.public_addr(), &format!("/task/{DONE}/events"), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let other = jwt::hs256(SECRET.as_bytes(), &claims(&[OTHER], 600));
    let refused = SseReader::open(
        tg.public_addr(),
        &format!("/task/{DONE}/events?access_token={other}"),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn access_secrets_from_a_file_are_all_accepted() {
    let file = tempfile_path::Path::new("access-secrets", "");
    {
        let mut f = std::fs::File::create(&file.0).unwrap();
        writeln!(f, "old-secret\r\nnew-secret\n").unwrap();
    }
    let mock = mock().await;
    let path = file.0.clone();
    let tg = taskgate(&mock, move |cfg| cfg.access_secret_file = Some(path)).await;
    let c = HttpClient::default();
    for secret in ["old-secret", "new-secret"] {
        let token = jwt::hs256(secret.as_bytes(), &claims(&[DONE], 600));
        let got = c
            .get(
                tg.public_addr(),
                &format!("/task/{DONE}?access_token={token}"),
            )
            .await;
        assert_eq!(got.status, StatusCode::OK, "{secret}");
    }
    // Rotated: the old secret is gone after a reload.
    std::fs::write(&file.0, "new-secret\n").unwrap();
    tg.reload_secrets();
    let old = jwt::hs256(b"old-secret", &claims(&[DONE], 600));
    let got = c
        .get(
            tg.public_addr(),
            &format!("/task/{DONE}?access_token={old}"),
        )
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
}
