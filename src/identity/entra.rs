//! The v2.0 token endpoint spoken directly (every flow but managed identity):
//! a form post, Entra's success and error bodies.

use super::{Acquired, IdpError};
use crate::clock::Clock;
use crate::secret::Secret;
use async_trait::async_trait;
use serde::Deserialize;

/// Where grants are posted: Entra's token endpoint over HTTP, or `handler dev`'s
/// issuer in process.
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// Posts one grant (form fields) and returns the token, or the error
    /// classified.
    async fn post(&self, form: &[(&str, &str)]) -> Result<Acquired, IdpError>;
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
pub struct TokenEndpoint {
    http: reqwest::Client,
    url: String,
    /// Turns `expires_in` into `expires_on`.
    clock: Clock,
}

#[derive(Deserialize)]
struct Success {
    access_token: Secret,
    #[serde(deserialize_with = "seconds")]
    expires_in: u64,
    #[serde(default, deserialize_with = "optional_seconds")]
    refresh_in: Option<u64>,
    refresh_token: Option<Secret>,
}

/// Entra's error body. Only `error` and the codes are kept: the description is
/// prose that is not ours to echo.
#[derive(Deserialize, Default)]
pub(super) struct EntraError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_codes: Vec<u32>,
}

impl EntraError {
    pub(super) fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// v2.0 sends numbers; v1.0 and some proxies send them as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrString::deserialize(d)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

fn optional_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    seconds(d).map(Some)
}

/// Classifies a failed answer the way the refresh logic needs it: throttling and
/// outages are worth retrying (after `Retry-After`), everything else is a refusal.
pub(super) fn classify(status: u16, body: &[u8], retry_after: Option<u64>) -> IdpError {
    let entra = EntraError::parse(body);
    let aadsts = entra.error_codes.first().copied();
    if status == 429 || status >= 500 {
        IdpError::Unavailable {
            status,
            retry_after,
            aadsts,
        }
    } else {
        IdpError::Rejected {
            status,
            error: if entra.error.is_empty() {
                "unknown_error".to_owned()
            } else {
                entra.error
            },
            aadsts,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Entra).
pub(super) fn parse_retry_after(value: Option<&str>) -> Option<u64> {
    value?.trim().parse().ok()
}

impl TokenEndpoint {
    pub fn new(http: reqwest::Client, url: String, clock: Clock) -> Self {
        Self { http, url, clock }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl Endpoint for TokenEndpoint {
    async fn post(&self, form: &[(&str, &str)]) -> Result<Acquired, IdpError> {
        let response = self
            .http
            .post(&self.url)
            .form(form)
            .send()
            .await
            .map_err(|e| IdpError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let body = response
            .bytes()
            .await
            .map_err(|e| IdpError::Unreachable(e.without_url().to_string()))?;
        if !(200..300).contains(&status) {
            let error = classify(status, &body, retry_after);
            tracing::warn!(%error, "token endpoint refused a grant");
            return Err(error);
        }
        let success: Success = serde_json::from_slice(&body).map_err(|e| {
            IdpError::Protocol(format!(
                "token response is not the expected JSON ({:?} at column {})",
                e.classify(),
                e.column()
            ))
        })?;
        Ok(Acquired {
            token: success.access_token,
            expires_on: self.clock.now() + success.expires_in as i64,
            refresh_in: success.refresh_in,
            refresh_token: success.refresh_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_errors_are_classified_by_status_and_code() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS50126: Error validating credentials","error_codes":[50126]}"#;
        let e = classify(400, body, None);
        assert!(e.is_invalid_grant());
        assert!(e.to_string().contains("AADSTS50126"));
        assert!(
            !e.to_string().contains("validating"),
            "description is not echoed"
        );
        let e = classify(429, b"{}", Some(60));
        assert_eq!(e.retry_after(), Some(60));
        assert!(e.is_transient());
        let e = classify(503, b"not json", None);
        assert!(matches!(e, IdpError::Unavailable { status: 503, .. }));
    }

    #[test]
    fn lifetimes_may_arrive_as_strings() {
        let s: Success =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"3599","refresh_in":1800}"#)
                .unwrap();
        assert_eq!((s.expires_in, s.refresh_in), (3599, Some(1800)));
    }
}
