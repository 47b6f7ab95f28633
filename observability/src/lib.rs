//! Observability of the user service: the Prometheus recorder, database, pool and cache metrics,
//! the HTTP metrics and request-span middleware, and the tracing / OpenTelemetry setup.
//! Metric names are part of the contract (docs/architecture.md): dashboards and alert rules depend on
//! them.

pub mod cache;
pub mod db;
pub mod http;
pub mod metrics;
pub mod telemetry;
