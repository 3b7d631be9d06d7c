//! The route parser on arbitrary paths: never panics, and only routes valid ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgate::route::{self, Route};
use taskgate::resource::Kind;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = route::parse(path);
    if let Some(id) = parsed.id() {
        assert!(route::is_valid_id(id));
        assert!(!path.contains('%') && !path.contains(".."));
    }
    if let Route::Read(key) = parsed {
        let (kind, id) = (key.kind(), key.id());
        assert!(path == format!("/{kind}/{id}") || path == format!("/api/{kind}/{id}"));
        assert_eq!(kind, Kind::Task);
    }
});
