//! Viewer access (docs/security.md, "Viewer access"): which request may read which id.
//!
//! A viewer token is a JWT: `HS256` under one of the access secrets, or `ES256` / `EdDSA` under
//! one of the configured public keys. `jsonwebtoken` parses and validates it; the signature is
//! checked by `ring` ([`ring_provider`]). The algorithms tried are fixed by the keys'
//! types, never chosen by the token: a token says `alg`, and it is only ever checked against
//! keys of that algorithm's own type, so `alg: none`, an unknown algorithm, `HS256` signed
//! with a public key's bytes and any other mismatch are refused. `exp` is required, `nbf`
//! honoured, both with [`LEEWAY`]. The token grants the id in `sub` and the ids in `ids`.
//!
//! A leaf: imports only [`crate::secret`]. The token is never logged, never put in an error.

mod ring_provider;

use std::{collections::HashSet, fmt, time::Duration};

use http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The query parameter of RFC 6750 §2.3, for `EventSource`.
pub const QUERY_PARAMETER: &str = "access_token";
/// Longer tokens are not tokens taskgate minted or will verify (and cost work to decode).
const MAX_TOKEN_BYTES: usize = 4096;
/// HS256 secrets shorter than this get a warning (RFC 7518 §3.2 asks for at least the hash size).
const MIN_SECRET_BYTES: usize = 32;
/// More ids than this in one token is not a viewer's token.
const MAX_IDS: usize = 256;

/// What one access check came to: the access event's `access` field and the label of
/// `taskgate_access_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Viewer access is not configured.
    Off,
    Granted,
    /// No token (or a header of another scheme).
    Missing,
    /// Malformed, badly signed, expired or not yet valid.
    Invalid,
    /// Valid, but not for this id.
    Forbidden,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Off,
        Outcome::Granted,
        Outcome::Missing,
        Outcome::Invalid,
        Outcome::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Off => "off",
            Outcome::Granted => "granted",
            Outcome::Missing => "missing",
            Outcome::Invalid => "invalid",
            Outcome::Forbidden => "forbidden",
        }
    }
}

/// A public key of a configured type.
#[derive(Clone)]
pub struct PublicKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl PublicKey {
    /// The same algorithm and key bytes.
    pub fn same_as(&self, other: &PublicKey) -> bool {
        self.algorithm == other.algorithm
            && self.key.try_get_as_bytes().ok() == other.key.try_get_as_bytes().ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", self.algorithm)
    }
}

/// Every PEM `PUBLIC KEY` block of `text`: P-256 (`ES256`) or Ed25519 (`EdDSA`). What is
/// wrong is a phrase that never quotes the file.
pub fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = &rest[start..];
        let end = block
            .find(END)
            .ok_or("a PEM block has no END line")?
            .saturating_add(END.len());
        let pem = &block[..end];
        keys.push(parse_public_key(pem.as_bytes()).ok_or_else(|| {
            format!(
                "PEM block {} is not a P-256 (ES256) or Ed25519 (EdDSA) public key",
                keys.len() + 1
            )
        })?);
        rest = &block[end..];
    }
    if keys.is_empty() {
        return Err("holds no PEM public key (-----BEGIN PUBLIC KEY-----)".into());
    }
    Ok(keys)
}

fn parse_public_key(pem: &[u8]) -> Option<PublicKey> {
    ring_provider::install();
    // Each parser refuses a key of the other's type; the point's length tells P-256 from P-384.
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return (key.try_get_as_bytes().ok()?.len() == 65).then_some(PublicKey {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    let key = DecodingKey::from_ed_pem(pem).ok()?;
    (key.try_get_as_bytes().ok()?.len() == 32).then_some(PublicKey {
        algorithm: Algorithm::EdDSA,
        key,
    })
}

/// The keys viewer tokens are checked against, built once per (re)load.
pub struct Keys {
    /// One per access secret.
    secrets: Vec<DecodingKey>,
    public: Vec<PublicKey>,
    hs256: Validation,
    es256: Validation,
    eddsa: Validation,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("secrets", &self.secrets.len())
            .field("public", &self.public)
            .finish()
    }
}

impl Keys {
    pub fn new(secrets: &[Secret], public: Vec<PublicKey>) -> Self {
        ring_provider::install();
        let short = secrets
            .iter()
            .filter(|s| s.expose().len() < MIN_SECRET_BYTES)
            .count();
        if short > 0 {
            // Accepted (the operator may have reasons), but said once per (re)load.
            tracing::warn!(
                short,
                min_bytes = MIN_SECRET_BYTES,
                "an access secret is shorter than 32 bytes: HS256 tokens signed with it can be \
                 brute-forced offline (use e.g. `openssl rand -hex 32`)"
            );
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = LEEWAY.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = false;
            v.required_spec_claims = HashSet::from(["exp".to_owned()]);
            v
        };
        Self {
            secrets: secrets
                .iter()
                .filter(|s| !s.expose().is_empty())
                .filter_map(|s| DecodingKey::from_secret(s.expose().as_bytes()).ok())
                .collect(),
            public,
            hs256: validation(Algorithm::HS256),
            es256: validation(Algorithm::ES256),
            eddsa: validation(Algorithm::EdDSA),
        }
    }

    /// The ids `token` grants, or `None` when it is not a valid token under any key.
    pub fn verify(&self, token: &str) -> Option<Grant> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        // The header only picks which keys to try; `decode` checks it again against the
        // validation of those keys' own algorithm.
        let alg = jsonwebtoken::decode_header(token).ok()?.alg;
        let (keys, validation): (Vec<&DecodingKey>, &Validation) = match alg {
            Algorithm::HS256 => (self.secrets.iter().collect(), &self.hs256),
            Algorithm::ES256 | Algorithm::EdDSA => (
                self.public
                    .iter()
                    .filter(|k| k.algorithm == alg)
                    .map(|k| &k.key)
                    .collect(),
                if alg == Algorithm::ES256 {
                    &self.es256
                } else {
                    &self.eddsa
                },
            ),
            _ => return None,
        };
        keys.into_iter().find_map(|key| {
            jsonwebtoken::decode::<Claims>(token, key, validation)
                .ok()
                .map(|data| data.claims.into_grant())
        })
    }

    /// Judges a token for `id`.
    pub fn check(&self, token: Option<&str>, id: &str) -> Outcome {
        let Some(token) = token else {
            return Outcome::Missing;
        };
        match self.verify(token) {
            None => Outcome::Invalid,
            Some(grant) if grant.allows(id) => Outcome::Granted,
            Some(_) => Outcome::Forbidden,
        }
    }
}

/// The claims taskgate reads (others are ignored; `exp` and `nbf` are `jsonwebtoken`'s).
#[derive(Deserialize, Serialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

impl Claims {
    fn into_grant(self) -> Grant {
        let mut ids = self.ids;
        ids.truncate(MAX_IDS);
        ids.extend(self.sub);
        Grant { ids }
    }
}

/// The ids a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    ids: Vec<String>,
}

impl Grant {
    pub fn allows(&self, id: &str) -> bool {
        self.ids.iter().any(|granted| granted == id)
    }
}

/// An `HS256` token granting `ids` for `ttl` from `now_secs` (unix seconds), signed with
/// `secret`: what `taskgate token` prints.
pub fn mint(
    secret: &Secret,
    ids: &[String],
    ttl: Duration,
    now_secs: u64,
) -> Result<String, String> {
    ring_provider::install();
    let key = EncodingKey::from_secret(secret.expose().as_bytes())
        .map_err(|_| "the access secret is empty".to_owned())?;
    let claims = Claims {
        sub: match ids {
            [one] => Some(one.clone()),
            _ => None,
        },
        ids: if ids.len() == 1 {
            Vec::new()
        } else {
            ids.to_vec()
        },
        exp: Some(now_secs.saturating_add(ttl.as_secs())),
        iat: Some(now_secs),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| format!("cannot sign the token ({e})"))
}

/// Where a request carried its token.
#[derive(Debug, PartialEq, Eq)]
pub enum Carried<'a> {
    None,
    Token(&'a str),
    /// In the `Authorization` header and in the query (or twice in one of them): refused
    /// with 400 (RFC 6750 §2: "MUST NOT use more than one method").
    Ambiguous,
}

/// The token of a request: `Authorization: Bearer <token>` or `?access_token=<token>`.
/// A header of another scheme carries no token.
pub fn carried<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Carried<'a> {
    let mut found = Vec::with_capacity(1);
    for value in headers.get_all(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            found.push("");
            continue;
        };
        let value = value.trim();
        if let Some((scheme, token)) = value.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                found.push(token.trim());
            }
        }
    }
    for pair in query.unwrap_or_default().split('&') {
        if let Some(token) = pair
            .strip_prefix(QUERY_PARAMETER)
            .and_then(|r| r.strip_prefix('='))
        {
            found.push(token);
        }
    }
    match found.as_slice() {
        [] => Carried::None,
        [token] => Carried::Token(token),
        _ => Carried::Ambiguous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_minted_token_grants_its_ids_and_no_other() {
        let secret = Secret::new("s3cret");
        let keys = Keys::new(&[Secret::new("old"), secret.clone()], Vec::new());
        let one = mint(&secret, &["task-1".into()], Duration::from_secs(60), now()).unwrap();
        assert_eq!(keys.check(Some(&one), "task-1"), Outcome::Granted);
        assert_eq!(keys.check(Some(&one), "task-2"), Outcome::Forbidden);
        let two = mint(
            &secret,
            &["a".into(), "b".into()],
            Duration::from_secs(60),
            now(),
        )
        .unwrap();
        assert_eq!(keys.check(Some(&two), "b"), Outcome::Granted);
        assert_eq!(keys.check(None, "b"), Outcome::Missing);
        let other = Keys::new(&[Secret::new("other")], Vec::new());
        assert_eq!(other.check(Some(&two), "b"), Outcome::Invalid);
    }

    #[test]
    fn expiry_is_required_and_has_thirty_seconds_of_leeway() {
        let secret = Secret::new("s3cret");
        let keys = Keys::new(std::slice::from_ref(&secret), Vec::new());
        let ids = ["x".to_owned()];
        let just_expired = mint(&secret, &ids, Duration::ZERO, now() - 20).unwrap();
        assert_eq!(keys.check(Some(&just_expired), "x"), Outcome::Granted);
        let expired = mint(&secret, &ids, Duration::ZERO, now() - 40).unwrap();
        assert_eq!(keys.check(Some(&expired), "x"), Outcome::Invalid);
    }

    #[test]
    fn tokens_are_found_in_the_header_or_the_query_but_not_both() {
        let mut headers = HeaderMap::new();
        assert_eq!(carried(&headers, Some("a=1")), Carried::None);
        assert_eq!(
            carried(&headers, Some("a=1&access_token=t.o.k")),
            Carried::Token("t.o.k")
        );
        headers.insert(header::AUTHORIZATION, "Bearer h.e.d".parse().unwrap());
        assert_eq!(carried(&headers, None), Carried::Token("h.e.d"));
        assert_eq!(
            carried(&headers, Some("access_token=t.o.k")),
            Carried::Ambiguous
        );
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(carried(&headers, None), Carried::None);
    }

    #[test]
    fn public_key_files_refuse_what_is_not_a_p256_or_ed25519_public_key() {
        assert!(parse_public_keys("").is_err());
        assert!(parse_public_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        let e = parse_public_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .unwrap_err();
        assert!(e.contains("block 1"), "{e}");
    }
}
