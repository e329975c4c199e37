//! Checks across variables: what the agent flow needs, and what Entra callers
//! are checked against.

use super::parse::{bad, load_callers, parse_authority};
use super::{AgentFlow, Config, ConfigError, RawVars};
use crate::callers::EntraSettings;

impl Config {
    /// Whether the credentials the agent flow needs are all present, and the warm
    /// scopes are ones it can get.
    pub fn check_agent_credentials(&self) -> Result<(), ConfigError> {
        let identity = &self.identity;
        let need = |present: bool, var: &str| {
            if present {
                Ok(())
            } else {
                Err(bad(
                    var,
                    format!("is required by AGENT_TOKEN_FLOW={:?}", identity.agent_flow),
                ))
            }
        };
        let has_proof =
            identity.client_secret.is_some() || identity.client_certificate_path.is_some();
        if identity.blueprint_credential.is_some() && !identity.agent_flow.is_agent_id() {
            return Err(bad(
                "AGENT_BLUEPRINT_CREDENTIAL",
                format!(
                    "only applies to AGENT_TOKEN_FLOW=agent_identity or agent_user, not {:?}",
                    identity.agent_flow
                ),
            ));
        }
        if identity.agent_flow.is_agent_id() && identity.agent_password.is_some() {
            return Err(bad(
                "AGENT_PASSWORD",
                "is set with Entra Agent ID, whose agent users have no password: remove it (AGENT_USER_ID or AGENT_USER_NAME names the agent user), or remove AGENT_IDENTITY_ID to keep the password flow",
            ));
        }
        if matches!(
            identity.agent_flow,
            AgentFlow::AgentIdentity | AgentFlow::ClientCredentials
        ) && let Some(scope) = self
            .refresh
            .warm_scopes
            .iter()
            .find(|s| !s.as_str().ends_with("/.default"))
        {
            return Err(bad(
                "TOKEN_SCOPES",
                format!(
                    "{scope:?}: app-only tokens ({:?}) are asked for as {{resource}}/.default",
                    identity.agent_flow
                ),
            ));
        }
        match identity.agent_flow {
            AgentFlow::Password => {
                need(!identity.tenant_id.is_empty(), "AZURE_TENANT_ID")?;
                need(!identity.client_id.is_empty(), "AZURE_CLIENT_ID")?;
                need(identity.agent_user_name.is_some(), "AGENT_USER_NAME")?;
                need(identity.agent_password.is_some(), "AGENT_PASSWORD")
            }
            AgentFlow::ClientCredentials => {
                need(!identity.tenant_id.is_empty(), "AZURE_TENANT_ID")?;
                need(!identity.client_id.is_empty(), "AZURE_CLIENT_ID")?;
                need(has_proof, "AZURE_CLIENT_SECRET")
            }
            AgentFlow::AgentIdentity | AgentFlow::AgentUser => {
                need(!identity.tenant_id.is_empty(), "AZURE_TENANT_ID")?;
                need(
                    !identity.blueprint_client_id.is_empty(),
                    "AGENT_BLUEPRINT_CLIENT_ID",
                )?;
                need(
                    has_proof || identity.blueprint_credential.is_some(),
                    "AZURE_CLIENT_CERTIFICATE_PATH",
                )?;
                need(identity.agent_identity_id.is_some(), "AGENT_IDENTITY_ID")?;
                if identity.agent_flow == AgentFlow::AgentUser {
                    need(
                        identity.agent_user_id.is_some() || identity.agent_user_name.is_some(),
                        "AGENT_USER_ID",
                    )?;
                }
                Ok(())
            }
            AgentFlow::ManagedIdentity => {
                match self.refresh.warm_scopes.iter().find(|s| s.is_several()) {
                    Some(scope) => Err(bad(
                        "TOKEN_SCOPES",
                        format!(
                            "{scope:?} has several scopes in one token, which a managed identity cannot get (one resource per token)"
                        ),
                    )),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What `TOKEN_API_AUTH=entra` checks tokens against: the tenant, the audience
/// (`TOKEN_API_AUDIENCE`, default `api://{AZURE_CLIENT_ID}`, and
/// `AZURE_CLIENT_ID`), and the caller entries.
pub(super) fn entra_callers(raw: &RawVars) -> Result<EntraSettings, ConfigError> {
    const WHY: &str = "is required by TOKEN_API_AUTH=entra";
    // Entra writes tenant ids lowercase in `tid` and `iss`.
    let tenant = raw
        .azure_tenant_id
        .as_deref()
        .map(|t| t.trim().to_lowercase())
        .ok_or_else(|| bad("AZURE_TENANT_ID", WHY))?;
    let client_id = raw.azure_client_id.clone();
    let audience = match (&raw.token_api_audience, &client_id) {
        (Some(audience), _) => audience.trim().to_owned(),
        (None, Some(client_id)) => format!("api://{client_id}"),
        (None, None) => {
            return Err(bad(
                "TOKEN_API_AUDIENCE",
                "is required by TOKEN_API_AUTH=entra (or AZURE_CLIENT_ID, for the default api://{AZURE_CLIENT_ID})",
            ));
        }
    };
    let entries = load_callers(
        raw.token_api_callers.as_deref(),
        raw.token_api_callers_file.as_deref(),
    )?;
    if entries.is_empty() {
        return Err(bad(
            "TOKEN_API_CALLERS",
            "is required by TOKEN_API_AUTH=entra: a JSON array of callers by app_id, object_id or role",
        ));
    }
    let mut audiences = vec![audience];
    audiences.extend(client_id.filter(|id| !audiences.contains(id)));
    Ok(EntraSettings {
        authority: parse_authority(raw.azure_authority_host.as_deref())?
            .as_str()
            .trim_end_matches('/')
            .to_owned(),
        tenant,
        audiences,
        entries,
    })
}
