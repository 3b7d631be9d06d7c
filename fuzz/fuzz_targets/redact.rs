//! Redaction on arbitrary bodies (`cargo +nightly fuzz run redact`): never panics, and what it
//! produces is what may be served — JSON, without the API key, with every `X-Amz-Signature=`
//! in its strings followed by `***`, and scrubbed for good (scrubbing it again changes
//! nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskgate::{redact, resource::Kind};

const KEY: &[u8] = b"sk_fuzz_KEY";
const SIGNATURE: &str = "X-Amz-Signature=";

fuzz_target!(|data: &[u8]| {
    // Each kind has its own rules; the guarantees are the same.
    for kind in Kind::ALL {
        check(kind, data);
    }
});

fn check(kind: Kind, data: &[u8]) {
    // A refusal (unreadable, or holding the key) is answered 502: nothing to check.
    let Ok(scrubbed) = redact::scrub(kind, data, KEY) else {
        return;
    };
    let _ = kind.phase_of_value(&scrubbed.value);
    let served = scrubbed.to_bytes();
    let value: Value = serde_json::from_slice(&served).expect("what is served is JSON");
    assert!(!redact::holds_key(&value, KEY), "the key was served");
    each_string(&value, &mut |s| {
        for (at, _) in s.match_indices(SIGNATURE) {
            let value = &s[at + SIGNATURE.len()..];
            assert!(value.starts_with("***"), "a signature survived: {s:?}");
        }
    });
    let again = redact::scrub(kind, &served, KEY).expect("what is served scrubs again");
    assert!(!again.changed, "scrubbing is not idempotent");
}

/// Every string value (object keys are never rewritten, so they are not checked).
fn each_string(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| each_string(v, f)),
        Value::Object(fields) => fields.values().for_each(|v| each_string(v, f)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
