//! The compact, versioned encoding of an answer kept in the shared second level (Redis).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use super::{Answer, Store};
use crate::{clock::unix_ms, resource::Kind};

const ENCODING_V1: &[u8] = b"TGA1";

impl Answer {
    /// `TGA1`, status (u16), stored-at (unix ms, u64), TTL (ms, u64), content type and ETag
    /// (each a u16 length and bytes), then the body. All integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let stored_unix_ms =
            unix_ms(SystemTime::now()).saturating_sub(self.stored_at.elapsed().as_millis() as u64);
        let etag = self.etag.as_ref().map_or(&[][..], HeaderValue::as_bytes);
        let ct = self.content_type.as_bytes();
        let mut out = Vec::with_capacity(4 + 2 + 16 + 4 + ct.len() + etag.len() + self.body.len());
        out.extend_from_slice(ENCODING_V1);
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(&stored_unix_ms.to_be_bytes());
        out.extend_from_slice(&(self.ttl().unwrap_or_default().as_millis() as u64).to_be_bytes());
        for field in [ct, etag] {
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Answer::encode`]'s output for a resource of `kind`; `None` for anything else
    /// (another version, garbage, an answer whose lifetime is over).
    pub fn decode(kind: Kind, bytes: &[u8]) -> Option<Self> {
        let mut r = bytes.strip_prefix(ENCODING_V1)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = (r.get(..n)?, r.get(n..)?);
            r = tail;
            Some(head)
        };
        let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into().ok()?)).ok()?;
        let stored_unix_ms = u64::from_be_bytes(take(8)?.try_into().ok()?);
        let ttl = Duration::from_millis(u64::from_be_bytes(take(8)?.try_into().ok()?));
        // Kept for the format's sake, never served: a value written into Redis by anyone must
        // not choose what browsers are told the body is. Only JSON answers are shared.
        let ct_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let _stored_content_type = take(ct_len)?;
        let etag_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let etag = match take(etag_len)? {
            [] => None,
            e => Some(HeaderValue::from_bytes(e).ok()?),
        };
        let body = Bytes::copy_from_slice(r);
        let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(stored_unix_ms));
        if ttl.is_zero()
            || age >= ttl
            || !(status == StatusCode::OK || status == StatusCode::NOT_FOUND)
        {
            return None;
        }
        let phase = kind.phase(&body);
        Some(Self {
            status,
            phase,
            body,
            content_type: super::respond::JSON,
            etag,
            retry_after: None,
            // Unfinished work is shared only while webhooks are trusted; it never goes public.
            store: Store::Keep {
                ttl,
                public: phase.is_none_or(|p| p.is_finished()),
                shared: true,
            },
            error: None,
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        })
    }
}
