//! Liveness and readiness.

use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use crate::db::Database;
use crate::http::error::{ApiError, ErrorCode, ErrorSet, Errors};

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes are not guarded: only the database's answer can fail them.
struct ReadyErrors;

impl ErrorSet for ReadyErrors {
    const CODES: &'static [ErrorCode] = &[ErrorCode::DatabaseUnavailable];
    const COMMON: &'static [ErrorCode] = &[];
}

#[derive(Tags)]
enum HealthTags {
    /// Probes for orchestrators and load balancers.
    Health,
}

#[derive(Object)]
struct Status {
    /// `ok`.
    status: String,
}

#[derive(ApiResponse)]
enum Healthy {
    #[oai(status = 200)]
    Ok(Json<Status>),
}

fn ok() -> Healthy {
    Healthy::Ok(Json(Status {
        status: "ok".to_owned(),
    }))
}

pub struct HealthApi {
    db: Database,
}

impl HealthApi {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[OpenApi(tag = "HealthTags::Health")]
impl HealthApi {
    /// The process is up.
    ///
    /// Answers without touching the database: a failing liveness probe means restart the
    /// process, which a slow database does not call for.
    #[oai(path = "/health/live", method = "get", operation_id = "live")]
    async fn live(&self) -> Healthy {
        ok()
    }

    /// The database answers within a second.
    ///
    /// 503 otherwise: take the instance out of the load balancer until it answers again.
    #[oai(path = "/health/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> Result<Healthy, Errors<ReadyErrors>> {
        // Boxed: the probe's future would otherwise size every operation's (`db::observe`).
        let error = match tokio::time::timeout(READY_TIMEOUT, Box::pin(self.db.ping())).await {
            Ok(Ok(())) => return Ok(ok()),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {READY_TIMEOUT:?}"),
        };
        // The probe's caller gets the code only; the log names the server and the cause.
        tracing::warn!(database = self.db.endpoint(), %error, "not ready: the database does not answer");
        Err(ApiError::retry_after(ErrorCode::DatabaseUnavailable, READY_TIMEOUT).into())
    }
}
