//! A token broker for Microsoft Entra ID that runs as an Azure Functions custom
//! handler. See `SPEC.md` in the team's shared folder for the contract; the
//! modules are named after its concepts.
//!
//! Layers, each using only those above it: `clock`, `secret`, `domain`,
//! `metrics`; `config`, `callers`; `store`; `audit`, `cache`, `identity`;
//! `refresh`; `functions`, `app`; `api`; `server`, `startup`; `cli`, `telemetry`.

pub mod api;
pub mod app;
pub mod audit;
pub mod cache;
pub mod callers;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod functions;
pub mod identity;
pub mod metrics;
pub mod refresh;
pub mod secret;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use self::app::{AppState, Issuer, Setup};
pub use self::startup::run;
