//! A certificate credential: the private key signs a client assertion (a JWT,
//! RS256) that proves the client's identity to the token endpoint, and the
//! certificate's thumbprint (`x5t#S256`) says which registered certificate
//! checks it.

use super::IdpError;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::secret::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How long a client assertion is valid: Entra accepts up to 10 minutes.
const ASSERTION_LIFETIME_SECS: i64 = 600;

pub struct Certificate {
    key: EncodingKey,
    /// base64url of the SHA-256 of the certificate's DER.
    thumbprint: String,
    clock: Clock,
}

/// The private key stays out of `Debug`.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

impl Certificate {
    /// From `AZURE_CLIENT_CERTIFICATE_PATH`: one PEM file holding the private key
    /// (PKCS#8 or PKCS#1 RSA) and the certificate, in either order. A key that
    /// cannot sign stops the start.
    pub fn load(path: &str, clock: Clock) -> Result<Self, ConfigError> {
        const VAR: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
        let bad = |why: String| ConfigError(format!("{VAR}: {why}"));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")))?;
        let certificate = CertificateDer::from_pem_slice(&pem)
            .map_err(|_| bad(format!("{path} holds no PEM certificate")))?;
        let text = String::from_utf8_lossy(&pem);
        let block = private_key_block(&text).map_err(|why| bad(format!("{path}: {why}")))?;
        // The key's error would name only its kind, never its bytes.
        let key = EncodingKey::from_rsa_pem(block.as_bytes()).map_err(|e| {
            bad(format!(
                "{path} holds no RSA private key in PEM ({:?})",
                e.kind()
            ))
        })?;
        let loaded = Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(certificate.as_ref())),
            clock,
        };
        loaded
            .assertion("probe", "probe")
            .map_err(|_| bad(format!("{path}: the private key cannot sign RS256")))?;
        Ok(loaded)
    }

    /// A fresh client assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<Secret, IdpError> {
        let now = self.clock.now();
        let claims = Claims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: format!("{:032x}", rand::random::<u128>()),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| {
                IdpError::Protocol(format!("cannot sign the client assertion ({:?})", e.kind()))
            })
    }
}

/// The private key's PEM block, wherever it is in the file.
fn private_key_block(pem: &str) -> Result<&str, &'static str> {
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..]
            .find("-----")
            .ok_or("a PEM block is cut short")?
            + 11;
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or("a PEM block has no END line")?
            + end_marker.len();
        if label == "ENCRYPTED PRIVATE KEY" {
            return Err(
                "the private key is encrypted; store it without a passphrase (openssl pkcs8 -nocrypt)",
            );
        }
        if label.ends_with("PRIVATE KEY") {
            return Ok(&block[..end]);
        }
        rest = &block[end..];
    }
    Err("holds no private key")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn the_key_block_is_found_before_or_after_the_certificate() {
        let key = KEY.trim_end();
        assert_eq!(private_key_block(&format!("{KEY}{CERT}")).unwrap(), key);
        assert_eq!(private_key_block(&format!("{CERT}{KEY}")).unwrap(), key);
        let rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----";
        assert_eq!(private_key_block(&format!("{CERT}{rsa}\n")).unwrap(), rsa);
        assert!(private_key_block(CERT).is_err());
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            private_key_block(encrypted)
                .unwrap_err()
                .contains("encrypted")
        );
        assert!(private_key_block("-----BEGIN PRIVATE KEY-----\nMIIE").is_err());
    }
}
