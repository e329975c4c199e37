//! The body of `PUT /api/tokens/{scope}?user_id=U`: a user's grant, parsed once.

use crate::domain::InputError;
use crate::refresh::UserGrant;
use crate::secret::Secret;
use serde_json::{Map, Value};

/// What a `PUT` body must look like, for every error about it. Error messages
/// never quote the body: it carries tokens.
const GRANT_SHAPE: &str = r#"The body must be {"assertion": "<the user's token for this app>"} or {"access_token": "...", "expires_in": <seconds> | "expires_on": <unix seconds>, "refresh_token": "..."}"#;
/// Longest token accepted in a body (Entra tokens are a few KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A user token lives at most this long (Entra's configurable maximum is 1 day).
const MAX_TOKEN_LIFETIME: i64 = 86_400;

/// The body of `PUT /api/tokens/{scope}?user_id=U`.
pub fn parse_grant(body: &[u8], now: i64) -> Result<UserGrant, InputError> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(InputError::Body(GRANT_SHAPE));
    };
    let token = |name: &str| -> Result<Option<Secret>, InputError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_TOKEN_LEN
                    && s.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(Some(Secret::new(s.clone())))
            }
            Some(_) => Err(InputError::Body(GRANT_SHAPE)),
        }
    };
    let (assertion, access_token, refresh_token) = (
        token("assertion")?,
        token("access_token")?,
        token("refresh_token")?,
    );
    match (assertion, access_token) {
        (Some(assertion), None) if refresh_token.is_none() && !has_lifetime(&fields) => {
            Ok(UserGrant::Assertion(assertion))
        }
        (None, Some(access_token)) => Ok(UserGrant::Tokens {
            access_token,
            expires_on: expires_on(&fields, now)?,
            refresh_token,
        }),
        _ => Err(InputError::Body(GRANT_SHAPE)),
    }
}

fn has_lifetime(fields: &Map<String, Value>) -> bool {
    fields.contains_key("expires_in") || fields.contains_key("expires_on")
}

/// Exactly one of `expires_in` (seconds from now) and `expires_on` (Unix seconds),
/// as a number or a numeric string (Entra v1 sends strings), in the future and at
/// most a day away.
fn expires_on(fields: &Map<String, Value>, now: i64) -> Result<i64, InputError> {
    let number = |name: &str| -> Result<Option<i64>, InputError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(InputError::Body(GRANT_SHAPE)),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| InputError::Body(GRANT_SHAPE)),
            Some(_) => Err(InputError::Body(GRANT_SHAPE)),
        }
    };
    let at = match (number("expires_in")?, number("expires_on")?) {
        (Some(secs), None) => now.saturating_add(secs),
        (None, Some(at)) => at,
        _ => return Err(InputError::Body(GRANT_SHAPE)),
    };
    if at <= now || at - now > MAX_TOKEN_LIFETIME {
        return Err(InputError::Body(
            "The token must expire in the future and within a day",
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn parse_grant_now(body: &[u8]) -> Result<UserGrant, InputError> {
        parse_grant(body, Clock::System.now())
    }

    #[test]
    fn grant_bodies_have_exactly_one_shape() {
        assert!(matches!(
            parse_grant_now(br#"{"assertion":"eyJ.a.b"}"#),
            Ok(UserGrant::Assertion(_))
        ));
        let grant = parse_grant_now(br#"{"access_token":"eyJ.a.b","expires_in":3600,"refresh_token":"0.rt","token_type":"Bearer"}"#);
        assert!(matches!(
            grant,
            Ok(UserGrant::Tokens {
                refresh_token: Some(_),
                ..
            })
        ));
        let at = Clock::System.now() + 600;
        let grant = parse_grant_now(
            format!(r#"{{"access_token":"eyJ.a.b","expires_on":"{at}"}}"#).as_bytes(),
        );
        assert!(
            matches!(grant, Ok(UserGrant::Tokens { expires_on, refresh_token: None, .. }) if expires_on == at)
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"assertion":"a","access_token":"b","expires_in":60}"#,
            br#"{"assertion":""}"#,
            br#"{"assertion":42}"#,
            br#"{"assertion":"a b"}"#,
            br#"{"assertion":"a","expires_in":60}"#,
            br#"{"access_token":"eyJ"}"#,
            br#"{"access_token":"eyJ","expires_in":60,"expires_on":99999999999}"#,
            br#"{"access_token":"eyJ","expires_in":-5}"#,
            br#"{"access_token":"eyJ","expires_in":999999}"#,
            br#"{"access_token":"eyJ","expires_in":"soon"}"#,
            br#"{"access_token":"eyJ","expires_in":60,"refresh_token":7}"#,
        ] {
            let error = parse_grant_now(bad)
                .err()
                .unwrap_or_else(|| panic!("accepted {}", String::from_utf8_lossy(bad)));
            assert_eq!(error.title(), "Invalid body");
            assert!(!error.to_string().contains("eyJ"), "never quotes the body");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_grant(&bytes, 1_700_000_000);
            let _ = parse_grant(String::from_utf8_lossy(&bytes).as_bytes(), 1_700_000_000);
        }
    }
}
