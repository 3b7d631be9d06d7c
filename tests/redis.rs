//! The shared second level against a real `redis-server` (Debian's package; `.ci/run`
//! installs it), started here on a free loopback port with persistence off.
#![cfg(feature = "redis")]

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{taskgate, Binary, HttpClient, MockUpstream, Reply};
use http::StatusCode;
use taskgate::config::Secret;

const ID: &str = "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69";

/// A throwaway redis-server on 127.0.0.1, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        let mut r = Self {
            port: 0,
            child: None,
        };
        // A port found free can be taken again before redis-server binds it (by another
        // test's server, restarted on its old port): then try another.
        for _ in 0..5 {
            r.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if r.try_start() {
                return r;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts redis-server on `self.port` again (after `stop`): same port, same URL.
    fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_start() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether a redis-server of our own now serves `self.port`: the one answering there must
    /// be our child (its `process_id`), not another test's server that holds the port.
    fn try_start(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs Debian's redis-server)");
        let own = format!("process_id:{}", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false; // exited: the port was taken
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .cli(&["INFO", "server"])
                    .lines()
                    .any(|l| l.trim() == own)
            {
                self.child = Some(child);
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until `n` replicas of namespace `ns` listen on its invalidation channel: they
    /// subscribe in the background after start-up, and a message published earlier reaches nobody.
    async fn wait_for_listeners(&self, ns: &str, n: usize) {
        let channel = format!("taskgate:v2:{ns}:invalidate");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .cli(&["PUBSUB", "NUMSUB", &channel])
            .ends_with(&n.to_string())
        {
            assert!(Instant::now() < deadline, "the replicas never subscribed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn get(addr: SocketAddr, id: &str) -> common::Got {
    HttpClient::default()
        .get(addr, &format!("/task/{id}"))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_answers_and_purges_through_redis() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    let url = redis.url();
    let env = [
        ("TASKGATE_REDIS_URL", url.as_str()),
        ("TASKGATE_REDIS_NAMESPACE", "test"),
        ("TASKGATE_LOG", "info"),
    ];
    let first = Binary::spawn(&mock.base_url(), &env);
    let second = Binary::spawn(&mock.base_url(), &env);

    assert_eq!(get(first.public, ID).await.header("x-cache"), Some("MISS"));
    // The write to Redis happens beside the reply: wait for it to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["EXISTS", &format!("taskgate:v2:test:task:{ID}")]) != "1" {
        assert!(Instant::now() < deadline, "the answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shared = get(second.public, ID).await;
    assert_eq!(shared.status, StatusCode::OK);
    assert_eq!(
        shared.header("x-cache"),
        Some("HIT"),
        "served by the second replica from Redis"
    );
    assert_eq!(
        mock.calls(),
        1,
        "zero upstream calls for the second replica"
    );
    assert_eq!(get(second.public, ID).await.header("x-cache"), Some("HIT"));

    // A purge on the second replica reaches the first through Redis.
    let purge = HttpClient::default()
        .send(second.admin, "DELETE", &format!("/cache/task/{ID}"), &[])
        .await;
    assert_eq!(purge.status, StatusCode::NO_CONTENT);
    assert_eq!(
        redis.cli(&["EXISTS", &format!("taskgate:v2:test:task:{ID}")]),
        "0"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = get(first.public, ID).await;
        if got.header("x-cache") == Some("MISS") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first replica kept its copy after the purge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.calls(), 2);
    assert_eq!(first.terminate().0, 0);
    assert_eq!(second.terminate().0, 0);
}

#[tokio::test]
async fn the_lifetime_in_redis_matches_the_phases_ttl() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set("done", Reply::task("done", "completed"));
    mock.set("broke", Reply::task("broke", "failed"));
    mock.set("busy", Reply::task("busy", "running"));
    let tg = taskgate(&mock, |c| {
        c.redis_url = Some(Secret::new(redis.url()));
        c.redis_namespace = Some("test".into());
        c.ttl_pending = Duration::from_secs(5);
    })
    .await;
    for id in ["done", "broke", "busy", "missing"] {
        get(tg.public_addr(), id).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ttl = |id: &str| {
        redis
            .cli(&["PTTL", &format!("taskgate:v2:test:task:{id}")])
            .parse::<i64>()
            .unwrap()
    };
    let near = |ms: i64, want: Duration| {
        (want.as_millis() as i64 - 2_000..=want.as_millis() as i64).contains(&ms)
    };
    assert!(
        near(ttl("done"), Duration::from_secs(86_400)),
        "{}",
        ttl("done")
    );
    assert!(
        near(ttl("broke"), Duration::from_secs(30)),
        "{}",
        ttl("broke")
    );
    assert!(
        near(ttl("missing"), Duration::from_secs(5)),
        "{}",
        ttl("missing")
    );
    assert_eq!(
        ttl("busy"),
        -2,
        "the pending micro-cache never goes to Redis"
    );
}

#[tokio::test]
async fn a_corrupt_value_in_redis_is_ignored() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    redis.cli(&[
        "SET",
        &format!("taskgate:v2:test:task:{ID}"),
        "TGA9-from-the-future",
        "EX",
        "60",
    ]);
    let tg = taskgate(&mock, |c| {
        c.redis_url = Some(Secret::new(redis.url()));
        c.redis_namespace = Some("test".into());
    })
    .await;
    let got = get(tg.public_addr(), ID).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-cache"), Some("MISS"));
    assert_eq!(mock.calls(), 1);
    let m = HttpClient::default()
        .get(tg.admin_addr(), "/metrics")
        .await
        .text();
    assert!(
        m.contains(r#"taskgate_l2_requests_total{op="get",outcome="undecodable"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_keep_answering_while_redis_is_down_and_use_it_again_once_back() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start().await;
    for id in ["a", "b", "c"] {
        mock.set(id, Reply::task(id, "completed"));
    }
    let cfg = |c: &mut taskgate::config::Config| {
        c.redis_url = Some(Secret::new(redis.url()));
        c.redis_namespace = Some("test".into());
        c.redis_timeout = Duration::from_millis(100);
    };
    let one = taskgate(&mock, cfg).await;
    let two = taskgate(&mock, cfg).await;
    assert_eq!(get(one.public_addr(), "a").await.status, StatusCode::OK);

    redis.stop();
    for (tg, id) in [(&one, "b"), (&two, "b"), (&two, "a")] {
        let started = Instant::now();
        let got = get(tg.public_addr(), id).await;
        assert_eq!(got.status, StatusCode::OK, "answers while Redis is down");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no stall: {:?}",
            started.elapsed()
        );
    }
    let m = HttpClient::default()
        .get(two.admin_addr(), "/metrics")
        .await
        .text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("taskgate_l2_requests_total")
                && (l.contains("\"error\"") || l.contains("\"timeout\""))),
        "errors are counted: {m}"
    );

    redis.restart();
    // Once Redis is back, answers go there again and the other replica is served from it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        get(one.public_addr(), "c").await;
        if redis.cli(&["EXISTS", "taskgate:v2:test:task:c"]) == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "taskgate never used Redis again");
        one.proxy().cache().invalidate(&common::task_key("c"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other replica's connection comes back by itself too (its first command after the
    // outage may still fail and count as a miss).
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(two.public_addr(), "c").await.header("x-cache") != Some("HIT") {
        assert!(
            Instant::now() < deadline,
            "the second replica never used Redis again"
        );
        two.proxy().cache().invalidate(&common::task_key("c"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both resubscribed to invalidations after the outage: a purge on one reaches the other.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let purge = HttpClient::default()
            .send(one.admin_addr(), "DELETE", "/cache/task/c", &[])
            .await;
        assert_eq!(purge.status, StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if two.proxy().cache().get(&common::task_key("c")).is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second replica never resubscribed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_sharing_one_redis_never_serve_each_others_answers() {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set(ID, Reply::task(ID, "completed"));
    // Same upstream and id, different API keys (two apps, or staging and production): the
    // derived namespaces differ.
    let tenant = |key: &'static str| {
        let url = redis.url();
        move |c: &mut taskgate::config::Config| {
            c.redis_url = Some(Secret::new(url));
            c.api_key = Secret::new(key);
        }
    };
    let one = taskgate(&mock, tenant("sk_app_one")).await;
    let two = taskgate(&mock, tenant("sk_app_two")).await;
    assert_eq!(
        get(one.public_addr(), ID).await.header("x-cache"),
        Some("MISS")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["KEYS", "taskgate:v2:*"]).is_empty() {
        assert!(Instant::now() < deadline, "nothing written to Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(two.public_addr(), ID).await.header("x-cache"),
        Some("MISS"),
        "the other tenant fetched its own"
    );
    assert_eq!(mock.calls(), 2);
    let keys = redis.cli(&["KEYS", "taskgate:v2:*"]);
    assert!(
        !keys.contains("sk_app"),
        "no key material in key names: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_trusted_webhooks_unfinished_answers_are_shared_and_a_webhook_to_one_replica_refreshes_the_other(
) {
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    let running = |updated: u64| {
        Reply::json(
            200,
            format!(r#"{{"id":"t9","status":{{"phase":"running","updatedAt":{updated}}}}}"#),
        )
    };
    mock.set("t9", running(1));
    let cfg = |c: &mut taskgate::config::Config| {
        c.redis_url = Some(Secret::new(redis.url()));
        c.redis_namespace = Some("trust".into());
        c.webhook_secret = Some(Secret::new("whsec_shared"));
        c.webhook_trust_ttl = Duration::from_secs(60);
    };
    let one = taskgate(&mock, cfg).await;
    let two = taskgate(&mock, cfg).await;
    assert_eq!(
        get(one.public_addr(), "t9").await.header("x-cache"),
        Some("MISS")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["EXISTS", "taskgate:v2:trust:task:t9"]) != "1" {
        assert!(
            Instant::now() < deadline,
            "the unfinished answer never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shared = get(two.public_addr(), "t9").await;
    assert_eq!(shared.header("x-cache"), Some("HIT"), "the fleet shares it");
    assert_eq!(shared.header("cache-control"), Some("no-store"));
    assert_eq!(mock.calls(), 1);

    // Studio tells replica one; replica two drops it too.
    mock.set("t9", running(2));
    redis.wait_for_listeners("trust", 2).await;
    let status = common::task_updated(one.public_addr(), "whsec_shared", "evt-9", "t9", 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = get(two.public_addr(), "t9").await;
        if got.json()["status"]["updatedAt"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "replica two kept the old answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn assets_are_shared_under_their_own_key_and_an_asset_webhook_reaches_every_replica() {
    const SECRET: &str = "whsec_redis_assets";
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set_asset(ID, Reply::asset(ID, "ready"));
    mock.set_asset("broke", Reply::asset("broke", "failed"));
    let replica = || {
        taskgate(&mock, |c| {
            c.redis_url = Some(Secret::new(redis.url()));
            c.redis_namespace = Some("test".into());
            c.webhook_secret = Some(Secret::new(SECRET));
        })
    };
    let (a, b) = (replica().await, replica().await);
    let c = HttpClient::default();
    let asset = |id: &str| format!("/asset/{id}");
    assert_eq!(
        c.get(a.public_addr(), &asset(ID)).await.header("x-cache"),
        Some("MISS")
    );
    c.get(a.public_addr(), &asset("broke")).await;
    let key = |kind: &str, id: &str| format!("taskgate:v2:test:{kind}:{id}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cli(&["EXISTS", &key("asset", "broke")]) != "1" {
        assert!(Instant::now() < deadline, "the answers never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pttl = |k: String| redis.cli(&["PTTL", &k]).parse::<i64>().unwrap();
    assert!(
        (58_000..=60_000).contains(&pttl(key("asset", ID))),
        "TTL_ASSET_READY"
    );
    assert!(
        (28_000..=30_000).contains(&pttl(key("asset", "broke"))),
        "TTL_FAILED"
    );
    assert_eq!(
        redis.cli(&["EXISTS", &key("task", ID)]),
        "0",
        "not under the task key"
    );
    // The other replica is served from Redis.
    assert_eq!(
        c.get(b.public_addr(), &asset(ID)).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(mock.calls(), 2);
    // A signed asset.updated on the second replica: gone from Redis and from the first's memory.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body = format!(
        r#"{{"id":"ev-redis-1","webhookId":"wh","createdAt":{t},"timestamp":{t},"event":"asset.updated","payload":{{"asset":{{"id":"{ID}","snapshot":{{}}}}}}}}"#
    );
    let hex = common::hmac_sha256_hex(SECRET, body.as_bytes());
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    redis.wait_for_listeners("test", 2).await;
    let req = http::Request::post(format!("http://{}/webhooks/livepeer", b.public_addr()))
        .header("livepeer-signature", format!("t={t},v1={hex}"))
        .body(http_body_util::Full::from(body))
        .unwrap();
    assert_eq!(
        client.request(req).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(redis.cli(&["EXISTS", &key("asset", ID)]), "0");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get(a.public_addr(), &asset(ID)).await.header("x-cache") != Some("MISS") {
        assert!(
            Instant::now() < deadline,
            "the first replica kept the asset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failed asset of the same namespace was left alone.
    assert_eq!(
        c.get(b.public_addr(), &asset("broke"))
            .await
            .header("x-cache"),
        Some("HIT")
    );
}

/// Issue 16 finding 3: Studio's retry of an event can reach another replica. With Redis the
/// first replica claims the event id (`SET NX`), so the retry is a duplicate everywhere: the
/// second replica acknowledges it without dropping its answer again (no refetch).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_retry_that_reaches_another_replica_is_a_duplicate_there() {
    const SECRET: &str = "whsec_dedupe";
    let redis = Redis::start();
    let mock = MockUpstream::start().await;
    mock.set("t7", Reply::task("t7", "completed"));
    let cfg = |c: &mut taskgate::config::Config| {
        c.redis_url = Some(Secret::new(redis.url()));
        c.redis_namespace = Some("dedupe".into());
        c.webhook_secret = Some(Secret::new(SECRET));
    };
    let one = taskgate(&mock, cfg).await;
    let two = taskgate(&mock, cfg).await;
    assert_eq!(
        get(two.public_addr(), "t7").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(mock.calls(), 1);

    redis.wait_for_listeners("dedupe", 2).await;

    // Delivered to replica one: every replica drops t7; replica two fetches it again.
    let status = common::task_updated(one.public_addr(), SECRET, "evt-dup", "t7", 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(two.public_addr(), "t7").await.header("x-cache") != Some("MISS") {
        assert!(Instant::now() < deadline, "replica two never dropped t7");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.calls(), 2);
    assert_eq!(
        redis.cli(&["EXISTS", "taskgate:v2:dedupe:webhook-seen:evt-dup"]),
        "1"
    );

    // Studio's retry of the same event, sent to replica two: acknowledged, nothing dropped.
    let status = common::task_updated(two.public_addr(), SECRET, "evt-dup", "t7", 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(two.public_addr(), "t7").await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(mock.calls(), 2, "the retry cost no upstream call");
    let webhooks = |r: &taskgate::Running, outcome: &str| {
        r.proxy()
            .metrics()
            .read(Default::default())
            .sum("taskgate_webhooks_total", &[("outcome", outcome)])
    };
    assert_eq!(webhooks(&one, "accepted"), 1.0);
    assert_eq!(webhooks(&two, "duplicate"), 1.0);
    assert_eq!(webhooks(&two, "accepted"), 0.0);
    // A new event is still accepted on either replica.
    let status = common::task_updated(two.public_addr(), SECRET, "evt-new", "t7", 3).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(webhooks(&two, "accepted"), 1.0);
}
