//! The signatures of viewer tokens, checked by `ring` (already taskgate's TLS crypto) behind
//! `jsonwebtoken`'s [`CryptoProvider`] interface. `jsonwebtoken` keeps what it is good at —
//! splitting and decoding the token, parsing the header, checking the claims, refusing an
//! algorithm the [`jsonwebtoken::Validation`] does not list or a key of another family — and
//! this file only answers "is this signature right under this key".
//!
//! Only the algorithms taskgate accepts exist here: `HS256` (sign and verify), `ES256` and
//! `EdDSA` (verify). Any other algorithm, or a key of another family, is an error, so an
//! `alg` that does not match the key's type can never be verified.

use jsonwebtoken::{
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{new_error, Error, ErrorKind},
    signature::{self, Signer, Verifier},
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
};
use ring::{hmac, signature as sig};

/// The provider: installed once per process by [`install`].
static RING: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes `ring` the process's JWT crypto provider (idempotent; no other is compiled in).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when one is installed already, which only this function does.
        let _ = RING.install_default();
    });
}

fn bad_key() -> Error {
    new_error(ErrorKind::InvalidKeyFormat)
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match algorithm {
        Algorithm::HS256 if key.family() == AlgorithmFamily::Hmac => Ok(Box::new(Hs256(
            hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
        ))),
        Algorithm::HS256 => Err(bad_key()),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let bytes = key.try_get_as_bytes()?;
    match (algorithm, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => {
            Ok(Box::new(Hs256(hmac::Key::new(hmac::HMAC_SHA256, bytes))))
        }
        // The uncompressed P-256 point from the key's SubjectPublicKeyInfo.
        (Algorithm::ES256, AlgorithmFamily::Ec) if bytes.len() == 65 => Ok(Box::new(Public {
            algorithm: Algorithm::ES256,
            key: sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, bytes.to_vec()),
        })),
        (Algorithm::EdDSA, AlgorithmFamily::Ed) if bytes.len() == 32 => Ok(Box::new(Public {
            algorithm: Algorithm::EdDSA,
            key: sig::UnparsedPublicKey::new(&sig::ED25519, bytes.to_vec()),
        })),
        (Algorithm::HS256 | Algorithm::ES256 | Algorithm::EdDSA, _) => Err(bad_key()),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

struct Hs256(hmac::Key);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    /// Constant time (ring compares the tags so).
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct Public {
    algorithm: Algorithm,
    key: sig::UnparsedPublicKey<Vec<u8>>,
}

impl Verifier<Vec<u8>> for Public {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        self.key
            .verify(msg, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Public {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
