//! The api's integration tests, one binary: each module is one area of the contract. Apart:
//! the PostgreSQL restart (it stops the server every other test uses), and the tests that read
//! the process-wide metrics recorder (pool gauges, observability).

#[macro_use]
mod common;

mod cache;
mod changes;
mod concurrency;
mod docs;
mod explain;
mod fuzz;
mod hostile;
mod idempotency;
mod migrations;
mod openapi;
mod otlp;
mod pipelines;
mod replica;
mod security;
mod shutdown;
mod startup;
mod tls;
mod traces;
mod unavailable;
mod users_api;
