//! CORS for the browser-facing routes (SPEC "CORS and abuse limits").
//!
//! An allowed `Origin` gets `Access-Control-Allow-Origin: <that origin>`; a disallowed one gets
//! no `Access-Control-*` header at all (and 403 on preflight). While CORS is configured every
//! answer says `Vary: Origin`, so no shared cache hands one origin's answer to another. These
//! headers are added when an answer is served, never stored with it.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::{
    answer::{self, Body},
    config::CorsOrigins,
};

/// How long a browser may keep a preflight answer.
const MAX_AGE_SECS: u32 = 600;
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
/// Lets page scripts read what taskgate adds (the SDK only needs the body).
const EXPOSE: HeaderValue =
    HeaderValue::from_static("etag, age, x-cache, x-request-id, retry-after");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

#[derive(Debug, Clone)]
pub struct Cors {
    origins: CorsOrigins,
}

impl Cors {
    pub fn new(origins: CorsOrigins) -> Self {
        Self { origins }
    }

    fn enabled(&self) -> bool {
        !matches!(self.origins, CorsOrigins::None)
    }

    /// The request's `Origin` when it is allowed.
    fn allowed<'h>(&self, request: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = request.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let ok = match &self.origins {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            CorsOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(text)),
        };
        ok.then_some(origin)
    }

    /// Adds the CORS headers for an actual (non-preflight) request's response.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if !self.enabled() {
            return;
        }
        response.append(header::VARY, VARY_ORIGIN);
        if let Some(origin) = self.allowed(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
        }
    }

    /// Answers `OPTIONS` on a task path: a preflight when it carries `Origin` and
    /// `Access-Control-Request-Method`, else a plain `204` with `Allow`.
    pub fn options(&self, request: &HeaderMap, request_id: &HeaderValue) -> Response<Body> {
        let is_preflight = request.contains_key(header::ORIGIN)
            && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !is_preflight {
            let mut resp = answer::empty_response(StatusCode::NO_CONTENT, request_id);
            resp.headers_mut().insert(header::ALLOW, ALLOW_METHODS);
            return resp;
        }
        let method_ok = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| m == Method::GET || m == Method::HEAD);
        let Some(origin) = self.allowed(request).filter(|_| method_ok) else {
            let mut resp =
                answer::error_response(StatusCode::FORBIDDEN, "CORS preflight refused", request_id);
            if self.enabled() {
                resp.headers_mut().insert(header::VARY, VARY_PREFLIGHT);
            }
            return resp;
        };
        let mut resp = answer::empty_response(StatusCode::NO_CONTENT, request_id);
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        // Whatever the page asks to send (the SDK asks for `authorization`) is accepted:
        // taskgate never reads or forwards a client header, so allowing it costs nothing.
        if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(MAX_AGE_SECS),
        );
        h.insert(header::ALLOW, ALLOW_METHODS);
        h.insert(header::VARY, VARY_PREFLIGHT);
        resp
    }
}
