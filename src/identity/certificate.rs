//! A certificate credential: the private key signs a client assertion (a JWT,
//! RS256) that proves the client's identity to the token endpoint, and the
//! certificate's thumbprint (`x5t#S256`) says which registered certificate
//! checks it.

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
    /// (PKCS#8 or PKCS#1 RSA) and the certificate.
    pub fn load(path: &str, clock: Clock) -> Result<Self, ConfigError> {
        const VAR: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
        let bad = |why: String| ConfigError(format!("{VAR}: {why}"));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read {path}: {e}")))?;
        let certificate = CertificateDer::from_pem_slice(&pem)
            .map_err(|_| bad(format!("{path} holds no PEM certificate")))?;
        // The key's error would name only its kind, never its bytes.
        let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
            bad(format!(
                "{path} holds no RSA private key in PEM ({:?})",
                e.kind()
            ))
        })?;
        Ok(Self {
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(certificate.as_ref())),
            clock,
        })
    }

    /// A fresh client assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Secret {
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
        // Signing plain claims with a key that loaded cannot fail.
        Secret::new(jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default())
    }
}
