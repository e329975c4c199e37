//! One integration binary (one link of this dependency tree, not one per file).
//! Every test starts its own redis-server and identity-provider double.

mod support;

mod agent_id;
mod api;
mod cache;
mod callers;
mod check;
mod hardening;
mod host;
mod layout;
mod metrics;
mod openapi;
mod outage;
mod refresh;
mod scale;
mod store;
mod users;
mod writers;
