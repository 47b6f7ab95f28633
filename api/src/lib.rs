//! The user service. [`build`] wires configuration, database and routes into an [`App`];
//! [`run`] serves it until a shutdown signal. `main.rs` and the tests call exactly these.
//!
//! The wings, each with one job (`users` uses `http`, `cache` and `db`, never the other way;
//! each reads its settings from `config`):
//! - [`server`](run): listeners, serving, housekeeping, graceful shutdown;
//! - [`app`]: the route tree, the middleware stack, shared state;
//! - [`config`]: the typed configuration, parsed once from the environment;
//! - [`users`]: the resource: model and rules, statements, endpoints, idempotency keys;
//! - [`health`]: liveness and readiness;
//! - [`http`]: errors, input checks, auth, rate limit, headers, the spec;
//! - [`cache`]: the Redis cache in front of reads, and its coherence rules;
//! - [`db`]: PostgreSQL's pipelined connections and replica routing, SQLite through SeaORM,
//!   migrations, and the timing and classification of every call.

// Large futures cost every request a copy per layer that moves them (db/observe.rs); the
// threshold is in clippy.toml.
#![warn(clippy::large_futures)]

pub mod app;
pub mod cache;
pub mod config;
pub mod db;
pub mod health;
pub mod http;
mod server;
pub mod users;

pub use app::{App, StartupError, build, openapi_spec};
pub use server::{Listeners, raise_open_files_limit, run, run_until};
