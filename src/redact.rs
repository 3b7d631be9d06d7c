//! Scrubbing of secrets that Studio returns to non-admin keys inside task bodies and asset
//! bodies (the list below; docs/behaviour.md, "Redaction").
//!
//! The rules are chosen by [`Kind`] ([`scrub`]`(kind, …)`): the walker, the URL rules that hold
//! everywhere and the failing-closed parse are common; each kind adds the fields that are its
//! user's input (a task's `params`, an asset's `source`) and the named secrets it carries.
//!
//! Studio cleans only a few fields for non-admin callers, and browsers poll through taskgate,
//! so [`scrub`] runs once per upstream fetch, before the body is cached or hashed. It is on by
//! default; `TASKGATE_REDACT=false` turns it off (the body is then served as Studio sent it).
//!
//! **Failing closed.** A body is parsed once, into a tree; the caller takes the phase from
//! that tree, and the bytes it hashes, caches and serves are the scrubbed tree serialised
//! again ([`Scrubbed::to_bytes`]), never the bytes that arrived. So a duplicate key cannot hide
//! a secret-bearing object behind a harmless one (the tree keeps one of them and that one is
//! scrubbed), and a body the parser refuses (not JSON, not UTF-8, nested deeper than
//! serde_json's recursion limit of 128, cut short) is [`Refusal::Unreadable`]: the caller
//! answers 502, it never relays it raw. A body holding the API key anywhere — in a string or
//! an object key, after JSON unescaping, also percent-encoded — is [`Refusal::HoldsKey`].
//!
//! What is scrubbed, and why:
//! - **Credentials in URLs, anywhere in the body** (including `output.*` and prose such as
//!   `status.errorMessage`): `scheme://user:pass@host` becomes `scheme://***:***@host` and
//!   `scheme://token@host` becomes `scheme://***@host`. This covers the web3.storage proof in
//!   `params["transcode-file"].storage.url` (`w3s://<proof>@/` becomes `w3s://***@/`), which
//!   Studio's own cleaning misses, and `user:pass@` in `params.upload.url`. The userinfo is only
//!   what sits between `://` and the first `/`, `\`, `?`, `#` or whitespace, so an `@` in a path
//!   or query is left alone. URLs written loosely in ways a browser still reads as userinfo
//!   are masked the same way: `//user:pass@host` (scheme-relative, at the start of a string or
//!   after a space, quote, bracket, `=` or `,`), `scheme:/user:pass@host` and backslashes in
//!   place of the slashes. URLs percent-encoded once (`https%3A%2F%2Fuser%3Apass%40host`, as in
//!   another URL's query) are masked too (`https%3A%2F%2F***%3A***%40host`).
//! - **Signature-like parameters, anywhere in the body**: in every string, the value of each
//!   `name=value` whose name is signature-like ([`is_secret_name`]: `X-Amz-Signature`,
//!   `X-Amz-Credential`, `X-Amz-Security-Token`, `Signature`, `sig`, `token`, `access_token`,
//!   `key`, any name ending in `signature`, `token`, `secret`, `credential`, …) becomes `***`,
//!   up to the next `&`, `#`, whitespace or quote. Percent-encoded URLs nested in a string or
//!   in another URL's query (`%3FX-Amz-Signature%3D…%26…`, `%253D` twice encoded) are read at
//!   their own level of encoding. This covers presigned URLs quoted in `status.errorMessage`
//!   and percent-encoded in `output`.
//! - **Query strings and fragments of URLs under `params`** are dropped, keeping scheme, host and
//!   path: user-supplied source and destination URLs carry presigned signatures
//!   (`X-Amz-Signature`, `X-Amz-Credential`) and tokens (`?token=`). Outside `params` they are
//!   kept (IPFS gateway URLs are public) apart from their signature-like parameters, and so is
//!   `params.exportData.content`: an attestation is public by design and a changed message
//!   would no longer match its signature.
//! - **`params.export.custom.headers`**: every value becomes `"***"` (names are kept); these are
//!   headers such as `Authorization` that taskgate's caller sends to the export destination.
//!   A value that is not a string has its leaves masked, and headers that are not an object
//!   (a list of pairs, say) are masked whole, names included.
//! - **`params.export.ipfs.pinata` and `params.exportData.ipfs.pinata`**: `jwt`, `apiSecret` and
//!   `apiKey` become `"***"` (writeOnly in Studio's schema, but returned).
//! - **`params.upload.encryption`**: `key` and `encryptedKey` become `"***"` (Studio already
//!   masks `key` and drops `encryptedKey`; this guards against that changing).
//! - Each named field above (and `source.encryption.encryptedKey` below) is masked whatever its
//!   type: a string becomes `"***"`, an array or object has its leaves masked as
//!   `webhookContext`'s are. A secret sent in another shape than the schema's is still masked,
//!   and so is one below a list where the schema has an object (`params.export` as
//!   `[{"custom": …}]`, a body that is a list of tasks): each element is scrubbed as the object
//!   would be ([`each_at`]). An object that holds them (`pinata`, `encryption`) sent as a plain
//!   value is masked whole.
//!
//! What is scrubbed in assets, beside the rules that hold everywhere:
//! - **`source`** (the user's input, like a task's `params`): `url` and `gatewayUrl` lose their
//!   query and fragment (presigned signatures, `?token=`) and their userinfo is masked;
//!   `source.encryption.encryptedKey` (the content key, returned beside a decoy `key: "***"`)
//!   becomes `"***"`.
//! - **`playbackPolicy.webhookContext`**: arbitrary developer data sent to an access-control
//!   webhook. Every value is masked and its keys kept: strings become `"***"`, numbers `0`,
//!   booleans `false`, arrays and objects keep their shape with their leaves masked, `null`
//!   stays `null`. The SDKs type it as a map of anything, so it still validates. A
//!   `webhookContext` that is not a map (a string, an array) is masked the same way.
//! - **`storage.ipfs.spec.nftMetadata`**: developer-supplied; every URL in it, at any depth
//!   and also inside text, loses its query and fragment and its userinfo.
//!
//! Guarantees: the body stays valid for the official SDKs' schemas. Only string values are
//! changed (and the leaves of an asset's `webhookContext`, and of a named secret field that is
//! not a string, which keep their types), and strings stay strings: no field is removed or
//! becomes `null`, numbers and booleans elsewhere are untouched.
//! Values already masked (`***`, `s3+https://***:***@host`) are left as they are, so
//! scrubbing twice changes nothing. A JSON body that is not an object (no task) has
//! the rules that hold outside `params` applied to all its strings. Object keys are never
//! rewritten (only searched for the API key).

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::resource::Kind;

/// What a masked value or userinfo is replaced with.
const MASK: &str = "***";

/// Why a body cannot be served with redaction on (the caller answers 502 and stores nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON, not UTF-8, nested deeper than the parser's limit, or cut short: it cannot be
    /// scrubbed, so it is not served.
    Unreadable,
    /// It holds the API key (after JSON unescaping, or percent-encoded).
    HoldsKey,
}

/// A body parsed once and scrubbed: the tree the phase is read from, and that is serialised
/// to the bytes hashed, cached and served.
#[derive(Debug, Clone)]
pub struct Scrubbed {
    pub value: Value,
    /// Whether scrubbing changed any string (the served bytes are re-serialised either way).
    pub changed: bool,
    /// The length of the body as it arrived: about the length served, so the bytes are
    /// written into one buffer of that size instead of one grown by doubling from 128.
    received_len: usize,
}

impl Scrubbed {
    /// The scrubbed tree as compact JSON: what is hashed, cached and served.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.received_len);
        serde_json::to_writer(&mut out, &self.value).expect("a JSON tree always serialises");
        trim_slack(&mut out);
        Bytes::from(out)
    }
}

/// A body that scrubbing shortened a lot (a 1 MiB query string cut from a URL) would keep the
/// received length's buffer for as long as its bytes are served; past twice its length, it
/// is copied to its own size. (A kept answer is also copied by `cache::compact`.)
fn trim_slack(out: &mut Vec<u8>) {
    if out.capacity() > 2 * out.len() {
        out.shrink_to_fit();
    }
}

/// Parses `body` once, refuses it if it holds `secret` (the API key; empty: not looked for),
/// and scrubs it by the rules of `kind`. Never panics; recursion is bounded by serde_json's
/// nesting limit (128).
pub fn scrub(kind: Kind, body: &[u8], secret: &[u8]) -> Result<Scrubbed, Refusal> {
    // No byte-level pre-check: JSON may spell a key or `://` with escapes (`:\/\/`,
    // `pin\u0061ta`), which a substring search would miss. Parsing a body is cheap and
    // happens once per upstream fetch, not per hit.
    let mut value: Value = serde_json::from_slice(body).map_err(|_| Refusal::Unreadable)?;
    if holds_key(&value, secret) {
        return Err(Refusal::HoldsKey);
    }
    let changed = scrub_value(kind, &mut value);
    Ok(Scrubbed {
        value,
        changed,
        received_len: body.len(),
    })
}

/// Scrubs a parsed body in place: the rules of `kind` when it is an object (or for each object
/// in it, when it is an array), the rules that hold everywhere (userinfo, signature-like
/// parameters) otherwise. True if anything changed.
pub fn scrub_value(kind: Kind, body: &mut Value) -> bool {
    match body {
        Value::Object(fields) => match kind {
            Kind::Task => scrub_task(fields),
            Kind::Asset => scrub_asset(fields),
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| scrub_value(kind, item) | changed),
        _ => walk_strings(body, &mut scrub_text),
    }
}

/// A task: `params` is the user's input; everything else gets the rules that hold everywhere.
fn scrub_task(task: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in task.iter_mut() {
        changed |= match name.as_str() {
            "params" => scrub_params(value),
            _ => walk_strings(value, &mut scrub_text),
        };
    }
    changed
}

/// An asset. `source` is the user's input, like a task's `params`: its
/// URLs lose their query and fragment, and `encryption.encryptedKey` (returned beside a decoy
/// `key: "***"`) is masked. Every value of `playbackPolicy.webhookContext` is masked
/// ([`mask_all`]). URLs anywhere in `storage.ipfs.spec.nftMetadata` lose their query and
/// fragment. Everything else gets the rules that hold everywhere.
fn scrub_asset(asset: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in asset.iter_mut() {
        changed |= match name.as_str() {
            "source" => {
                each_at(value, &["encryption"], &mut |encryption| {
                    mask_named(encryption, &["encryptedKey", "key"])
                }) | walk_strings(value, &mut clean_param_url)
            }
            "playbackPolicy" => {
                each_at(value, &["webhookContext"], &mut mask_all)
                    | walk_strings(value, &mut scrub_text)
            }
            "storage" => {
                let mut clean = |s: &mut String| strip_url_queries(s) | scrub_text(s);
                each_at(value, &["ipfs", "spec", "nftMetadata"], &mut |m| {
                    walk_strings(m, &mut clean)
                }) | walk_strings(value, &mut scrub_text)
            }
            _ => walk_strings(value, &mut scrub_text),
        };
    }
    changed
}

/// Masks every leaf of a developer's free-form value and keeps its shape, so a schema that
/// accepts it (the SDKs take `webhookContext` as a map of anything) still does: a string
/// becomes `"***"`, a number `0`, a boolean `false`; arrays and objects keep their keys and
/// length and have their leaves masked; `null` stays `null` (nothing becomes `null`).
fn mask_all(value: &mut Value) -> bool {
    match value {
        Value::String(_) => mask(value),
        Value::Number(n) => {
            let zero = n.as_u64() == Some(0) && !n.is_f64();
            if !zero {
                *value = Value::from(0);
            }
            !zero
        }
        Value::Bool(b) => std::mem::replace(b, false),
        Value::Array(items) => items.iter_mut().fold(false, |c, v| mask_all(v) | c),
        Value::Object(fields) => fields.values_mut().fold(false, |c, v| mask_all(v) | c),
        Value::Null => false,
    }
}

/// Whether `secret` (the API key) occurs in any string or object key of `value`, as it is
/// after JSON unescaping, or percent-decoded once or twice. An empty secret is never found.
pub fn holds_key(value: &Value, secret: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    match value {
        Value::String(s) => text_holds(s, secret),
        Value::Array(items) => items.iter().any(|item| holds_key(item, secret)),
        Value::Object(fields) => fields
            .iter()
            .any(|(k, v)| text_holds(k, secret) || holds_key(v, secret)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn text_holds(s: &str, secret: &[u8]) -> bool {
    let mut text = Cow::Borrowed(s.as_bytes());
    for _ in 0..3 {
        if contains(&text, secret) {
            return true;
        }
        if !text.contains(&b'%') {
            return false;
        }
        text = Cow::Owned(percent_decode(&text));
    }
    false
}

/// Whether `needle` occurs in `haystack` (an empty needle never does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return false;
    };
    haystack.len() >= needle.len()
        && haystack[..=haystack.len() - needle.len()]
            .iter()
            .enumerate()
            .any(|(i, &b)| b == first && haystack[i + 1..].starts_with(rest))
}

/// `%XX` decoded; anything else (including a `%` not followed by two hex digits) kept.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (s[i], s.get(i + 1).copied(), s.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// A string outside `params`: signature-like parameters, then userinfo in URLs. In that
/// order: masking a parameter value may remove the `?` that ended an authority, and the
/// userinfo is then read up to the next one.
fn scrub_text(s: &mut String) -> bool {
    may_need_text_rules(s) && text_rules(s)
}

/// Each text rule needs one of these bytes (`name=` or its encoded `%3D`, the `@` that ends
/// any userinfo, the `%` of `%3A%2F%2F`); most strings of a body (ids, names, phases,
/// timestamps) hold none and are passed over in one scan.
fn may_need_text_rules(s: &str) -> bool {
    s.bytes().any(|b| matches!(b, b'=' | b'%' | b'@'))
}

fn text_rules(s: &mut String) -> bool {
    mask_secret_params(s) | mask_userinfo(s) | mask_encoded_userinfo(s)
}

/// Calls `edit` on every value under the object keys `path` below `value`, looking into
/// arrays at every level (`[0]`, `[1]`, … of a list stand where the schema has one object, so a
/// body that sends a list cannot hide a secret behind it). True if any call changed something.
/// Depth is bounded by serde_json's nesting limit on the parsed input.
fn each_at(value: &mut Value, path: &[&str], edit: &mut impl FnMut(&mut Value) -> bool) -> bool {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items
            .iter_mut()
            .fold(false, |changed, item| each_at(item, path, edit) | changed),
        (value, None) => edit(value),
        (value, Some((key, rest))) => value
            .get_mut(*key)
            .is_some_and(|inner| each_at(inner, rest, edit)),
    }
}

/// Masks the fields `names` of an object that holds secrets, whatever their type ([`mask_all`]:
/// the schema says string, but a secret sent as an array or an object must not pass for not
/// being one). Such an object sent as a plain value (`"pinata": "eyJ…"`) is masked whole.
fn mask_named(holder: &mut Value, names: &[&str]) -> bool {
    let Value::Object(fields) = holder else {
        return mask_all(holder);
    };
    names.iter().fold(false, |c, name| {
        fields.get_mut(*name).is_some_and(mask_all) | c
    })
}

/// `params`: the user's own input, where the named credential fields and presigned URLs live.
fn scrub_params(params: &mut Value) -> bool {
    // Export headers: names kept, every value masked; in any other shape, all of it.
    let mut changed = each_at(params, &["export", "custom", "headers"], &mut mask_all);
    for export in ["export", "exportData"] {
        changed |= each_at(params, &[export, "ipfs", "pinata"], &mut |pinata| {
            mask_named(pinata, &["jwt", "apiSecret", "apiKey"])
        });
    }
    changed |= each_at(params, &["upload", "encryption"], &mut |encryption| {
        mask_named(encryption, &["key", "encryptedKey"])
    });
    // `params` in another shape than an object: all of it is the user's input.
    let Some(kinds) = params.as_object_mut() else {
        return changed | walk_strings(params, &mut clean_param_url);
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
/// whose query strings stay (but for signature-like parameters) so its signature verifies.
fn scrub_export_data(fields: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in fields.iter_mut() {
        changed |= match name.as_str() {
            "content" => walk_strings(value, &mut scrub_text),
            _ => walk_strings(value, &mut clean_param_url),
        };
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

/// A string under `params`: if it is a URL, drop its query and fragment; then mask userinfo
/// and signature-like parameters (in prose that quotes a URL).
fn clean_param_url(s: &mut String) -> bool {
    let mut changed = false;
    if let Some(authority_start) = url_authority_start(s) {
        if let Some(cut) = s[authority_start..].find(['?', '#']) {
            s.truncate(authority_start + cut);
            changed = true;
        }
    }
    changed | scrub_text(s)
}

/// Every URL in the string, whether the string is one or text that quotes one (`scheme://` up
/// to whitespace, a quote, `<` or `>`), loses its query and fragment. True if changed.
fn strip_url_queries(s: &mut String) -> bool {
    let mut out = String::new();
    let mut copied = 0; // bytes of `s` already copied to `out`
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let sep = from + found;
        let start = sep + 3;
        let end = start
            + s[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
                .unwrap_or(s.len() - start);
        let has_scheme = s[..sep]
            .bytes()
            .rev()
            .take_while(|b| is_scheme_byte(*b))
            .any(|b| b.is_ascii_alphabetic());
        if let Some(cut) = s[start..end].find(['?', '#']).filter(|_| has_scheme) {
            out.push_str(&s[copied..start + cut]);
            copied = end;
        }
        // A `://` inside the dropped query went with it.
        from = end;
    }
    if copied == 0 {
        return false;
    }
    out.push_str(&s[copied..]);
    *s = out;
    true
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
/// URL or prose that quotes one. Written as a browser would still read it, so are
/// `scheme:/userinfo@host` and `scheme:\\userinfo@host` (any run of `/` and `\` after the
/// colon), and a scheme-relative `//userinfo@host` at the start of the string or after a
/// space, quote, bracket, `=` or `,`. True if the string was changed.
fn mask_userinfo(s: &mut String) -> bool {
    let mut out = String::new();
    let mut copied = 0; // bytes of `s` already copied to `out`
    let bytes = s.as_bytes();
    let is_slash = |b: u8| b == b'/' || b == b'\\';
    let mut i = 0;
    while i < bytes.len() {
        if !is_slash(bytes[i]) {
            i += 1;
            continue;
        }
        let run_end = i + bytes[i..].iter().take_while(|b| is_slash(**b)).count();
        let before = &bytes[..i];
        // A scheme (letters, digits, `+.-`) ends right before the colon. In prose it may be
        // glued to earlier text, so any such run that holds a letter counts.
        let after_scheme = before.last() == Some(&b':')
            && before[..i - 1]
                .iter()
                .rev()
                .take_while(|b| is_scheme_byte(**b))
                .any(u8::is_ascii_alphabetic);
        let scheme_relative = run_end - i == 2
            && bytes[i] == b'/'
            && bytes[i + 1] == b'/'
            && before
                .last()
                .is_none_or(|b| b.is_ascii_whitespace() || b"\"'(<[=,".contains(b));
        if after_scheme || scheme_relative {
            let authority_start = run_end;
            let rest = &s[authority_start..];
            let authority_len = rest
                .find(|c: char| matches!(c, '/' | '\\' | '?' | '#') || c.is_whitespace())
                .unwrap_or(rest.len());
            // The last `@` ends the userinfo, as browsers parse it: a password may hold an `@`.
            if let Some(at) = rest[..authority_len].rfind('@') {
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
        }
        // Resume right after this run: an authority ending in `:` may start another one.
        i = run_end;
    }
    if out.is_empty() {
        return false; // nothing masked: leave the string as it is
    }
    out.push_str(&s[copied..]);
    *s = out;
    true
}

/// [`mask_userinfo`] for URLs percent-encoded once inside a string or another URL's query:
/// `https%3A%2F%2Fuser%3Apass%40host` becomes `https%3A%2F%2F***%3A***%40host`. The authority
/// ends at an encoded or raw `/`, `?`, `#`, `&` or space (or a quote). True if changed.
fn mask_encoded_userinfo(s: &mut String) -> bool {
    const SEP: &[u8] = b"%3a%2f%2f";
    const AT: &[u8] = b"%40";
    let bytes = s.as_bytes();
    if bytes.len() < SEP.len() || !bytes.windows(3).any(|w| w.eq_ignore_ascii_case(AT)) {
        return false;
    }
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .windows(SEP.len())
        .position(|w| w.eq_ignore_ascii_case(SEP))
    {
        let sep = from + found;
        let authority_start = sep + SEP.len();
        let mut end = authority_start;
        while end < bytes.len() {
            let stop = match bytes[end] {
                b'/' | b'?' | b'#' | b'&' | b'"' | b'\'' | b'<' | b'>' | b'\\' => true,
                b if b.is_ascii_whitespace() => true,
                b'%' => bytes.get(end + 1..end + 3).is_some_and(|h| {
                    [&b"2f"[..], b"3f", b"23", b"26", b"20"]
                        .iter()
                        .any(|e| h.eq_ignore_ascii_case(e))
                }),
                _ => false,
            };
            if stop {
                break;
            }
            end += 1;
        }
        let authority = &bytes[authority_start..end];
        let has_scheme = bytes[..sep]
            .iter()
            .rev()
            .take_while(|b| is_scheme_byte(**b))
            .any(u8::is_ascii_alphabetic);
        let last_at = authority
            .windows(AT.len())
            .rposition(|w| w.eq_ignore_ascii_case(AT));
        if let Some(at) = last_at.filter(|_| has_scheme) {
            let userinfo = &authority[..at];
            let masked = match userinfo.windows(3).any(|w| w.eq_ignore_ascii_case(b"%3a")) {
                true => "***%3A***",
                false => MASK,
            };
            if !userinfo.is_empty() && !userinfo.eq_ignore_ascii_case(masked.as_bytes()) {
                out.push_str(&s[copied..authority_start]);
                out.push_str(masked);
                copied = authority_start + at;
            }
        }
        from = authority_start;
    }
    if out.is_empty() {
        return false;
    }
    out.push_str(&s[copied..]);
    *s = out;
    true
}

/// Masks the value of every `name=value` whose name is signature-like ([`is_secret_name`]),
/// wherever it sits in the string: a URL's query or fragment, a URL quoted in prose, or a
/// URL percent-encoded inside another (`%3Fsig%3Dvalue%26…`, `%253D` twice encoded). The
/// value runs to the next `&`, `#`, whitespace, quote, `<` or `>` (or, at an encoding level,
/// to an encoded `&`, `#` or space of that level or below) and becomes [`MASK`], even when
/// empty, so every such `name=` is followed by `***`. True if the string was changed.
fn mask_secret_params(s: &mut String) -> bool {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'=' | b'%')) {
        return false;
    }
    let mut out = String::new();
    let mut copied = 0; // bytes of `s` already copied to `out`
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let Some((level, equals_len)) = equals_at(bytes, i) else {
            i += 1;
            continue;
        };
        let value_start = i + equals_len;
        if !is_secret_name(param_name(bytes, i)) {
            i = value_start;
            continue;
        }
        let value_end = value_end(bytes, value_start, level);
        if &bytes[value_start..value_end] != MASK.as_bytes() {
            out.push_str(&s[copied..value_start]);
            out.push_str(MASK);
            copied = value_end;
            changed = true;
        }
        // Past the value: an `=` inside it was masked with it.
        i = value_end.max(i + 1);
    }
    if !changed {
        return false;
    }
    out.push_str(&s[copied..]);
    *s = out;
    true
}

/// At `i`, an `=` (level 0) or a percent-encoded one (`%3D` level 1, `%253D` level 2, …):
/// its level and its length in bytes.
fn equals_at(bytes: &[u8], i: usize) -> Option<(usize, usize)> {
    match bytes[i] {
        b'=' => Some((0, 1)),
        b'%' => {
            let mut j = i + 1;
            let mut level = 1;
            loop {
                let pair = bytes.get(j..j + 2)?;
                if pair.eq_ignore_ascii_case(b"3d") {
                    return Some((level, j + 2 - i));
                }
                if pair != b"25" || level >= 8 {
                    return None;
                }
                level += 1;
                j += 2;
            }
        }
        _ => None,
    }
}

/// The parameter name that ends right before the `=` at `equals`: the run of name bytes
/// before it, less the encoded separator it follows (`%26sig` is `sig`, `%2526sig` too).
fn param_name(bytes: &[u8], equals: usize) -> &[u8] {
    let is_name_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let run = bytes[..equals]
        .iter()
        .rev()
        .take_while(|b| is_name_byte(b))
        .count();
    let mut start = equals - run;
    if start > 0 && bytes[start - 1] == b'%' {
        while bytes[start..equals].starts_with(b"25") {
            start += 2;
        }
        start = (start + 2).min(equals);
    }
    &bytes[start..equals]
}

/// Where a parameter value that starts at `start`, at encoding `level`, ends.
fn value_end(bytes: &[u8], start: usize, level: usize) -> usize {
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'&' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\' => return i,
            b if b.is_ascii_whitespace() => return i,
            b'%' if level > 0 && is_encoded_separator(&bytes[i + 1..], level) => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// After a `%`: an encoded `&`, `#` or space (`26`, `23`, `20`) behind fewer than `level`
/// `25`s.
fn is_encoded_separator(mut rest: &[u8], level: usize) -> bool {
    for _ in 0..level {
        match rest.get(..2) {
            Some(p) if p == b"26" || p == b"23" || p == b"20" => return true,
            Some(b"25") => rest = &rest[2..],
            _ => return false,
        }
    }
    false
}

/// Parameter names whose values are credentials or signatures (ASCII case ignored).
const SECRET_NAMES: [&str; 10] = [
    "sig", "key", "auth", "jwt", "pass", "pwd", "policy", "session", "sid", "bearer",
];

/// Name endings that mark a credential: `X-Amz-Signature`, `X-Goog-Signature`, `Signature`,
/// `X-Amz-Credential`, `X-Amz-Security-Token`, `token`, `access_token`, `client_secret`,
/// `api_key`, `AWSAccessKeyId`, `GoogleAccessId`, `x-sig`, `secretKey`, `AWSSecretAccessKey`,
/// `privateKey`, `passphrase`, `jsessionid`, `PHPSESSID`, `connect.sid`, `x_auth`, …
const SECRET_SUFFIXES: [&str; 26] = [
    "signature",
    "credential",
    "credentials",
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "api_key",
    "api-key",
    "accesskeyid",
    "accessid",
    "authorization",
    "_sig",
    "-sig",
    "_key",
    "-key",
    "secretkey",
    "accesskey",
    "privatekey",
    "passphrase",
    "sessionid",
    "sessid",
    ".sid",
    "_auth",
    "-auth",
];

/// Whether a query parameter called `name` carries a credential or signature.
pub fn is_secret_name(name: &[u8]) -> bool {
    let ends_with = |suffix: &str| {
        name.len() >= suffix.len()
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    SECRET_NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        || SECRET_SUFFIXES.iter().any(|s| ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The scrubbed body, as served: the serialised tree, parsed again.
    fn redacted(body: &Value) -> Value {
        let out =
            scrub(Kind::Task, body.to_string().as_bytes(), b"").expect("a JSON body is scrubbed");
        serde_json::from_slice(&out.to_bytes()).expect("scrub serialises JSON")
    }

    /// Whether scrubbing `body` changed anything.
    fn changes(body: &[u8]) -> bool {
        scrub(Kind::Task, body, b"")
            .expect("a JSON body is scrubbed")
            .changed
    }

    /// The string at a JSON pointer, for short assertions.
    fn at<'a>(body: &'a Value, pointer: &str) -> &'a str {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("<not a string>")
    }

    /// Same shape: same keys, same array lengths, strings stay strings, non-strings unchanged
    /// but for masked numbers (0, the value of a named secret that is a number).
    fn assert_same_shape(before: &Value, after: &Value) {
        match (before, after) {
            (Value::String(_), Value::String(_)) => {}
            (Value::Number(_), Value::Number(n)) if n.as_u64() == Some(0) => {}
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

    // Bodies of the shapes Studio returns, trimmed to the fields that matter here.
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

    /// `count` strings of fewer than `max_len` pieces each, drawn from `pieces` by a fixed
    /// xorshift walk from `seed`: the same strings on every run.
    fn generated<'a>(
        seed: u64,
        pieces: &'a [&'a str],
        count: usize,
        max_len: u64,
    ) -> impl Iterator<Item = String> + 'a {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count).map(move |_| {
            let len = next() % max_len;
            (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect()
        })
    }

    /// The one-scan pass-over in `scrub_text` skips only strings the text rules leave alone:
    /// strings built from pieces of URLs, parameters and prose, with every byte it looks
    /// for taken out.
    #[test]
    fn strings_passed_over_are_ones_the_text_rules_leave_alone() {
        const PIECES: [&str; 21] = [
            "https",
            "//",
            "user",
            "at",
            ":",
            "host",
            "/",
            "?",
            "sig",
            "token",
            "&",
            "#",
            "3A2F2F",
            "40",
            "3D",
            " ",
            "\"",
            "x-amz-signature",
            "é",
            "s3+https",
            "***",
        ];
        for text in generated(0x9e37_79b9_7f4a_7c15, &PIECES, 20_000, 12) {
            assert!(!may_need_text_rules(&text), "{text}");
            let mut scrubbed = text.clone();
            assert!(!text_rules(&mut scrubbed), "{text}");
            assert_eq!(scrubbed, text);
        }
        // The same pieces with the bytes put back are scrubbed: the check above is not empty.
        let mut url = "https://user:pass@host/?sig=1".to_owned();
        assert!(may_need_text_rules(&url) && text_rules(&mut url));
        // Each rule that changes the string counts, also when two of them do.
        let mut both = "https://a:b@host https%3A%2F%2Fc%3Ad%40host".to_owned();
        assert!(text_rules(&mut both), "{both}");
        assert_eq!(both, "https://***:***@host https%3A%2F%2F***%3A***%40host");
    }

    #[test]
    fn a_body_shortened_by_scrubbing_keeps_no_large_buffer() {
        let huge = format!("https://h.example/a.mp4?sig={}", "x".repeat(1 << 20));
        let body = json!({"id": "t", "params": {"upload": {"url": huge}}}).to_string();
        let scrubbed = scrub(Kind::Task, body.as_bytes(), b"").expect("scrubbed");
        let served = scrubbed.to_bytes().try_into_mut().expect("the only handle");
        assert!(served.len() < 100, "{}", served.len());
        assert!(
            served.capacity() <= 2 * served.len(),
            "{}",
            served.capacity()
        );
        // A body about as long as it arrived keeps its buffer (no copy).
        let mut same = Vec::with_capacity(100);
        same.extend_from_slice(&[b'x'; 90]);
        trim_slack(&mut same);
        assert_eq!(same.capacity(), 100);
    }

    /// `each_at` finds what a pointer to the same keys does, and, past arrays, what each
    /// element's pointer does; nothing for missing keys or past a string.
    #[test]
    fn each_at_finds_what_pointers_find_through_arrays_too() {
        let mut body = json!({
            "export": {"custom": {"headers": {"a": "1"}}, "ipfs": ["pinata", {"pinata": 3}]},
            "upload": "text",
            "a/b": [{"c~d": 1}, [{"c~d": 2}], {"x": 0}],
            "": {"": 4},
        });
        let paths: [(&[&str], Vec<Value>); 7] = [
            (&["export", "custom", "headers"], vec![json!({"a": "1"})]),
            (&["export", "ipfs", "pinata"], vec![json!(3)]),
            (&["upload", "encryption"], vec![]),
            (&["missing"], vec![]),
            (&["a/b", "c~d"], vec![json!(1), json!(2)]),
            (&["", ""], vec![json!(4)]),
            (&["upload"], vec![json!("text")]),
        ];
        for (path, expected) in paths {
            let mut found = Vec::new();
            each_at(&mut body, path, &mut |v| {
                found.push(v.clone());
                false
            });
            assert_eq!(found, expected, "{path:?}");
        }
    }

    #[test]
    fn custom_export_loses_its_signature_and_header_values() {
        let out = redacted(&custom_export());
        let custom = &out["params"]["export"]["custom"];
        let url = "https://my-bucket.s3.amazonaws.com/path/file.mp4";
        assert_eq!(at(custom, "/url"), url);
        assert_eq!(at(custom, "/headers/Authorization"), "***");
        assert_eq!(
            custom["headers"]["X-Retries"], 0,
            "every value, numbers too"
        );
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
        // The query is kept outside `params`; its signature-like parameter is not.
        let clip = "https://***:***@cdn.example/c.m3u8?sig=***";
        assert_eq!(at(&out, "/output/clip/url"), clip);
        assert_eq!(at(&out, "/output/clip/odd"), "https://x://***:***@h/");
    }

    /// What a browser would still read as userinfo: a scheme-relative URL, and one slash or
    /// backslashes after the scheme. An `@` elsewhere (a handle, a path, an address in prose)
    /// is left alone.
    #[test]
    fn userinfo_in_urls_written_loosely_is_masked_too() {
        let cases = [
            ("//u:PASS1@h.example/v.mp4", "//***:***@h.example/v.mp4"),
            ("see //TOKEN2@h.example/x", "see //***@h.example/x"),
            ("src=\"//u:PASS3@h/x\"", "src=\"//***:***@h/x\""),
            ("https:/u:PASS4@h.example/v", "https:/***:***@h.example/v"),
            (
                "https:\\\\u:PASS5@h.example\\v",
                "https:\\\\***:***@h.example\\v",
            ),
            ("https:///u:PASS6@h/", "https:///***:***@h/"),
        ];
        for (text, want) in cases {
            let mut s = text.to_owned();
            assert!(text_rules(&mut s), "{text}");
            assert_eq!(s, want);
        }
        for kept in [
            "mail bob@example.com",
            "a//b@c",
            "path/to//@handle",
            "ratio 3:/x@y",
            "follow @livepeer",
            "https://example.com/users/@alice",
        ] {
            let mut s = kept.to_owned();
            assert!(!text_rules(&mut s), "{kept}");
        }
    }

    #[test]
    fn at_sign_in_path_or_query_is_not_userinfo() {
        let url = "https://example.com/users/@alice/v.mp4?by=a@b.example";
        let body = json!({ "id": "x", "output": { "upload": { "source": url } } });
        assert!(!changes(body.to_string().as_bytes()));
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
        assert!(!changes(body.to_string().as_bytes()));
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for body in all_secret_bodies() {
            let once = scrub(Kind::Task, body.to_string().as_bytes(), b"").expect("JSON");
            assert!(once.changed, "has secrets");
            let once = once.to_bytes();
            assert!(!changes(&once), "{}", String::from_utf8_lossy(&once));
        }
    }

    #[test]
    fn no_field_becomes_null_and_strings_stay_strings() {
        for body in all_secret_bodies() {
            assert_same_shape(&body, &redacted(&body));
        }
    }

    #[test]
    fn non_json_is_refused_and_other_json_is_scrubbed_too() {
        // Failing closed: what cannot be parsed cannot be scrubbed, so it
        // is refused rather than relayed untouched.
        let unreadable: [&[u8]; 5] = [
            b"",
            b"not json https://u:p@h/",
            br#"{"params": "#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":1}{"b":2}"#,
        ];
        for body in unreadable {
            let got = scrub(Kind::Task, body, b"").map(|s| s.to_bytes());
            assert_eq!(
                got,
                Err(Refusal::Unreadable),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // JSON that is not a task object still gets the rules that hold outside `params`.
        let cases: [(&[u8], &[u8]); 4] = [
            (br#"["https://u:p@h/"]"#, br#"["https://***:***@h/"]"#),
            (br#""https://h/?sig=abc""#, br#""https://h/?sig=***""#),
            (b"42", b"42"),
            (b"null", b"null"),
        ];
        for (body, want) in cases {
            let got = scrub(Kind::Task, body, b"").expect("JSON").to_bytes();
            assert_eq!(&got[..], want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escaped_json_is_still_scrubbed() {
        let body = br#"{"params":{"export":{"ipfs":{"pin\u0061ta":{"jwt":"j"}}},"upload":{"url":"https:\/\/u:p@h\/x"}}}"#;
        let out: Value =
            serde_json::from_slice(&scrub(Kind::Task, body, b"").unwrap().to_bytes()).unwrap();
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
        // Characters that matter to the parser, multi-byte included.
        let alphabet = [
            "a", "b", "1", "+", ".", "-", ":", "/", "@", "?", "#", " ", "é", "€",
        ];
        for s in generated(0x2545_f491_4f6c_dd1d, &alphabet, 2000, 24) {
            for edit in [
                clean_param_url as fn(&mut String) -> bool,
                mask_userinfo,
                mask_secret_params,
                mask_encoded_userinfo,
                scrub_text,
                strip_url_queries,
            ] {
                let mut once = s.clone();
                edit(&mut once);
                let mut twice = once.clone();
                assert!(!edit(&mut twice), "{s:?} → {once:?} → {twice:?}");
            }
        }
    }

    #[test]
    fn signature_parameters_are_masked_anywhere_in_the_body() {
        let presigned = "https://b.s3.amazonaws.com/f.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                         &X-Amz-Credential=AKIA%2F20240529&X-Amz-Expires=3600&X-Amz-Signature=d3m0";
        let encoded = "https%3A%2F%2Fb.s3.amazonaws.com%2Ff.mp4%3FX-Amz-Credential%3DAKIA%252F1\
                       %26X-Amz-Signature%3Dd3m0%26X-Amz-Expires%3D3600";
        let body = json!({ "id": "x",
            "status": { "phase": "failed", "updatedAt": 1,
                        "errorMessage": format!("error uploading to {presigned}: 403 Forbidden") },
            "output": { "clip": { "url": format!("https://gw.example/fetch?u={encoded}&x=1"),
                                  "raw": encoded } } });
        let out = redacted(&body);
        let text = out.to_string();
        for secret in ["d3m0", "AKIA"] {
            assert!(!text.contains(secret), "{secret} survived: {text}");
        }
        let message = "error uploading to https://b.s3.amazonaws.com/f.mp4?\
                       X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Expires=3600\
                       &X-Amz-Signature=***: 403 Forbidden";
        // The value runs to whitespace: `:` may be part of a token, so it is masked with it.
        assert_eq!(
            at(&out, "/status/errorMessage"),
            message.replace("***: 403", "*** 403")
        );
        let raw = "https%3A%2F%2Fb.s3.amazonaws.com%2Ff.mp4%3FX-Amz-Credential%3D***\
                   %26X-Amz-Signature%3D***%26X-Amz-Expires%3D3600";
        assert_eq!(at(&out, "/output/clip/raw"), raw);
        assert_eq!(
            at(&out, "/output/clip/url"),
            format!("https://gw.example/fetch?u={raw}&x=1")
        );
    }

    #[test]
    fn each_signature_like_name_is_masked_and_others_are_kept() {
        for name in [
            "X-Amz-Signature",
            "x-amz-signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "X-Goog-Signature",
            "X-Goog-Credential",
            "Signature",
            "sig",
            "token",
            "access_token",
            "AWSAccessKeyId",
            "GoogleAccessId",
            "api_key",
            "apiKey",
            "key",
            "jwt",
            "client_secret",
            "password",
            "secretKey",
            "accessKey",
            "AWSSecretAccessKey",
            "privateKey",
            "passphrase",
            "jsessionid",
            "PHPSESSID",
            "connect.sid",
            "sid",
            "bearer",
            "x_auth",
        ] {
            let mut s = format!("see https://h.example/v.mp4?a=1&{name}=S3CRET#t=2 now");
            assert!(mask_secret_params(&mut s), "{name}");
            assert_eq!(
                s,
                format!("see https://h.example/v.mp4?a=1&{name}=***#t=2 now")
            );
        }
        for kept in [
            "https://ipfs.example/ipfs/bafy?filename=a.mp4&format=car",
            "https://h.example/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600",
            "no parameters here",
            "a=b=c",
        ] {
            let mut s = kept.to_owned();
            assert!(!mask_secret_params(&mut s), "{kept}");
        }
        // Fragments (`#access_token=`), twice-encoded URLs and empty values too.
        let cases = [
            (
                "upload failed: https://h/v.mp4;jsessionid=J1, secretKey=S2 here",
                "upload failed: https://h/v.mp4;jsessionid=*** secretKey=*** here",
            ),
            (
                "https://h/cb#access_token=abc&x=1",
                "https://h/cb#access_token=***&x=1",
            ),
            (
                "u=https%253A%252F%252Fh%253Fsig%253Dabc%2526x%253D1",
                "u=https%253A%252F%252Fh%253Fsig%253D***%2526x%253D1",
            ),
            ("https://h/?sig=&x=1", "https://h/?sig=***&x=1"),
            ("https://h/?token=***", "https://h/?token=***"),
        ];
        for (input, want) in cases {
            let mut s = input.to_owned();
            mask_secret_params(&mut s);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn signature_parameters_in_params_prose_and_attestations_are_masked() {
        let body = json!({ "id": "x", "params": {
            "upload": { "note": "from https://h/v.mp4?sig=abc" },
            "exportData": { "content": { "video": "https://v.example/a?x=1&token=abc" } } } });
        let out = redacted(&body);
        assert_eq!(
            at(&out, "/params/upload/note"),
            "from https://h/v.mp4?sig=***"
        );
        assert_eq!(
            at(&out, "/params/exportData/content/video"),
            "https://v.example/a?x=1&token=***"
        );
    }

    #[test]
    fn a_body_nested_past_the_parser_limit_is_refused() {
        let deep = format!(
            r#"{{"params":{{"upload":{{"url":"https://u:p@h/"}},"x":{}1{}}},"status":{{"phase":"completed"}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(
            scrub(Kind::Task, deep.as_bytes(), b"").map(|s| s.changed),
            Err(Refusal::Unreadable)
        );
        // Within the limit, the same shape is scrubbed.
        let shallow = deep.replace(&"[".repeat(200), &"[".repeat(100));
        let shallow = shallow.replace(&"]".repeat(200), &"]".repeat(100));
        let out = scrub(Kind::Task, shallow.as_bytes(), b"").expect("within the limit");
        assert_eq!(at(&out.value, "/params/upload/url"), "https://***:***@h/");
    }

    #[test]
    fn a_duplicate_key_cannot_hide_a_secret_from_the_served_bytes() {
        let body = br#"{"params":{"export":{"ipfs":{"pinata":{"jwt":"PINATASECRET"}}},"upload":{"url":"https://u:PASSSECRET@h/"}},"params":{},"status":{"phase":"completed","updatedAt":1}}"#;
        let out = scrub(Kind::Task, body, b"").expect("JSON").to_bytes();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("SECRET"), "{text}");
        assert_eq!(
            text.matches("\"params\"").count(),
            1,
            "duplicates collapsed: {text}"
        );
    }

    #[test]
    fn the_key_is_found_escaped_encoded_and_in_object_keys() {
        const KEY: &[u8] = b"sk_live_TOPSECRET";
        for body in [
            r#"{"errors":["no token sk_live_TOPSECRET found"]}"#,
            r#"{"errors":["no token \u0073k_live_TOPSECRET found"]}"#,
            r#"{"a":"https://h/?k=sk%5Flive%5FTOPSECRET"}"#,
            r#"{"a":"https://h/?k=sk%255Flive_TOPSECRET"}"#,
            r#"{"sk_live_TOPSECR\u0045T":1}"#,
            r#"[[{"deep":["sk_live_TOPSECRET"]}]]"#,
        ] {
            assert_eq!(
                scrub(Kind::Task, body.as_bytes(), KEY).map(|s| s.changed),
                Err(Refusal::HoldsKey),
                "{body}"
            );
        }
        assert!(scrub(Kind::Task, br#"{"a":"sk_live_TOPSECRE"}"#, KEY).is_ok());
        assert!(
            scrub(Kind::Task, br#"{"a":"sk_live_TOPSECRET"}"#, b"").is_ok(),
            "no key configured"
        );
    }

    #[test]
    fn generated_parameter_soup_never_leaves_a_signature() {
        // Tokens that matter to the parameter and userinfo scanners, glued at random.
        let tokens = [
            "X-Amz-Signature",
            "sig",
            "token",
            "a",
            "=",
            "&",
            "?",
            "#",
            " ",
            "%",
            "%3D",
            "%3d",
            "%26",
            "%3F",
            "%25",
            "%253D",
            "%2526",
            "://",
            "u:p@",
            "***",
            "é",
            "\"",
            "25",
            "3D",
            "%3A%2F%2F",
            "%40",
            "%3A",
            "%2F",
            "https",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() % 12;
            let s: String = (0..len)
                .map(|_| tokens[(next() % tokens.len() as u64) as usize])
                .collect();
            // (edit, whether it masks signature parameters)
            for (edit, masks_signatures) in [
                (mask_secret_params as fn(&mut String) -> bool, true),
                (mask_encoded_userinfo, false),
                (scrub_text, true),
                (clean_param_url, true),
            ] {
                let mut once = s.clone();
                edit(&mut once);
                for (at, _) in once.match_indices("X-Amz-Signature=") {
                    let rest = &once[at + "X-Amz-Signature=".len()..];
                    assert!(
                        rest.starts_with(MASK) || !masks_signatures,
                        "{s:?} → {once:?}"
                    );
                }
                let mut twice = once.clone();
                assert!(!edit(&mut twice), "{s:?} → {once:?} → {twice:?}");
            }
        }
    }

    #[test]
    fn generated_bodies_are_served_scrubbed_for_good() {
        // The property of fuzz/fuzz_targets/redact.rs, on bodies glued from tokens that matter.
        const KEY: &[u8] = b"sk_test_KEY";
        let tokens = [
            "{\"params\":",
            "{\"a\":",
            "\"",
            "X-Amz-Signature",
            "=",
            "&",
            "%3D",
            "%26",
            "?",
            "}",
            "[",
            "]",
            ",",
            "\"u\"",
            ":",
            "https://",
            "u:p@h",
            "sk_test_KEY",
            "\\u0073",
            "sig",
            " ",
            "\\\"",
            "1",
            "%25",
            "#",
            "@",
            "/",
            "w3s://",
            "*",
            "%3A%2F%2F",
            "%40",
            "%3a",
            "https",
        ];
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut scrubbed = 0;
        for _ in 0..20_000 {
            let len = next() % 18;
            let s: String = (0..len)
                .map(|_| tokens[(next() % tokens.len() as u64) as usize])
                .collect();
            let quoted = s.replace('\\', "").replace('"', "\\\"");
            let body = format!(r#"{{"params":{{"upload":{{"url":"{quoted}"}}}},"x":"{quoted}"}}"#);
            for input in [&s, &body] {
                let Ok(out) = scrub(Kind::Task, input.as_bytes(), KEY) else {
                    continue;
                };
                scrubbed += 1;
                let served = out.to_bytes();
                let value: Value = serde_json::from_slice(&served).expect("served JSON");
                assert!(!holds_key(&value, KEY), "{input}");
                for (at, _) in served_text(&value).match_indices("X-Amz-Signature=") {
                    let rest = &served_text(&value)[at + 16..];
                    assert!(rest.starts_with(MASK), "{input}");
                }
                assert!(
                    !scrub(Kind::Task, &served, KEY).expect("JSON").changed,
                    "{input}"
                );
            }
        }
        assert!(scrubbed > 10_000, "the generator makes JSON: {scrubbed}");
    }

    /// Every string value of `value`, joined by newlines (a terminator).
    fn served_text(value: &Value) -> String {
        match value {
            Value::String(s) => format!("{s}\n"),
            Value::Array(items) => items.iter().map(served_text).collect(),
            Value::Object(fields) => fields.values().map(served_text).collect(),
            Value::Null | Value::Bool(_) | Value::Number(_) => String::new(),
        }
    }

    #[test]
    fn percent_encoded_userinfo_is_masked() {
        let cases = [
            (
                "https://gw.example/?src=https%3A%2F%2Fuser%3APASS%40h.example%2Fv.mp4&x=1",
                "https://gw.example/?src=https%3A%2F%2F***%3A***%40h.example%2Fv.mp4&x=1",
            ),
            ("w3s%3a%2f%2fPROOF%40%2F", "w3s%3a%2f%2f***%40%2F"),
            ("https%3A%2F%2Fh%2Fa%40b", "https%3A%2F%2Fh%2Fa%40b"),
            ("%3A%2F%2Fu%40h", "%3A%2F%2Fu%40h"),
        ];
        for (input, want) in cases {
            let mut s = input.to_owned();
            mask_encoded_userinfo(&mut s);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn asset_rules_mask_their_fields_and_scrub_for_good() {
        let body = json!({"id": "a", "name": "n",
            "source": {"type": "url", "url": "https://u:p@h/v.mp4?X-Amz-Signature=s&a=1#f",
                       "gatewayUrl": "https://gw/ipfs/x?filename=v.mp4",
                       "encryption": {"key": "***", "encryptedKey": "K"}},
            "playbackPolicy": {"type": "webhook", "webhookContext": {
                "s": "v", "n": -2.5, "z": 0, "b": true, "f": false, "o": {"a": [1, "x", null]}}},
            "storage": {"ipfs": {"spec": {"nftMetadata": {"image": "https://h/i.png?x=1"}},
                                 "gatewayUrl": "https://ipfs.example/ipfs/Qm?filename=a"}},
            "params": {"upload": {"url": "https://h/kept?filename=a"}},
            "status": {"phase": "ready", "updatedAt": 1}});
        let once = scrub(Kind::Asset, body.to_string().as_bytes(), b"").unwrap();
        let out = &once.value;
        assert!(once.changed);
        assert_eq!(at(out, "/source/url"), "https://***:***@h/v.mp4");
        assert_eq!(at(out, "/source/gatewayUrl"), "https://gw/ipfs/x");
        assert_eq!(
            out["source"]["encryption"],
            json!({"key": "***", "encryptedKey": "***"})
        );
        assert_eq!(
            out["playbackPolicy"]["webhookContext"],
            json!({"s": "***", "n": 0, "z": 0, "b": false, "f": false, "o": {"a": [0, "***", null]}})
        );
        assert_eq!(
            at(out, "/storage/ipfs/spec/nftMetadata/image"),
            "https://h/i.png"
        );
        // Outside the asset's input fields, public URLs keep their (harmless) queries; an
        // asset has no `params`, so the task rules for it do not apply.
        assert_eq!(
            at(out, "/storage/ipfs/gatewayUrl"),
            "https://ipfs.example/ipfs/Qm?filename=a"
        );
        assert_eq!(at(out, "/params/upload/url"), "https://h/kept?filename=a");
        let twice = scrub(Kind::Asset, &once.to_bytes(), b"").unwrap();
        assert!(!twice.changed, "{}", twice.value);
        // A task body is scrubbed by the task rules only.
        let task = scrub(Kind::Task, body.to_string().as_bytes(), b"")
            .unwrap()
            .value;
        assert_eq!(at(&task, "/source/encryption/encryptedKey"), "K");
        assert_eq!(at(&task, "/params/upload/url"), "https://h/kept");
    }

    #[test]
    fn urls_in_nft_metadata_text_lose_their_queries_too() {
        let cases = [
            (
                "see https://a.example/x?y=1#f and http://b/?c",
                "see https://a.example/x and http://b/",
            ),
            ("<https://a/?q>\"ipfs://Qm?x\"", "<https://a/>\"ipfs://Qm\""),
            ("https://gw/?u=https://in/?sig=1 next", "https://gw/ next"),
            ("no url ?q=1", "no url ?q=1"),
            ("://x?y", "://x?y"),
            ("https://a/b", "https://a/b"),
        ];
        for (input, want) in cases {
            let mut s = input.to_owned();
            let changed = strip_url_queries(&mut s);
            assert_eq!((s.as_str(), changed), (want, input != want), "{input}");
            assert!(!strip_url_queries(&mut s), "idempotent: {s}");
        }
    }

    #[test]
    fn generated_asset_bodies_are_served_scrubbed_for_good() {
        const KEY: &[u8] = b"sk_test_KEY";
        let tokens = [
            "https://",
            "u:p@h",
            "?",
            "X-Amz-Signature=",
            "abc",
            "&",
            "#",
            "%3D",
            " ",
            "sk_test_KEY",
            "\\u0073",
            "@",
            "/",
            "***",
            "1",
        ];
        let mut state = 0x0bad_5eed_1234_5678_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let mut pick = || -> String {
                let len = next() % 8;
                (0..len)
                    .map(|_| tokens[(next() % tokens.len() as u64) as usize])
                    .collect()
            };
            let (a, b, c) = (pick(), pick(), pick());
            let body = json!({"source": {"url": a, "encryption": {"encryptedKey": b}},
                "playbackPolicy": {"webhookContext": {"k": c, "n": 1.5, "l": [a, true]}},
                "storage": {"ipfs": {"spec": {"nftMetadata": {"x": [b, {"y": c}]}}}},
                "note": a});
            let Ok(out) = scrub(Kind::Asset, body.to_string().as_bytes(), KEY) else {
                continue;
            };
            let served = out.to_bytes();
            let value: Value = serde_json::from_slice(&served).unwrap();
            assert!(!holds_key(&value, KEY));
            assert_eq!(at(&value, "/source/encryption/encryptedKey"), MASK);
            assert_eq!(at(&value, "/playbackPolicy/webhookContext/k"), MASK);
            assert!(!scrub(Kind::Asset, &served, KEY).unwrap().changed, "{body}");
        }
    }
}
