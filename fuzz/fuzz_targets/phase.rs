//! The phase extractor on arbitrary bodies: never panics, and every phase it finds is the
//! one a full parse finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgate::resource::Kind;

fuzz_target!(|data: &[u8]| {
    // Cross-check against a full parse into a tree: a phase is found only where
    // `status.phase` really is one of the kind's known strings.
    let full = serde_json::from_slice::<serde_json::Value>(data).ok().and_then(|v| {
        v.get("status")?.get("phase")?.as_str().map(str::to_owned)
    });
    for kind in Kind::ALL {
        let fast = kind.phase(data);
        // (The other direction does not hold on purpose: a body with duplicate keys is refused
        // by the extractor, so it is passed through, while a tree keeps the last duplicate.)
        if let Some(p) = fast {
            assert_eq!(full.as_deref(), Some(p.as_str()));
            assert_eq!(p.kind(), kind);
        }
    }
});
