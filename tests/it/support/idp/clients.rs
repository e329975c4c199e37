//! Who is asking, checked the way Entra checks it: the double's applications
//! (the app registration, which is also the agent identity blueprint, and two
//! agent identities made from it), their agent users, and how each client
//! proves itself: a secret, a certificate's client assertion (RS256,
//! `x5t#S256`, audience = the token endpoint), a managed identity's token as a
//! federated credential, or, for an agent identity, the T1 its blueprint got
//! for it. Refusals carry the `AADSTS` codes Entra uses for them.

use super::IdpState;
use super::certs;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use std::collections::HashMap;

/// The agent identity the tests configure, a child of the blueprint (`CLIENT_ID`).
pub const AGENT_IDENTITY_ID: &str = "a9e10000-0000-4000-8000-000000000001";
/// Another agent identity of the same blueprint.
pub const OTHER_AGENT_IDENTITY_ID: &str = "a9e10000-0000-4000-8000-000000000002";
/// The agent user of [`AGENT_IDENTITY_ID`]: object id and UPN.
pub const AGENT_USER_ID: &str = "a9e1aaaa-0000-4000-8000-000000000001";
pub const AGENT_USER_NAME: &str = "agent-user@contoso.test";
/// The agent user of [`OTHER_AGENT_IDENTITY_ID`].
pub const OTHER_AGENT_USER_ID: &str = "a9e1aaaa-0000-4000-8000-000000000002";
/// A user-assigned managed identity the blueprint trusts (a federated identity
/// credential names it); `CLIENT_ID` is a managed identity it does not trust.
pub const MANAGED_IDENTITY_ID: &str = "a9e1cccc-0000-4000-8000-000000000001";
/// The scope of exchange tokens (T1, T2, managed identities' assertions).
pub const TOKEN_EXCHANGE_SCOPE: &str = "api://AzureADTokenExchange/.default";
pub const TOKEN_EXCHANGE_RESOURCE: &str = "api://AzureADTokenExchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `AADSTS` codes of the refusals below.
pub mod code {
    /// Application not found in the directory.
    pub const UNKNOWN_CLIENT: u32 = 700016;
    /// The request has neither a secret nor an assertion.
    pub const NO_CREDENTIAL: u32 = 7000218;
    /// Invalid client secret.
    pub const BAD_SECRET: u32 = 7000215;
    /// A required field is missing (`user_federated_identity_credential`).
    pub const MISSING_FIELD: u32 = 90014;
    /// A blueprint asked for an app-only token of its own (no `fmi_path`).
    pub const BLUEPRINT_APP_ONLY: u32 = 82001;
    /// The certificate is not registered, or the signature does not verify.
    pub const BAD_SIGNATURE: u32 = 700027;
    /// The assertion is expired (or not yet valid).
    pub const EXPIRED_ASSERTION: u32 = 700024;
    /// The certificate assertion's audience is not this token endpoint.
    pub const WRONG_AUDIENCE: u32 = 700023;
    /// The assertion's issuer or subject is not `client_id`.
    pub const WRONG_ISSUER: u32 = 700021;
    /// A federated credential whose audience is not the token exchange.
    pub const WRONG_FIC_AUDIENCE: u32 = 700212;
    /// No federated identity credential (or parent) matches the assertion.
    pub const NO_MATCHING_FIC: u32 = 70021;
    /// No federated identity credential matches the assertion's subject (a
    /// managed identity the blueprint does not trust).
    pub const FIC_SUBJECT: u32 = 700213;
    /// Not a JWT.
    pub const MALFORMED: u32 = 50027;
    /// The agent user does not exist or is not this agent identity's.
    pub const USER_NOT_LINKED: u32 = 50034;
    /// `fmi_path` names no agent identity of this blueprint.
    pub const UNKNOWN_AGENT_IDENTITY: u32 = 700016;
    /// A grant this client may not use.
    pub const UNAUTHORIZED_GRANT: u32 = 700022;
}

/// A refusal: status, `error` and `AADSTS` code (made into Entra's body by
/// the caller).
#[derive(Clone, Copy, Debug)]
pub struct Refusal(pub u16, pub &'static str, pub u32);

fn refuse(status: u16, error: &'static str, code: u32) -> Refusal {
    Refusal(status, error, code)
}

/// What the double minted that may come back as an assertion or credential.
#[derive(Clone, Debug, PartialEq)]
pub enum Minted {
    /// For an agent identity, from its blueprint (request 1).
    T1 { agent: String },
    /// From an agent identity, for its agent user (request 3).
    T2 { agent: String },
    /// From the managed identity endpoint, for `resource`.
    Managed { identity: String, resource: String },
}

/// A minted token and when it expires (Unix seconds).
#[derive(Clone, Debug)]
pub struct Held {
    pub minted: Minted,
    pub expires_at: i64,
}

/// The authenticated client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Client {
    /// `CLIENT_ID`: the classic app registration and the agent identity blueprint.
    App,
    /// One of the agent identities, by its id.
    Agent(&'static str),
    /// One of the broker's caller apps, by its id.
    Caller(&'static str),
}

impl Client {
    pub fn id(self) -> &'static str {
        match self {
            Self::App => super::CLIENT_ID,
            Self::Agent(id) | Self::Caller(id) => id,
        }
    }
}

pub fn agent_identity(id: &str) -> Option<&'static str> {
    [AGENT_IDENTITY_ID, OTHER_AGENT_IDENTITY_ID]
        .into_iter()
        .find(|known| *known == id)
}

/// The agent identity whose agent user `form` names (`user_id` or `username`).
pub fn agent_of_user(form: &HashMap<String, String>) -> Option<&'static str> {
    match (
        form.get("user_id").map(String::as_str),
        form.get("username").map(String::as_str),
    ) {
        (Some(AGENT_USER_ID), _) | (None, Some(AGENT_USER_NAME)) => Some(AGENT_IDENTITY_ID),
        (Some(OTHER_AGENT_USER_ID), _) => Some(OTHER_AGENT_IDENTITY_ID),
        _ => None,
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
}

impl IdpState {
    /// The client of `form`, or Entra's refusal.
    pub(super) fn authenticate(&self, form: &HashMap<String, String>) -> Result<Client, Refusal> {
        let client_id = form
            .get("client_id")
            .map(String::as_str)
            .unwrap_or_default();
        let client = match client_id {
            super::CLIENT_ID => Client::App,
            id => match (agent_identity(id), super::callers::caller_app(id)) {
                (Some(agent), _) => Client::Agent(agent),
                (None, Some(app)) => Client::Caller(app),
                _ => return Err(refuse(400, "unauthorized_client", code::UNKNOWN_CLIENT)),
            },
        };
        let secret = form.get("client_secret");
        let assertion = form
            .get("client_assertion")
            .filter(|_| form.get("client_assertion_type").map(String::as_str) == Some(JWT_BEARER));
        match (client, secret, assertion) {
            (Client::App, Some(secret), _) if secret == super::CLIENT_SECRET => Ok(client),
            (Client::Caller(app), Some(secret), _)
                if Some(secret.as_str()) == super::callers::caller_secret(app) =>
            {
                Ok(client)
            }
            (Client::Caller(_), None, _) => {
                Err(refuse(400, "invalid_request", code::NO_CREDENTIAL))
            }
            // Agent identities have no credentials of their own.
            (_, Some(_), _) => Err(refuse(401, "invalid_client", code::BAD_SECRET)),
            (_, None, None) => Err(refuse(400, "invalid_request", code::NO_CREDENTIAL)),
            (Client::App, None, Some(assertion)) => match self.held(assertion) {
                Some(held) => self.federated(&held).map(|_| client),
                None => certificate_assertion(assertion, client_id, &self.endpoint).map(|_| client),
            },
            (Client::Agent(agent), None, Some(assertion)) => match self.held(assertion) {
                Some(Held {
                    minted: Minted::T1 { agent: for_agent },
                    expires_at,
                }) => {
                    if expires_at <= unix_now() {
                        Err(refuse(400, "invalid_client", code::EXPIRED_ASSERTION))
                    } else if for_agent != agent {
                        // A T1 minted for another agent identity.
                        Err(refuse(400, "invalid_client", code::NO_MATCHING_FIC))
                    } else {
                        Ok(client)
                    }
                }
                _ => Err(refuse(400, "invalid_client", code::NO_MATCHING_FIC)),
            },
        }
    }

    pub(super) fn held(&self, token: &str) -> Option<Held> {
        self.inner.lock().unwrap().minted.get(token).cloned()
    }

    /// A managed identity's token as the blueprint's federated credential.
    fn federated(&self, held: &Held) -> Result<(), Refusal> {
        let Minted::Managed { identity, resource } = &held.minted else {
            // T1 or T2 presented by the blueprint itself.
            return Err(refuse(400, "invalid_client", code::NO_MATCHING_FIC));
        };
        if resource != TOKEN_EXCHANGE_RESOURCE {
            return Err(refuse(400, "invalid_client", code::WRONG_FIC_AUDIENCE));
        }
        if held.expires_at <= unix_now() {
            return Err(refuse(400, "invalid_client", code::EXPIRED_ASSERTION));
        }
        if identity != MANAGED_IDENTITY_ID {
            return Err(refuse(400, "invalid_client", code::FIC_SUBJECT));
        }
        Ok(())
    }
}

/// A client assertion signed with a certificate: the registered one's thumbprint
/// in `x5t#S256`, a valid RS256 signature, this endpoint as audience, in time,
/// issued by and about the client.
fn certificate_assertion(assertion: &str, client_id: &str, endpoint: &str) -> Result<(), Refusal> {
    let registered = certs::registered();
    let header =
        decode_header(assertion).map_err(|_| refuse(400, "invalid_client", code::MALFORMED))?;
    if header.alg != Algorithm::RS256
        || header.x5t_s256.as_deref() != Some(registered.thumbprint.as_str())
    {
        return Err(refuse(401, "invalid_client", code::BAD_SIGNATURE));
    }
    let key = DecodingKey::from_rsa_pem(&registered.public_pem).expect("the registered key");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[endpoint]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = decode::<AssertionClaims>(assertion, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        let code = match e.kind() {
            ErrorKind::InvalidSignature => code::BAD_SIGNATURE,
            ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => code::EXPIRED_ASSERTION,
            ErrorKind::InvalidAudience => code::WRONG_AUDIENCE,
            _ => code::MALFORMED,
        };
        refuse(401, "invalid_client", code)
    })?;
    if claims.claims.iss != client_id || claims.claims.sub != client_id {
        return Err(refuse(401, "invalid_client", code::WRONG_ISSUER));
    }
    Ok(())
}
