//! Observability of the user service: the Prometheus recorder, database and pool metrics,
//! HTTP metrics middleware and the tracing setup. Metric names are part of the contract
//! (DESIGN.md): dashboards and alert rules depend on them.

pub mod db;
pub mod telemetry;
