//! The OpenAPI description served at `/api/tokens/openapi.json`: valid OpenAPI 3.0
//! by a check of our own (no validator crate), the service's headers declared, and
//! in step with the route table of `src/api/routes.rs`: every route documented,
//! nothing else.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use token_broker::api::Route;

/// The operations a path item may have in OpenAPI 3.0.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What else a path item may hold (`$ref` path items are not used here, and not
/// followed by this check).
const PATH_ITEM_FIELDS: [&str; 4] = ["summary", "description", "servers", "parameters"];

/// The component maps this check follows references into.
const COMPONENTS: [&str; 9] = [
    "schemas",
    "responses",
    "parameters",
    "examples",
    "requestBodies",
    "headers",
    "securitySchemes",
    "links",
    "callbacks",
];

/// 503s that carry no `Retry-After`, and why; each must then not declare one.
const NO_RETRY_AFTER: [(&str, &str, &str); 1] = [(
    "get",
    "/api/tokens/health",
    "a status report, not a refusal: health.rs sends no Retry-After",
)];

/// The `status` values `src/api/health.rs` answers with.
const HEALTH_STATUSES: [&str; 3] = ["healthy", "degraded", "unhealthy"];

#[tokio::test(flavor = "multi_thread")]
async fn the_served_openapi_document_is_valid_and_documents_exactly_the_route_table() {
    let app = TestApp::spawn().await;
    let (status, spec, headers) = app
        .send(Method::GET, "/api/tokens/openapi.json", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{spec}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");

    let mut check = Check::new(&spec);
    check.document();
    check.service_headers();
    check.matches_route_table();
    check.errors.sort();
    check.errors.dedup();
    assert!(
        check.errors.is_empty(),
        "openapi.json:\n  {}",
        check.errors.join("\n  ")
    );

    // What the document says of the headers is what the service does: a caller's
    // x-request-id comes back, a 401 carries its challenge.
    let response = app
        .http
        .get(app.url("/api/tokens/openapi.json"))
        .header("x-request-id", "openapi.check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "openapi.check-1");
    let (status, _, headers) = app.send(Method::GET, "/api/tokens/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"), "{headers:?}");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    let (_, health) = app.get("/api/tokens/health", None).await;
    assert!(
        HEALTH_STATUSES.contains(&health["status"].as_str().unwrap_or_default()),
        "{health}"
    );
}

/// Every route the table serves (not its 405s and 404s). A new variant of
/// [`Route`] stops [`documented_as`] from compiling until it is placed there, and
/// [`Check::matches_route_table`] finds every route a known path reaches in here.
fn served() -> [Route; 11] {
    [
        Route::Probe,
        Route::Timer,
        Route::List { slash: false },
        Route::List { slash: true },
        Route::Health,
        Route::OpenApi,
        Route::Metrics,
        Route::Refresh,
        Route::Read,
        Route::Delete,
        Route::Store,
    ]
}

/// The path template under which the description documents `route`, or `None` for
/// what it leaves out on purpose. No wildcard arm: see [`served`].
fn documented_as(route: Route) -> Option<String> {
    match route {
        // The Functions host's own requests to the handler (its start-up probe, its
        // timer trigger), outside the API under /api/tokens.
        Route::Probe | Route::Timer => None,
        // The listing with a trailing slash is the same operation.
        Route::List { slash: true } => documented_as(Route::List { slash: false }),
        Route::List { slash: false }
        | Route::Health
        | Route::OpenApi
        | Route::Metrics
        | Route::Refresh
        | Route::Read
        | Route::Delete
        | Route::Store => Some(route.label().replace("*scope", "{scope}")),
        Route::MethodNotAllowed(_) | Route::NotFound => None,
    }
}

/// The methods asked of the route table.
fn methods() -> [Method; 9] {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ]
}

/// A path the route table would be sent for `template`.
fn instantiate(template: &str) -> String {
    template
        .replace("{scope}", GRAPH_ENCODED)
        .replace("*scope", GRAPH_ENCODED)
}

/// The `{name}`s of a path template.
fn template_variables(template: &str) -> BTreeSet<String> {
    template
        .split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

fn is_camel_case(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_status_code(key: &str) -> bool {
    key.len() == 3
        && key
            .parse::<u16>()
            .is_ok_and(|code| (100..=599).contains(&code))
}

/// The value of a header map's entry, names compared as HTTP compares them.
fn header<'v>(headers: &'v Value, name: &str) -> Option<&'v Value> {
    headers
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// One operation: its method, path template and node.
struct Operation<'s> {
    method: &'static str,
    template: &'s str,
    item: &'s Value,
    node: &'s Value,
}

impl Operation<'_> {
    fn at(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// Collects every problem instead of stopping at the first.
struct Check<'s> {
    spec: &'s Value,
    errors: Vec<String>,
}

impl<'s> Check<'s> {
    fn new(spec: &'s Value) -> Self {
        Self {
            spec,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, error: String) {
        self.errors.push(error);
    }

    fn operations(&self) -> Vec<Operation<'s>> {
        let spec = self.spec;
        let Some(paths) = spec["paths"].as_object() else {
            return Vec::new();
        };
        let mut operations = Vec::new();
        for (template, item) in paths {
            for method in OPERATIONS {
                if let Some(node) = item.get(method) {
                    operations.push(Operation {
                        method,
                        template,
                        item,
                        node,
                    });
                }
            }
        }
        operations
    }

    /// `node`, or what its `$ref` names, which must be under `#/components/{section}/`.
    fn resolve(&mut self, node: &'s Value, section: &str, at: &str) -> Option<&'s Value> {
        let spec = self.spec;
        let mut node = node;
        for _ in 0..8 {
            let Some(reference) = node.get("$ref") else {
                return Some(node);
            };
            let reference = reference.as_str().unwrap_or_default();
            let prefix = format!("#/components/{section}/");
            if !reference.starts_with(&prefix) {
                self.fail(format!("{at}: $ref {reference} is not under {prefix}"));
                return None;
            }
            // Unresolvable references are reported once, by `references`.
            node = reference.strip_prefix('#').and_then(|p| spec.pointer(p))?;
        }
        self.fail(format!("{at}: $ref chain too long"));
        None
    }

    /// Structure: OpenAPI 3.0 as far as this document uses it.
    fn document(&mut self) {
        let spec = self.spec;
        match spec["openapi"]
            .as_str()
            .and_then(|v| v.strip_prefix("3.0."))
        {
            Some(patch) if !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => self.fail(format!("openapi is {}, not 3.0.x", spec["openapi"])),
        }
        for (field, _) in spec.as_object().into_iter().flatten() {
            let known = [
                "openapi",
                "info",
                "servers",
                "paths",
                "components",
                "security",
                "tags",
                "externalDocs",
            ];
            if !known.contains(&field.as_str()) && !field.starts_with("x-") {
                self.fail(format!("unknown top-level field {field}"));
            }
        }
        for field in ["title", "version"] {
            if spec["info"][field].as_str().is_none_or(str::is_empty) {
                self.fail(format!("info.{field} is missing"));
            }
        }
        if let Some(servers) = spec.get("servers") {
            let urls = servers.as_array().map(|servers| {
                servers
                    .iter()
                    .all(|server| server["url"].as_str().is_some())
            });
            if urls != Some(true) {
                self.fail("servers: each needs a url".into());
            }
        }
        self.references();
        self.components();
        if let Some(security) = spec.get("security") {
            self.security(security, "top-level security");
        }
        self.paths();
    }

    /// Every `$ref` resolves inside the document, stands alone, and every component
    /// is referenced.
    fn references(&mut self) {
        let spec = self.spec;
        /// Each `$ref` with where it is; `None` when not a string or not alone.
        fn walk<'v>(node: &'v Value, at: String, found: &mut Vec<(String, Option<&'v str>)>) {
            match node {
                Value::Object(map) => {
                    if let Some(reference) = map.get("$ref") {
                        let alone = map.len() == 1;
                        found.push((at.clone(), reference.as_str().filter(|_| alone)));
                    }
                    for (key, value) in map {
                        walk(value, format!("{at}/{key}"), found);
                    }
                }
                Value::Array(items) => {
                    for (i, value) in items.iter().enumerate() {
                        walk(value, format!("{at}/{i}"), found);
                    }
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(spec, String::new(), &mut found);
        let mut referenced = BTreeSet::new();
        for (at, reference) in found {
            let Some(reference) = reference else {
                self.fail(format!("{at}: $ref with other fields, or not a string"));
                continue;
            };
            match reference.strip_prefix('#') {
                Some(pointer) if spec.pointer(pointer).is_some() => {
                    referenced.insert(reference.to_owned());
                }
                _ => self.fail(format!("{at}: $ref {reference} does not resolve")),
            }
        }
        for section in COMPONENTS {
            if section == "securitySchemes" {
                continue;
            }
            for name in spec["components"][section]
                .as_object()
                .into_iter()
                .flat_map(|map| map.keys())
            {
                let reference = format!("#/components/{section}/{name}");
                if !referenced.contains(&reference) {
                    self.fail(format!("{reference} is never used"));
                }
            }
        }
    }

    fn components(&mut self) {
        let spec = self.spec;
        let Some(components) = spec["components"].as_object() else {
            return;
        };
        for (section, map) in components {
            if !COMPONENTS.contains(&section.as_str()) && !section.starts_with("x-") {
                self.fail(format!("unknown components.{section}"));
                continue;
            }
            for name in map.as_object().into_iter().flat_map(|map| map.keys()) {
                let valid = name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if name.is_empty() || !valid {
                    self.fail(format!("components.{section}: bad name {name:?}"));
                }
            }
        }
        for (name, scheme) in spec["components"]["securitySchemes"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let fine = match scheme["type"].as_str() {
                Some("http") => scheme["scheme"].is_string(),
                Some("apiKey") => {
                    scheme["name"].is_string()
                        && ["query", "header", "cookie"]
                            .contains(&scheme["in"].as_str().unwrap_or(""))
                }
                Some("oauth2") => scheme["flows"].is_object(),
                Some("openIdConnect") => scheme["openIdConnectUrl"].is_string(),
                _ => false,
            };
            if !fine {
                self.fail(format!("securitySchemes.{name} is not a valid scheme"));
            }
        }
        for (name, schema) in spec["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
        {
            self.schema(schema, &format!("schemas.{name}"));
        }
        for (name, parameter) in spec["components"]["parameters"]
            .as_object()
            .into_iter()
            .flatten()
        {
            self.parameter(parameter, &format!("parameters.{name}"));
        }
        for (name, response) in spec["components"]["responses"]
            .as_object()
            .into_iter()
            .flatten()
        {
            self.response(response, &format!("responses.{name}"));
        }
    }

    /// A schema as OpenAPI 3.0 has them (one `type`, `nullable`, no 3.1 forms).
    fn schema(&mut self, schema: &'s Value, at: &str) {
        if schema.get("$ref").is_some() {
            self.resolve(schema, "schemas", at);
            return;
        }
        let Some(map) = schema.as_object() else {
            self.fail(format!("{at}: a schema must be an object"));
            return;
        };
        let types = ["string", "number", "integer", "boolean", "array", "object"];
        if let Some(kind) = map.get("type")
            && !kind.as_str().is_some_and(|kind| types.contains(&kind))
        {
            self.fail(format!("{at}: type {kind} is not one OpenAPI 3.0 type"));
        }
        if map.get("type").and_then(Value::as_str) == Some("array") && !map.contains_key("items") {
            self.fail(format!("{at}: an array needs items"));
        }
        if map.get("nullable").is_some_and(|n| !n.is_boolean()) {
            self.fail(format!("{at}: nullable must be a boolean"));
        }
        if map
            .get("enum")
            .is_some_and(|e| e.as_array().is_none_or(Vec::is_empty))
        {
            self.fail(format!("{at}: enum must be a non-empty array"));
        }
        if let Some(required) = map.get("required") {
            let properties = map.get("properties");
            let fine = required.as_array().is_some_and(|names| {
                !names.is_empty()
                    && names.iter().all(|name| {
                        name.as_str()
                            .is_some_and(|name| properties.is_none_or(|p| p.get(name).is_some()))
                    })
            });
            if !fine {
                self.fail(format!("{at}: required must name properties"));
            }
        }
        for (name, property) in map
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            self.schema(property, &format!("{at}.{name}"));
        }
        for key in ["items", "not"] {
            if let Some(inner) = map.get(key) {
                self.schema(inner, &format!("{at}.{key}"));
            }
        }
        if let Some(inner) = map.get("additionalProperties").filter(|a| a.is_object()) {
            self.schema(inner, &format!("{at}.additionalProperties"));
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            let Some(choices) = map.get(key) else {
                continue;
            };
            match choices.as_array() {
                Some(choices) if !choices.is_empty() => {
                    for (i, choice) in choices.iter().enumerate() {
                        self.schema(choice, &format!("{at}.{key}[{i}]"));
                    }
                }
                _ => self.fail(format!("{at}: {key} must be a non-empty array")),
            }
        }
    }

    /// A parameter: its name, where it goes and what it holds; its (name, in).
    fn parameter(&mut self, parameter: &'s Value, at: &str) -> Option<(String, String)> {
        let parameter = self.resolve(parameter, "parameters", at)?;
        let name = parameter["name"].as_str().unwrap_or_default();
        let place = parameter["in"].as_str().unwrap_or_default();
        if name.is_empty() || !["query", "header", "path", "cookie"].contains(&place) {
            self.fail(format!("{at}: a parameter needs a name and in"));
            return None;
        }
        if place == "path" && parameter["required"] != Value::Bool(true) {
            self.fail(format!("{at}: path parameter {name} must be required"));
        }
        match (parameter.get("schema"), parameter.get("content")) {
            (Some(schema), None) => self.schema(schema, &format!("{at}.schema")),
            (None, Some(content)) => self.content(content, at),
            _ => self.fail(format!("{at}: a parameter needs a schema or a content")),
        }
        Some((name.to_ascii_lowercase(), place.to_owned()))
    }

    /// A list of parameters, each (name, in) once.
    fn parameters(&mut self, list: Option<&'s Value>, at: &str) -> BTreeSet<(String, String)> {
        let mut seen = BTreeSet::new();
        let Some(list) = list else {
            return seen;
        };
        let Some(list) = list.as_array() else {
            self.fail(format!("{at}: parameters must be an array"));
            return seen;
        };
        for (i, parameter) in list.iter().enumerate() {
            if let Some(key) = self.parameter(parameter, &format!("{at}.parameters[{i}]"))
                && !seen.insert(key.clone())
            {
                self.fail(format!("{at}: parameter {key:?} twice"));
            }
        }
        seen
    }

    fn content(&mut self, content: &'s Value, at: &str) {
        match content.as_object() {
            Some(media) if !media.is_empty() => {
                for (kind, media) in media {
                    if let Some(schema) = media.get("schema") {
                        self.schema(schema, &format!("{at}.content.{kind}"));
                    }
                }
            }
            _ => self.fail(format!("{at}: content must name a media type")),
        }
    }

    fn response(&mut self, response: &'s Value, at: &str) -> Option<&'s Value> {
        let response = self.resolve(response, "responses", at)?;
        if !response["description"].is_string() {
            self.fail(format!("{at}: a response needs a description"));
        }
        for (name, value) in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let at = format!("{at}.headers.{name}");
            let Some(value) = self.resolve(value, "headers", &at) else {
                continue;
            };
            if value.get("name").is_some() || value.get("in").is_some() {
                self.fail(format!("{at}: a header takes no name or in"));
            }
            match (value.get("schema"), value.get("content")) {
                (Some(schema), None) => self.schema(schema, &at),
                (None, Some(content)) => self.content(content, &at),
                _ => self.fail(format!("{at}: a header needs a schema or a content")),
            }
        }
        if let Some(content) = response.get("content") {
            self.content(content, at);
        }
        Some(response)
    }

    /// Requirements naming declared schemes, each with an empty list of scopes
    /// (none of the schemes is OAuth 2).
    fn security(&mut self, security: &Value, at: &str) {
        let Some(requirements) = security.as_array() else {
            self.fail(format!("{at}: must be an array"));
            return;
        };
        let schemes = &self.spec["components"]["securitySchemes"];
        let mut errors = Vec::new();
        for requirement in requirements {
            let Some(requirement) = requirement.as_object() else {
                errors.push(format!("{at}: {requirement} is not a requirement"));
                continue;
            };
            for (name, scopes) in requirement {
                if schemes.get(name).is_none() {
                    errors.push(format!("{at}: scheme {name} is not declared"));
                }
                if scopes.as_array().is_none_or(|scopes| !scopes.is_empty()) {
                    errors.push(format!("{at}: {name} must list no scopes"));
                }
            }
        }
        self.errors.extend(errors);
    }

    fn paths(&mut self) {
        let spec = self.spec;
        let Some(paths) = spec["paths"].as_object() else {
            self.fail("paths is missing".into());
            return;
        };
        let mut shapes = BTreeSet::new();
        for (template, item) in paths {
            if !template.starts_with('/') {
                self.fail(format!("path {template} does not start with /"));
            }
            let shape: String = template
                .split('{')
                .map(|part| part.split_once('}').map_or(part, |(_, rest)| rest))
                .collect::<Vec<_>>()
                .join("{}");
            if !shapes.insert(shape) {
                self.fail(format!("path {template} repeats another with other names"));
            }
            let allowed = |field: &str| {
                OPERATIONS.contains(&field)
                    || PATH_ITEM_FIELDS.contains(&field)
                    || field.starts_with("x-")
            };
            for field in item.as_object().into_iter().flat_map(|item| item.keys()) {
                if !allowed(field) {
                    self.fail(format!("path {template}: unknown field {field}"));
                }
            }
            if !OPERATIONS.iter().any(|method| item.get(*method).is_some()) {
                self.fail(format!("path {template} has no operation"));
            }
        }
        let mut ids = BTreeMap::new();
        for operation in self.operations() {
            self.operation(&operation, &mut ids);
        }
    }

    fn operation(&mut self, operation: &Operation<'s>, ids: &mut BTreeMap<String, String>) {
        let at = operation.at();
        let node = operation.node;
        match node["operationId"].as_str() {
            Some(id) if is_camel_case(id) => {
                if let Some(other) = ids.insert(id.to_owned(), at.clone()) {
                    self.fail(format!("{at}: operationId {id} is also {other}'s"));
                }
            }
            _ => self.fail(format!(
                "{at}: operationId {} is not camelCase",
                node["operationId"]
            )),
        }
        // An operation's parameters override the path item's of the same (name, in).
        let mut parameters = self.parameters(operation.item.get("parameters"), operation.template);
        parameters.extend(self.parameters(node.get("parameters"), &at));
        let declared: BTreeSet<String> = parameters
            .iter()
            .filter(|(_, place)| place == "path")
            .map(|(name, _)| name.clone())
            .collect();
        let variables = template_variables(operation.template);
        if declared != variables {
            self.fail(format!(
                "{at}: path parameters {declared:?}, template variables {variables:?}"
            ));
        }
        if !parameters.contains(&("x-request-id".to_owned(), "header".to_owned())) {
            self.fail(format!("{at}: does not accept the x-request-id header"));
        }
        if let Some(body) = node.get("requestBody")
            && let Some(body) = self.resolve(body, "requestBodies", &at)
        {
            match body.get("content") {
                Some(content) => self.content(content, &format!("{at} requestBody")),
                None => self.fail(format!("{at}: requestBody needs content")),
            }
        }
        if let Some(security) = node.get("security") {
            self.security(security, &at);
        }
        let responses = node["responses"].as_object();
        if responses.is_none_or(|r| !r.keys().any(|code| code.starts_with('2'))) {
            self.fail(format!("{at}: no success response"));
        }
        for (code, response) in responses.into_iter().flatten() {
            if !is_status_code(code) {
                self.fail(format!("{at}: response key {code} is not a status code"));
            }
            self.response(response, &format!("{at} {code}"));
        }
    }

    /// The headers every answer carries, or those of its status.
    fn service_headers(&mut self) {
        for operation in self.operations() {
            let at = operation.at();
            for (code, response) in operation.node["responses"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let at = format!("{at} {code}");
                let Some(response) = self.resolve(response, "responses", &at) else {
                    continue;
                };
                let headers = &response["headers"];
                let mut wanted = vec!["x-request-id"];
                let exempt = NO_RETRY_AFTER
                    .iter()
                    .any(|(m, t, _)| *m == operation.method && *t == operation.template);
                match code.as_str() {
                    "401" => wanted.push("WWW-Authenticate"),
                    "429" => wanted.push("Retry-After"),
                    "503" if !exempt => wanted.push("Retry-After"),
                    "503" if header(headers, "Retry-After").is_some() => self.fail(format!(
                        "{at}: declares Retry-After; drop it from NO_RETRY_AFTER"
                    )),
                    _ => {}
                }
                for name in wanted {
                    if header(headers, name).is_none() {
                        self.fail(format!("{at}: does not declare {name}"));
                    }
                }
            }
        }
        let status = &self.spec["components"]["schemas"]["Health"]["properties"]["status"];
        if status["enum"] != serde_json::json!(HEALTH_STATUSES) {
            self.fail(format!(
                "Health.status enum is {}, health.rs answers {HEALTH_STATUSES:?}",
                status["enum"]
            ));
        }
    }

    /// The documented operations are those of the route table, with the security
    /// the route asks for.
    fn matches_route_table(&mut self) {
        let spec = self.spec;
        let documented: BTreeMap<(String, String), &Value> = self
            .operations()
            .into_iter()
            .map(|o| ((o.method.to_owned(), o.template.to_owned()), o.node))
            .collect();

        // Every route a path the table or the document knows reaches is in `served`.
        let mut corpus: Vec<String> = ["/", "/timer-refresh", "/api/tokens", "/api/tokens/"]
            .map(str::to_owned)
            .into();
        corpus.extend(served().map(|route| instantiate(route.label())));
        corpus.extend(documented.keys().map(|(_, template)| instantiate(template)));
        for path in &corpus {
            for method in methods() {
                let route = Route::parse(&method, path);
                let known = matches!(route, Route::MethodNotAllowed(_) | Route::NotFound)
                    || served().contains(&route);
                if !known {
                    self.fail(format!(
                        "{method} {path} is {route:?}, missing from served()"
                    ));
                }
            }
        }

        // Every operation the table serves, from each route's own template: the
        // methods that reach it, HEAD documented as its GET.
        let mut routed: BTreeMap<(String, String), Route> = BTreeMap::new();
        for route in served() {
            let Some(template) = documented_as(route) else {
                continue;
            };
            let path = instantiate(route.label());
            let reaching: Vec<Method> = methods()
                .into_iter()
                .filter(|method| Route::parse(method, &path) == route)
                .collect();
            if reaching.is_empty() {
                self.fail(format!("{route:?}: no method reaches it at {path}"));
            }
            for method in reaching {
                if method == Method::HEAD && Route::parse(&Method::GET, &path) == route {
                    continue;
                }
                let key = (method.as_str().to_ascii_lowercase(), template.clone());
                match routed.insert(key, route) {
                    Some(other) if other.needs_caller() != route.needs_caller() => self.fail(
                        format!("{method} {template}: {other:?} and {route:?} differ"),
                    ),
                    _ => {}
                }
            }
        }

        for (method, template) in documented.keys() {
            if !routed.contains_key(&(method.clone(), template.clone())) {
                let route = Method::from_bytes(method.to_uppercase().as_bytes())
                    .map(|m| Route::parse(&m, &instantiate(template)));
                self.fail(format!(
                    "{method} {template} is documented, but the route table makes it {route:?}"
                ));
            }
        }
        let top = &spec["security"];
        for ((method, template), route) in &routed {
            let at = format!("{method} {template}");
            let Some(operation) = documented.get(&(method.clone(), template.clone())) else {
                self.fail(format!("{at} ({route:?}) is served but not documented"));
                continue;
            };
            // The security in force, and whether it lets an anonymous caller in.
            let security = operation.get("security").unwrap_or(top);
            let requirements = security.as_array().map(Vec::as_slice).unwrap_or_default();
            let open = requirements.is_empty()
                || requirements
                    .iter()
                    .any(|r| r.as_object().is_some_and(|r| r.is_empty()));
            let has_401 = operation["responses"].get("401").is_some();
            if route.needs_caller() == open {
                self.fail(format!(
                    "{at}: the route {} a caller, the document says security {security}",
                    if route.needs_caller() {
                        "needs"
                    } else {
                        "needs no"
                    }
                ));
            }
            if route.needs_caller() != has_401 {
                self.fail(format!(
                    "{at}: 401 documented: {has_401}, needs a caller: {}",
                    route.needs_caller()
                ));
            }
        }
    }
}
