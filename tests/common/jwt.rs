//! Viewer tokens made the way an app would make them, independently of taskgate's code: the
//! JWS compact form by hand with `base64`, HS256 with the `hmac`/`sha2` crates, ES256 and
//! EdDSA with `ring`'s signing keys, and their public keys as PEM `PUBLIC KEY` blocks.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use hmac::{Hmac, Mac};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use serde_json::{json, Value};
use sha2::Sha256;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims granting `ids` (the first in `sub`, all in `ids`), valid from now for `ttl` seconds.
pub fn claims(ids: &[&str], ttl: i64) -> Value {
    json!({ "sub": ids[0], "ids": ids, "iat": now(), "exp": now() + ttl })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload`, base64url without padding.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

pub fn hs256(secret: &[u8], claims: &Value) -> String {
    let input = signing_input(&json!({"alg": "HS256", "typ": "JWT"}), claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// `alg: none`: no signature at all.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT"}), claims)
    )
}

/// The token with its payload replaced (the signature kept).
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// An ES256 (P-256) signing key and its public key's PEM.
pub struct Es256 {
    pair: EcdsaKeyPair,
    pub public_pem: String,
}

impl Es256 {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        // SubjectPublicKeyInfo: id-ecPublicKey, prime256v1, then the uncompressed point.
        let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
        spki.extend_from_slice(pair.public_key().as_ref());
        Self {
            public_pem: pem(&spki),
            pair,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let input = signing_input(&json!({"alg": "ES256", "typ": "JWT"}), claims);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// An Ed25519 signing key and its public key's PEM.
pub struct EdDsa {
    pair: Ed25519KeyPair,
    pub public_pem: String,
}

impl EdDsa {
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = hex("302a300506032b6570032100");
        spki.extend_from_slice(pair.public_key().as_ref());
        Self {
            public_pem: pem(&spki),
            pair,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let input = signing_input(&json!({"alg": "EdDSA", "typ": "JWT"}), claims);
        format!("{input}.{}", b64(self.pair.sign(input.as_bytes()).as_ref()))
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
