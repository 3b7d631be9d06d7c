//! Request ids and W3C trace context (`traceparent`).
//!
//! Ids need to be unique, not secret, so a per-thread xorshift generator seeded from the
//! OS-seeded `RandomState` is enough and costs no lock or syscall per request.

use std::{
    cell::Cell,
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
};

use http::{HeaderName, HeaderValue};

/// The request id header: taken from the client when acceptable, sent upstream and echoed back.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context: continued from the client, sent upstream as a child.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

fn next_u64() -> u64 {
    RNG.with(|rng| {
        // xorshift64*: fast, full period, fine for ids that only need to be unique.
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn nonzero_u64() -> u64 {
    loop {
        let v = next_u64();
        if v != 0 {
            return v;
        }
    }
}

/// A new request id: 32 lowercase hex characters.
pub fn new_request_id() -> HeaderValue {
    let id = u128::from(next_u64()) << 64 | u128::from(next_u64());
    HeaderValue::from_bytes(&hex32(id)).expect("hex is a valid header value")
}

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 0xf]];
        b += 1;
    }
    pairs
};

/// `v` as 32 lowercase hex digits (ids and trace ids, twice per request: no formatter
/// machinery, and one table lookup per byte rather than two, about 90 instructions less).
fn hex32(v: u128) -> [u8; 32] {
    let mut out = [0; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
    out
}

/// The client's `x-request-id` when it is reasonable to echo and log: 1..=128 visible ASCII
/// characters without quotes or backslashes (it lands in JSON logs and response headers).
pub fn accept_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

/// A W3C trace context (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the client's trace when its `traceparent` is valid, else starts a new one.
    /// Either way the returned context has a fresh span id: taskgate's own span.
    pub fn continue_or_start(client: Option<&HeaderValue>) -> Self {
        match client.and_then(|v| Self::parse(v.as_bytes())) {
            Some(parent) => Self {
                span_id: nonzero_u64(),
                ..parent
            },
            None => Self {
                trace_id: (u128::from(nonzero_u64()) << 64) | u128::from(next_u64()),
                span_id: nonzero_u64(),
                flags: 0x01,
            },
        }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid per the W3C spec.
    pub fn parse(v: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(v).ok()?.trim();
        let mut parts = s.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; future versions may append more.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let lower_hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version, 2)
            && lower_hex(trace, 32)
            && lower_hex(span, 16)
            && lower_hex(flags, 2))
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        // Not `from_utf8_lossy`, which checks byte by byte (about 280 instructions per request).
        String::from_utf8(hex32(self.trace_id).to_vec()).expect("hex digits are ASCII")
    }

    /// `00-{trace id}-{span id}-{flags}`, in lowercase hex (built in place: this is sent on
    /// every upstream call, and `format!` of three hex numbers cost about 2k instructions).
    pub fn to_header(self) -> HeaderValue {
        let mut s = [b'-'; 55];
        s[..2].copy_from_slice(b"00");
        s[3..35].copy_from_slice(&hex32(self.trace_id));
        s[36..52].copy_from_slice(&hex32(u128::from(self.span_id))[16..]);
        s[53..].copy_from_slice(&hex32(u128::from(self.flags))[30..]);
        HeaderValue::from_bytes(&s).expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(accept_request_id(&a));
        assert!(
            a.as_bytes()
                .iter()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a:?}"
        );
        // 128 random bits: neither half is blank (each is, by chance, once in 2^64).
        for id in [&a, &b] {
            let (high, low) = id.as_bytes().split_at(16);
            assert!(high.iter().any(|&c| c != b'0') && low.iter().any(|&c| c != b'0'));
        }
    }

    #[test]
    fn odd_client_request_ids_are_replaced() {
        assert!(accept_request_id(&HeaderValue::from_static("req-1")));
        assert!(!accept_request_id(&HeaderValue::from_static("")));
        assert!(!accept_request_id(&HeaderValue::from_static("a b")));
        assert!(!accept_request_id(&HeaderValue::from_static("a\"b")));
        assert!(!accept_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn a_client_trace_is_continued_with_a_new_span() {
        let client =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ctx = TraceContext::continue_or_start(Some(&client));
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(ctx.flags, 1);
        let header = ctx.to_header();
        assert!(header
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(TraceContext::parse(header.as_bytes()), Some(ctx));
    }

    #[test]
    fn traceparent_is_written_in_its_w3c_shape() {
        let ctx = TraceContext {
            trace_id: 0x0a0b_f100_0000_0000_0000_0000_00c0_ffee,
            span_id: 0x00f0_67aa_0ba9_02b7,
            flags: 1,
        };
        assert_eq!(
            ctx.to_header(),
            "00-0a0bf100000000000000000000c0ffee-00f067aa0ba902b7-01"
        );
        let ctx = TraceContext {
            trace_id: u128::MAX,
            span_id: u64::MAX,
            flags: 0xfe,
        };
        assert_eq!(
            ctx.to_header(),
            format!("00-{}-{}-fe", "f".repeat(32), "f".repeat(16))
        );
    }

    #[test]
    fn trace_ids_are_written_as_32_lowercase_hex_digits() {
        let client =
            HeaderValue::from_static("00-000000000000000000000000000a0bf1-00f067aa0ba902b7-01");
        let ctx = TraceContext::continue_or_start(Some(&client));
        assert_eq!(ctx.trace_id_hex(), "000000000000000000000000000a0bf1");
        for _ in 0..100 {
            let ctx = TraceContext::continue_or_start(None);
            assert_eq!(ctx.trace_id_hex(), format!("{:032x}", ctx.trace_id));
        }
    }

    #[test]
    fn every_byte_is_written_as_format_writes_it() {
        for b in 0..=u8::MAX {
            let v = u128::from(b) * (u128::MAX / 255); // b in every byte
            assert_eq!(hex32(v).as_slice(), format!("{v:032x}").as_bytes(), "{b}");
        }
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad.as_bytes()), None, "{bad}");
        }
        let a = TraceContext::continue_or_start(None);
        let b = TraceContext::continue_or_start(None);
        assert_ne!(a.trace_id, b.trace_id);
    }
}
