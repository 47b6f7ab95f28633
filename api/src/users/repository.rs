//! Every statement that touches `users`. Each operation is timed and its failures classified
//! here, into `database_query_duration_seconds` and `database_errors_total`, because only here
//! are both the operation name and the `DbErr` known (pool timeouts included).

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::users::{self, Column, Entity as Users};
use observability::db::{ErrorKind, record_error, record_query};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
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
        let order = if query.updated_since.is_some() {
            Order::UpdatedAsc
        } else {
            Order::CreatedDesc
        };
        let (operation, key) = match order {
            Order::CreatedDesc => ("user.list", Column::CreatedAt),
            Order::UpdatedAsc => ("user.list_updated_since", Column::UpdatedAt),
        };
        let mut select = Users::find();
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
        let page = select_page(order, key, query.limit);
        // One row more than asked tells whether another page follows, without a COUNT.
        let rows = match &query.name_prefix {
            None => observe(operation, page(select).all(&self.db)).await?,
            Some(prefix) => {
                let matching = select.filter(self.name_prefix_filter(prefix));
                match self.db.get_database_backend() {
                    DbBackend::Postgres => {
                        let fenced = fence(matching, page);
                        observe(operation, Users::find().from_raw_sql(fenced).all(&self.db)).await?
                    }
                    _ => observe(operation, page(matching).all(&self.db)).await?,
                }
            }
        };
        Ok(paginate(rows, query.limit, order))
    }

    /// Case-insensitive prefix match written as a range over `lower(name)`, which the
    /// prefix index serves even in a prepared statement's generic plan (a `LIKE $1` cannot be
    /// planned as a range there). The upper bound appends the largest code point; the
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

/// Wraps a name search in `SELECT * FROM (... OFFSET 0) ORDER BY ... LIMIT`. The
/// subquery is an optimisation fence: the matches come from the prefix index and only
/// then are sorted. Without it, a prepared statement's generic plan (which cannot see how
/// rare a prefix is) walks the whole `(created_at, id)` index filtering names, and a rare
/// prefix costs a full index scan. Verified by the EXPLAIN test. PostgreSQL only: SQLite
/// neither caches generic plans nor accepts OFFSET without LIMIT.
fn fence(matching: Select<Users>, page: impl Fn(Select<Users>) -> Select<Users>) -> Statement {
    let inner = matching.offset(0).into_query();
    let outer = page(Users::find())
        .into_query()
        .from_clear()
        .from_subquery(inner, Users)
        .to_owned();
    DbBackend::Postgres.build(&outer)
}

/// Orders by `(key, id)` in the listing's direction and takes one row more than a page.
fn select_page(order: Order, key: Column, limit: u64) -> impl Fn(Select<Users>) -> Select<Users> {
    move |select| {
        let select = match order {
            Order::CreatedDesc => select.order_by_desc(key).order_by_desc(Column::Id),
            Order::UpdatedAsc => select.order_by_asc(key).order_by_asc(Column::Id),
        };
        select.limit(limit + 1)
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
