//! Every database call is timed, traced and classified here, into
//! `database_query_duration_seconds` and `database_errors_total`, and its failure reduced to a
//! neutral [`ErrorKind`] that callers map to their own errors.

use std::future::Future;
use std::time::{Duration, Instant};

pub use observability::db::ErrorKind;
use observability::db::{Pool, record_error, record_query};
use sea_orm::{ConnAcquireErr, DbBackend, DbErr, RuntimeErr, SqlErr, sqlx};
use tracing::Instrument;

use super::Operation;

/// A driver's failure, as far as the metrics and the logs need it.
pub trait Failure: std::fmt::Display {
    fn kind(&self) -> ErrorKind;
    /// The server's SQLSTATE, when the server refused the statement.
    fn sqlstate(&self) -> Option<String>;
}

impl Failure for DbErr {
    fn kind(&self) -> ErrorKind {
        classify(self)
    }

    fn sqlstate(&self) -> Option<String> {
        match self {
            DbErr::Exec(RuntimeErr::SqlxError(error))
            | DbErr::Query(RuntimeErr::SqlxError(error)) => match error.as_ref() {
                sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What a database call runs, for its span.
pub struct Call<'a> {
    pub operation: Operation,
    pub backend: DbBackend,
    /// The table: `db.collection.name`.
    pub collection: &'static str,
    /// The statement with its placeholders, never its values.
    pub sql: &'a str,
    /// Which database runs it, with a replica configured.
    pub pool: Option<Pool>,
}

/// Runs one database call inside a span (OpenTelemetry's database client conventions), times
/// it, and classifies its failure. The span and the clock start when this is called, to be
/// awaited at once. The call's future goes to the heap: a driver's future is kilobytes, an
/// `async` layer that awaits a future it owns holds it twice, and every layer above copies the
/// request's whole future each time it moves it (half of a request's instructions were
/// `memcpy`: bench/RESULTS.md). One allocation per call keeps every layer above small.
pub fn observe<T, E: Failure>(
    call: Call<'_>,
    future: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, ErrorKind>> {
    let observed = Observed::start(call);
    let future = Box::pin(future.instrument(observed.span.clone()));
    async move { observed.finish(future.await) }
}

/// One call's span, name and start.
struct Observed {
    name: &'static str,
    pool: Option<Pool>,
    span: tracing::Span,
    started: Instant,
}

impl Observed {
    fn start(call: Call<'_>) -> Self {
        let Call {
            operation,
            backend,
            collection,
            sql,
            pool,
        } = call;
        let name = operation.as_str();
        let verb = operation.sql_verb();
        let span = tracing::info_span!(
            "db.client.query",
            otel.name = %format_args!("{verb} {collection}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            db.system.name = match backend {
                DbBackend::Postgres => "postgresql",
                DbBackend::Sqlite => "sqlite",
                _ => "other_sql",
            },
            db.operation.name = verb,
            db.collection.name = collection,
            db.query.text = sql,
            user_service.operation = name,
            user_service.pool = pool.map(Pool::as_str),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        observability::telemetry::record_trace_ids(&span);
        Observed {
            name,
            pool,
            span,
            started: Instant::now(),
        }
    }

    fn finish<T, E: Failure>(self, result: Result<T, E>) -> Result<T, ErrorKind> {
        let elapsed = self.started.elapsed();
        match result {
            Ok(value) => {
                record_query(self.name, self.pool, elapsed, None);
                Ok(value)
            }
            Err(error) => {
                let kind = error.kind();
                self.span.record("otel.status_code", "error");
                self.span.record("error.type", kind.as_str());
                record_query(self.name, self.pool, elapsed, Some(kind));
                self.span
                    .in_scope(|| log_failure(self.name, kind, &error, elapsed));
                Err(kind)
            }
        }
    }
}

/// Counts a call that succeeded but found nothing (`kind="not_found"`).
pub fn record_not_found(operation: Operation) -> ErrorKind {
    record_error(operation.as_str(), ErrorKind::NotFound);
    ErrorKind::NotFound
}

fn classify(error: &DbErr) -> ErrorKind {
    if let Some(SqlErr::UniqueConstraintViolation(_)) = error.sql_err() {
        return ErrorKind::UniqueViolation;
    }
    match error {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => ErrorKind::PoolTimeout,
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => ErrorKind::Connection,
        DbErr::RecordNotFound(_) | DbErr::RecordNotUpdated => ErrorKind::NotFound,
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            classify_sqlx(error)
        }
        _ => ErrorKind::Other,
    }
}

fn classify_sqlx(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::PoolTimedOut => ErrorKind::PoolTimeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Connection,
        sqlx::Error::Database(error) => error
            .code()
            .map_or(ErrorKind::Other, |code| sqlstate_kind(&code)),
        _ => ErrorKind::Other,
    }
}

/// What a code the server answered with means: PostgreSQL's SQLSTATE, or SQLite's result code
/// as sqlx reports it. The one table of them, for both drivers.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        // PostgreSQL: unique_violation.
        "23505" => ErrorKind::UniqueViolation,
        // PostgreSQL: query_canceled (statement_timeout), lock_not_available.
        "57014" | "55P03" => ErrorKind::Timeout,
        // PostgreSQL: connection exceptions, shutdown/crash (57P0x), too many connections.
        code if code.starts_with("08") || code.starts_with("57P") || code == "53300" => {
            ErrorKind::Connection
        }
        // SQLite: SQLITE_BUSY and SQLITE_LOCKED, plain and extended.
        "5" | "6" | "261" | "262" | "517" => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// Logs a failed call without its SQL parameters or the server's detail text, either of which
/// can carry an email address or a name.
fn log_failure(operation: &'static str, kind: ErrorKind, error: &impl Failure, elapsed: Duration) {
    let sqlstate = error.sqlstate();
    let elapsed_ms = elapsed.as_millis() as u64;
    match kind {
        ErrorKind::UniqueViolation | ErrorKind::NotFound => {
            tracing::debug!(operation, kind = kind.as_str(), "database call refused")
        }
        ErrorKind::Other if sqlstate.is_some() => tracing::error!(
            operation,
            kind = kind.as_str(),
            sqlstate = sqlstate.as_deref(),
            elapsed_ms,
            "database call failed"
        ),
        _ => tracing::warn!(
            operation,
            kind = kind.as_str(),
            sqlstate = sqlstate.as_deref(),
            error = %error,
            elapsed_ms,
            "database call failed"
        ),
    }
}
