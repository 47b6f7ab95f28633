//! The api's integration tests, one binary: each module is one area of the contract. (The
//! PostgreSQL restart test is a binary of its own: it stops the server every other test uses.)

#[macro_use]
mod common;

mod concurrency;
mod explain;
mod fuzz;
mod hostile;
mod migrations;
mod observability;
mod openapi;
mod otlp;
mod security;
mod shutdown;
mod startup;
mod traces;
mod unavailable;
mod users_api;
