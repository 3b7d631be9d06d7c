//! Assets: `status.phase` of an asset body (`uploading`, `waiting`, `processing`, `ready`,
//! `failed`, `deleting`, `deleted`), and what each phase means for caching.
//!
//! No asset phase is final. `ready` changes through `PATCH /asset/{id}`, an IPFS export (its
//! progress is in `storage.status`) and deletion (the asset then answers 404), so it is kept
//! for `TTL_ASSET_READY` (short by default). `failed` can be retried (`POST /asset/{id}/retry`)
//! and is kept for `TTL_FAILED`, as failed tasks are. Both count as finished: a watch ends
//! after sending them, and they may be served stale when the API fails. `uploading`,
//! `waiting` and `processing` are unfinished (and can stick forever); `deleting` and
//! `deleted` are never shown to a non-admin caller (a deleted asset answers 404) and are
//! passed through if they ever are.

use super::Lifetime;

/// Webhook events that say an asset changed; the id is at `payload.asset.id` (also for
/// Studio's older flattened `asset.ready`/`asset.failed` payloads).
pub(super) const CHANGE_EVENTS: [&str; 5] = [
    "asset.created",
    "asset.updated",
    "asset.ready",
    "asset.failed",
    "asset.deleted",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetPhase {
    Uploading,
    Waiting,
    Processing,
    Ready,
    Failed,
    Deleting,
    Deleted,
}

impl AssetPhase {
    /// Every phase the API defines (`api-schema.yaml`, and each SDK's `AssetPhase`).
    pub const ALL: [AssetPhase; 7] = [
        AssetPhase::Uploading,
        AssetPhase::Waiting,
        AssetPhase::Processing,
        AssetPhase::Ready,
        AssetPhase::Failed,
        AssetPhase::Deleting,
        AssetPhase::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AssetPhase::Uploading => "uploading",
            AssetPhase::Waiting => "waiting",
            AssetPhase::Processing => "processing",
            AssetPhase::Ready => "ready",
            AssetPhase::Failed => "failed",
            AssetPhase::Deleting => "deleting",
            AssetPhase::Deleted => "deleted",
        }
    }

    pub(super) fn from_str(s: &str) -> Option<Self> {
        AssetPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub(super) fn lifetime(self) -> Lifetime {
        match self {
            AssetPhase::Ready => Lifetime::AssetReady,
            AssetPhase::Failed => Lifetime::Failed,
            AssetPhase::Uploading
            | AssetPhase::Waiting
            | AssetPhase::Processing
            | AssetPhase::Deleting
            | AssetPhase::Deleted => Lifetime::Unfinished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Kind, Phase};

    #[test]
    fn every_phase_is_recognised_from_bytes_and_from_a_tree() {
        for phase in AssetPhase::ALL {
            let body = format!(
                r#"{{"id":"a","name":"v.mp4","source":{{"type":"directUpload"}},"status":{{"phase":"{}","updatedAt":1}}}}"#,
                phase.as_str()
            );
            assert_eq!(
                Kind::Asset.phase(body.as_bytes()),
                Some(Phase::Asset(phase))
            );
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                Kind::Asset.phase_of_value(&value),
                Some(Phase::Asset(phase))
            );
        }
    }

    #[test]
    fn ready_and_failed_are_finished_with_their_own_lifetimes() {
        assert_eq!(AssetPhase::Ready.lifetime(), Lifetime::AssetReady);
        assert_eq!(AssetPhase::Failed.lifetime(), Lifetime::Failed);
        for phase in AssetPhase::ALL {
            let finished = matches!(phase, AssetPhase::Ready | AssetPhase::Failed);
            assert_eq!(Phase::Asset(phase).is_finished(), finished, "{phase:?}");
        }
    }

    #[test]
    fn task_phases_are_not_asset_phases_and_the_other_way_round() {
        for (kind, phase) in [
            (Kind::Asset, "completed"),
            (Kind::Asset, "running"),
            (Kind::Asset, "Ready"),
            (Kind::Task, "ready"),
            (Kind::Task, "uploading"),
        ] {
            let body = format!(r#"{{"status":{{"phase":"{phase}","updatedAt":1}}}}"#);
            assert_eq!(kind.phase(body.as_bytes()), None, "{kind} {phase}");
        }
        // `storage.status.phase` (an IPFS export) is not the asset's phase.
        let body = br#"{"storage":{"status":{"phase":"ready"}},"status":{"phase":"processing","updatedAt":1}}"#;
        assert_eq!(
            Kind::Asset.phase(body),
            Some(Phase::Asset(AssetPhase::Processing))
        );
    }

    #[test]
    fn asset_events_name_assets_only() {
        for event in CHANGE_EVENTS {
            assert!(Kind::Asset.changed_by(event));
            assert!(!Kind::Task.changed_by(event));
        }
        assert!(!Kind::Asset.changed_by("task.updated"));
        assert!(!Kind::Asset.changed_by("stream.started"));
    }
}
