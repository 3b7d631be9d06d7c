//! The public routes, recognised on the raw request path.
//!
//! The id is checked on the path exactly as the client sent it, before any percent-decoding,
//! so `%2e%2e`, `%2F` and friends can never turn into a different upstream path: an id is
//! `^[A-Za-z0-9-]{1,64}$` or the request is refused.

/// Longest task id accepted (Studio ids are 36-character UUIDs).
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/task/{id}` or `/api/task/{id}`.
    Task(&'a str),
    /// `/task/{id}/events` or `/api/task/{id}/events`.
    TaskEvents(&'a str),
    /// `/webhooks/livepeer`.
    Webhook,
    /// A task path whose id is not a valid id: 400.
    BadId,
    /// Anything else: 404.
    NotFound,
}

impl Route<'_> {
    /// The route's name for logs and metric labels: never holds the id.
    pub fn as_str(&self) -> &'static str {
        match self {
            Route::Task(_) => "task",
            Route::TaskEvents(_) => "task_events",
            Route::Webhook => "webhook",
            Route::BadId => "bad_id",
            Route::NotFound => "not_found",
        }
    }

    pub fn task_id(&self) -> Option<&str> {
        match self {
            Route::Task(id) | Route::TaskEvents(id) => Some(id),
            _ => None,
        }
    }
}

/// Classifies a raw path (no query string: `Uri::path()` never includes one).
pub fn parse(path: &str) -> Route<'_> {
    if path == "/webhooks/livepeer" {
        return Route::Webhook;
    }
    let rest = match path
        .strip_prefix("/api/task/")
        .or_else(|| path.strip_prefix("/task/"))
    {
        Some(rest) => rest,
        None => return Route::NotFound,
    };
    let (id, events) = match rest.split_once('/') {
        None => (rest, false),
        Some((id, "events")) => (id, true),
        // `/task/{id}/anything-else`: either a bad id (`..`, `.`) or an unknown sub-route.
        Some((id, _)) if !is_valid_id(id) => return Route::BadId,
        Some(_) => return Route::NotFound,
    };
    match (is_valid_id(id), events) {
        (false, _) => Route::BadId,
        (true, false) => Route::Task(id),
        (true, true) => Route::TaskEvents(id),
    }
}

pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_paths_with_and_without_api_prefix() {
        assert_eq!(parse("/task/abc-123"), Route::Task("abc-123"));
        assert_eq!(parse("/api/task/abc-123"), Route::Task("abc-123"));
        assert_eq!(parse("/task/abc/events"), Route::TaskEvents("abc"));
        assert_eq!(parse("/api/task/abc/events"), Route::TaskEvents("abc"));
        assert_eq!(parse("/webhooks/livepeer"), Route::Webhook);
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
            assert_eq!(parse(path), Route::BadId, "{path}");
        }
        let longest = "a".repeat(MAX_ID_LEN);
        assert_eq!(parse(&format!("/task/{longest}")), Route::Task(&longest));
        assert_eq!(parse(&format!("/task/{longest}a")), Route::BadId);
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
            if let Some(id) = parse(&path).task_id() {
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
            let expected = if events { Route::TaskEvents(&id) } else { Route::Task(&id) };
            prop_assert_eq!(parse(&path), expected);
        }

        #[test]
        fn any_byte_outside_the_id_alphabet_makes_a_bad_id(
            left in "[A-Za-z0-9-]{0,20}",
            bad in "[^A-Za-z0-9/-]",
            right in "[A-Za-z0-9-]{0,20}",
        ) {
            let path = format!("/task/{left}{bad}{right}");
            prop_assert_eq!(parse(&path), Route::BadId);
        }
    }
}
