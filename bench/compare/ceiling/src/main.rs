//! `bare-hyper PORT RESPONSES.json`: answers `GET path` with the status, headers and body
//! recorded for `path` in RESPONSES.json (`{"/task/done-0": {"status": 200, "headers":
//! [["name", "value"], …], "body": "…"}, …}`), 404 otherwise. Nothing else: no routing beyond
//! one hash lookup, no cache, no logs, no timers. hyper's HTTP/1 server laid out as taskgate
//! is (src/workers.rs): one thread per core, each a single-threaded tokio runtime, accepted
//! connections dealt to them in turn and moved to their reactor; TCP_NODELAY set, as in
//! taskgate; hyper adds `date` and `content-length` itself.
use std::{collections::HashMap, convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header::HeaderName, header::HeaderValue, server::conn::http1,
    service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;

struct Canned {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

fn load(path: &str) -> HashMap<String, Canned> {
    let text = std::fs::read_to_string(path).expect("the responses file");
    let all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("a JSON object");
    all.into_iter()
        .map(|(path, r)| {
            let headers = r["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|h| {
                    let name = h[0].as_str().expect("a name");
                    let value = h[1].as_str().expect("a value");
                    (name.parse().expect("a header name"), value.parse().expect("a header value"))
                })
                .collect();
            let canned = Canned {
                status: StatusCode::from_u16(r["status"].as_u64().expect("status") as u16)
                    .expect("a status"),
                headers,
                body: Bytes::from(r["body"].as_str().expect("body").to_owned()),
            };
            (path, canned)
        })
        .collect()
}

fn answer(all: &HashMap<String, Canned>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(c) = all.get(req.uri().path()) else {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let mut r = Response::new(Full::new(c.body.clone()));
    *r.status_mut() = c.status;
    let h = r.headers_mut();
    h.reserve(c.headers.len());
    for (name, value) in &c.headers {
        h.append(name.clone(), value.clone());
    }
    r
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).expect("PORT");
    let all = Arc::new(load(&args.next().expect("RESPONSES.json")));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<tokio::runtime::Handle> = (0..cores)
        .map(|_| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let handle = rt.handle().clone();
            std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
            handle
        })
        .collect();
    let acceptor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    acceptor.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        for turn in (0..workers.len()).cycle() {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            let all = Arc::clone(&all);
            workers[turn].spawn(async move {
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let resp = answer(&all, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
