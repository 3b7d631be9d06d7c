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

/// The schema gives each named secret as a string; one sent as an array, an object or a
/// number is masked all the same, leaf by leaf, and headers that are not an object wholly.
#[tokio::test]
async fn named_secrets_in_other_shapes_than_strings_are_masked_too() {
    let mock = MockUpstream::start().await;
    let body = |headers: serde_json::Value| {
        serde_json::json!({
            "id": ID, "type": "export",
            "params": {
                "export": {
                    "custom": {"url": "https://dest.example/v.mp4", "headers": headers},
                    "ipfs": {"pinata": {"jwt": {"token": "JWTSECRET"}, "apiSecret": ["APISECRET"],
                                        "apiKey": 12345678}}
                },
                "exportData": {"ipfs": {"pinata": {"jwt": [["DATAJWTSECRET"]]}}},
                "upload": {"encryption": {"encryptedKey": ["ENCSECRET", {"k": "ENCSECRET2"}]}}
            },
            "status": {"phase": "completed", "updatedAt": 1}
        })
        .to_string()
    };
    mock.set(
        "obj",
        Reply::json(
            200,
            body(serde_json::json!({
        "Authorization": ["Bearer HDRSECRET"], "X-Api": {"v": "HDRSECRET2"}, "X-N": 42})),
        ),
    );
    mock.set(
        "list",
        Reply::json(
            200,
            body(serde_json::json!([
        {"name": "Authorization", "value": "Bearer LISTSECRET"}])),
        ),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for id in ["obj", "list"] {
        let got = c.get(tg.public_addr(), &format!("/task/{id}")).await;
        assert_eq!(got.status, 200);
        let text = got.text();
        for secret in [
            "JWTSECRET",
            "APISECRET",
            "12345678",
            "DATAJWTSECRET",
            "ENCSECRET",
            "HDRSECRET",
            "LISTSECRET",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} reached the client: {text}"
            );
        }
        let v = got.json();
        let pinata = &v["params"]["export"]["ipfs"]["pinata"];
        assert_eq!(pinata["jwt"], serde_json::json!({"token": "***"}));
        assert_eq!(pinata["apiSecret"], serde_json::json!(["***"]));
        assert_eq!(pinata["apiKey"], 0);
        assert_eq!(
            v["params"]["upload"]["encryption"]["encryptedKey"],
            serde_json::json!(["***", {"k": "***"}])
        );
        assert_eq!(
            v["params"]["export"]["custom"]["url"],
            "https://dest.example/v.mp4"
        );
    }
    let obj = c.get(tg.public_addr(), "/task/obj").await.json();
    assert_eq!(
        obj["params"]["export"]["custom"]["headers"],
        serde_json::json!({"Authorization": ["***"], "X-Api": {"v": "***"}, "X-N": 0})
    );
    let list = c.get(tg.public_addr(), "/task/list").await.json();
    assert_eq!(
        list["params"]["export"]["custom"]["headers"],
        serde_json::json!([{"name": "***", "value": "***"}])
    );
}

/// A list where the schema has one object, at any level above a named secret (or the whole
/// body a list of tasks), cannot hide the secret: each element is scrubbed as the object would
/// be.
#[tokio::test]
async fn a_list_in_place_of_an_object_above_a_secret_hides_nothing() {
    use serde_json::json;
    let headers = json!({"Authorization": "Bearer HDRSECRET"});
    let pinata = json!({"jwt": "JWTSECRET"});
    let encryption = json!({"encryptedKey": "ENCSECRET"});
    let bodies = [
        json!({"params": {"export": [{"custom": {"headers": headers}}]}}),
        json!({"params": {"export": {"custom": [{"headers": headers}]}}}),
        json!({"params": [{"export": {"custom": {"headers": headers}}}]}),
        json!({"params": {"export": {"ipfs": [{"pinata": [pinata]}]}}}),
        json!({"params": {"exportData": [{"ipfs": {"pinata": pinata}}]}}),
        json!({"params": {"upload": {"encryption": [encryption]}}}),
        json!([{"id": "x", "params": {"export": {"custom": {"headers": headers}}}}]),
        json!({"params": [["https://u:PASSSECRET@h.example/v.mp4?X-Amz-Signature=SIGSECRET"]]}),
        // A holder of secrets sent as a plain value is masked whole.
        json!({"params": {"export": {"ipfs": {"pinata": "JWTSECRET"}}}}),
        json!({"params": {"upload": {"encryption": "ENCSECRET"}}}),
    ];
    let mock = MockUpstream::start().await;
    for (i, body) in bodies.iter().enumerate() {
        mock.set(&format!("l{i}"), Reply::json(200, body.to_string()));
    }
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for (i, body) in bodies.iter().enumerate() {
        let got = c.get(tg.public_addr(), &format!("/task/l{i}")).await;
        assert_eq!(got.status, 200, "{body}");
        let text = got.text();
        for secret in [
            "HDRSECRET",
            "JWTSECRET",
            "ENCSECRET",
            "PASSSECRET",
            "SIGSECRET",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} reached the client: {text}"
            );
        }
        assert!(text.contains("***"), "{text}");
    }
}

/// Userinfo in a URL written loosely (scheme-relative, one slash, backslashes), which a browser
/// would still send as credentials, is masked in prose as well.
#[tokio::test]
async fn userinfo_in_loosely_written_urls_is_masked() {
    let body = serde_json::json!({
        "id": "loose", "status": {"phase": "failed", "updatedAt": 1,
            "errorMessage": "fetch //u:PASS1@h.example/v.mp4 failed; retried https:/u:PASS2@h.example/v.mp4"},
        "output": {"note": "https:\\\\u:PASS3@h.example"}
    });
    let mock = MockUpstream::start().await;
    mock.set("loose", Reply::json(200, body.to_string()));
    let tg = taskgate(&mock, |_| {}).await;
    let got = HttpClient::default()
        .get(tg.public_addr(), "/task/loose")
        .await;
    assert_eq!(got.status, 200);
    let text = got.text();
    for secret in ["PASS1", "PASS2", "PASS3"] {
        assert!(
            !text.contains(secret),
            "{secret} reached the client: {text}"
        );
    }
    assert_eq!(
        got.json()["status"]["errorMessage"],
        "fetch //***:***@h.example/v.mp4 failed; retried https:/***:***@h.example/v.mp4"
    );
}

/// With redaction off the phase is read without a full parse; an array in place of an object
/// (at the top or as `status`) has no phase, so it is passed, never cached as completed.
#[tokio::test]
async fn redact_false_caches_no_array_as_a_completed_task() {
    let mock = MockUpstream::start().await;
    let bodies = [
        ("a1", r#"[["completed"]]"#),
        ("a2", r#"[{"phase":"completed"}]"#),
        ("a3", r#"{"status":["completed"]}"#),
    ];
    for (id, body) in bodies {
        mock.set(id, Reply::json(200, body));
    }
    let tg = taskgate(&mock, |c| c.redact = false).await;
    for (id, body) in bodies {
        let (first, second) = get_twice(&tg, id).await;
        for got in [&first, &second] {
            assert_eq!(got.status, 200, "{id}");
            assert_eq!(got.header("x-cache"), Some("PASS"), "{id}");
            assert_eq!(got.header("cache-control"), Some("no-store"), "{id}");
            assert_eq!(got.text(), body);
        }
    }
    assert_eq!(mock.calls(), 2 * bodies.len());
}

// ---- Failing closed (issue 16, item 4): one parse serves the phase, the scrub and the bytes
// served; what cannot be parsed, or holds the key, is never relayed nor cached.

/// `GET /task/{id}` twice: what the client got each time.
async fn get_twice(tg: &taskgate::Running, id: &str) -> (common::Got, common::Got) {
    let c = HttpClient::default();
    let first = c.get(tg.public_addr(), &format!("/task/{id}")).await;
    let second = c.get(tg.public_addr(), &format!("/task/{id}")).await;
    (first, second)
}

/// A 502 that relays nothing of the upstream body and is never stored: both requests went
/// upstream.
fn assert_withheld(
    tg: &taskgate::Running,
    mock: &MockUpstream,
    id: &str,
    got: [&common::Got; 2],
    reason: &str,
) {
    for g in got {
        assert_eq!(g.status, http::StatusCode::BAD_GATEWAY, "{}", g.text());
        assert_eq!(g.header("x-cache"), Some("PASS"));
        assert_eq!(g.json()["errors"][0], reason);
        for s in SECRETS.iter().chain([&common::KEY, &"completed"]) {
            assert!(
                !g.text().contains(s),
                "{s} reached the client: {}",
                g.text()
            );
        }
    }
    assert_eq!(
        mock.calls(),
        2,
        "not cached: the second request went upstream too"
    );
    assert!(tg.proxy().cache().get(&common::task_key(id)).is_none());
}

/// `secret_body` with `inner` nested `depth` arrays deep inside `params`.
fn deep_body(depth: usize) -> String {
    let nested = format!("{}\"x\"{}", "[".repeat(depth), "]".repeat(depth));
    secret_body("completed").replacen(
        r#""params":{"#,
        &format!(r#""params":{{"deep":{nested},"#),
        1,
    )
}

#[tokio::test]
async fn a_body_nested_past_the_parser_limit_is_502_and_never_cached() {
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::json(200, deep_body(200)));
    let tg = taskgate(&mock, |_| {}).await;
    let (first, second) = get_twice(&tg, ID).await;
    assert_withheld(
        &tg,
        &mock,
        ID,
        [&first, &second],
        "unreadable upstream answer",
    );
    // Within the limit the same body is served, scrubbed, and cached.
    mock.set("shallow", Reply::json(200, deep_body(100)));
    let (miss, hit) = get_twice(&tg, "shallow").await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    assert_scrubbed(&miss.text());
    assert_eq!(
        (hit.header("x-cache"), &hit.body),
        (Some("HIT"), &miss.body)
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_502_with_redaction_on() {
    let mock = MockUpstream::start().await;
    let not_json = format!("<html>{}</html>", secret_body("completed"));
    mock.set(
        ID,
        Reply::json(200, not_json).header("content-type", "text/html"),
    );
    let tg = taskgate(&mock, |_| {}).await;
    let (first, second) = get_twice(&tg, ID).await;
    assert_withheld(
        &tg,
        &mock,
        ID,
        [&first, &second],
        "unreadable upstream answer",
    );
}

#[tokio::test]
async fn a_duplicate_params_key_cannot_hide_the_secrets_before_it() {
    let mock = MockUpstream::start().await;
    // The secret-bearing `params` first, then a harmless one: a tree keeps the last.
    let body = secret_body("completed").replacen(
        r#""status":"#,
        r#""params":{"upload":{"url":"https://example.com/v.mp4"}},"status":"#,
        1,
    );
    mock.set(ID, Reply::json(200, body));
    let tg = taskgate(&mock, |_| {}).await;
    let (miss, hit) = get_twice(&tg, ID).await;
    assert_eq!(miss.status, http::StatusCode::OK);
    for s in SECRETS {
        assert!(
            !miss.text().contains(s),
            "{s} reached the client: {}",
            miss.text()
        );
    }
    assert_eq!(
        miss.text().matches("\"params\"").count(),
        1,
        "{}",
        miss.text()
    );
    assert_eq!(
        miss.json()["params"]["upload"]["url"],
        "https://example.com/v.mp4"
    );
    assert_eq!(miss.json()["status"]["phase"], "completed");
    assert_eq!(
        (hit.header("x-cache"), &hit.body),
        (Some("HIT"), &miss.body)
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_200_holding_the_api_key_is_502_and_never_cached() {
    let escaped = format!("\\u{:04x}{}", common::KEY.as_bytes()[0], &common::KEY[1..]);
    for (id, key) in [("plain", common::KEY.to_owned()), ("escaped", escaped)] {
        let mock = MockUpstream::start().await;
        let body = format!(
            r#"{{"id":"{id}","status":{{"phase":"completed","updatedAt":1,"errorMessage":"no token {key} found"}}}}"#
        );
        mock.set(id, Reply::json(200, body));
        let tg = taskgate(&mock, |_| {}).await;
        let (first, second) = get_twice(&tg, id).await;
        assert_withheld(
            &tg,
            &mock,
            id,
            [&first, &second],
            "upstream answer withheld",
        );
        assert!(!first.text().contains(&key[2..]), "{id}: {}", first.text());
    }
}

#[tokio::test]
async fn a_4xx_body_holding_the_key_escaped_gets_the_generic_body() {
    let mock = MockUpstream::start().await;
    let escaped = format!("\\u{:04x}{}", common::KEY.as_bytes()[0], &common::KEY[1..]);
    let echo = format!(r#"{{"errors":["no token {escaped} found"]}}"#);
    mock.set("bad", Reply::json(400, echo.clone()));
    mock.set("gone", Reply::json(404, echo.clone()));
    mock.set("odd", Reply::json(422, echo.replace("\\u0073", "%73")));
    let tg = taskgate(&mock, |_| {}).await;
    let c = HttpClient::default();
    for (id, status, message) in [
        ("bad", 400, "upstream refused the request"),
        ("gone", 404, "not found"),
        ("odd", 422, "upstream refused the request"),
    ] {
        let got = c.get(tg.public_addr(), &format!("/task/{id}")).await;
        assert_eq!(got.status.as_u16(), status, "{id}");
        assert_eq!(
            got.json(),
            serde_json::json!({ "errors": [message] }),
            "{id}"
        );
    }
    // A 4xx body without the key is still relayed.
    mock.set(
        "plain",
        Reply::json(
            400,
            r#"{"errors":["projectId as query param not supported"]}"#,
        ),
    );
    let got = c.get(tg.public_addr(), "/task/plain").await;
    assert_eq!(
        got.json()["errors"][0],
        "projectId as query param not supported"
    );
}

#[tokio::test]
async fn signatures_outside_params_are_scrubbed() {
    let mock = MockUpstream::start().await;
    let presigned =
        "https://b.s3.amazonaws.com/f.mp4?X-Amz-Credential=AKIASECRET&X-Amz-Signature=SIGSECRET";
    let encoded = "https%3A%2F%2Fb.s3.amazonaws.com%2Ff.mp4%3FX-Amz-Credential%3DAKIASECRET%26X-Amz-Signature%3DSIGSECRET%26x%3D1";
    let body = format!(
        r#"{{"id":"{ID}","type":"export","status":{{"phase":"failed","updatedAt":1,"errorMessage":"error uploading to {presigned} (403)"}},"output":{{"export":{{"url":"{encoded}","gateway":"https://gw.example/get?u={encoded}&sig=SIGSECRET","source":"https://gw.example/get?u=https%3A%2F%2Fuser%3APASSSECRET%40h.example%2Fv.mp4"}}}}}}"#
    );
    mock.set(ID, Reply::json(200, body));
    let tg = taskgate(&mock, |_| {}).await;
    let (miss, hit) = get_twice(&tg, ID).await;
    for got in [&miss, &hit] {
        assert_eq!(got.status, http::StatusCode::OK);
        for s in ["AKIASECRET", "SIGSECRET", "PASSSECRET"] {
            assert!(
                !got.text().contains(s),
                "{s} reached the client: {}",
                got.text()
            );
        }
    }
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    let v = miss.json();
    assert_eq!(
        v["status"]["errorMessage"],
        "error uploading to https://b.s3.amazonaws.com/f.mp4?X-Amz-Credential=***&X-Amz-Signature=*** (403)"
    );
    let scrubbed = "https%3A%2F%2Fb.s3.amazonaws.com%2Ff.mp4%3FX-Amz-Credential%3D***%26X-Amz-Signature%3D***%26x%3D1";
    assert_eq!(v["output"]["export"]["url"], scrubbed);
    assert_eq!(
        v["output"]["export"]["gateway"],
        format!("https://gw.example/get?u={scrubbed}&sig=***")
    );
    assert_eq!(
        v["output"]["export"]["source"],
        "https://gw.example/get?u=https%3A%2F%2F***%3A***%40h.example%2Fv.mp4"
    );
}

#[tokio::test]
async fn redact_false_relays_unparsable_and_deep_bodies_as_sent() {
    let mock = MockUpstream::start().await;
    mock.set(
        "html",
        Reply::json(200, "<html>maintenance</html>").header("content-type", "text/html"),
    );
    mock.set(ID, Reply::json(200, deep_body(200)));
    let tg = taskgate(&mock, |c| c.redact = false).await;
    let c = HttpClient::default();
    let html = c.get(tg.public_addr(), "/task/html").await;
    assert_eq!(html.status, http::StatusCode::OK);
    assert_eq!(html.text(), "<html>maintenance</html>");
    let deep = c.get(tg.public_addr(), &format!("/task/{ID}")).await;
    assert_eq!(deep.status, http::StatusCode::OK);
    assert_eq!(deep.text(), deep_body(200));
}
