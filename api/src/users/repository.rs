//! Every statement that touches `users`. Each operation is timed and its failures classified
//! here, into `database_query_duration_seconds` and `database_errors_total`, because only here
//! are both the operation name and the `DbErr` known (pool timeouts included).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::users::{self, Column, Entity as Users};
use observability::db::{ErrorKind, record_error, record_query};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Value};
use sea_orm::sqlx::Row;
use sea_orm::{
    ColumnTrait, ConnAcquireErr, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, RuntimeErr, Select, SqlErr, Statement, sqlx,
};
use tracing::Instrument;
use uuid::Uuid;

use super::cursor::{Cursor, Order};

/// Every operation name this repository reports, so their counters can start at 0.
pub const OPERATIONS: [&str; 8] = [
    "user.create",
    "user.find_by_id",
    "user.find_by_email",
    "user.list",
    "user.list_updated_since",
    "user.update",
    "user.delete",
    "user.version_of",
];

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no user has this id")]
    NotFound,
    #[error("another user has this email")]
    EmailTaken,
    #[error("the user's version does not match")]
    VersionMismatch,
    /// The database could not answer in time or at all: worth retrying later.
    #[error("database unavailable ({})", .0.as_str())]
    Unavailable(ErrorKind),
    #[error("database error ({})", .0.as_str())]
    Other(ErrorKind),
}

pub struct NewUser {
    pub email: String,
    pub name: String,
}

/// The fields a PATCH sets; `None` leaves a field as it is.
#[derive(Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none()
    }
}

/// The `If-Match` condition of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`, or `If-Match: *`: any current version.
    Any,
    /// One of these versions (an empty list matches nothing).
    OneOf(Vec<i64>),
}

impl Precondition {
    fn admits(&self, version: i64) -> bool {
        match self {
            Precondition::Any => true,
            Precondition::OneOf(versions) => versions.contains(&version),
        }
    }
}

pub struct ListQuery {
    pub limit: u64,
    pub after: Option<Cursor>,
    pub name_prefix: Option<String>,
    pub updated_since: Option<DateTime<Utc>>,
}

pub struct Page {
    pub items: Vec<users::Model>,
    pub next: Option<Cursor>,
}

#[derive(Clone)]
pub struct UserRepository {
    db: DatabaseConnection,
}

impl UserRepository {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn create(&self, new: NewUser) -> Result<users::Model, RepoError> {
        let now = now();
        let user = users::Model {
            id: Uuid::now_v7(),
            email: new.email,
            name: new.name,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let active: users::ActiveModel = user.clone().into();
        // Duplicates are caught by the unique index, never by a racy SELECT beforehand.
        observe(
            "user.create",
            Users::insert(active).exec_without_returning(&self.db),
        )
        .await?;
        Ok(user)
    }

    pub async fn find_by_id(&self, id: Uuid) -> Result<users::Model, RepoError> {
        let found = observe("user.find_by_id", Users::find_by_id(id).one(&self.db)).await?;
        found.ok_or_else(|| not_found("user.find_by_id"))
    }

    pub async fn find_by_email(&self, email: &str) -> Result<users::Model, RepoError> {
        // lower() of the parameter too, so both sides fold case exactly as the index does.
        let query = Users::find()
            .filter(Func::lower(Expr::col(Column::Email)).eq(Func::lower(Expr::val(email))));
        let found = observe("user.find_by_email", query.one(&self.db)).await?;
        found.ok_or_else(|| not_found("user.find_by_email"))
    }

    pub async fn list(&self, query: ListQuery) -> Result<Page, RepoError> {
        let order = order_of(&query);
        let operation = match order {
            Order::CreatedDesc => "user.list",
            Order::UpdatedAsc => "user.list_updated_since",
        };
        let select = self.list_select(&query);
        let name_search_on_postgres =
            query.name_prefix.is_some() && self.db.get_database_backend() == DbBackend::Postgres;
        let rows = if name_search_on_postgres {
            observe(
                operation,
                self.fetch_unprepared(self.list_statement(&query)),
            )
            .await?
        } else {
            observe(operation, select.all(&self.db)).await?
        };
        Ok(paginate(rows, query.limit, order))
    }

    /// The statement `list` runs, for EXPLAIN tests and benchmarks.
    pub fn list_statement(&self, query: &ListQuery) -> Statement {
        self.db
            .get_database_backend()
            .build(&self.list_select(query).into_query())
    }

    fn list_select(&self, query: &ListQuery) -> Select<Users> {
        let order = order_of(query);
        let key = match order {
            Order::CreatedDesc => Column::CreatedAt,
            Order::UpdatedAsc => Column::UpdatedAt,
        };
        let mut select = Users::find();
        if let Some(prefix) = &query.name_prefix {
            select = select.filter(self.name_prefix_filter(prefix));
        }
        if let Some(since) = query.updated_since {
            select = select.filter(Column::UpdatedAt.gte(since));
        }
        if let Some(after) = query.after {
            // A row-value comparison: PostgreSQL turns it into one index range, where the
            // expanded `a < x OR (a = x AND b < y)` form filters over the whole index.
            let row = Expr::tuple([Expr::col(key), Expr::col(Column::Id)]);
            let bound = Expr::tuple([Expr::val(after.at), Expr::val(after.id)]);
            select = select.filter(match order {
                Order::CreatedDesc => row.lt(bound),
                Order::UpdatedAsc => row.gt(bound),
            });
        }
        let select = match order {
            Order::CreatedDesc => select.order_by_desc(key).order_by_desc(Column::Id),
            Order::UpdatedAsc => select.order_by_asc(key).order_by_asc(Column::Id),
        };
        // One row more than asked tells whether another page follows, without a COUNT.
        select.limit(query.limit + 1)
    }

    /// Runs a name search as an unnamed statement, which PostgreSQL plans anew with its
    /// parameters every time. A prepared statement would settle, after five executions, on a
    /// generic plan that cannot see how common a prefix is: one plan walks the
    /// `(created_at, id)` index filtering names (fast for `ali`, a whole-index walk for a rare
    /// prefix), the other reads the prefix index and sorts (fast for a rare prefix, tens of
    /// thousands of rows for `ali`). Planning per call costs a fraction of a millisecond and
    /// picks the right one each time. SeaORM always prepares, hence sqlx here.
    async fn fetch_unprepared(&self, statement: Statement) -> Result<Vec<users::Model>, DbErr> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.sql)).persistent(false);
        for value in statement.values.map(|values| values.0).unwrap_or_default() {
            query = match value {
                Value::String(Some(text)) => query.bind(text),
                Value::ChronoDateTimeUtc(Some(at)) => query.bind(at),
                Value::Uuid(Some(id)) => query.bind(id),
                Value::BigUnsigned(Some(n)) => query.bind(i64::try_from(n).unwrap_or(i64::MAX)),
                Value::BigInt(Some(n)) => query.bind(n),
                other => return Err(DbErr::Custom(format!("no binding for {other:?}"))),
            };
        }
        let rows = query
            .fetch_all(self.db.get_postgres_connection_pool())
            .await
            .map_err(|error| DbErr::Query(RuntimeErr::SqlxError(Arc::new(error))))?;
        rows.iter()
            .map(|row| {
                Ok(users::Model {
                    id: row.try_get("id")?,
                    email: row.try_get("email")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    version: row.try_get("version")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|error| DbErr::Query(RuntimeErr::SqlxError(Arc::new(error))))
    }

    /// Case-insensitive prefix match written as a range over `lower(name)`, which the
    /// prefix index serves with the prefix as a parameter (a `LIKE $1` cannot be planned as an
    /// index range). The upper bound appends the largest code point; the
    /// database lowers the parameter, so both sides fold case with the index's function.
    /// (sea-query reads `$n` placeholders for PostgreSQL and `?` for SQLite.)
    fn name_prefix_filter(&self, prefix: &str) -> Expr {
        let sql = match self.db.get_database_backend() {
            // `~>=~` and `~<~` are the byte-wise operators of `text_pattern_ops`.
            DbBackend::Postgres => {
                "lower(name) ~>=~ lower($1) AND lower(name) ~<~ (lower($2) || chr(1114111))"
            }
            _ => "lower(name) >= lower(?) AND lower(name) < (lower(?) || char(1114111))",
        };
        Expr::cust_with_values(sql, [prefix.to_owned(), prefix.to_owned()])
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        precondition: Precondition,
    ) -> Result<users::Model, RepoError> {
        if changes.is_empty() {
            let current = self.find_by_id(id).await?;
            return if precondition.admits(current.version) {
                Ok(current)
            } else {
                Err(RepoError::VersionMismatch)
            };
        }
        if precondition == Precondition::OneOf(Vec::new()) {
            return Err(self.why_unmatched(id).await);
        }
        let mut update = Users::update_many()
            .col_expr(Column::UpdatedAt, Expr::val(now()))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .filter(Column::Id.eq(id));
        if let Some(email) = changes.email {
            update = update.col_expr(Column::Email, Expr::val(email));
        }
        if let Some(name) = changes.name {
            update = update.col_expr(Column::Name, Expr::val(name));
        }
        if let Precondition::OneOf(versions) = precondition {
            // Checked in the UPDATE itself, so two writers holding one ETag cannot both win.
            update = update.filter(Column::Version.is_in(versions));
        }
        let updated = observe("user.update", update.exec_with_returning(&self.db)).await?;
        match updated.into_iter().next() {
            Some(user) => Ok(user),
            None => Err(self.why_unmatched(id).await),
        }
    }

    pub async fn delete(&self, id: Uuid, precondition: Precondition) -> Result<(), RepoError> {
        let mut delete = Users::delete_many().filter(Column::Id.eq(id));
        match precondition {
            Precondition::Any => {}
            Precondition::OneOf(versions) if versions.is_empty() => {
                return Err(self.why_unmatched(id).await);
            }
            Precondition::OneOf(versions) => {
                delete = delete.filter(Column::Version.is_in(versions))
            }
        }
        let result = observe("user.delete", delete.exec(&self.db)).await?;
        if result.rows_affected == 1 {
            Ok(())
        } else {
            Err(self.why_unmatched(id).await)
        }
    }

    /// After a conditional write touched no row: was the user missing, or its version wrong?
    async fn why_unmatched(&self, id: Uuid) -> RepoError {
        let version = Users::find_by_id(id)
            .select_only()
            .column(Column::Version)
            .into_tuple::<i64>()
            .one(&self.db);
        match observe("user.version_of", version).await {
            Ok(Some(_)) => RepoError::VersionMismatch,
            Ok(None) => not_found("user.version_of"),
            Err(error) => error,
        }
    }
}

fn order_of(query: &ListQuery) -> Order {
    if query.updated_since.is_some() {
        Order::UpdatedAsc
    } else {
        Order::CreatedDesc
    }
}

/// Cuts the extra row off and makes the cursor from the last row kept.
fn paginate(mut items: Vec<users::Model>, limit: u64, order: Order) -> Page {
    let has_more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next = has_more.then(|| items.last()).flatten().map(|last| Cursor {
        at: match order {
            Order::CreatedDesc => last.created_at,
            Order::UpdatedAsc => last.updated_at,
        },
        id: last.id,
    });
    Page { items, next }
}

/// The current time at the database's precision (microseconds), so what a response shows and
/// a cursor carries is exactly what is stored.
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

fn not_found(operation: &'static str) -> RepoError {
    record_error(operation, ErrorKind::NotFound);
    RepoError::NotFound
}

/// Runs one database call inside a span, times it, and classifies its failure.
async fn observe<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, DbErr>>,
) -> Result<T, RepoError> {
    let span = tracing::info_span!("db.query", db.operation = operation);
    let started = Instant::now();
    let result = call.instrument(span).await;
    let elapsed = started.elapsed();
    match result {
        Ok(value) => {
            record_query(operation, elapsed, None);
            Ok(value)
        }
        Err(error) => {
            let kind = classify(&error);
            record_query(operation, elapsed, Some(kind));
            log_failure(operation, kind, &error, elapsed);
            Err(match kind {
                ErrorKind::UniqueViolation => RepoError::EmailTaken,
                ErrorKind::PoolTimeout | ErrorKind::Connection | ErrorKind::Timeout => {
                    RepoError::Unavailable(kind)
                }
                ErrorKind::NotFound => RepoError::NotFound,
                ErrorKind::Other => RepoError::Other(kind),
            })
        }
    }
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
        sqlx::Error::Database(error) => match error.code().as_deref() {
            // PostgreSQL: query_canceled (statement_timeout), lock_not_available.
            Some("57014" | "55P03") => ErrorKind::Timeout,
            // PostgreSQL: connection exceptions, shutdown/crash (57P0x), too many connections.
            Some(code) if code.starts_with("08") || code.starts_with("57P") || code == "53300" => {
                ErrorKind::Connection
            }
            // SQLite: SQLITE_BUSY and SQLITE_LOCKED, plain and extended.
            Some("5" | "6" | "261" | "262" | "517") => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    }
}

/// Logs a failed call without its SQL parameters or the server's detail text, either of which
/// can carry an email address or a name.
fn log_failure(operation: &'static str, kind: ErrorKind, error: &DbErr, elapsed: Duration) {
    let sqlstate = match error {
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            match error.as_ref() {
                sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
                _ => None,
            }
        }
        _ => None,
    };
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
