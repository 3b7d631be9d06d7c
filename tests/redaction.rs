//! Secrets inside task bodies never reach a browser: scrubbed once, before the answer is
//! stored, so misses, hits and watch events all carry the scrubbed body.

mod common;

use std::time::Duration;

use common::{taskgate, HttpClient, MockUpstream, Reply, SseReader};

const ID: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

/// The custom-URL export and IPFS export shapes of LIVEPEER-API.md §5, with their secrets.
fn secret_body(phase: &str) -> String {
    format!(
        r#"{{"id":"{ID}","type":"export","userId":"u1","createdAt":1717002000000,
        "params":{{"export":{{"custom":{{"url":"https://my-bucket.s3.amazonaws.com/path/file.mp4?X-Amz-Credential=AKIASECRET&X-Amz-Signature=SIGSECRET",
        "method":"PUT","headers":{{"Authorization":"Bearer customer-secret"}}}},
        "ipfs":{{"pinata":{{"jwt":"eyJhbGciOiJIUzI1NiJ9.PINATASECRET"}}}}}},
        "upload":{{"url":"https://user:PASSSECRET@example.com/v.mp4"}}}},
        "status":{{"phase":"{phase}","updatedAt":1717002040000}}}}"#
    )
}

const SECRETS: [&str; 6] = [
    "AKIASECRET",
    "SIGSECRET",
    "customer-secret",
    "PINATASECRET",
    "PASSSECRET",
    "user:",
];

fn assert_scrubbed(body: &str) {
    for s in SECRETS {
        assert!(!body.contains(s), "{s} reached the client: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(body).expect("still JSON");
    let custom = &v["params"]["export"]["custom"];
    assert_eq!(
        custom["url"],
        "https://my-bucket.s3.amazonaws.com/path/file.mp4"
    );
    assert_eq!(custom["headers"]["Authorization"], "***");
    assert_eq!(custom["method"], "PUT");
    assert_eq!(v["params"]["export"]["ipfs"]["pinata"]["jwt"], "***");
    assert_eq!(
        v["params"]["upload"]["url"],
        "https://***:***@example.com/v.mp4"
    );
    assert_eq!(v["status"]["updatedAt"], 1717002040000u64);
}

#[tokio::test]
async fn misses_and_hits_serve_the_scrubbed_body() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::json(200, secret_body("completed")));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let miss = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    assert_scrubbed(&miss.text());
    let hit = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(
        hit.header("etag"),
        miss.header("etag"),
        "the ETag is of the scrubbed body"
    );
    // A pass-through answer is scrubbed too.
    mock.set("run", Reply::json(200, secret_body("running")));
    let pass = c.get(tg.public_addr(), "/task/run").await;
    assert_eq!(pass.header("x-cache"), Some("PASS"));
    assert_scrubbed(&pass.text());
}

#[tokio::test]
async fn watch_events_carry_the_scrubbed_body() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::json(200, secret_body("running")));
    let tg = taskgate(&mock, |_| {}).await;
    let mut s = SseReader::open(tg.public_addr(), &format!("/task/{ID}/events"), &[]).await;
    let e = s.next(Duration::from_secs(5)).await.unwrap();
    assert_scrubbed(&e.data);
}

#[tokio::test]
async fn redact_false_serves_the_body_as_studio_sent_it() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::json(200, secret_body("completed")));
    let tg = taskgate(&mock, |c| c.redact = false).await;
    let got = HttpClient::default()
        .get(tg.public_addr(), &format!("/task/{ID}"))
        .await;
    assert_eq!(got.text(), secret_body("completed"));
}
