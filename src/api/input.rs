//! Parsing a request's path and query: raw strings in, domain types out (SPEC §5, §8).
//! Read from the raw URI because the scope arrives in several encodings that a
//! generic decoder would flatten differently.

use super::limits::MAX_QUERY;
use super::routes::RESERVED;
use crate::domain::{InputError, MAX_MIN_VALIDITY, Scope, UserId};
use std::borrow::Cow;

/// The query parameters the token routes understand. Others (for example the
/// host's `code=` function key) are ignored.
#[derive(Debug, Default, PartialEq)]
pub struct TokenQuery {
    pub scope: Option<Scope>,
    pub user: Option<UserId>,
    pub min_validity: Option<u64>,
}

pub fn parse_query(raw: Option<&str>) -> Result<TokenQuery, InputError> {
    let mut query = TokenQuery::default();
    let Some(raw) = raw else {
        return Ok(query);
    };
    if raw.len() > MAX_QUERY {
        return Err(InputError::ScopeTooLong);
    }
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "scope" => {
                let value = decode(value, "scope parameter")?;
                set_once(&mut query.scope, Scope::parse(&value)?, "scope")?;
            }
            "user_id" => {
                let value = decode(value, "user_id parameter")?;
                set_once(&mut query.user, UserId::parse(&value)?, "user_id")?;
            }
            "min_validity" => {
                let value = decode(value, "min_validity parameter")?;
                let secs = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s <= MAX_MIN_VALIDITY)
                    .ok_or(InputError::MinValidity)?;
                set_once(&mut query.min_validity, secs, "min_validity")?;
            }
            _ => {}
        }
    }
    Ok(query)
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), InputError> {
    if slot.replace(value).is_some() {
        return Err(InputError::RepeatedParameter(name));
    }
    Ok(())
}

/// The scope from the rest of the path after `/api/tokens/` (or `/refresh/`), in
/// any of its forms: percent-encoded, raw with slashes, with `//` folded to `/` by
/// a proxy, `+` or `%20` between scopes.
pub fn scope_from_path(rest: &str) -> Result<Scope, InputError> {
    if rest.len() > 3 * Scope::MAX_LEN {
        return Err(InputError::ScopeTooLong);
    }
    let decoded = decode(rest, "scope in the path")?;
    // Routes own these words; a scope spelled like them is asked for with ?scope=.
    for reserved in RESERVED {
        let rest = decoded.strip_prefix(reserved);
        if rest.is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) {
            return Err(InputError::ReservedPath(reserved));
        }
    }
    if !decoded
        .split(' ')
        .any(|part| matches!(unfold_scheme(part), Cow::Owned(_)))
    {
        return Scope::parse(&decoded);
    }
    let parts: Vec<Cow<'_, str>> = decoded.split(' ').map(unfold_scheme).collect();
    Scope::parse(&parts.join(" "))
}

/// The scope from the path and the query parameters, for the routes whose scope
/// is in the path: a second scope in the query is refused, not ignored.
pub fn path_request(rest: &str, query: Option<&str>) -> Result<(Scope, TokenQuery), InputError> {
    let scope = scope_from_path(rest)?;
    let query = parse_query(query)?;
    if query.scope.is_some() {
        return Err(InputError::ScopeTwice);
    }
    Ok((scope, query))
}

/// Percent-decodes strictly: a `%` not followed by two hex digits is an error, as
/// is a result that is not UTF-8. A literal `+` separates scopes, as in a query
/// string (an encoded `%2B` stays a `+`).
fn decode(raw: &str, what: &'static str) -> Result<String, InputError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(InputError::PercentEncoding(what))?;
                let hex =
                    std::str::from_utf8(hex).map_err(|_| InputError::PercentEncoding(what))?;
                out.push(
                    u8::from_str_radix(hex, 16).map_err(|_| InputError::PercentEncoding(what))?,
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| InputError::Utf8(what))
}

/// `https:/graph.microsoft.com/.default` -> `https://graph.microsoft.com/.default`:
/// proxies and the Functions front end fold `//` in paths. Only a URI scheme at the
/// start of a scope is repaired; nothing else is touched.
fn unfold_scheme(part: &str) -> Cow<'_, str> {
    if let Some((scheme, rest)) = part.split_once(":/") {
        let is_scheme = scheme.len() > 1
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if is_scheme && !rest.starts_with('/') && !rest.is_empty() {
            return Cow::Owned(format!("{scheme}://{rest}"));
        }
    }
    Cow::Borrowed(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAPH: &str = "https://graph.microsoft.com/.default";

    #[test]
    fn every_path_form_means_the_same_scope() {
        for form in [
            "https%3A%2F%2Fgraph.microsoft.com%2F.default",
            "https%3a%2f%2fgraph.microsoft.com%2f.default",
            "https://graph.microsoft.com/.default",
            "https:/graph.microsoft.com/.default",
            "https%3A/graph.microsoft.com/.default",
        ] {
            assert_eq!(scope_from_path(form).unwrap().as_str(), GRAPH, "{form}");
        }
    }

    #[test]
    fn plus_and_percent_20_separate_scopes() {
        for form in [
            "User.Read+Mail.Send",
            "User.Read%20Mail.Send",
            "User.Read%20%20+Mail.Send",
        ] {
            assert_eq!(
                scope_from_path(form).unwrap().as_str(),
                "User.Read Mail.Send",
                "{form}"
            );
        }
        assert_eq!(scope_from_path("a%2Bb"), Err(InputError::ScopeShape));
        assert_eq!(
            scope_from_path("refresh"),
            Err(InputError::ReservedPath("refresh"))
        );
        assert_eq!(
            scope_from_path("health"),
            Err(InputError::ReservedPath("health"))
        );
        assert_eq!(
            scope_from_path("api:/my-app/.default+offline_access")
                .unwrap()
                .as_str(),
            "api://my-app/.default offline_access"
        );
    }

    #[test]
    fn bad_encodings_are_refused() {
        assert_eq!(
            scope_from_path("%zz"),
            Err(InputError::PercentEncoding("scope in the path"))
        );
        assert_eq!(
            scope_from_path("abc%4"),
            Err(InputError::PercentEncoding("scope in the path"))
        );
        assert_eq!(
            scope_from_path("%C3%28"),
            Err(InputError::Utf8("scope in the path"))
        );
        assert_eq!(scope_from_path("a%00b"), Err(InputError::ScopeCharacters));
        assert_eq!(scope_from_path(""), Err(InputError::EmptyScope));
        assert_eq!(
            scope_from_path(&"a".repeat(5000)),
            Err(InputError::ScopeTooLong)
        );
    }

    #[test]
    fn query_parameters_are_parsed_once_each() {
        let q = parse_query(Some(
            "scope=User.Read+Mail.Send&user_id=alice%40contoso.com&min_validity=600&code=xyz",
        ))
        .unwrap();
        assert_eq!(q.scope.unwrap().as_str(), "User.Read Mail.Send");
        assert_eq!(q.user.unwrap().as_str(), "alice@contoso.com");
        assert_eq!(q.min_validity, Some(600));
        assert_eq!(
            parse_query(Some("user_id=a&user_id=b")),
            Err(InputError::RepeatedParameter("user_id"))
        );
        assert_eq!(parse_query(Some("user_id=a:b")), Err(InputError::UserId));
        assert_eq!(parse_query(Some("user_id=a,b")), Err(InputError::UserId));
        assert_eq!(
            parse_query(Some("min_validity=-1")),
            Err(InputError::MinValidity)
        );
        assert_eq!(
            parse_query(Some("min_validity=99999999")),
            Err(InputError::MinValidity)
        );
        assert_eq!(parse_query(None), Ok(TokenQuery::default()));
    }

    mod properties {
        //! Property tests of the edge parsing: bounded (a fixed number of cases),
        //! so they run in CI on every build.
        use super::super::*;
        use proptest::prelude::*;

        /// Percent-encodes every byte outside RFC 3986's unreserved set.
        fn encode(s: &str) -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        }

        /// Scopes as Entra has them: permission names and resource URIs.
        fn scope() -> impl Strategy<Value = String> {
            let name = "[A-Za-z][A-Za-z0-9._-]{0,30}";
            let uri = "(https|api)://[a-z0-9-]{1,20}(\\.[a-z]{2,5}){0,2}/\\.default";
            prop::collection::vec(prop_oneof![name, uri], 1..4).prop_map(|parts| parts.join(" "))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_text_never_panics(input in "\\PC{0,2000}") {
                let _ = scope_from_path(&input);
                let _ = parse_query(Some(&input));
                let _ = path_request(&input, Some(&input));
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                let text = String::from_utf8_lossy(&bytes);
                let _ = scope_from_path(&text);
                let _ = parse_query(Some(&text));
            }

            #[test]
            fn every_form_of_a_scope_means_the_same_scope(scope in scope()) {
                let expected = Scope::parse(&scope).unwrap();
                let forms = [
                    encode(&scope),
                    encode(&scope).replace("%3A", "%3a").replace("%2F", "%2f"),
                    scope.replace(' ', "+"),
                    scope.replace(' ', "%20"),
                    scope.replace("://", ":/").replace(' ', "+"),
                ];
                for form in forms {
                    prop_assert_eq!(scope_from_path(&form), Ok(expected.clone()), "{}", form);
                }
                let query = parse_query(Some(&format!("scope={}", encode(&scope)))).unwrap();
                prop_assert_eq!(query.scope, Some(expected));
            }

            #[test]
            fn valid_user_ids_round_trip(user in "[A-Za-z0-9._@+-]{1,256}") {
                let query = parse_query(Some(&format!("user_id={}", encode(&user)))).unwrap();
                prop_assert_eq!(query.user.map(|u| u.as_str().to_owned()), Some(user));
            }

            #[test]
            fn user_ids_with_any_other_character_are_refused(
                before in "[a-z]{0,5}",
                bad in "[^A-Za-z0-9._@+-]",
                after in "[a-z]{0,5}",
            ) {
                let user = format!("{before}{bad}{after}");
                let query = format!("user_id={}", encode(&user));
                prop_assert!(parse_query(Some(&query)).is_err());
            }

            #[test]
            fn overlong_scopes_are_refused(len in 1025usize..6000) {
                prop_assert!(scope_from_path(&"a".repeat(len)).is_err());
                let query = format!("scope={}", "a".repeat(len));
                prop_assert!(parse_query(Some(&query)).is_err());
            }
        }
    }
}
