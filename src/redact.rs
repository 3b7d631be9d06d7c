//! Scrubbing of secrets that Studio returns inside task bodies (LIVEPEER-API §1.7, §6).
//!
//! Studio cleans only a few fields for non-admin callers, and browsers poll through taskgate,
//! so [`redact`] runs once per upstream fetch, before the body is cached or hashed. It is on by
//! default; `TASKGATE_REDACT=false` turns it off (the body is then served as Studio sent it).
//!
//! What is scrubbed, and why:
//! - **Credentials in URLs, anywhere in the body** (including `output.*` and prose such as
//!   `status.errorMessage`): `scheme://user:pass@host` becomes `scheme://***:***@host` and
//!   `scheme://token@host` becomes `scheme://***@host`. This covers the web3.storage proof in
//!   `params["transcode-file"].storage.url` (`w3s://<proof>@/` becomes `w3s://***@/`), which
//!   Studio's own cleaning misses, and `user:pass@` in `params.upload.url`. The userinfo is only
//!   what sits between `://` and the first `/`, `?`, `#` or whitespace, so an `@` in a path or
//!   query is left alone.
//! - **Query strings and fragments of URLs under `params`** are dropped, keeping scheme, host and
//!   path: user-supplied source and destination URLs carry presigned signatures
//!   (`X-Amz-Signature`, `X-Amz-Credential`) and tokens (`?token=`). Outside `params` they are
//!   kept (IPFS gateway URLs are public), and so is `params.exportData.content`: an attestation
//!   is public by design and a changed message would no longer match its signature.
//! - **`params.export.custom.headers`**: every value becomes `"***"` (names are kept); these are
//!   headers such as `Authorization` that taskgate's caller sends to the export destination.
//! - **`params.export.ipfs.pinata` and `params.exportData.ipfs.pinata`**: `jwt`, `apiSecret` and
//!   `apiKey` become `"***"` (writeOnly in Studio's schema, but returned, §1.7).
//! - **`params.upload.encryption`**: `key` and `encryptedKey` become `"***"` (Studio already
//!   masks `key` and drops `encryptedKey`; this guards against that changing).
//!
//! Guarantees: the body stays valid for the official SDKs' schemas. Only string values are ever
//! changed, and they stay strings: no field is removed or becomes `null`, numbers and booleans
//! are untouched. Values already masked (`***`, `s3+https://***:***@host`) are left as they
//! are, so redacting twice changes nothing. A body that is not a JSON object is left alone.

use bytes::Bytes;
use serde_json::{Map, Value};

/// What a masked value or userinfo is replaced with.
const MASK: &str = "***";

/// Scrubs one task body. `Some(body)` when something was changed; `None` when nothing needed
/// to change or the body is not a JSON object, in which case the caller serves the original
/// bytes. Never panics.
pub fn redact(body: &[u8]) -> Option<Bytes> {
    // No byte-level pre-check: JSON may spell a key or `://` with escapes (`:\/\/`,
    // `pin\u0061ta`), which a substring search would miss. Parsing a task body is cheap and
    // happens once per upstream fetch, not per hit.
    let mut task: Value = serde_json::from_slice(body).ok()?;
    let task_fields = task.as_object_mut()?;
    let mut changed = false;
    for (name, value) in task_fields.iter_mut() {
        changed |= match name.as_str() {
            "params" => scrub_params(value),
            _ => walk_strings(value, &mut mask_userinfo),
        };
    }
    // Serialise only when something changed, so untouched bodies keep their exact bytes.
    changed.then(|| Bytes::from(task.to_string()))
}

/// `params`: the user's own input, where the named credential fields and presigned URLs live.
fn scrub_params(params: &mut Value) -> bool {
    let mut changed = false;
    if let Some(headers) = params.pointer_mut("/export/custom/headers") {
        if let Some(headers) = headers.as_object_mut() {
            for value in headers.values_mut() {
                changed |= mask(value);
            }
        }
    }
    for pinata in ["/export/ipfs/pinata", "/exportData/ipfs/pinata"] {
        changed |= mask_fields(params.pointer_mut(pinata), &["jwt", "apiSecret", "apiKey"]);
    }
    let encryption = params.pointer_mut("/upload/encryption");
    changed |= mask_fields(encryption, &["key", "encryptedKey"]);

    let Some(kinds) = params.as_object_mut() else {
        return changed | walk_strings(params, &mut mask_userinfo);
    };
    for (kind, kind_params) in kinds.iter_mut() {
        changed |= match (kind.as_str(), kind_params.as_object_mut()) {
            ("exportData", Some(fields)) => scrub_export_data(fields),
            _ => walk_strings(kind_params, &mut clean_param_url),
        };
    }
    changed
}

/// `params.exportData`: like the rest of `params`, except the signed attestation `content`,
/// whose query strings must stay so its signature still verifies.
fn scrub_export_data(fields: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in fields.iter_mut() {
        changed |= match name.as_str() {
            "content" => walk_strings(value, &mut mask_userinfo),
            _ => walk_strings(value, &mut clean_param_url),
        };
    }
    changed
}

/// Masks the named fields of `object`, if it is an object and they are strings.
fn mask_fields(object: Option<&mut Value>, names: &[&str]) -> bool {
    let Some(Value::Object(object)) = object else {
        return false;
    };
    let mut changed = false;
    for name in names {
        if let Some(value) = object.get_mut(*name) {
            changed |= mask(value);
        }
    }
    changed
}

/// Replaces a string with [`MASK`]; other values are never changed.
fn mask(value: &mut Value) -> bool {
    match value {
        Value::String(s) if s != MASK => {
            *s = MASK.to_owned();
            true
        }
        _ => false,
    }
}

/// Calls `edit` on every string in `value` (not on object keys); true if any was changed.
/// Recursion depth is bounded by serde_json's nesting limit (128) on the parsed input.
fn walk_strings(value: &mut Value, edit: &mut impl FnMut(&mut String) -> bool) -> bool {
    match value {
        Value::String(s) => edit(s),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| walk_strings(item, edit) | changed),
        Value::Object(fields) => fields
            .values_mut()
            .fold(false, |changed, item| walk_strings(item, edit) | changed),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A string under `params`: if it is a URL, drop its query and fragment; then mask userinfo.
fn clean_param_url(s: &mut String) -> bool {
    let mut changed = false;
    if let Some(authority_start) = url_authority_start(s) {
        if let Some(cut) = s[authority_start..].find(['?', '#']) {
            s.truncate(authority_start + cut);
            changed = true;
        }
    }
    changed | mask_userinfo(s)
}

/// If the whole string starts like a URL (`scheme://`, scheme `[a-zA-Z][a-zA-Z0-9+.-]*`),
/// the byte offset just past `://`.
fn url_authority_start(s: &str) -> Option<usize> {
    let sep = s.find("://")?;
    let scheme = &s.as_bytes()[..sep];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme.iter().copied().all(is_scheme_byte);
    valid.then_some(sep + 3)
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-')
}

/// Masks the userinfo of every `scheme://userinfo@host` in the string, whether the string is a
/// URL or prose that quotes one. True if the string was changed.
fn mask_userinfo(s: &mut String) -> bool {
    let mut out = String::new();
    let mut copied = 0; // bytes of `s` already copied to `out`
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let sep = from + found;
        let authority_start = sep + 3;
        let rest = &s[authority_start..];
        let authority_len = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        // A scheme (letters, digits, `+.-`) ends right before `://`. In prose it may be glued
        // to earlier text, so any such run that holds a letter counts.
        let has_scheme = s[..sep]
            .bytes()
            .rev()
            .take_while(|b| is_scheme_byte(*b))
            .any(|b| b.is_ascii_alphabetic());
        // The last `@` ends the userinfo, as browsers parse it: a password may hold an `@`.
        if let Some(at) = rest[..authority_len].rfind('@').filter(|_| has_scheme) {
            let userinfo = &rest[..at];
            let masked = if userinfo.contains(':') {
                "***:***"
            } else {
                MASK
            };
            if !userinfo.is_empty() && userinfo != masked {
                out.push_str(&s[copied..authority_start]);
                out.push_str(masked);
                copied = authority_start + at;
            }
        }
        // Resume right after this `://`: an authority ending in `:` may start another one.
        from = authority_start;
    }
    if out.is_empty() {
        return false; // nothing masked: leave the string as it is
    }
    out.push_str(&s[copied..]);
    *s = out;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The redacted body as JSON, or the input itself when `redact` changed nothing.
    fn redacted(body: &Value) -> Value {
        match redact(body.to_string().as_bytes()) {
            Some(out) => serde_json::from_slice(&out).expect("redact returns JSON"),
            None => body.clone(),
        }
    }

    /// The string at a JSON pointer, for short assertions.
    fn at<'a>(body: &'a Value, pointer: &str) -> &'a str {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("<not a string>")
    }

    /// Same shape: same keys, same array lengths, strings stay strings, non-strings unchanged.
    fn assert_same_shape(before: &Value, after: &Value) {
        match (before, after) {
            (Value::String(_), Value::String(_)) => {}
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len());
                a.iter().zip(b).for_each(|(a, b)| assert_same_shape(a, b));
            }
            (Value::Object(a), Value::Object(b)) => {
                assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
                a.iter().for_each(|(k, v)| assert_same_shape(v, &b[k]));
            }
            (a, b) => assert_eq!(a, b, "non-string values are never changed"),
        }
    }

    // Bodies from LIVEPEER-API §5, trimmed to the fields that matter here.
    fn custom_export() -> Value {
        json!({
          "id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "type": "export",
          "userId": "2b7e1516-28ae-4d2a-a6ab-f7158809cf4f", "createdAt": 1717002000000_u64,
          "params": { "export": { "custom": {
            "url": "https://my-bucket.s3.amazonaws.com/path/file.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA...&X-Amz-Signature=abc",
            "method": "PUT",
            "headers": { "Authorization": "Bearer customer-secret", "X-Retries": 3 } } } },
          "status": { "phase": "completed", "updatedAt": 1717002040000_u64 },
          "output": { "export": { "ipfs": { "videoFileCid": "" } } }
        })
    }

    fn ipfs_export() -> Value {
        json!({
          "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "type": "export",
          "params": { "export": { "ipfs": { "nftMetadata": { "a": "b" },
            "pinata": { "jwt": "eyJhbGciOi...SECRET", "apiKey": "k", "apiSecret": "s" } } } },
          "status": { "phase": "completed", "updatedAt": 1717001030000_u64, "progress": 1.0 },
          "output": { "export": { "ipfs": {
            "videoFileCid": "bafybeihhhndfxtursaadlvhuptet6zqni4uhg7ornjtlp5qwngv33ipv6m",
            "videoFileUrl": "ipfs://bafybeihhhndfxtursaadlvhuptet6zqni4uhg7ornjtlp5qwngv33ipv6m",
            "videoFileGatewayUrl": "https://ipfs.livepeer.studio/ipfs/bafybeih?filename=a.mp4" } } }
        })
    }

    fn transcode_w3s() -> Value {
        json!({
          "id": "5b6c7d8e-9f0a-4b1c-8d2e-3f4a5b6c7d8e", "type": "transcode-file",
          "params": { "transcode-file": {
            "input":   { "url": "s3+https://***:***@inendpoint.com/inbucket/input/video.mp4" },
            "storage": { "url": "w3s://EaJlcm9vdHOAZ3Zl@/" },
            "outputs": { "hls": { "path": "/output/hls" } } } },
          "status": { "phase": "waiting", "updatedAt": 1717004000010_u64, "retries": 0 },
          "output": null
        })
    }

    fn upload(url: &str) -> Value {
        json!({
          "id": "6f1c0c2e-3d5a-4b8e-9a0f-1e2d3c4b5a69", "type": "upload",
          "params": { "upload": { "url": url, "thumbnails": true,
                                  "encryption": { "key": "k3y", "encryptedKey": "***" } } },
          "status": { "phase": "waiting", "updatedAt": 1717000000020_u64, "retries": 0 }
        })
    }

    fn all_secret_bodies() -> [Value; 4] {
        let url = "ftp://u:p@x.example/a?token=1";
        [custom_export(), ipfs_export(), transcode_w3s(), upload(url)]
    }

    #[test]
    fn custom_export_loses_its_signature_and_header_values() {
        let out = redacted(&custom_export());
        let custom = &out["params"]["export"]["custom"];
        let url = "https://my-bucket.s3.amazonaws.com/path/file.mp4";
        assert_eq!(at(custom, "/url"), url);
        assert_eq!(at(custom, "/headers/Authorization"), "***");
        assert_eq!(custom["headers"]["X-Retries"], 3, "not a string");
        assert_eq!(at(custom, "/method"), "PUT");
    }

    #[test]
    fn pinata_credentials_are_masked_and_ipfs_output_is_kept() {
        let before = ipfs_export();
        let out = redacted(&before);
        let ipfs = &out["params"]["export"]["ipfs"];
        for field in ["jwt", "apiKey", "apiSecret"] {
            assert_eq!(ipfs["pinata"][field], "***");
        }
        assert_eq!(ipfs["nftMetadata"], json!({"a": "b"}));
        assert_eq!(out["output"], before["output"], "public");
    }

    #[test]
    fn w3s_proof_is_masked_and_studio_masked_s3_url_is_left() {
        let out = redacted(&transcode_w3s());
        let params = &out["params"]["transcode-file"];
        assert_eq!(at(params, "/storage/url"), "w3s://***@/");
        let input = "s3+https://***:***@inendpoint.com/inbucket/input/video.mp4";
        assert_eq!(at(params, "/input/url"), input);
        assert_eq!(out["output"], Value::Null, "a null stays null");
    }

    #[test]
    fn upload_url_loses_userinfo_and_token_query_and_encryption_key() {
        let url = "https://user:pa@ss@example.com/v.mp4?token=abc#t=1";
        let out = redacted(&upload(url));
        let want = "https://***:***@example.com/v.mp4";
        assert_eq!(at(&out, "/params/upload/url"), want);
        assert_eq!(at(&out, "/params/upload/encryption/key"), "***");
        let out = redacted(&upload("https://example.com/v.mp4?token=abc"));
        assert_eq!(at(&out, "/params/upload/url"), "https://example.com/v.mp4");
    }

    #[test]
    fn credentials_outside_params_are_masked_but_queries_kept() {
        let body = json!({ "id": "x",
            "status": { "phase": "failed", "updatedAt": 1,
                        "errorMessage": "error downloading https://tok@h.example/a.mp4: 403" },
            "output": { "clip": { "url": "https://u:p@cdn.example/c.m3u8?sig=public",
                                  "odd": "https://x://u:p@h/" } } });
        let out = redacted(&body);
        let message = "error downloading https://***@h.example/a.mp4: 403";
        assert_eq!(at(&out, "/status/errorMessage"), message);
        let clip = "https://***:***@cdn.example/c.m3u8?sig=public";
        assert_eq!(at(&out, "/output/clip/url"), clip);
        assert_eq!(at(&out, "/output/clip/odd"), "https://x://***:***@h/");
    }

    #[test]
    fn at_sign_in_path_or_query_is_not_userinfo() {
        let url = "https://example.com/users/@alice/v.mp4?by=a@b.example";
        let body = json!({ "id": "x", "output": { "upload": { "source": url } } });
        assert_eq!(redact(body.to_string().as_bytes()), None);
        let out = redacted(&upload(url));
        let want = "https://example.com/users/@alice/v.mp4";
        assert_eq!(at(&out, "/params/upload/url"), want);
    }

    #[test]
    fn attestation_content_keeps_its_query_strings() {
        let body = json!({ "id": "x", "type": "export-data",
            "params": { "exportData": { "ipfs": { "pinata": { "jwt": "j" } },
                "content": { "message": { "video": "https://v.example/a?x=1" },
                             "signature": "0xa76d" } } } });
        let out = &redacted(&body)["params"]["exportData"];
        assert_eq!(at(out, "/content/message/video"), "https://v.example/a?x=1");
        assert_eq!(at(out, "/ipfs/pinata/jwt"), "***");
    }

    #[test]
    fn a_body_with_only_public_fields_needs_no_change() {
        let body = json!({
          "id": "7d8e9f0a-1b2c-4d3e-8f4a-5b6c7d8e9f0a", "type": "clip",
          "userId": "2b7e1516-28ae-4d2a-a6ab-f7158809cf4f", "createdAt": 1717005000000_u64,
          "params": { "clip": { "url": "https://recordings-cdn.example/hls/abcd/output.m3u8",
            "clipStrategy": { "playbackId": "abcd", "startTime": 1717004900000_u64 } },
            "exportData": { "content": { "video": "ipfs://bafybeih" } } },
          "status": { "phase": "running", "updatedAt": 1717005010000_u64, "progress": 0.45 }
        });
        assert_eq!(redact(body.to_string().as_bytes()), None);
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for body in all_secret_bodies() {
            let once = redact(body.to_string().as_bytes()).expect("has secrets");
            assert_eq!(redact(&once), None, "{}", String::from_utf8_lossy(&once));
        }
    }

    #[test]
    fn no_field_becomes_null_and_strings_stay_strings() {
        for body in all_secret_bodies() {
            assert_same_shape(&body, &redacted(&body));
        }
    }

    #[test]
    fn non_objects_and_non_json_are_left_alone() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"not json https://u:p@h/",
            br#"["https://u:p@h/"]"#,
            br#""https://u:p@h/""#,
            b"42",
            b"null",
            br#"{"params": "#,
        ];
        for body in bodies {
            assert_eq!(redact(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escaped_json_is_still_scrubbed() {
        let body = br#"{"params":{"export":{"ipfs":{"pin\u0061ta":{"jwt":"j"}}},"upload":{"url":"https:\/\/u:p@h\/x"}}}"#;
        let out: Value = serde_json::from_slice(&redact(body).expect("scrubbed")).unwrap();
        assert_eq!(at(&out, "/params/export/ipfs/pinata/jwt"), "***");
        assert_eq!(at(&out, "/params/upload/url"), "https://***:***@h/x");
    }

    #[test]
    fn only_valid_schemes_are_urls() {
        for s in [
            "://u:p@h/",
            "1http://h/?q",
            "not a url ?q",
            "ipfs://bafy",
            "mailto:a@b",
        ] {
            assert_eq!(at(&redacted(&upload(s)), "/params/upload/url"), s);
        }
    }

    #[test]
    fn generated_strings_never_panic_and_stay_idempotent() {
        // A fixed xorshift walk over characters that matter to the parser, multi-byte included.
        let alphabet: Vec<char> = "ab1+.-:/@?# é€".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = next() % 24;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for edit in [clean_param_url as fn(&mut String) -> bool, mask_userinfo] {
                let mut once = s.clone();
                edit(&mut once);
                let mut twice = once.clone();
                assert!(!edit(&mut twice), "{s:?} → {once:?} → {twice:?}");
            }
        }
    }
}
