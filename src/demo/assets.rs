//! The simulated assets of `taskgate --demo`: bodies with the shapes a
//! non-admin `GET /api/asset/{id}` returns, moving with the same [`Timeline`] as the tasks.
//!
//! - a direct upload: `uploading` (the browser sends the file) → `waiting` → `processing` with
//!   rising progress, `playbackUrl` from half way (source playback ready) → `ready` with
//!   `downloadUrl`, `size` and `videoSpec`;
//! - a url import that fails: `waiting` → `processing` → `failed` with an `errorMessage`; its
//!   `source.url` is presigned (taskgate drops the query);
//! - an encrypted, webhook-gated upload: `source.encryption` carries the real `encryptedKey`
//!   beside Studio's decoy `key: "***"`, `playbackPolicy.webhookContext` developer data and
//!   `storage.ipfs.spec.nftMetadata` a presigned image URL (taskgate masks all three);
//! - a deleted asset: 404 `Asset not found`. Any other id answers 404 `not found`, as Studio
//!   does for an asset of another project; taskgate answers both with one generic body.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Timeline, PROGRESS_STEPS, PROJECT_ID, USER_ID};

pub const UPLOAD_ASSET_ID: &str = "0d4e5f6a-7b8c-4d9e-a0f1-b2c3d4e5f607";
pub const FAILED_ASSET_ID: &str = "5c6d7e8f-9a0b-4c1d-8e2f-3a4b5c6d7e8f";
pub const ENCRYPTED_ASSET_ID: &str = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";
pub const DELETED_ASSET_ID: &str = "9f0a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c";

/// How an asset starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// `uploading` → `waiting` → `processing` → `ready`.
    DirectUpload,
    /// `waiting` → `processing` → `failed` half way.
    FailedImport,
    /// `waiting` → `processing` → `ready`.
    Encrypted,
}

/// One simulated asset.
#[derive(Debug)]
pub struct DemoAsset {
    pub id: &'static str,
    /// One line on what it does over time and what it shows.
    pub about: &'static str,
    flow: Flow,
    name: &'static str,
    playback_id: &'static str,
    /// `source`, and any other fields that never change.
    fixed: fn() -> Value,
}

/// The simulated assets that exist, in the order the demo presents them.
pub fn assets() -> &'static [DemoAsset] {
    &ASSETS
}

static ASSETS: [DemoAsset; 3] = [
    DemoAsset {
        id: UPLOAD_ASSET_ID,
        about: "direct upload: uploading, waiting, processing with rising progress and a \
                playbackUrl, then ready with a downloadUrl",
        flow: Flow::DirectUpload,
        name: "my-video.mp4",
        playback_id: "0d4ek2vf1xpm8r7q",
        fixed: || json!({"source": {"type": "directUpload"}}),
    },
    DemoAsset {
        id: FAILED_ASSET_ID,
        about: "url import that fails; its presigned source.url loses its query",
        flow: Flow::FailedImport,
        name: "broken.mkv",
        playback_id: "5c6dw1a9zq3n0b2k",
        fixed: || {
            json!({"source": {"type": "url", "url": concat!(
                "https://my-bucket.s3.amazonaws.com/in/broken.mkv",
                "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600",
                "&X-Amz-Credential=AKIADEMO%2F20240529%2Fus-east-1%2Fs3%2Faws4_request",
                "&X-Amz-Signature=d3m0516na7e")}})
        },
    },
    DemoAsset {
        id: ENCRYPTED_ASSET_ID,
        about: "encrypted, webhook-gated upload: taskgate masks encryptedKey and webhookContext",
        flow: Flow::Encrypted,
        name: "private.mp4",
        playback_id: "3e4fq8w2mz7k1c5d",
        fixed: || {
            json!({"source": {"type": "directUpload", "encryption": {
                       "key": "***",
                       "encryptedKey": "ZGVtby1lbmNyeXB0ZWQtYWVzLWtleS1ub3QtYS1zZWNyZXQ="}},
                   "playbackPolicy": {"type": "webhook",
                       "webhookId": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                       "webhookContext": {"customer": "acme-corp", "plan": "gold",
                                          "seats": 25}},
                   // Requested at creation (`storage.ipfs.spec`): developer-supplied metadata.
                   "storage": {"ipfs": {"spec": {"nftMetadataTemplate": "file",
                       "nftMetadata": {"name": "Private video", "image": concat!(
                           "https://img.example/private.png",
                           "?X-Amz-Expires=600&X-Amz-Signature=d3m0516na7e")}}}}})
        },
    },
];

/// Where the simulated object store serves playback and downloads.
const CDN: &str =
    "https://vod-cdn.lp-playback.studio/raw/jxf4iblf6wlsyor6526t4tcmtmqa/catalyst-vod-com/hls";

impl DemoAsset {
    /// The non-admin body `elapsed` after the asset's clock started at `origin_ms` (Unix ms).
    pub(super) fn body_at(&self, timeline: &Timeline, elapsed: Duration, origin_ms: u64) -> Value {
        let at = |offset: Duration| origin_ms.saturating_add(offset.as_millis() as u64);
        let mut body = (self.fixed)();
        let playback = format!("{CDN}/{}/index.m3u8", self.playback_id);
        let mut extra: Vec<(&str, Value)> = Vec::new();
        // The stretches before processing: (phase, length).
        let before: &[(&str, Duration)] = match self.flow {
            Flow::DirectUpload => &[
                ("uploading", timeline.waiting),
                ("waiting", timeline.waiting),
            ],
            Flow::FailedImport | Flow::Encrypted => &[("waiting", timeline.waiting)],
        };
        // A failed import gives up half way through processing.
        let processing = match self.flow {
            Flow::FailedImport => timeline.running / 2,
            Flow::DirectUpload | Flow::Encrypted => timeline.running,
        };
        let mut start = Duration::ZERO;
        let mut status = None;
        for (phase, length) in before {
            let end = start.saturating_add(*length);
            if elapsed < end {
                status = Some(json!({"phase": phase, "updatedAt": at(start)}));
                break;
            }
            start = end;
        }
        let status = match status {
            Some(status) => status,
            None if elapsed < start.saturating_add(processing) => {
                // Runner reports in tenths; the progress never goes down.
                let tenth = timeline.running / PROGRESS_STEPS;
                let done = ((elapsed - start).as_nanos() * u128::from(PROGRESS_STEPS)
                    / timeline.running.as_nanos().max(1))
                .min(u128::from(PROGRESS_STEPS - 1)) as u32;
                if done >= PROGRESS_STEPS / 2 && self.flow != Flow::FailedImport {
                    // Source playback is ready half way: `playbackUrl` appears.
                    extra.push(("playbackUrl", playback.clone().into()));
                }
                json!({"phase": "processing", "updatedAt": at(start + tenth * done),
                       "progress": f64::from(done) / f64::from(PROGRESS_STEPS)})
            }
            None => {
                let end = at(start.saturating_add(processing));
                match self.flow {
                    Flow::FailedImport => json!({"phase": "failed", "updatedAt": end,
                        "errorMessage": "invalid video file codec or container, check your \
                                         input file against the input codec and container \
                                         support matrix"}),
                    Flow::DirectUpload | Flow::Encrypted => {
                        extra.extend([
                            ("hash", Value::Null),
                            ("size", 84_934_509.into()),
                            (
                                "videoSpec",
                                json!({"format": "mp4", "bitrate": 1_128_000,
                                                 "duration": 23.8328}),
                            ),
                            (
                                "downloadUrl",
                                format!("{CDN}/{}/video/download.mp4", self.playback_id).into(),
                            ),
                            ("playbackUrl", playback.clone().into()),
                        ]);
                        json!({"phase": "ready", "updatedAt": end})
                    }
                }
            }
        };
        if let Value::Object(fields) = &mut body {
            fields.insert("id".into(), self.id.into());
            fields.insert("name".into(), self.name.into());
            fields.insert("status".into(), status);
            fields.insert("userId".into(), USER_ID.into());
            fields.insert("createdAt".into(), origin_ms.into());
            fields.insert("projectId".into(), PROJECT_ID.into());
            fields.insert("playbackId".into(), self.playback_id.into());
            fields.insert("createdByTokenName".into(), "web-backend".into());
            for (name, value) in extra {
                fields.insert(name.into(), value);
            }
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(id: &str) -> &'static DemoAsset {
        assets().iter().find(|a| a.id == id).unwrap()
    }

    /// (phase, progress, has playbackUrl, has downloadUrl) every 25 ms of the fast timeline.
    fn walk(id: &str) -> Vec<(String, Option<f64>, bool, bool)> {
        (0..=1200)
            .step_by(25)
            .map(|ms| {
                let body = asset(id).body_at(
                    &Timeline::fast(),
                    Duration::from_millis(ms),
                    1_717_000_000_000,
                );
                (
                    body["status"]["phase"].as_str().unwrap().to_owned(),
                    body["status"]["progress"].as_f64(),
                    body.get("playbackUrl").is_some(),
                    body.get("downloadUrl").is_some(),
                )
            })
            .collect()
    }

    fn phases(walk: &[(String, Option<f64>, bool, bool)]) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (phase, ..) in walk {
            if out.last() != Some(&phase.as_str()) {
                out.push(phase);
            }
        }
        out
    }

    #[test]
    fn the_direct_upload_moves_to_ready_with_playback_during_processing() {
        let w = walk(UPLOAD_ASSET_ID);
        assert_eq!(phases(&w), ["uploading", "waiting", "processing", "ready"]);
        let progress: Vec<f64> = w.iter().filter_map(|s| s.1).collect();
        assert!(
            progress.windows(2).all(|p| p[0] <= p[1]) && progress[0] < progress[progress.len() - 1]
        );
        assert!(
            w.iter().any(|s| s.0 == "processing" && s.2),
            "playbackUrl while processing"
        );
        assert!(
            w.iter().all(|s| s.3 == (s.0 == "ready")),
            "downloadUrl only when ready"
        );
        assert!(w.iter().all(|s| s.1.is_some() == (s.0 == "processing")));
    }

    #[test]
    fn the_import_fails_and_the_encrypted_upload_carries_what_taskgate_masks() {
        assert_eq!(
            phases(&walk(FAILED_ASSET_ID)),
            ["waiting", "processing", "failed"]
        );
        assert_eq!(
            phases(&walk(ENCRYPTED_ASSET_ID)),
            ["waiting", "processing", "ready"]
        );
        let body = asset(ENCRYPTED_ASSET_ID).body_at(&Timeline::fast(), Duration::ZERO, 0);
        assert!(body["source"]["encryption"]["encryptedKey"]
            .as_str()
            .is_some_and(|k| k != "***"));
        assert!(body["playbackPolicy"]["webhookContext"]["customer"].is_string());
        let failed = asset(FAILED_ASSET_ID).body_at(&Timeline::fast(), Duration::from_secs(5), 0);
        assert!(failed["status"]["errorMessage"].is_string());
        assert!(failed["source"]["url"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Signature="));
    }

    #[test]
    fn every_body_has_what_the_sdks_require() {
        for a in assets() {
            for ms in (0..=1200).step_by(25) {
                let body = a.body_at(&Timeline::fast(), Duration::from_millis(ms), 1);
                assert!(body["id"].is_string() && body["name"].is_string());
                assert!(body["source"]["type"].is_string());
                assert!(
                    body["status"]["phase"].is_string() && body["status"]["updatedAt"].is_u64()
                );
                // Only `hash` may be null (TS: `hash` and `playbackPolicy` are nullable).
                let nulls: Vec<_> = body
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(_, v)| v.is_null())
                    .map(|(k, _)| k.as_str())
                    .collect();
                assert!(nulls.iter().all(|k| *k == "hash"), "{nulls:?}");
            }
        }
    }
}
