//! Tasks: `status.phase` of a task body, and what each phase means for caching.
//!
//! Only `completed` cannot be changed through the API; `failed` and `cancelled` can be retried
//! (Studio's `POST /task/{id}/retry` works on both), so they are kept for a shorter time.
//! Everything else is unfinished.

use super::Lifetime;

/// Webhook events that say a task changed; the id is at `payload.task.id`.
pub(super) const CHANGE_EVENTS: [&str; 4] = [
    "task.spawned",
    "task.updated",
    "task.completed",
    "task.failed",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    Pending,
    Waiting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskPhase {
    /// Every phase the API defines.
    pub const ALL: [TaskPhase; 6] = [
        TaskPhase::Pending,
        TaskPhase::Waiting,
        TaskPhase::Running,
        TaskPhase::Completed,
        TaskPhase::Failed,
        TaskPhase::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "pending",
            TaskPhase::Waiting => "waiting",
            TaskPhase::Running => "running",
            TaskPhase::Completed => "completed",
            TaskPhase::Failed => "failed",
            TaskPhase::Cancelled => "cancelled",
        }
    }

    pub(super) fn from_str(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskPhase::Pending,
            "waiting" => TaskPhase::Waiting,
            "running" => TaskPhase::Running,
            "completed" => TaskPhase::Completed,
            "failed" => TaskPhase::Failed,
            "cancelled" => TaskPhase::Cancelled,
            _ => return None,
        })
    }

    pub(super) fn lifetime(self) -> Lifetime {
        match self {
            TaskPhase::Completed => Lifetime::Completed,
            TaskPhase::Failed | TaskPhase::Cancelled => Lifetime::Failed,
            TaskPhase::Pending | TaskPhase::Waiting | TaskPhase::Running => Lifetime::Unfinished,
        }
    }
}

/// The phase of a task body, or `None` when the body is not a JSON object with a known
/// `status.phase` (such an answer is passed through, never cached).
#[cfg(test)]
fn extract(body: &[u8]) -> Option<TaskPhase> {
    super::read_phase(body, TaskPhase::from_str)
}

/// [`extract`] on a parsed body.
#[cfg(test)]
fn from_value(body: &serde_json::Value) -> Option<TaskPhase> {
    super::value_phase(body, TaskPhase::from_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_is_recognised() {
        for phase in TaskPhase::ALL {
            let body = format!(
                r#"{{"id":"t","status":{{"phase":"{}","updatedAt":1}}}}"#,
                phase.as_str()
            );
            assert_eq!(extract(body.as_bytes()), Some(phase));
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(from_value(&value), Some(phase));
        }
    }

    #[test]
    fn only_terminal_phases_are_finished() {
        use crate::resource::Phase;
        assert!(Phase::Task(TaskPhase::Completed).is_finished());
        assert!(Phase::Task(TaskPhase::Failed).is_finished());
        assert!(Phase::Task(TaskPhase::Cancelled).is_finished());
        assert!(!Phase::Task(TaskPhase::Pending).is_finished());
        assert!(!Phase::Task(TaskPhase::Waiting).is_finished());
        assert!(!Phase::Task(TaskPhase::Running).is_finished());
        assert_eq!(TaskPhase::Completed.lifetime(), Lifetime::Completed);
        assert_eq!(TaskPhase::Cancelled.lifetime(), Lifetime::Failed);
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
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
                assert_eq!(
                    from_value(&value),
                    None,
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn escaped_phase_strings_and_key_order_do_not_matter() {
        let body = br#"{"output":{"status":{"phase":"running"}},"status":{"updatedAt":1,"phase":"complet\u0065d"}}"#;
        assert_eq!(extract(body), Some(TaskPhase::Completed));
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
            i in 0..TaskPhase::ALL.len(),
            before in proptest::collection::btree_map("[a-z]{1,8}", "[ -~&&[^\"\\\\]]{0,16}", 0..5),
            progress in proptest::option::of(0.0f64..1.0),
        ) {
            let phase = TaskPhase::ALL[i];
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
