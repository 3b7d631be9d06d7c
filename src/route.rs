//! The public routes, recognised on the raw request path.
//!
//! The id is checked on the path exactly as the client sent it, before any percent-decoding,
//! so `%2e%2e`, `%2F` and friends can never turn into a different upstream path: an id is
//! `^[A-Za-z0-9-]{1,64}$` or the request is refused.

use crate::resource::{Key, Kind};

pub use crate::resource::{is_valid_id, MAX_ID_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/{kind}/{id}` or `/api/{kind}/{id}`.
    Read(Key),
    /// `/{kind}/{id}/events` or `/api/{kind}/{id}/events`.
    Events(Key),
    /// `/webhooks/livepeer`.
    Webhook,
    /// A resource path whose id is not a valid id: 400.
    BadId(Kind),
    /// Anything else: 404.
    NotFound,
}

impl Route {
    /// The route's name for logs and metric labels: never holds the id.
    pub fn as_str(&self) -> &'static str {
        match self {
            Route::Read(key) => match key.kind() {
                Kind::Task => "task",
                Kind::Asset => "asset",
            },
            Route::Events(key) => match key.kind() {
                Kind::Task => "task_events",
                Kind::Asset => "asset_events",
            },
            Route::Webhook => "webhook",
            Route::BadId(_) => "bad_id",
            Route::NotFound => "not_found",
        }
    }

    /// The resource a read or a watch names.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Route::Read(key) | Route::Events(key) => Some(key),
            _ => None,
        }
    }

    /// The kind a resource route names, valid id or not.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Route::Read(key) | Route::Events(key) => Some(key.kind()),
            Route::BadId(kind) => Some(*kind),
            _ => None,
        }
    }

    pub fn id(&self) -> Option<&str> {
        self.key().map(Key::id)
    }

    /// The id when it names a task: the `task_id` that logs and spans carry, kept for
    /// dashboards and queries written before assets.
    pub fn task_id(&self) -> Option<&str> {
        self.key().filter(|k| k.kind() == Kind::Task).map(Key::id)
    }
}

/// Classifies a raw path (no query string: `Uri::path()` never includes one).
pub fn parse(path: &str) -> Route {
    if path == "/webhooks/livepeer" {
        return Route::Webhook;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    let rest = rest.strip_prefix("api/").unwrap_or(rest);
    let Some((kind, rest)) =
        split_at_slash(rest).and_then(|(segment, rest)| Some((Kind::from_segment(segment)?, rest)))
    else {
        return Route::NotFound;
    };
    let (id, events) = match split_at_slash(rest) {
        None => (rest, false),
        Some((id, "events")) => (id, true),
        // `/task/{id}/anything-else`: either a bad id (`..`, `.`) or an unknown sub-route.
        Some((id, _)) if !is_valid_id(id) => return Route::BadId(kind),
        Some(_) => return Route::NotFound,
    };
    match (Key::new(kind, id), events) {
        (None, _) => Route::BadId(kind),
        (Some(key), false) => Route::Read(key),
        (Some(key), true) => Route::Events(key),
    }
}

/// `s.split_once('/')` by a plain scan: the segments are short, and `split_once` sets up a
/// `memchr` search for each (about 100 instructions).
fn split_at_slash(s: &str) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == b'/')?;
    Some((&s[..at], &s[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Key {
        Key::new(Kind::Task, id).unwrap()
    }

    #[test]
    fn splits_at_the_first_slash_as_split_once_does() {
        for s in [
            "",
            "/",
            "a",
            "a/",
            "/a",
            "task/x",
            "task/x/events",
            "a//b",
            "é/ü/x",
        ] {
            assert_eq!(split_at_slash(s), s.split_once('/'), "{s:?}");
        }
    }

    #[test]
    fn task_id_is_the_id_of_a_task_route_only() {
        assert_eq!(parse("/task/done-1").task_id(), Some("done-1"));
        assert_eq!(parse("/api/task/done-1/events").task_id(), Some("done-1"));
        assert_eq!(parse("/asset/a-1").task_id(), None);
        assert_eq!(parse("/task/%2e").task_id(), None);
        assert_eq!(parse("/metrics").task_id(), None);
    }

    #[test]
    fn task_paths_with_and_without_api_prefix() {
        assert_eq!(parse("/task/abc-123"), Route::Read(task("abc-123")));
        assert_eq!(parse("/api/task/abc-123"), Route::Read(task("abc-123")));
        assert_eq!(parse("/task/abc/events"), Route::Events(task("abc")));
        assert_eq!(parse("/api/task/abc/events"), Route::Events(task("abc")));
        assert_eq!(parse("/webhooks/livepeer"), Route::Webhook);
    }

    #[test]
    fn asset_paths_have_the_same_shape_and_their_own_labels() {
        let asset = |id| Key::new(Kind::Asset, id).unwrap();
        assert_eq!(parse("/asset/abc-123"), Route::Read(asset("abc-123")));
        assert_eq!(parse("/api/asset/abc-123"), Route::Read(asset("abc-123")));
        assert_eq!(parse("/asset/abc/events"), Route::Events(asset("abc")));
        assert_eq!(parse("/api/asset/abc/events"), Route::Events(asset("abc")));
        assert_eq!(parse("/asset/abc").as_str(), "asset");
        assert_eq!(parse("/asset/abc/events").as_str(), "asset_events");
        for path in ["/asset/", "/asset/a.b", "/api/asset/%2e%2e", "/asset/../x"] {
            assert_eq!(parse(path), Route::BadId(Kind::Asset), "{path}");
        }
        for path in ["/assets/abc", "/asset", "/asset/abc/other"] {
            assert_eq!(parse(path), Route::NotFound, "{path}");
        }
    }

    #[test]
    fn ids_are_checked_before_any_decoding() {
        for path in [
            "/task/",
            "/task/..",
            "/task/%2e%2e",
            "/task/a%2Fb",
            "/task/a%20b",
            "/task/a.b",
            "/task/a_b",
            "/task/é",
            "/task/../admin",
            "/api/task/a;b",
            "/task/a%00",
        ] {
            assert_eq!(parse(path), Route::BadId(Kind::Task), "{path}");
        }
        let longest = "a".repeat(MAX_ID_LEN);
        assert_eq!(
            parse(&format!("/task/{longest}")),
            Route::Read(task(&longest))
        );
        assert_eq!(
            parse(&format!("/task/{longest}a")),
            Route::BadId(Kind::Task)
        );
    }

    #[test]
    fn other_paths_are_not_found() {
        for path in [
            "/",
            "/task",
            "/tasks/abc",
            "/api/task",
            "/task/abc/",
            "/task/abc/other",
            "/task/abc/events/x",
            "/metrics",
            "/healthz",
            "//task/abc",
            "/webhooks/livepeer/",
        ] {
            assert_eq!(parse(path), Route::NotFound, "{path}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parse_never_panics_and_only_valid_ids_are_routed(path in "\\PC{0,100}") {
            if let Some(id) = parse(&path).id() {
                prop_assert!(is_valid_id(id));
                prop_assert!(!path.contains('%') && !path.contains(".."));
            }
        }

        #[test]
        fn a_task_route_is_exactly_prefix_plus_id(
            id in "[A-Za-z0-9-]{1,64}",
            api in any::<bool>(),
            events in any::<bool>(),
        ) {
            let prefix = if api { "/api/task/" } else { "/task/" };
            let suffix = if events { "/events" } else { "" };
            let path = format!("{prefix}{id}{suffix}");
            let key = Key::new(Kind::Task, &id).unwrap();
            let expected = if events { Route::Events(key) } else { Route::Read(key) };
            prop_assert_eq!(parse(&path), expected);
        }

        #[test]
        fn any_byte_outside_the_id_alphabet_makes_a_bad_id(
            left in "[A-Za-z0-9-]{0,20}",
            bad in "[^A-Za-z0-9/-]",
            right in "[A-Za-z0-9-]{0,20}",
        ) {
            let path = format!("/task/{left}{bad}{right}");
            prop_assert_eq!(parse(&path), Route::BadId(Kind::Task));
        }
    }
}
