//! Assets through the same gate as tasks (SPEC "Assets"), end to end: what the client got and
//! what the mock Studio API saw, for each asset phase, both 404 texts, the redaction of each
//! asset field, watches to `ready`, an `asset.ready` webhook, purge, metrics, logs and
//! coalescing.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{asset_body, taskgate, Binary, HttpClient, MockUpstream, Reply, SseReader, KEY};
use http::StatusCode;
use serde_json::{json, Value};
use taskgate::config::Secret;

const ID: &str = "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607";
const WAIT: Duration = Duration::from_secs(5);

fn path(id: &str) -> String {
    format!("/asset/{id}")
}

fn upstream_path(id: &str) -> String {
    format!("/api/asset/{id}")
}

/// How many times the mock was asked for asset `id`.
fn asset_calls(mock: &MockUpstream, id: &str) -> usize {
    mock.seen()
        .iter()
        .filter(|s| s.uri == upstream_path(id))
        .count()
}

// ---- routes --------------------------------------------------------------------------------

#[tokio::test]
async fn assets_are_served_under_both_prefixes_from_the_asset_path_upstream() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "processing"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for p in [format!("/asset/{ID}"), format!("/api/asset/{ID}?details=1")] {
        let got = c.get(tg.public_addr(), &p).await;
        assert_eq!(got.status, StatusCode::OK, "{p}");
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.json()["status"]["phase"], "processing");
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        // Built from nothing, the query dropped, the key injected.
        assert_eq!(
            (s.method.as_str(), s.uri.as_str()),
            ("GET", &*upstream_path(ID))
        );
        assert_eq!(s.headers["authorization"], format!("Bearer {KEY}"));
        assert_eq!(s.headers["accept"], "application/json");
    }
}

#[tokio::test]
async fn asset_routes_check_requests_as_task_routes_do() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let head = c.send(tg.public_addr(), "HEAD", &path(ID), &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let options = c.send(tg.public_addr(), "OPTIONS", &path(ID), &[]).await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(options.header("allow"), Some("GET, HEAD, OPTIONS"));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let got = c.send(tg.public_addr(), method, &path(ID), &[]).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(got.header("allow"), Some("GET, HEAD, OPTIONS"));
    }
    for bad in [
        "/asset/..",
        "/asset/a.b",
        "/api/asset/%2e%2e",
        "/asset/a%2Fb",
    ] {
        let got = c.get(tg.public_addr(), bad).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(got.json(), json!({"errors": ["invalid asset id"]}));
    }
    for other in ["/assets/x", "/asset", "/asset/x/other"] {
        let got = c.get(tg.public_addr(), other).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{other}");
    }
    assert_eq!(mock.calls(), 1, "only the HEAD went upstream");
}

// ---- answers by phase ----------------------------------------------------------------------

#[tokio::test]
async fn ready_assets_are_cached_for_ttl_asset_ready() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let first = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(first.header("age"), None);
    assert!(first.header("set-cookie").is_none() && first.header("x-powered-by").is_none());
    let second = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(
        first.json()["downloadUrl"],
        "https://cdn.example/abcd1234/video/download.mp4"
    );
    assert_eq!(asset_calls(&mock, ID), 1);
}

#[tokio::test]
async fn a_ready_asset_is_fetched_again_once_its_ttl_runs_out() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let tg = taskgate(&mock, |c| c.ttl_asset_ready = Duration::from_millis(300)).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("HIT")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A PATCH renamed it meanwhile: the new body is served.
    mock.set_asset(
        ID,
        Reply::json(200, asset_body(ID, "ready").replace("v.mp4", "renamed.mp4")),
    );
    let again = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(again.header("x-cache"), Some("MISS"));
    assert_eq!(again.json()["name"], "renamed.mp4");
    assert_eq!(asset_calls(&mock, ID), 2);
}

#[tokio::test]
async fn failed_assets_are_cached_for_ttl_failed() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "failed"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let first = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("cache-control"), Some("public, max-age=30"));
    assert_eq!(
        first.json()["status"]["errorMessage"],
        "invalid video file codec"
    );
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(asset_calls(&mock, ID), 1);
}

#[tokio::test]
async fn unfinished_asset_phases_are_passed_through() {
    let phases = ["uploading", "waiting", "processing", "deleting", "deleted"];
    let mock = MockUpstream::start().await;
    for phase in phases {
        mock.set_asset(phase, Reply::asset(phase, phase));
    }
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for phase in phases {
        for _ in 0..2 {
            let got = c.get(tg.public_addr(), &path(phase)).await;
            assert_eq!(got.status, StatusCode::OK, "{phase}");
            assert_eq!(got.header("x-cache"), Some("PASS"), "{phase}");
            assert_eq!(got.header("cache-control"), Some("no-store"), "{phase}");
            assert_eq!(got.json()["status"]["phase"], phase);
        }
        assert_eq!(asset_calls(&mock, phase), 2, "{phase}");
    }
}

#[tokio::test]
async fn the_pending_micro_cache_applies_to_unfinished_assets() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "processing"));
    let tg = taskgate(&mock, |c| c.ttl_pending = Duration::from_millis(500)).await;
    let c = HttpClient::default();
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    let hit = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("cache-control"), Some("no-store"));
    assert_eq!(asset_calls(&mock, ID), 1);
}

#[tokio::test]
async fn both_studio_404_texts_get_one_generic_body_and_are_negatively_cached() {
    let mock = MockUpstream::start().await;
    // Unknown (or deleted): the mock's default, `Asset not found`.
    let missing = "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f";
    // Another project's asset: `not found`.
    let foreign = "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a";
    mock.set_asset(foreign, Reply::json(404, r#"{"errors":["not found"]}"#));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    let mut bodies = Vec::new();
    for id in [missing, foreign] {
        let first = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(first.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(first.header("x-cache"), Some("MISS"), "{id}");
        assert_eq!(first.header("content-type"), Some("application/json"));
        let second = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(second.header("x-cache"), Some("HIT"), "{id}");
        assert_eq!(second.body, first.body);
        bodies.push(first.text());
        assert_eq!(asset_calls(&mock, id), 1, "{id}");
    }
    assert_eq!(bodies[0], r#"{"errors":["not found"]}"#);
    assert_eq!(bodies[0], bodies[1], "existence is not told apart");
}

#[tokio::test]
async fn a_304_only_answers_an_if_none_match_and_a_200_is_always_json() {
    // All three SDKs throw on a 304 or a non-JSON 200 for an asset (LIVEPEER-ASSETS §6).
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    mock.set_asset("busy", Reply::asset("busy", "processing"));
    mock.set_asset(
        "html",
        Reply::json(200, "<html>maintenance</html>").header("content-type", "text/html"),
    );
    mock.set_asset("odd", Reply::json(304, ""));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for id in [ID, "busy"] {
        let first = c.get(tg.public_addr(), &path(id)).await;
        let etag = first.header("etag").unwrap().to_owned();
        assert!(etag.starts_with('"'), "strong: {etag}");
        for _ in 0..3 {
            // What an SDK sends: no If-None-Match. Never a 304, always JSON.
            let got = c
                .send(
                    tg.public_addr(),
                    "GET",
                    &path(id),
                    &[("accept", "application/json")],
                )
                .await;
            assert_eq!(got.status, StatusCode::OK, "{id}");
            assert_eq!(got.header("content-type"), Some("application/json"));
            assert_eq!(got.body, first.body);
        }
        let revalidated = c
            .send(
                tg.public_addr(),
                "GET",
                &path(id),
                &[("if-none-match", &etag)],
            )
            .await;
        assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED, "{id}");
        assert!(revalidated.body.is_empty());
        // The client's validator never reaches the API.
        assert!(mock
            .seen()
            .iter()
            .all(|s| !s.headers.contains_key("if-none-match")));
    }
    // Whatever the API does, no 200 that is not JSON and no 304 unasked for.
    for id in ["html", "odd"] {
        let got = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{id}");
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert!(got.json()["errors"].is_array());
    }
}

#[tokio::test]
async fn concurrent_requests_for_an_asset_cost_one_upstream_call() {
    let mock = MockUpstream::start().await;
    mock.set_asset(
        ID,
        Reply::asset(ID, "processing").delay(Duration::from_millis(300)),
    );
    mock.set_asset(
        "r1",
        Reply::asset("r1", "ready").delay(Duration::from_millis(300)),
    );
    let tg = taskgate(&mock, |_| {}).await;
    for (id, cache) in [(ID, "PASS"), ("r1", "MISS")] {
        let addr = tg.public_addr();
        let gets: Vec<_> = (0..30)
            .map(|_| {
                let p = path(id);
                tokio::spawn(async move { HttpClient::default().get(addr, &p).await })
            })
            .collect();
        for get in gets {
            let got = get.await.unwrap();
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.header("x-cache"), Some(cache), "{id}");
        }
        assert_eq!(asset_calls(&mock, id), 1, "{id}");
    }
}

#[tokio::test]
async fn a_ready_asset_is_served_stale_when_the_api_fails_and_an_unfinished_one_never_is() {
    let ttl = Duration::from_millis(300);
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    mock.set_asset("busy", Reply::asset("busy", "processing"));
    let tg = taskgate(&mock, |c| {
        c.ttl_asset_ready = ttl;
        c.ttl_pending = ttl;
    })
    .await;
    let c = HttpClient::default();
    let kept = c.get(tg.public_addr(), &path(ID)).await;
    c.get(tg.public_addr(), &path("busy")).await;
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    for id in [ID, "busy"] {
        mock.set_asset(id, Reply::json(503, r#"{"errors":["down"]}"#));
    }
    let stale = c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(
        stale.header("cache-control"),
        Some("max-age=0, must-revalidate")
    );
    assert_eq!(stale.body, kept.body);
    let busy = c.get(tg.public_addr(), &path("busy")).await;
    assert_eq!(busy.status, StatusCode::BAD_GATEWAY);
}

// ---- redaction ------------------------------------------------------------------------------

/// An encrypted, webhook-gated url import with an IPFS export: every field LIVEPEER-ASSETS §4
/// lists as leaking, as Studio returns them to a non-admin.
fn leaky_asset(id: &str) -> Value {
    json!({
        "id": id, "name": "private.mp4", "hash": null,
        "source": {
            "type": "url",
            "url": "https://uploader:S3CRETPASS@my-bucket.s3.amazonaws.com/in/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASECRET%2F20240529&X-Amz-Signature=d3adb33f&token=TOKENSECRET",
            "gatewayUrl": "https://gw.example/ipfs/bafy?download=true&key=GATEWAYSECRET#frag",
            "encryption": {"key": "***", "encryptedKey": "QkFTRTY0U0VDUkVUS0VZ"}
        },
        "status": {"phase": "ready", "updatedAt": 1717000090000u64},
        "playbackPolicy": {
            "type": "webhook", "webhookId": "wh-1",
            "webhookContext": {
                "customer": "acme-corp", "plan": 3, "ratio": 0.5, "trial": true,
                "nested": {"secret": "NESTEDSECRET", "ids": [7, "x"]},
                "tags": ["a", "b"], "nothing": null
            },
            "refreshInterval": 600
        },
        "storage": {
            "ipfs": {
                "spec": {"nftMetadataTemplate": "file", "nftMetadata": {
                    "name": "My NFT",
                    "description": "Preview at https://preview.example/v?expires=9&id=PREVIEWID (24 h)",
                    "image": "https://img.example/a.png?Signature=IMGSECRET&Expires=1",
                    "properties": {"external_url": "https://owner:NFTPASS@site.example/x?session=NFTSESSION"}
                }},
                "cid": "QmX", "url": "ipfs://QmX",
                "gatewayUrl": "https://ipfs.livepeer.studio/ipfs/QmX",
                "nftMetadata": {"cid": "QmY", "url": "ipfs://QmY"},
                "updatedAt": 1717000200000u64
            },
            "status": {"phase": "ready", "tasks": {"last": "task-1"}}
        },
        "userId": "u1", "projectId": "p1", "playbackId": "abcd1234",
        "createdByTokenName": "web-backend",
        "videoSpec": {"format": "mp4", "duration": 23.8, "bitrate": 1128000},
        "size": 84934509,
        "playbackUrl": "https://cdn.example/abcd1234/index.m3u8",
        "downloadUrl": "https://cdn.example/abcd1234/video/download.mp4"
    })
}

/// `encryptedKey` as an object, and `webhookContext` as a string or an array rather than a map:
/// masked all the same.
#[tokio::test]
async fn asset_secrets_in_other_shapes_are_masked_too() {
    let mock = MockUpstream::start().await;
    for (id, context) in [
        ("ctx-text", json!("CTXSECRET")),
        ("ctx-list", json!(["CTXSECRET", 7])),
    ] {
        let mut asset = leaky_asset(id);
        asset["source"]["encryption"]["encryptedKey"] = json!({"v": "ENCSECRET"});
        asset["playbackPolicy"]["webhookContext"] = context;
        mock.set_asset(id, Reply::json(200, asset.to_string()));
    }
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for (id, masked) in [("ctx-text", json!("***")), ("ctx-list", json!(["***", 0]))] {
        let got = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(got.status, StatusCode::OK);
        let text = got.text();
        for secret in ["CTXSECRET", "ENCSECRET"] {
            assert!(!text.contains(secret), "{secret} survived: {text}");
        }
        let body = got.json();
        assert_eq!(body["playbackPolicy"]["webhookContext"], masked, "{id}");
        assert_eq!(
            body["source"]["encryption"]["encryptedKey"],
            json!({"v": "***"})
        );
    }
}

/// `source`, `source.encryption` or `playbackPolicy` sent as a list: each element is scrubbed as
/// the object would be.
#[tokio::test]
async fn a_list_in_place_of_an_asset_object_hides_nothing() {
    let mock = MockUpstream::start().await;
    let mut ids = Vec::new();
    for (i, pointer) in ["/source", "/source/encryption", "/playbackPolicy"]
        .into_iter()
        .enumerate()
    {
        let id = format!("list-{i}");
        let mut asset = leaky_asset(&id);
        let field = asset.pointer_mut(pointer).unwrap();
        *field = json!([field.take()]);
        mock.set_asset(&id, Reply::json(200, asset.to_string()));
        ids.push(id);
    }
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for id in ids {
        let got = c.get(tg.public_addr(), &path(&id)).await;
        assert_eq!(got.status, StatusCode::OK);
        let text = got.text();
        for secret in [
            "QkFTRTY0U0VDUkVUS0VZ",
            "acme-corp",
            "NESTEDSECRET",
            "S3CRETPASS",
            "TOKENSECRET",
        ] {
            assert!(!text.contains(secret), "{id}: {secret} survived: {text}");
        }
    }
}

#[tokio::test]
async fn each_leaking_asset_field_is_scrubbed_and_the_body_keeps_its_shape() {
    let mock = MockUpstream::start().await;
    let original = leaky_asset(ID);
    mock.set_asset(ID, Reply::json(200, original.to_string()));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.status, StatusCode::OK);
    let text = got.text();
    for secret in [
        "S3CRETPASS",
        "uploader",
        "AKIASECRET",
        "d3adb33f",
        "TOKENSECRET",
        "GATEWAYSECRET",
        "QkFTRTY0U0VDUkVUS0VZ",
        "acme-corp",
        "NESTEDSECRET",
        "IMGSECRET",
        "PREVIEWID",
        "NFTPASS",
        "NFTSESSION",
    ] {
        assert!(!text.contains(secret), "{secret} survived: {text}");
    }
    let body = got.json();
    let at = |p: &str| body.pointer(p).unwrap_or(&Value::Null).clone();
    // `source`: URLs keep scheme, host and path; the key is masked beside its decoy.
    assert_eq!(
        at("/source/url"),
        "https://***:***@my-bucket.s3.amazonaws.com/in/v.mp4"
    );
    assert_eq!(at("/source/gatewayUrl"), "https://gw.example/ipfs/bafy");
    assert_eq!(
        at("/source/encryption"),
        json!({"key": "***", "encryptedKey": "***"})
    );
    // `webhookContext`: keys and types kept, every value masked, nothing becomes null.
    assert_eq!(
        at("/playbackPolicy/webhookContext"),
        json!({"customer": "***", "plan": 0, "ratio": 0, "trial": false,
               "nested": {"secret": "***", "ids": [0, "***"]},
               "tags": ["***", "***"], "nothing": null})
    );
    assert_eq!(at("/playbackPolicy/type"), "webhook");
    assert_eq!(at("/playbackPolicy/refreshInterval"), 600);
    // NFT metadata: URLs anywhere lose query and userinfo; other text is kept.
    assert_eq!(
        at("/storage/ipfs/spec/nftMetadata"),
        json!({"name": "My NFT", "image": "https://img.example/a.png",
               "description": "Preview at https://preview.example/v (24 h)",
               "properties": {"external_url": "https://***:***@site.example/x"}})
    );
    // What is public by design is untouched.
    for p in [
        "/playbackUrl",
        "/downloadUrl",
        "/storage/ipfs/gatewayUrl",
        "/storage/ipfs/url",
        "/storage/status",
        "/videoSpec",
        "/size",
        "/hash",
        "/status",
        "/name",
        "/id",
    ] {
        assert_eq!(at(p), original.pointer(p).cloned().unwrap(), "{p}");
    }
    // No key was added or removed anywhere: the same paths, the same types (but numbers).
    assert_eq!(shape(&body), shape(&original));
}

/// Every path of `v` with its JSON type (numbers as one type).
fn shape(v: &Value) -> Vec<(String, &'static str)> {
    fn walk(v: &Value, at: String, out: &mut Vec<(String, &'static str)>) {
        let ty = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(a) => {
                a.iter()
                    .enumerate()
                    .for_each(|(i, v)| walk(v, format!("{at}/{i}"), out));
                "array"
            }
            Value::Object(o) => {
                o.iter()
                    .for_each(|(k, v)| walk(v, format!("{at}/{k}"), out));
                "object"
            }
        };
        out.push((at, ty));
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn with_redaction_off_the_asset_is_served_as_sent() {
    let mock = MockUpstream::start().await;
    let original = leaky_asset(ID);
    mock.set_asset(ID, Reply::json(200, original.to_string()));
    let tg = taskgate(&mock, |c| c.redact = false).await;
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.json(), original);
}

// ---- watch, webhooks, purge ----------------------------------------------------------------

fn processing(id: &str, progress: f64, updated: u64, playback: bool) -> Reply {
    let mut body: Value = serde_json::from_str(&asset_body(id, "processing")).unwrap();
    body["status"] = json!({"phase": "processing", "progress": progress, "updatedAt": updated});
    if playback {
        body["playbackUrl"] = "https://cdn.example/abcd1234/index.m3u8".into();
    }
    Reply::json(200, body.to_string())
}

#[tokio::test]
async fn a_watch_follows_an_asset_through_processing_to_ready_with_one_poller() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "waiting"));
    let tg = taskgate(&mock, |c| c.watch_interval = Duration::from_millis(100)).await;
    let events = format!("/asset/{ID}/events");
    let mut s = SseReader::open(tg.public_addr(), &events, &[]).await;
    let mut other = SseReader::open(tg.public_addr(), &format!("/api{events}"), &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let first = s.next(WAIT).await.expect("the current answer at once");
    assert_eq!(
        (first.event.as_str(), first.id.as_deref()),
        ("asset", Some("1717000060000"))
    );
    assert!(first.data.contains(r#""phase":"waiting""#));
    let before = asset_calls(&mock, ID);
    assert!(
        s.next(Duration::from_millis(500)).await.is_none(),
        "no change, no event"
    );
    // Two watchers, one poller: about one call per 100 ms interval, not two.
    let polls = asset_calls(&mock, ID) - before;
    assert!((2..=7).contains(&polls), "{polls} polls in 500 ms");
    mock.set_asset(ID, processing(ID, 0.25, 1717000070000, false));
    let moving = s.next(WAIT).await.unwrap();
    assert!(moving.data.contains(r#""progress":0.25"#));
    // Source playback ready: the status is the same, `playbackUrl` is new.
    mock.set_asset(ID, processing(ID, 0.25, 1717000070000, true));
    let playable = s.next(WAIT).await.unwrap();
    assert!(playable.data.contains("playbackUrl"), "{}", playable.data);
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let ready = s.next(WAIT).await.unwrap();
    assert_eq!(ready.event, "asset");
    assert!(ready.data.contains(r#""phase":"ready""#) && ready.data.contains("downloadUrl"));
    assert!(s.ended(WAIT).await, "the stream closes after ready");
    // The second watcher saw the same events from the same polls.
    let mut seen = Vec::new();
    while let Some(e) = other.next(WAIT).await {
        seen.push(e);
    }
    assert_eq!(
        seen.last().map(|e| e.data.contains(r#""phase":"ready""#)),
        Some(true)
    );
    // The ready answer was cached by the watcher's own lookup.
    let got = HttpClient::default().get(tg.public_addr(), &path(ID)).await;
    assert_eq!(got.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn a_watch_of_a_failed_asset_ends_after_one_event() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "failed"));
    let tg = taskgate(&mock, |_| {}).await;
    let mut s = SseReader::open(tg.public_addr(), &format!("/asset/{ID}/events"), &[]).await;
    let only = s.next(WAIT).await.unwrap();
    assert_eq!(only.event, "asset");
    assert!(only.data.contains("failed"));
    assert!(s.ended(WAIT).await);
    let mut gone = SseReader::open(tg.public_addr(), "/asset/nothing-here/events", &[]).await;
    let error = gone.next(WAIT).await.unwrap();
    assert_eq!(
        (error.event.as_str(), error.data.as_str()),
        ("error", r#"{"errors":["not found"]}"#)
    );
}

const SECRET: &str = "whsec_test_assets";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A Studio call: its body (`timestamp` = `t`, an event `id`) and its signature header.
fn studio_call(event: &str, payload: Value) -> (String, String) {
    let t = now_ms();
    let body = json!({"id": format!("ev-{event}-{t}"), "webhookId": "wh1", "createdAt": t,
                      "timestamp": t, "event": event, "payload": payload})
    .to_string();
    let hex = common::hmac_sha256_hex(SECRET, body.as_bytes());
    (body, format!("t={t},v1={hex}"))
}

async fn post_webhook(addr: SocketAddr, (body, signature): (String, String)) -> StatusCode {
    use http_body_util::Full;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/webhooks/livepeer"))
        .header("content-type", "application/json")
        .header("livepeer-signature", signature)
        .body(Full::from(body))
        .unwrap();
    client.request(req).await.unwrap().status()
}

#[tokio::test]
async fn asset_webhooks_drop_the_asset_and_only_the_asset() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    // A task with the same id: another key.
    mock.set(ID, Reply::task(ID, "completed"));
    let tg = taskgate(&mock, |c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    let c = HttpClient::default();
    for p in [path(ID), format!("/task/{ID}")] {
        c.get(tg.public_addr(), &p).await;
        assert_eq!(
            c.get(tg.public_addr(), &p).await.header("x-cache"),
            Some("HIT")
        );
    }
    let snapshot = json!({"id": ID, "status": {"phase": "ready", "updatedAt": 1}});
    for event in [
        "asset.ready",
        "asset.updated",
        "asset.failed",
        "asset.deleted",
        "asset.created",
    ] {
        let payload = json!({"asset": {"id": ID, "snapshot": snapshot}});
        let status = post_webhook(tg.public_addr(), studio_call(event, payload)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{event}");
        let next = c.get(tg.public_addr(), &path(ID)).await;
        assert_eq!(next.header("x-cache"), Some("MISS"), "{event} dropped it");
    }
    assert_eq!(
        c.get(tg.public_addr(), &format!("/task/{ID}"))
            .await
            .header("x-cache"),
        Some("HIT"),
        "the task of the same id stayed"
    );
    // Studio's older flattened asset.ready payload still names `payload.asset.id`.
    let flat = json!({"id": ID, "snapshot": snapshot, "asset": {"id": ID, "snapshot": snapshot}});
    assert_eq!(
        post_webhook(tg.public_addr(), studio_call("asset.ready", flat)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(asset_calls(&mock, ID), 7);
}

#[tokio::test]
async fn an_asset_ready_webhook_refreshes_a_watch_at_once() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, processing(ID, 0.5, 1717000070000, true));
    let tg = taskgate(&mock, |c| {
        c.webhook_secret = Some(Secret::new(SECRET));
        c.watch_interval = Duration::from_secs(60);
    })
    .await;
    let mut s = SseReader::open(tg.public_addr(), &format!("/asset/{ID}/events"), &[]).await;
    assert!(s.next(WAIT).await.unwrap().data.contains("processing"));
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let payload = json!({"asset": {"id": ID, "snapshot": {}}});
    assert_eq!(
        post_webhook(tg.public_addr(), studio_call("asset.ready", payload)).await,
        StatusCode::NO_CONTENT
    );
    let ready = s
        .next(WAIT)
        .await
        .expect("the webhook woke the poller, not the 60 s interval");
    assert!(ready.data.contains(r#""phase":"ready""#));
    assert!(s.ended(WAIT).await);
}

#[tokio::test]
async fn purge_drops_an_asset_and_refuses_a_bad_asset_id() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), &path(ID)).await;
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("HIT")
    );
    let purge = c
        .send(
            tg.admin_addr(),
            "DELETE",
            &format!("/cache/asset/{ID}"),
            &[],
        )
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(tg.public_addr(), &path(ID)).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(asset_calls(&mock, ID), 2);
    let bad = c
        .send(tg.admin_addr(), "DELETE", "/cache/asset/%2e%2e", &[])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json(), json!({"errors": ["invalid asset id"]}));
}

// ---- metrics and logs ----------------------------------------------------------------------

#[tokio::test]
async fn asset_requests_are_counted_with_kind_asset() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    c.get(tg.public_addr(), &path(ID)).await;
    c.get(tg.public_addr(), &path(ID)).await;
    c.get(tg.public_addr(), "/asset/a.b").await;
    let metrics = c.get(tg.admin_addr(), "/metrics").await.text();
    for labels in [
        r#"route="asset",status="200",cache="MISS",kind="asset",reason="none""#,
        r#"route="asset",status="200",cache="HIT",kind="asset",reason="none""#,
        r#"route="bad_id",status="400",cache="none",kind="asset",reason="bad_id""#,
    ] {
        let line = format!("taskgate_requests_total{{{labels}}} 1");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_event_of_an_asset_has_kind_and_id_and_no_task_id() {
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "processing"));
    mock.set("t1", Reply::task("t1", "running"));
    let proc = Binary::spawn(&mock.base_url(), &[]);
    let c = HttpClient::default();
    assert_eq!(c.get(proc.public, &path(ID)).await.status, StatusCode::OK);
    assert_eq!(c.get(proc.public, "/task/t1").await.status, StatusCode::OK);
    let (code, lines, _) = proc.terminate();
    assert_eq!(code, 0);
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "taskgate::access")
        .collect();
    assert_eq!(events.len(), 2);
    let (asset, task) = (&events[0], &events[1]);
    assert_eq!(
        (&asset["kind"], &asset["id"], &asset["route"]),
        (&json!("asset"), &json!(ID), &json!("asset"))
    );
    assert_eq!(asset["phase"], "processing");
    assert!(asset.get("task_id").is_none(), "{asset}");
    assert_eq!(
        (&task["kind"], &task["id"], &task["task_id"]),
        (&json!("task"), &json!("t1"), &json!("t1"))
    );
}

// ---- the demo --------------------------------------------------------------------------------

#[cfg(feature = "demo")]
#[tokio::test]
async fn the_demo_assets_move_to_ready_fail_show_a_masked_key_and_a_404() {
    use taskgate::demo::{
        Simulator, Timeline, DELETED_ASSET_ID, DEMO_API_KEY, ENCRYPTED_ASSET_ID, FAILED_ASSET_ID,
        UPLOAD_ASSET_ID,
    };
    let sim = Simulator::start(([127, 0, 0, 1], 0).into(), Timeline::fast())
        .await
        .unwrap();
    let mut cfg = common::config(&sim.base_url());
    cfg.api_key = taskgate::config::ApiKey::new(DEMO_API_KEY);
    cfg.watch_interval = Duration::from_millis(50);
    let tg = taskgate::start(cfg).await.unwrap();
    let c = HttpClient::default();
    // Each demo asset's clock starts at its first request.
    let first = c.get(tg.public_addr(), &path(FAILED_ASSET_ID)).await;
    assert_eq!(first.json()["status"]["phase"], "waiting");
    // The upload, followed by a watch from `uploading` to `ready`.
    let mut s = SseReader::open(
        tg.public_addr(),
        &format!("/asset/{UPLOAD_ASSET_ID}/events"),
        &[],
    )
    .await;
    let mut phases: Vec<String> = Vec::new();
    let mut playback_while_processing = false;
    while let Some(e) = s.next(WAIT).await {
        assert_eq!(e.event, "asset");
        let body: Value = serde_json::from_str(&e.data).unwrap();
        let phase = body["status"]["phase"].as_str().unwrap().to_owned();
        playback_while_processing |= phase == "processing" && body.get("playbackUrl").is_some();
        if phases.last() != Some(&phase) {
            phases.push(phase);
        }
    }
    assert_eq!(phases, ["uploading", "waiting", "processing", "ready"]);
    assert!(playback_while_processing);
    let ready = c.get(tg.public_addr(), &path(UPLOAD_ASSET_ID)).await;
    assert_eq!(ready.header("x-cache"), Some("HIT"));
    assert!(ready.json()["downloadUrl"].is_string());
    let failed = c.get(tg.public_addr(), &path(FAILED_ASSET_ID)).await.json();
    assert_eq!(failed["status"]["phase"], "failed");
    assert_eq!(
        failed["source"]["url"],
        "https://my-bucket.s3.amazonaws.com/in/broken.mkv"
    );
    let encrypted = c
        .get(tg.public_addr(), &path(ENCRYPTED_ASSET_ID))
        .await
        .json();
    assert_eq!(
        encrypted["source"]["encryption"],
        json!({"key": "***", "encryptedKey": "***"})
    );
    assert_eq!(
        encrypted["playbackPolicy"]["webhookContext"],
        json!({"customer": "***", "plan": "***", "seats": 0})
    );
    assert_eq!(
        encrypted["storage"]["ipfs"]["spec"]["nftMetadata"]["image"],
        "https://img.example/private.png"
    );
    for id in [DELETED_ASSET_ID, "00000000-0000-4000-8000-000000000000"] {
        let gone = c.get(tg.public_addr(), &path(id)).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.text(), r#"{"errors":["not found"]}"#);
    }
}
