//! Micro-benchmarks of the per-request work, so a regression on the hot path shows:
//! route parsing, the phase extraction and redaction that run once per upstream fetch, the
//! response built for every hit, and a whole cache hit through `Proxy::handle` (no sockets).
//!
//! `cargo bench --bench hot_path` measures; CI runs `cargo test --benches`, which runs each
//! benchmark once as a test (it must not panic) without timing it.

use std::{hint::black_box, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use taskgate::{
    config::{ApiKey, Config},
    demo::{Simulator, Timeline, DEMO_API_KEY, UPLOAD_TASK_ID},
    redact,
    resource::{Kind, TaskPhase},
    route, Answer, CacheStatus, Phase, Policy, Proxy, Reply,
};

const ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

/// A completed upload as the demo's simulated API returns it (799 bytes): nothing to scrub.
const UPLOAD: &str = r#"{"createdAt":1795907056490,"id":"6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69","output":{"upload":{"assetSpec":{"hash":null,"name":"test.mp4","size":84934509,"type":"video","videoSpec":{"bitrate":1128000,"duration":23.83,"format":"mp4","tracks":[{"bitrate":1000000,"codec":"h264","duration":23.83,"fps":30,"height":1080,"pixelFormat":"yuv420p","type":"video","width":1920},{"bitrate":128000,"channels":2,"codec":"aac","duration":23.83,"sampleRate":44100,"type":"audio"}]}}}},"outputAssetId":"0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607","params":{"upload":{"thumbnails":true,"url":"https://example.com/test.mp4"}},"projectId":"b3c1e2d4-5f60-4718-8a9b-0c1d2e3f4a5b","scheduledAt":1795907056510,"status":{"phase":"completed","updatedAt":1795907069510},"type":"upload","userId":"2b7e1516-28ae-4d2a-a6ab-f7158809cf4f"}"#;

/// A completed custom export carrying a presigned URL and a header credential (LIVEPEER-API §6).
const EXPORT: &str = r#"{"createdAt":1795907143345,"id":"1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f","inputAssetId":"0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607","output":{"export":{"ipfs":{"videoFileCid":""}}},"params":{"export":{"custom":{"headers":{"Authorization":"Bearer customer-secret"},"method":"PUT","url":"https://my-bucket.s3.amazonaws.com/path/file.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Credential=AKIADEMO%2F20240529%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=d3m0516na7e"}}},"projectId":"b3c1e2d4-5f60-4718-8a9b-0c1d2e3f4a5b","scheduledAt":1795907143365,"status":{"phase":"completed","updatedAt":1795907151365},"type":"export","userId":"2b7e1516-28ae-4d2a-a6ab-f7158809cf4f"}"#;

fn policy() -> Policy {
    Policy {
        completed: Duration::from_secs(86_400),
        failed: Duration::from_secs(30),
        asset_ready: Duration::from_secs(60),
        not_found: Duration::from_secs(5),
        pending: Duration::ZERO,
        trusted_unfinished: Duration::ZERO,
        redact: true,
    }
}

fn parsing(c: &mut Criterion) {
    let task = format!("/task/{ID}");
    let events = format!("/api/task/{ID}/events");
    c.bench_function("route::parse /task/{id}", |b| {
        b.iter(|| route::parse(black_box(&task)))
    });
    c.bench_function("route::parse /api/task/{id}/events", |b| {
        b.iter(|| route::parse(black_box(&events)))
    });
    c.bench_function("route::parse /task/%2e%2e%2fadmin (refused)", |b| {
        b.iter(|| route::parse(black_box("/task/%2e%2e%2fadmin")))
    });
    assert_eq!(route::parse(&task).id(), Some(ID));
}

fn per_fetch(c: &mut Criterion) {
    c.bench_function("Kind::phase (799 B upload)", |b| {
        b.iter(|| Kind::Task.phase(black_box(UPLOAD.as_bytes())))
    });
    // With redaction on, each fetch parses once, looks for the key, scrubs and serialises
    // the tree again (the bytes hashed, cached and served).
    let scrub = |body: &str| {
        let scrubbed =
            redact::scrub(Kind::Task, body.as_bytes(), DEMO_API_KEY.as_bytes()).expect("JSON");
        let phase = Kind::Task.phase_of_value(&scrubbed.value);
        (scrubbed.to_bytes(), phase, scrubbed.changed)
    };
    c.bench_function("redact (799 B upload, nothing to scrub)", |b| {
        b.iter(|| scrub(black_box(UPLOAD)))
    });
    c.bench_function("redact (export with a presigned URL and a header)", |b| {
        b.iter(|| scrub(black_box(EXPORT)))
    });
    let (upload, phase, changed) = scrub(UPLOAD);
    assert!(!changed);
    assert_eq!(
        &upload[..],
        UPLOAD.as_bytes(),
        "sorted compact JSON: the same bytes"
    );
    assert_eq!(phase, Some(Phase::Task(TaskPhase::Completed)));
    let (scrubbed, _, changed) = scrub(EXPORT);
    assert!(changed);
    assert!(!scrubbed.windows(15).any(|w| w == b"customer-secret"));
}

fn per_hit(c: &mut Criterion) {
    let reply = Reply {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("application/json; charset=utf-8")),
        retry_after: None,
        body: Bytes::from_static(UPLOAD.as_bytes()),
    };
    let answer = Answer::from_upstream(Kind::Task, Ok(reply), &policy(), b"key");
    assert!(answer.is_cacheable());
    let request_id = HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c");
    let headers = HeaderMap::new();
    c.bench_function(
        "Answer::head + respond::build (hit: headers and body handle)",
        |b| {
            b.iter(|| {
                let (head, body) = answer.head(&Method::GET, black_box(&headers), CacheStatus::Hit);
                taskgate::build_response(head, taskgate::full(body), &request_id)
            })
        },
    );
}

/// A whole hit through the proxy: request id, route, rate limit, cache lookup, response,
/// metrics and the access event (no subscriber installed, as with logs filtered out).
fn proxy_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let (proxy, _api) = rt.block_on(async {
        // Tasks that have already finished when first asked for.
        let api = Simulator::start(
            "127.0.0.1:0".parse().unwrap(),
            Timeline::new(Duration::ZERO, Duration::ZERO),
        )
        .await
        .unwrap();
        let cfg = Config::new(ApiKey::new(DEMO_API_KEY), &api.base_url());
        let proxy = Arc::new(Proxy::new(&cfg).unwrap());
        (proxy, api)
    });
    let request = || {
        Request::get(format!("/task/{UPLOAD_TASK_ID}"))
            .header("host", "127.0.0.1:8080")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // Warm the cache, and check that what is measured below is a hit.
    rt.block_on(async {
        for want in ["MISS", "HIT"] {
            let resp = Arc::clone(&proxy).handle(request(), peer).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["x-cache"], want);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                Kind::Task.phase(&body),
                Some(Phase::Task(TaskPhase::Completed))
            );
        }
    });
    c.bench_function("Proxy::handle (cache hit, no sockets)", |b| {
        b.iter(|| rt.block_on(Arc::clone(&proxy).handle(request(), peer)))
    });
}

criterion_group!(benches, parsing, per_fetch, per_hit, proxy_hit);
criterion_main!(benches);
