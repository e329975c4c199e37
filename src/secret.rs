//! Values that must never reach a log line, an error message or a `Debug` print.

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::OnceLock;

/// An access token, refresh token, password, client secret or API key.
///
/// `Debug` redacts, there is no `Display`, and reading the value is an explicit
/// [`Secret::expose`] call, so a secret can only leave this type on purpose.
#[derive(Clone)]
pub struct Secret {
    value: String,
    /// Computed on first use and kept: a cached token is fingerprinted once, not
    /// on every read that audits it.
    fingerprint: OnceLock<String>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            fingerprint: OnceLock::new(),
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// First 12 hex digits of the SHA-256 of the value: enough to correlate audit
    /// events about one token, useless for recovering it.
    pub fn fingerprint(&self) -> &str {
        self.fingerprint
            .get_or_init(|| hex(&Sha256::digest(self.value.as_bytes())[..6]))
    }
}

/// Lowercase hex. Every cache miss fingerprints a token: one allocation, no
/// formatting.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    hex
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// For the one place a secret is written on purpose: the token JSON in the store.
pub fn serialize_exposed<S: serde::Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("eyJ-very-secret");
        assert!(!format!("{secret:?}").contains("very-secret"));
        assert!(!format!("{:?}", Some(&secret)).contains("very-secret"));
    }

    #[test]
    fn fingerprint_is_12_hex_digits_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(Secret::new("abc").fingerprint(), "ba7816bf8f01");
    }
}
