use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn error_of(pairs: &[(&str, &str)]) -> String {
    Config::from_vars(vars(pairs)).unwrap_err().to_string()
}

#[test]
fn a_managed_identity_cannot_keep_a_multi_scope_token_warm() {
    let config = |scopes: &str| Config::from_vars(vars(&[("TOKEN_SCOPES", scopes)])).unwrap();
    let error = config("User.Read Mail.Read;https://graph.microsoft.com/.default")
        .check_agent_credentials()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("TOKEN_SCOPES: ") && error.contains("one resource per token"),
        "{error}"
    );
    config("https://graph.microsoft.com/.default;https://vault.azure.net/.default")
        .check_agent_credentials()
        .unwrap();
}

#[test]
fn defaults_follow_the_spec() {
    let config = Config::from_vars(vars(&[])).unwrap();
    assert_eq!(config.identity.agent_flow, AgentFlow::ManagedIdentity);
    assert_eq!(
        config.identity.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(
        config.refresh.warm_scopes,
        vec![Scope::parse(DEFAULT_SCOPE).unwrap()]
    );
    assert!(config.refresh.on_demand);
    assert_eq!(
        (
            config.refresh.refresh_before_secs,
            config.refresh.min_validity_secs,
            config.refresh.interval.as_secs()
        ),
        (900, 300, 300)
    );
    assert_eq!(config.refresh.concurrency, 16);
    assert_eq!(
        (
            config.redis.nodes[0].addr().to_string(),
            config.redis.nodes[0].redis_settings().db()
        ),
        ("localhost:6379".to_owned(), 0)
    );
    assert_eq!(config.store.namespace, "annika:");
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.api.auth, AuthMethods::KEYS);
    assert!(config.api.entra.is_none());
    assert_eq!(config.api.port, 7071);
}

#[test]
fn flow_is_inferred_from_the_credentials_present() {
    let c = Config::from_vars(vars(&[
        ("AGENT_USER_NAME", "a@b"),
        ("AGENT_PASSWORD", "p"),
        ("AZURE_CLIENT_SECRET", "s"),
    ]))
    .unwrap();
    assert_eq!(c.identity.agent_flow, AgentFlow::Password);
    let c = Config::from_vars(vars(&[
        ("AGENT_IDENTITY_ID", "ai"),
        ("AGENT_USER_NAME", "u@x"),
    ]))
    .unwrap();
    assert_eq!(c.identity.agent_flow, AgentFlow::AgentUser);
    let c = Config::from_vars(vars(&[
        ("AGENT_IDENTITY_ID", "ai"),
        ("AZURE_CLIENT_ID", "bp"),
    ]))
    .unwrap();
    assert_eq!(c.identity.agent_flow, AgentFlow::AgentIdentity);
    assert_eq!(
        c.identity.blueprint_client_id, "bp",
        "the blueprint defaults to AZURE_CLIENT_ID"
    );
    let c = Config::from_vars(vars(&[("AZURE_CLIENT_CERTIFICATE_PATH", "/x.pem")])).unwrap();
    assert_eq!(c.identity.agent_flow, AgentFlow::ClientCredentials);
    let c = Config::from_vars(vars(&[("AZURE_CLIENT_SECRET", "s")])).unwrap();
    assert_eq!(c.identity.agent_flow, AgentFlow::ClientCredentials);
}

#[test]
fn bad_values_name_their_variable_on_one_line() {
    for (pairs, var) in [
        (
            vec![("TOKEN_REFRESH_BEFORE_SECS", "soon")],
            "TOKEN_REFRESH_BEFORE_SECS",
        ),
        (vec![("AGENT_TOKEN_FLOW", "magic")], "AGENT_TOKEN_FLOW"),
        (
            vec![("AZURE_AUTHORITY_HOST", "http://login.example.com")],
            "AZURE_AUTHORITY_HOST",
        ),
        (vec![("TOKEN_API_AUTH", "maybe")], "TOKEN_API_AUTH"),
        (
            vec![("TOKEN_REFRESH_CONCURRENCY", "0")],
            "TOKEN_REFRESH_CONCURRENCY",
        ),
        (vec![("TOKEN_API_KEYS", "[{]")], "TOKEN_API_KEYS"),
        (vec![("REDIS_URL", "http://x")], "REDIS_URL"),
        (vec![("TOKEN_SCOPES", "ok;bad\u{1}scope")], "TOKEN_SCOPES"),
        (
            vec![("TOKEN_ENCRYPTION_KEY", "c2hvcnQ=")],
            "TOKEN_ENCRYPTION_KEY",
        ),
        (
            vec![("TOKEN_ENCRYPTION_KEY", "not base64!")],
            "TOKEN_ENCRYPTION_KEY",
        ),
    ] {
        let message = error_of(&pairs);
        assert!(message.contains(var), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

#[test]
fn loopback_issuers_may_use_http() {
    for host in [
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ] {
        let c = Config::from_vars(vars(&[
            ("AZURE_AUTHORITY_HOST", host),
            ("AZURE_TENANT_ID", "t"),
        ]))
        .unwrap();
        assert!(
            c.identity
                .token_endpoint()
                .ends_with("/t/oauth2/v2.0/token"),
            "{}",
            c.identity.token_endpoint()
        );
    }
}

#[test]
fn redis_url_errors_never_echo_the_password() {
    let message = error_of(&[("REDIS_URL", "http://:hunter2@host")]);
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn redis_tls_and_cluster_settings_are_checked_at_start() {
    let message = error_of(&[("REDIS_SSL", "true"), ("REDIS_CA_CERT", "/no/such/ca.pem")]);
    assert!(
        message.contains("REDIS_CA_CERT: cannot read /no/such/ca.pem"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    let message = error_of(&[("REDIS_SSL", "true"), ("REDIS_CA_CERT", "/etc/hostname")]);
    assert!(message.contains("holds no PEM certificate"), "{message}");
    let pem = std::env::temp_dir().join(format!("tb-ca-{}.pem", std::process::id()));
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let message = error_of(&[("REDIS_CA_CERT", pem.to_str().unwrap())]);
    let _ = std::fs::remove_file(&pem);
    assert!(message.contains("TLS is off"), "{message}");
    let message = error_of(&[("REDIS_URL", "redis://a:6379,redis://b:6379")]);
    assert!(message.contains("REDIS_CLUSTER=true only"), "{message}");
    let message = error_of(&[
        ("REDIS_CLUSTER", "true"),
        ("REDIS_URL", "rediss://a:6380,redis://b:6379"),
    ]);
    assert!(message.contains("mixes"), "{message}");
    let c = Config::from_vars(vars(&[
        ("REDIS_CLUSTER", "true"),
        ("REDIS_URL", "rediss://:pw@a:6380, rediss://:pw@b:6380"),
    ]))
    .unwrap();
    assert!(c.redis.tls && c.redis.cluster);
    assert_eq!(c.redis.remote_host_without_tls(), None);
}

#[test]
fn debug_of_config_redacts_secrets() {
    let c = Config::from_vars(vars(&[
        ("AZURE_CLIENT_SECRET", "client-secret-value"),
        ("AGENT_PASSWORD", "agent-password-value"),
        ("REDIS_PASSWORD", "redis-password-value"),
        (
            "TOKEN_ENCRYPTION_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ]))
    .unwrap();
    assert_eq!(c.store.encryption_key.as_ref().unwrap().0[31], 31);
    let debug = format!("{c:?}");
    for secret in [
        "client-secret-value",
        "agent-password-value",
        "redis-password-value",
        "AAECAwQF",
        "29, 30",
    ] {
        assert!(!debug.contains(secret), "{debug}");
    }
}

#[test]
fn empty_values_mean_unset() {
    let c = Config::from_vars(vars(&[
        ("TOKEN_REFRESH_BEFORE_SECS", ""),
        ("REDIS_PORT", " "),
    ]))
    .unwrap();
    assert_eq!(
        (
            c.refresh.refresh_before_secs,
            c.redis.nodes[0].addr().to_string()
        ),
        (900, "localhost:6379".to_owned())
    );
}

#[test]
fn entra_callers_need_a_tenant_an_audience_and_entries() {
    let callers = r#"[{"name":"reporting","app_id":"c0ffee00-0000-4000-8000-000000000001"}]"#;
    let c = Config::from_vars(vars(&[
        ("TOKEN_API_AUTH", "keys,entra"),
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "broker"),
        ("TOKEN_API_CALLERS", callers),
    ]))
    .unwrap();
    assert!(c.api.auth.keys && c.api.auth.entra);
    let entra = c.api.entra.unwrap();
    assert_eq!(entra.audiences, ["api://broker", "broker"]);
    assert_eq!(entra.authority, "https://login.microsoftonline.com");
    assert_eq!(entra.entries[0].name, "reporting");
    let missing = |drop: &str| {
        let all = [
            ("TOKEN_API_AUTH", "entra"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "broker"),
            ("TOKEN_API_CALLERS", callers),
        ];
        let kept: Vec<_> = all.into_iter().filter(|(k, _)| *k != drop).collect();
        error_of(&kept).replace("configuration error: ", "")
    };
    let e = missing("AZURE_TENANT_ID");
    assert!(e.starts_with("AZURE_TENANT_ID"), "{e}");
    assert!(missing("AZURE_CLIENT_ID").starts_with("TOKEN_API_AUDIENCE"));
    assert!(missing("TOKEN_API_CALLERS").starts_with("TOKEN_API_CALLERS"));
    let two = r#"[{"name":"x","app_id":"a","role":"r"}]"#;
    assert!(
        error_of(&[
            ("TOKEN_API_AUTH", "entra"),
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "b"),
            ("TOKEN_API_CALLERS", two)
        ])
        .contains("exactly one")
    );
    assert!(error_of(&[("TOKEN_API_AUTH", "kerberos")]).contains("TOKEN_API_AUTH: "));
}

#[test]
fn agent_id_settings_that_contradict_the_flow_stop_the_start() {
    let check = |pairs: &[(&str, &str)]| {
        Config::from_vars(vars(pairs))
            .unwrap()
            .check_agent_credentials()
            .map_err(|e| e.to_string())
    };
    let agent = [
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "blueprint"),
        ("AZURE_CLIENT_SECRET", "s"),
        ("AGENT_IDENTITY_ID", "agent"),
        ("TOKEN_SCOPES", "https://graph.microsoft.com/.default"),
    ];
    check(&agent).unwrap();
    let mut with_password = agent.to_vec();
    with_password.extend([
        ("AGENT_USER_NAME", "human@contoso.com"),
        ("AGENT_PASSWORD", "p"),
    ]);
    assert!(
        check(&with_password)
            .unwrap_err()
            .contains("AGENT_PASSWORD: ")
    );
    let mut delegated_scope = agent.to_vec();
    delegated_scope[4] = ("TOKEN_SCOPES", "User.Read");
    assert!(
        check(&delegated_scope)
            .unwrap_err()
            .contains("TOKEN_SCOPES: ")
    );
    let classic = [
        ("AZURE_TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "app"),
        ("AZURE_CLIENT_SECRET", "s"),
        ("AGENT_BLUEPRINT_CREDENTIAL", "managed_identity"),
    ];
    assert!(
        check(&classic)
            .unwrap_err()
            .contains("AGENT_BLUEPRINT_CREDENTIAL: ")
    );
}
