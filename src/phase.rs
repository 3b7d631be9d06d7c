//! `status.phase` of a task body, and what each phase means for caching.
//!
//! Only `completed` cannot be changed through the API; `failed` and `cancelled` can be retried
//! (LIVEPEER-API.md §1.5), so they are cached for a shorter time. Everything else is unfinished.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Waiting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    /// Every phase the API defines.
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Waiting,
        Phase::Running,
        Phase::Completed,
        Phase::Failed,
        Phase::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Waiting => "waiting",
            Phase::Running => "running",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Phase::Pending,
            "waiting" => Phase::Waiting,
            "running" => Phase::Running,
            "completed" => Phase::Completed,
            "failed" => Phase::Failed,
            "cancelled" => Phase::Cancelled,
            _ => return None,
        })
    }

    /// A finished task will not move again by itself (a manual retry aside).
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }
}

// Deserialising only the path we need skips the rest of the body without building a tree.
#[derive(Deserialize)]
struct TaskView<'a> {
    #[serde(borrow)]
    status: Option<StatusView<'a>>,
}

#[derive(Deserialize)]
struct StatusView<'a> {
    #[serde(borrow)]
    phase: Option<std::borrow::Cow<'a, str>>,
}

/// The phase of a task body, or `None` when the body is not a JSON object with a known
/// `status.phase` (such an answer is passed through, never cached).
pub fn extract(body: &[u8]) -> Option<Phase> {
    let view: TaskView<'_> = serde_json::from_slice(body).ok()?;
    Phase::from_str(&view.status?.phase?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_recognised() {
        for phase in Phase::ALL {
            let body = format!(
                r#"{{"id":"t","status":{{"phase":"{}","updatedAt":1}}}}"#,
                phase.as_str()
            );
            assert_eq!(extract(body.as_bytes()), Some(phase));
        }
    }

    #[test]
    fn only_terminal_phases_are_finished() {
        assert!(Phase::Completed.is_finished());
        assert!(Phase::Failed.is_finished());
        assert!(Phase::Cancelled.is_finished());
        assert!(!Phase::Pending.is_finished());
        assert!(!Phase::Waiting.is_finished());
        assert!(!Phase::Running.is_finished());
    }

    #[test]
    fn bodies_without_a_known_phase_have_none() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            b"null",
            b"{}",
            br#"{"status":null}"#,
            br#"{"status":{}}"#,
            br#"{"status":{"phase":7}}"#,
            br#"{"status":{"phase":"done"}}"#,
            br#"{"status":{"phase":"Completed"}}"#,
            br#"{"status":"completed"}"#,
            b"\xff\xfe{",
        ] {
            assert_eq!(extract(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escaped_phase_strings_and_key_order_do_not_matter() {
        let body = br#"{"output":{"status":{"phase":"running"}},"status":{"updatedAt":1,"phase":"complet\u0065d"}}"#;
        assert_eq!(extract(body), Some(Phase::Completed));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn extract_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = extract(&body);
        }

        #[test]
        fn the_phase_is_found_whatever_surrounds_it(
            i in 0..Phase::ALL.len(),
            before in proptest::collection::btree_map("[a-z]{1,8}", "[ -~&&[^\"\\\\]]{0,16}", 0..5),
            progress in proptest::option::of(0.0f64..1.0),
        ) {
            let phase = Phase::ALL[i];
            let mut task = serde_json::Map::new();
            for (k, v) in before {
                if k != "status" {
                    task.insert(k, serde_json::Value::String(v));
                }
            }
            let mut status = serde_json::json!({"phase": phase.as_str(), "updatedAt": 1});
            if let Some(p) = progress {
                status["progress"] = p.into();
            }
            task.insert("status".into(), status);
            let body = serde_json::to_vec(&task).unwrap();
            prop_assert_eq!(extract(&body), Some(phase));
        }
    }
}
