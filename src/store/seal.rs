//! Refresh tokens at rest: AES-256-GCM when `TOKEN_ENCRYPTION_KEY` is set
//! (aws-lc-rs, the crypto library rustls already brings).
//!
//! Stored form: `enc:v1:` + base64(nonce ‖ ciphertext ‖ tag). The Redis key name is
//! the associated data, so a sealed value copied under another key does not open.

use crate::secret::Secret;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const PREFIX: &str = "enc:v1:";

/// Why a stored secret could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsealable {
    #[error("sealed with a different TOKEN_ENCRYPTION_KEY, or damaged")]
    WrongKeyOrDamaged,
    #[error("sealed, but TOKEN_ENCRYPTION_KEY is not set")]
    NoKey,
}

pub struct Sealer {
    key: Option<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypting", &self.key.is_some())
            .finish()
    }
}

impl Sealer {
    /// `key`: the 32 bytes of `TOKEN_ENCRYPTION_KEY`, or `None` to store in the clear.
    pub fn new(key: Option<&[u8; 32]>) -> Self {
        Self {
            key: key.and_then(|k| UnboundKey::new(&AES_256_GCM, k).ok().map(LessSafeKey::new)),
        }
    }

    pub fn seal(&self, name: &str, secret: &Secret) -> String {
        let Some(key) = &self.key else {
            return secret.expose().to_owned();
        };
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = secret.expose().as_bytes().to_vec();
        // Sealing a byte buffer with a valid key and a fresh nonce cannot fail.
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            return String::new();
        }
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// A value written before encryption was turned on is read as it is (and
    /// sealed on its next write).
    pub fn open(&self, name: &str, stored: &str) -> Result<Secret, Unsealable> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(Secret::new(stored));
        };
        let key = self.key.as_ref().ok_or(Unsealable::NoKey)?;
        let mut data = STANDARD
            .decode(encoded)
            .map_err(|_| Unsealable::WrongKeyOrDamaged)?;
        if data.len() < NONCE_LEN {
            return Err(Unsealable::WrongKeyOrDamaged);
        }
        let mut sealed = data.split_off(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&data).map_err(|_| Unsealable::WrongKeyOrDamaged)?;
        let plain = key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut sealed)
            .map_err(|_| Unsealable::WrongKeyOrDamaged)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| Unsealable::WrongKeyOrDamaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let sealer = Sealer::new(Some(&[7u8; 32]));
        let secret = Secret::new("0.refresh-token-value");
        let sealed = sealer.seal("ns:tokens:secret:user:a:S", &secret);
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("refresh-token-value"));
        assert_eq!(
            sealer.open("ns:tokens:secret:user:a:S", &sealed),
            Ok(secret.clone())
        );
        assert_ne!(
            sealed,
            sealer.seal("ns:tokens:secret:user:a:S", &secret),
            "fresh nonce each time"
        );
        assert_eq!(
            sealer.open("ns:tokens:secret:user:b:S", &sealed),
            Err(Unsealable::WrongKeyOrDamaged)
        );
        let other = Sealer::new(Some(&[8u8; 32]));
        assert_eq!(
            other.open("ns:tokens:secret:user:a:S", &sealed),
            Err(Unsealable::WrongKeyOrDamaged)
        );
        assert_eq!(
            Sealer::new(None).open("ns:tokens:secret:user:a:S", &sealed),
            Err(Unsealable::NoKey)
        );
        assert_eq!(
            sealer.open("x", "enc:v1:!!"),
            Err(Unsealable::WrongKeyOrDamaged)
        );
    }

    #[test]
    fn without_a_key_values_are_stored_as_they_are() {
        let sealer = Sealer::new(None);
        let secret = Secret::new("plain");
        assert_eq!(sealer.seal("k", &secret), "plain");
        assert_eq!(Sealer::new(Some(&[1; 32])).open("k", "plain"), Ok(secret));
    }
}
