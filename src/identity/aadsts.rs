//! What Entra's `AADSTS` codes mean for this service's flows, in a few words an
//! operator can act on. Entra's own `error_description` is not echoed: it is
//! long, multi-line, and may quote what was sent.

/// The meaning of the codes these flows meet most, by the fix they need.
const MEANINGS: &[(u32, &str)] = &[
    // Who the client is.
    (
        700016,
        "the application (or the agent identity named by fmi_path) is not found in the tenant",
    ),
    (90002, "the tenant is not found"),
    (7000215, "the client secret is wrong or expired"),
    (7000222, "the client secret has expired"),
    (
        7000218,
        "the request has neither a client secret nor a client assertion",
    ),
    // Certificates.
    (
        700027,
        "the certificate is not registered on the application, or the assertion's signature does not verify",
    ),
    (
        700024,
        "the client assertion is expired or not yet valid (check the clock)",
    ),
    (
        700023,
        "the client assertion's audience is not this tenant's token endpoint",
    ),
    (
        700021,
        "the client assertion's issuer or subject is not the client id",
    ),
    (50027, "the client assertion is not a valid JWT"),
    // Federated credentials: managed identities, T1, T2.
    (
        70021,
        "no federated identity credential matches the assertion (a managed identity the blueprint does not trust, or an exchange token of another agent identity)",
    ),
    (
        700211,
        "no federated identity credential matches the assertion's issuer",
    ),
    (
        700212,
        "the federated assertion's audience is not api://AzureADTokenExchange",
    ),
    (
        700213,
        "no federated identity credential of the blueprint names this managed identity as its subject",
    ),
    (
        700214,
        "a federated identity credential's audience must be api://AzureADTokenExchange",
    ),
    (700229, "only app-only tokens can be federated credentials"),
    (
        82001,
        "an agent identity blueprint may not get app-only tokens for itself (a T1 needs fmi_path = the agent identity)",
    ),
    (
        7000216,
        "the request has no client assertion or secret (an empty credential)",
    ),
    (90014, "a required field is missing"),
    // Users.
    (
        50034,
        "the user (agent user) does not exist or is not linked to this agent identity",
    ),
    (50126, "the username or password is wrong"),
    (
        50076,
        "multi-factor authentication is required (the password grant cannot do it; use AGENT_TOKEN_FLOW=agent_user)",
    ),
    (
        50079,
        "multi-factor authentication registration is required (the password grant cannot do it)",
    ),
    (53003, "blocked by Conditional Access"),
    (
        65001,
        "the permission has not been consented to (grant admin consent)",
    ),
    (
        70000,
        "the refresh token or assertion is invalid, expired or revoked",
    ),
    (700082, "the refresh token expired after inactivity"),
    (
        50173,
        "the grant was revoked (password changed or sessions revoked)",
    ),
    (
        50013,
        "the on-behalf-of assertion is invalid (wrong audience, signature or expiry)",
    ),
    (
        500133,
        "the on-behalf-of assertion is expired or not yet valid",
    ),
    (50057, "the user (agent user) is disabled"),
    (700022, "this client may not use this grant"),
    // Scopes and throttling.
    (70011, "the scope is invalid"),
    (
        1002012,
        "an app-only token needs a scope ending in /.default",
    ),
    (50196, "throttled: too many identical requests"),
];

/// `AADSTS{code}`, with its meaning when it is one of [`MEANINGS`].
pub fn describe(code: u32) -> String {
    match MEANINGS.iter().find(|(c, _)| *c == code) {
        Some((_, meaning)) => format!("AADSTS{code}: {meaning}"),
        None => format!("AADSTS{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_carry_a_meaning_and_others_their_number() {
        assert!(describe(50034).starts_with("AADSTS50034: the user (agent user)"));
        assert_eq!(describe(1), "AADSTS1");
        let mut codes: Vec<u32> = MEANINGS.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), MEANINGS.len(), "each code once");
        assert!(MEANINGS.iter().all(|(_, m)| !m.contains('\n')));
    }
}
