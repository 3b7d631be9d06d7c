//! CORS for the browser-facing routes (docs/security.md, "CORS"): decisions only; the
//! headers are written by `answer::respond`.
//!
//! An allowed `Origin` gets `Access-Control-Allow-Origin: <that origin>`; a disallowed one gets
//! no `Access-Control-*` header at all (and 403 on preflight). While CORS is configured every
//! answer says `Vary: Origin`, so no shared cache hands one origin's answer to another. These
//! headers are added when an answer is served, never stored with it.

use http::{header, HeaderMap, HeaderValue, Method};

use crate::config::CorsOrigins;

/// The CORS headers one response gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsHeaders {
    /// CORS is not configured: none.
    #[default]
    Off,
    /// Configured, and this request's origin is not allowed (or absent): `Vary` only.
    Refused,
    /// The origin to echo in `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// A refused preflight: `Vary` over the preflight's headers.
    PreflightRefused,
    /// An accepted preflight.
    Preflight {
        origin: HeaderValue,
        /// Whatever the page asked to send (the SDK asks for `authorization`) is accepted:
        /// taskgate never reads or forwards a client header, so allowing it costs nothing.
        allow_headers: Option<HeaderValue>,
    },
}

/// What an `OPTIONS` request is.
#[derive(Debug, PartialEq, Eq)]
pub enum Options {
    /// No `Origin` or no `Access-Control-Request-Method`: a plain `204` with `Allow`.
    Plain,
    Preflight(CorsHeaders),
    Refused(CorsHeaders),
}

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
            CorsOrigins::List(list) => list.iter().any(|rule| origin_matches(rule, text)),
        };
        ok.then_some(origin)
    }

    /// The CORS headers for an actual (non-preflight) request's response.
    pub fn for_request(&self, request: &HeaderMap) -> CorsHeaders {
        if !self.enabled() {
            return CorsHeaders::Off;
        }
        match self.allowed(request) {
            Some(origin) => CorsHeaders::Allowed(origin.clone()),
            None => CorsHeaders::Refused,
        }
    }

    /// Judges `OPTIONS` on a resource path.
    pub fn options(&self, request: &HeaderMap) -> Options {
        let is_preflight = request.contains_key(header::ORIGIN)
            && request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !is_preflight {
            return Options::Plain;
        }
        let method_ok = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| m == Method::GET || m == Method::HEAD);
        match self.allowed(request).filter(|_| method_ok) {
            Some(origin) => Options::Preflight(CorsHeaders::Preflight {
                origin: origin.clone(),
                allow_headers: request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
            }),
            None if self.enabled() => Options::Refused(CorsHeaders::PreflightRefused),
            None => Options::Refused(CorsHeaders::Off),
        }
    }
}

/// Whether `origin` (as the browser sent it) is allowed by `rule`: an exact origin, or a
/// pattern `scheme://*.domain[:port]` (checked at start-up) that admits any subdomain of
/// `domain` with the same scheme and port, never `domain` itself.
fn origin_matches(rule: &str, origin: &str) -> bool {
    let Some((scheme, domain_port)) = rule.split_once("://*.") else {
        return rule.eq_ignore_ascii_case(origin);
    };
    let Some((origin_scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !origin_scheme.eq_ignore_ascii_case(scheme) {
        return false;
    }
    let split_port = |s: &str| -> (String, Option<String>) {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host.to_ascii_lowercase(), Some(port.to_owned()))
            }
            _ => (s.to_ascii_lowercase(), None),
        }
    };
    let (domain, port) = split_port(domain_port);
    let (host, origin_port) = split_port(authority);
    if port != origin_port {
        return false;
    }
    let Some(sub) = host
        .strip_suffix(domain.as_str())
        .and_then(|h| h.strip_suffix('.'))
    else {
        return false;
    };
    !sub.is_empty()
        && sub.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_admits_subdomains_with_its_scheme_and_port_only() {
        let rule = "https://*.example.com";
        for ok in [
            "https://app.example.com",
            "https://a.b.example.com",
            "HTTPS://App.Example.com",
        ] {
            assert!(origin_matches(rule, ok), "{ok}");
        }
        for no in [
            "https://example.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://appexample.com",
            "https://app.example.com.evil.net",
            "https://evil-example.com",
            "https://.example.com",
            "null",
        ] {
            assert!(!origin_matches(rule, no), "{no}");
        }
        let with_port = "http://*.example.com:8080";
        assert!(origin_matches(with_port, "http://a.example.com:8080"));
        assert!(!origin_matches(with_port, "http://a.example.com"));
        assert!(!origin_matches(with_port, "http://a.example.com:8081"));
    }
}
