//! The one route table: every request is parsed once into a [`Route`], which
//! decides its handler, its metrics label and the words a scope path may not take.

use axum::http::Method;

/// What a request asks for, from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the host's start-up probe.
    Probe,
    /// `POST /timer-refresh`: the host's timer trigger.
    Timer,
    /// `GET /api/tokens[?scope=X]` (or `/api/tokens/`): the listing, or a token
    /// by query.
    List {
        slash: bool,
    },
    Health,
    OpenApi,
    Metrics,
    /// `POST /api/tokens/refresh/{scope}`.
    Refresh,
    /// `GET /api/tokens/{scope}`: the hot path.
    Read,
    /// `DELETE /api/tokens/{scope}`.
    Delete,
    /// `PUT /api/tokens/{scope}?user_id=U`.
    Store,
    /// A known path, another method.
    MethodNotAllowed(Known),
    NotFound,
}

/// The paths a [`Route::MethodNotAllowed`] can be about, for its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Probe,
    Timer,
    List {
        slash: bool,
    },
    /// An entry of [`FIXED`].
    Fixed(usize),
    Refresh,
    Scope,
}

/// Where the token routes live (the host's route prefix is `api`).
pub const PREFIX: &str = "/api/tokens";

/// The fixed names under [`PREFIX`]: routes of their own, so a scope spelled like
/// one of them is asked for with `?scope=`.
const FIXED: [(&str, Route, &str); 3] = [
    ("health", Route::Health, "/api/tokens/health"),
    ("openapi.json", Route::OpenApi, "/api/tokens/openapi.json"),
    ("metrics", Route::Metrics, "/api/tokens/metrics"),
];

/// The first path segment of the refresh route.
const REFRESH: &str = "refresh";

/// Words a scope in the path may not start with (a whole first segment).
pub const RESERVED: [&str; 4] = [FIXED[0].0, FIXED[1].0, FIXED[2].0, REFRESH];

impl Route {
    pub fn parse(method: &Method, path: &str) -> Self {
        // HEAD is GET without the body (hyper leaves the body out).
        let get = method == Method::GET || method == Method::HEAD;
        let only = |allowed: bool, route: Route, known: Known| match allowed {
            true => route,
            false => Route::MethodNotAllowed(known),
        };
        match path {
            "/" => return only(get, Route::Probe, Known::Probe),
            "/timer-refresh" => {
                return only(method == Method::POST, Route::Timer, Known::Timer);
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Route::NotFound;
        };
        let rest = match rest {
            "" | "/" => {
                let slash = rest == "/";
                return only(get, Route::List { slash }, Known::List { slash });
            }
            rest => match rest.strip_prefix('/') {
                Some(rest) => rest,
                None => return Route::NotFound,
            },
        };
        if let Some(i) = FIXED.iter().position(|(name, ..)| *name == rest) {
            return only(get, FIXED[i].1, Known::Fixed(i));
        }
        // As a catch-all `{*scope}` would: `refresh/` alone names no scope.
        if rest
            .strip_prefix(REFRESH)
            .and_then(|scope| scope.strip_prefix('/'))
            .is_some_and(|scope| !scope.is_empty())
        {
            return only(method == Method::POST, Route::Refresh, Known::Refresh);
        }
        match *method {
            Method::GET | Method::HEAD => Route::Read,
            Method::DELETE => Route::Delete,
            Method::PUT => Route::Store,
            _ => Route::MethodNotAllowed(Known::Scope),
        }
    }

    /// The route template as a metrics label, never the path: scopes and users
    /// stay out of labels. No braces: some text-format parsers stop a label value
    /// at the first `}`.
    pub fn label(self) -> &'static str {
        let known = match self {
            Route::Probe => Known::Probe,
            Route::Timer => Known::Timer,
            Route::List { slash } => Known::List { slash },
            Route::Health | Route::OpenApi | Route::Metrics => {
                Known::Fixed(FIXED.iter().position(|f| f.1 == self).unwrap_or(0))
            }
            Route::Refresh => Known::Refresh,
            Route::Read | Route::Delete | Route::Store => Known::Scope,
            Route::MethodNotAllowed(known) => known,
            Route::NotFound => return "unmatched",
        };
        match known {
            Known::Probe => "/",
            Known::Timer => "/timer-refresh",
            Known::List { slash: false } => "/api/tokens",
            Known::List { slash: true } => "/api/tokens/",
            Known::Fixed(i) => FIXED[i].2,
            Known::Refresh => "/api/tokens/refresh/*scope",
            Known::Scope => "/api/tokens/*scope",
        }
    }

    /// The methods a path takes, for the `Allow` header of a `405`.
    pub fn allowed(known: Known) -> &'static str {
        match known {
            Known::Timer | Known::Refresh => "POST",
            Known::Scope => "GET,HEAD,DELETE,PUT",
            Known::Probe | Known::List { .. } | Known::Fixed(_) => "GET,HEAD",
        }
    }

    /// Whether the caller must be authenticated before anything else is looked at.
    pub fn needs_caller(self) -> bool {
        matches!(
            self,
            Route::List { .. }
                | Route::Metrics
                | Route::Refresh
                | Route::Read
                | Route::Delete
                | Route::Store
        )
    }

    /// The rest of `path` after the route's fixed part: the scope, still encoded.
    pub fn scope_part(self, path: &str) -> &str {
        let prefix = match self {
            Route::Refresh => "/api/tokens/refresh/",
            _ => "/api/tokens/",
        };
        path.strip_prefix(prefix).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> Route {
        Route::parse(&method, path)
    }

    #[test]
    fn every_path_has_one_route() {
        for path in [
            "/api/tokens/User.Read",
            "/api/tokens/https%3A%2F%2Fgraph.microsoft.com%2F.default",
            "/api/tokens/https://graph.microsoft.com/.default",
            // A scope named like a route is a scope here; `scope_from_path`
            // refuses it.
            "/api/tokens/refresh",
            "/api/tokens/refresh/",
            "/api/tokens/health/x",
        ] {
            assert_eq!(route(Method::GET, path), Route::Read, "{path}");
        }
        assert_eq!(route(Method::HEAD, "/api/tokens/User.Read"), Route::Read);
        assert_eq!(route(Method::PUT, "/api/tokens/User.Read"), Route::Store);
        assert_eq!(
            route(Method::DELETE, "/api/tokens/User.Read"),
            Route::Delete
        );
        assert_eq!(
            route(Method::GET, "/api/tokens"),
            Route::List { slash: false }
        );
        assert_eq!(
            route(Method::GET, "/api/tokens/"),
            Route::List { slash: true }
        );
        assert_eq!(route(Method::GET, "/api/tokens/health"), Route::Health);
        assert_eq!(route(Method::GET, "/api/tokens/metrics"), Route::Metrics);
        assert_eq!(
            route(Method::GET, "/api/tokens/openapi.json"),
            Route::OpenApi
        );
        assert_eq!(
            route(Method::POST, "/api/tokens/refresh/User.Read"),
            Route::Refresh
        );
        assert_eq!(route(Method::POST, "/timer-refresh"), Route::Timer);
        assert_eq!(route(Method::GET, "/"), Route::Probe);
        assert_eq!(
            route(Method::GET, "/api/tokensX/User.Read"),
            Route::NotFound
        );
        assert_eq!(route(Method::GET, "/other"), Route::NotFound);
        for (method, path) in [
            (Method::POST, "/api/tokens/User.Read"),
            (Method::GET, "/api/tokens/refresh/User.Read"),
            (Method::DELETE, "/api/tokens/health"),
            (Method::GET, "/timer-refresh"),
            (Method::POST, "/api/tokens"),
            (Method::POST, "/api/tokens/refresh/"),
        ] {
            assert!(
                matches!(route(method.clone(), path), Route::MethodNotAllowed(_)),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn labels_are_templates_and_reserved_words_are_the_fixed_routes() {
        assert_eq!(
            route(Method::GET, "/api/tokens/x").label(),
            "/api/tokens/*scope"
        );
        assert_eq!(
            route(Method::POST, "/api/tokens/x").label(),
            "/api/tokens/*scope"
        );
        assert_eq!(
            route(Method::POST, "/api/tokens/refresh/x").label(),
            "/api/tokens/refresh/*scope"
        );
        assert_eq!(
            route(Method::GET, "/api/tokens/metrics").label(),
            "/api/tokens/metrics"
        );
        assert_eq!(route(Method::GET, "/nope").label(), "unmatched");
        assert_eq!(route(Method::GET, "/api/tokens/").label(), "/api/tokens/");
        assert_eq!(Route::allowed(Known::Scope), "GET,HEAD,DELETE,PUT");
        for word in RESERVED {
            let path = format!("/api/tokens/{word}");
            let routed = route(Method::GET, &path);
            assert!(routed != Route::Read || word == REFRESH, "{word}");
        }
        assert_eq!(
            Route::Refresh.scope_part("/api/tokens/refresh/a%20b"),
            "a%20b"
        );
        assert_eq!(Route::Read.scope_part("/api/tokens/a/b"), "a/b");
    }
}
