//! Every statement that touches `users`, each built once by a pure function of its inputs
//! (public, so the EXPLAIN tests and the benchmark run exactly what the service runs) and run
//! on either backend through the database wing's executor.

use chrono::{DateTime, Utc};
use entity::users::{self, Column, Entity as Users};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, Func, InsertStatement, Query, UpdateStatement, Value,
};
use sea_orm::{
    ColumnTrait, DbBackend, DeleteMany, EntityName, EntityTrait, IdenStatic, Insert, Iterable,
    ModelTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement, UpdateMany,
};
use uuid::Uuid;

use super::change_token::ChangeToken;
use super::cursor::{Cursor, Order};
use super::idempotency::{KeyClaim, KeyedWrite};
use crate::db::postgres::pg_type;
use crate::db::replica::{POSITION_COLUMN, PRIMARY_POSITION};
use crate::db::{
    Database, ErrorKind, ExecError, Freshness, Lsn, Operation, Row, Target, record_not_found,
};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no user has this id or email")]
    NotFound,
    #[error("another user has this email")]
    EmailTaken,
    #[error("the user's version does not match")]
    VersionMismatch,
    /// A change token older than the feed's retention: deletions after it are forgotten.
    #[error("the change token is older than the feed's retention")]
    ChangesExpired,
    /// The idempotency key answered another request.
    #[error("the idempotency key was used for another request")]
    IdempotencyKeyReused,
    /// A write with the same idempotency key is running.
    #[error("a write with this idempotency key is in progress")]
    IdempotencyInProgress,
    /// The database could not answer in time or at all: worth retrying later.
    #[error("database unavailable ({})", .0.as_str())]
    Unavailable(ErrorKind),
    #[error("database error ({})", .0.as_str())]
    Other(ErrorKind),
}

impl From<ErrorKind> for RepoError {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::UniqueViolation => RepoError::EmailTaken,
            ErrorKind::NotFound => RepoError::NotFound,
            ErrorKind::PoolTimeout | ErrorKind::Connection | ErrorKind::Timeout => {
                RepoError::Unavailable(kind)
            }
            ErrorKind::Other => RepoError::Other(kind),
        }
    }
}

pub struct NewUser {
    pub email: String,
    pub name: String,
}

impl NewUser {
    /// This create, as an idempotency key's fingerprint reads it.
    pub fn keyed(&self) -> KeyedWrite<'_> {
        KeyedWrite::Create {
            email: &self.email,
            name: &self.name,
        }
    }
}

/// The fields a PATCH sets; `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none()
    }

    /// This update of user `id` under `precondition`, as an idempotency key's fingerprint
    /// reads it.
    pub fn keyed<'a>(&'a self, id: Uuid, precondition: &'a Precondition) -> KeyedWrite<'a> {
        KeyedWrite::Update {
            id,
            if_match: precondition.versions(),
            email: self.email.as_deref(),
            name: self.name.as_deref(),
        }
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
    /// The versions it admits; `None`: any.
    fn versions(&self) -> Option<&[i64]> {
        match self {
            Precondition::Any => None,
            Precondition::OneOf(versions) => Some(versions),
        }
    }

    fn admits(&self, version: i64) -> bool {
        admits(self.versions(), version)
    }
}

/// Whether a write conditioned on `versions` (`None`: any) may write `version`.
fn admits(versions: Option<&[i64]>, version: i64) -> bool {
    versions.is_none_or(|versions| versions.contains(&version))
}

pub struct ListQuery {
    pub limit: u64,
    pub after: Option<Cursor>,
    pub name_prefix: Option<String>,
    pub updated_since: Option<DateTime<Utc>>,
}

impl ListQuery {
    pub fn order(&self) -> Order {
        Order::of(self.name_prefix.is_some(), self.updated_since.is_some())
    }

    fn operation(&self) -> Operation {
        match self.order() {
            Order::CreatedDesc => Operation::ListUsers,
            Order::UpdatedAsc => Operation::ListUsersUpdatedSince,
            Order::NameAsc => Operation::SearchUsersByName,
        }
    }
}

pub struct Page {
    pub items: Vec<users::Model>,
    pub next: Option<Cursor>,
}

/// One change of the feed: a user as it is now, or its deletion (`user` is `None`).
pub struct Change {
    pub id: Uuid,
    /// The user's version; a deletion's is the deleted user's plus one.
    pub version: i64,
    pub user: Option<users::Model>,
}

/// What a write answers: the user as it wrote it now, or, under an idempotency key already
/// used for this request, as it wrote it then (the stored answer; nothing ran again).
#[derive(Debug)]
pub enum Written {
    Fresh(users::Model),
    Replayed(users::Model),
}

/// A page of the feed and where the next one starts.
pub struct ChangePage {
    pub changes: Vec<Change>,
    pub next: ChangeToken,
}

/// The statements, as pure functions of their inputs.
pub mod statements {
    use super::*;

    pub fn insert(user: &users::Model) -> Insert<users::ActiveModel> {
        Users::insert(users::ActiveModel::from(user.clone()))
    }

    pub fn find_by_id(id: Uuid) -> Select<Users> {
        Users::find_by_id(id).limit(1)
    }

    pub fn find_by_email(email: &str) -> Select<Users> {
        // lower() of the parameter too, so both sides fold case exactly as the index does.
        Users::find()
            .filter(Func::lower(Expr::col(Column::Email)).eq(Func::lower(Expr::val(email))))
            .limit(1)
    }

    pub fn version_of(id: Uuid) -> Select<Users> {
        Users::find_by_id(id)
            .select_only()
            .column(Column::Version)
            .limit(1)
    }

    /// One page, plus one row that tells whether another page follows (no COUNT).
    pub fn list(backend: DbBackend, query: &ListQuery) -> Select<Users> {
        let order = query.order();
        let mut select = Users::find();
        if let Some(prefix) = &query.name_prefix {
            select = select.filter(name_prefix_filter(backend, prefix));
        }
        if let Some(since) = query.updated_since {
            select = select.filter(Column::UpdatedAt.gte(since));
        }
        let time_key = match order {
            Order::UpdatedAsc => Column::UpdatedAt,
            Order::CreatedDesc | Order::NameAsc => Column::CreatedAt,
        };
        if let Some(after) = &query.after {
            // A row-value comparison: PostgreSQL turns it into one index range, where the
            // expanded `a < x OR (a = x AND b < y)` form filters over the whole index.
            let row = || Expr::tuple([Expr::col(time_key), Expr::col(Column::Id)]);
            let bound = || Expr::tuple([Expr::val(after.at), Expr::val(after.id)]);
            select = select.filter(match order {
                Order::CreatedDesc => row().lt(bound()),
                Order::UpdatedAsc => row().gt(bound()),
                Order::NameAsc => Expr::cust_with_values(
                    format!(
                        "({}, id) > ({}, {})",
                        folded(backend),
                        folded_value(backend, 1),
                        placeholder(backend, 2)
                    ),
                    [Value::from(after.name.clone()), Value::from(after.id)],
                ),
            });
        }
        let select = match order {
            Order::CreatedDesc => select.order_by_desc(time_key).order_by_desc(Column::Id),
            Order::UpdatedAsc => select.order_by_asc(time_key).order_by_asc(Column::Id),
            Order::NameAsc => select
                .order_by(Expr::cust(folded(backend)), sea_orm::Order::Asc)
                .order_by_asc(Column::Id),
        };
        select.limit(query.limit + 1)
    }

    /// `name` as the name index holds it: case-folded by the database's `lower()` (so the
    /// index, the prefix and a cursor fold alike) and compared byte-wise (PostgreSQL's "C"
    /// collation, SQLite's default), so one index serves the prefix range and the order.
    fn folded(backend: DbBackend) -> &'static str {
        match backend {
            DbBackend::Postgres => r#"lower(name) COLLATE "C""#,
            _ => "lower(name)",
        }
    }

    /// A parameter folded as [`folded`] folds the column.
    fn folded_value(backend: DbBackend, n: usize) -> String {
        match backend {
            DbBackend::Postgres => format!(r#"lower(${n}) COLLATE "C""#),
            _ => "lower(?)".to_owned(),
        }
    }

    /// sea-query reads `$n` placeholders for PostgreSQL and `?` for SQLite.
    fn placeholder(backend: DbBackend, n: usize) -> String {
        match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// Case-insensitive prefix match written as a range of the folded name, which the name
    /// index serves with the prefix as a parameter (a `LIKE $1` cannot be planned as an index
    /// range). The upper bound appends the largest code point.
    fn name_prefix_filter(backend: DbBackend, prefix: &str) -> Expr {
        let sql = format!(
            "{name} >= {from} AND {name} < ({to} || {max})",
            name = folded(backend),
            from = folded_value(backend, 1),
            to = folded_value(backend, 2),
            max = match backend {
                DbBackend::Postgres => "chr(1114111)",
                _ => "char(1114111)",
            },
        );
        Expr::cust_with_values(sql, [prefix.to_owned(), prefix.to_owned()])
    }

    /// The update of a PATCH with at least one change, at time `now`; with `versions`, only
    /// if the user still has one of them (checked in the UPDATE itself, so two writers holding
    /// one ETag cannot both win). The change feed's position is the database's to stamp
    /// (migration `change_feed`), so this runs on every schema since the table's.
    pub fn update(
        id: Uuid,
        changes: UserChanges,
        versions: Option<Vec<i64>>,
        now: DateTime<Utc>,
    ) -> UpdateMany<Users> {
        let mut update = Users::update_many()
            .col_expr(Column::UpdatedAt, Expr::val(now))
            .col_expr(Column::Version, Expr::col(Column::Version).add(1))
            .filter(Column::Id.eq(id));
        if let Some(email) = changes.email {
            update = update.col_expr(Column::Email, Expr::val(email));
        }
        if let Some(name) = changes.name {
            update = update.col_expr(Column::Name, Expr::val(name));
        }
        if let Some(versions) = versions {
            update = update.filter(Column::Version.is_in(versions));
        }
        update
    }

    /// [`update`] returning the updated row, as SeaORM's `exec_with_returning` runs it.
    pub fn update_returning(
        id: Uuid,
        changes: UserChanges,
        versions: Option<Vec<i64>>,
        now: DateTime<Utc>,
    ) -> UpdateStatement {
        let mut statement = update(id, changes, versions, now).into_query();
        statement.returning(Query::returning().columns(Column::iter()));
        statement
    }

    /// A page of the change feed after `since`, in `(change_position, id)` order, users and
    /// tombstones together, with the position below which every change is committed and
    /// visible (`below`) and the feed's expiry mark (`purged_below`) as columns of every row
    /// (one row with no change when there is none).
    ///
    /// PostgreSQL: `below` is the statement's snapshot's `xmin`: every transaction id under it
    /// has ended, so nothing can still commit there (migration `change_feed`). SQLite: the
    /// write counter, one past the last write (one writer at a time).
    pub fn changes(backend: DbBackend, since: ChangeToken, limit: u64) -> Statement {
        const COLUMNS: &str = "id, version, email, name, created_at, updated_at, change_position";
        const TOMBSTONE: &str = "id, version, NULL, NULL, NULL, NULL, change_position";
        let sql = match backend {
            DbBackend::Postgres => format!(
                "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS below, \
                 (SELECT purged_below FROM change_feed WHERE id = 1) AS purged_below) \
                 SELECT h.below, h.purged_below, c.* FROM h LEFT JOIN LATERAL (\
                 SELECT * FROM (\
                 (SELECT {COLUMNS} FROM users WHERE (change_position, id) > ($1, $2) \
                 AND change_position < h.below ORDER BY change_position, id LIMIT $3) \
                 UNION ALL \
                 (SELECT {TOMBSTONE} FROM user_tombstones WHERE (change_position, id) > ($1, $2) \
                 AND change_position < h.below ORDER BY change_position, id LIMIT $3)\
                 ) u ORDER BY change_position, id LIMIT $3) c ON true"
            ),
            _ => format!(
                "WITH h AS (SELECT position + 1 AS below, purged_below FROM change_feed WHERE id = 1) \
                 SELECT h.below, h.purged_below, c.* FROM h LEFT JOIN (\
                 SELECT {COLUMNS} FROM users WHERE (change_position, id) > (?1, ?2) \
                 UNION ALL \
                 SELECT {TOMBSTONE} FROM user_tombstones WHERE (change_position, id) > (?1, ?2) \
                 ORDER BY change_position, id LIMIT ?3) c ON 1"
            ),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Statement::from_sql_and_values(
            backend,
            sql,
            [
                Value::from(since.position),
                Value::from(since.id),
                Value::from(limit),
            ],
        )
    }

    /// Forgets tombstones deleted before `cutoff_secs` (Unix time), a batch at a time, raising
    /// the feed's expiry mark past them first, so a token from before a forgotten deletion is
    /// answered 410, never a feed without it. PostgreSQL: one statement per batch (`= ANY` of
    /// an array, so the batch is found by the time index and deleted by the key, where `IN`
    /// planned a scan of the whole table); SQLite (no DML in a `WITH`): the mark, then the
    /// delete.
    pub fn purge_tombstones(backend: DbBackend, cutoff_secs: i64) -> Vec<Statement> {
        match backend {
            DbBackend::Postgres => vec![Statement::from_sql_and_values(
                backend,
                format!(
                    "WITH gone AS (DELETE FROM user_tombstones WHERE id = ANY(ARRAY(\
                     SELECT id FROM user_tombstones WHERE deleted_at_secs < $1 \
                     ORDER BY deleted_at_secs LIMIT {PURGE_BATCH})) RETURNING change_position) \
                     UPDATE change_feed SET purged_below = GREATEST(purged_below, \
                     (SELECT max(change_position) + 1 FROM gone)) \
                     WHERE id = 1 AND EXISTS (SELECT 1 FROM gone)"
                ),
                [Value::from(cutoff_secs)],
            )],
            _ => vec![
                Statement::from_sql_and_values(
                    backend,
                    "UPDATE change_feed SET purged_below = MAX(purged_below, \
                     (SELECT COALESCE(MAX(change_position) + 1, 0) FROM user_tombstones \
                     WHERE deleted_at_secs < ?1)) WHERE id = 1",
                    [Value::from(cutoff_secs)],
                ),
                Statement::from_sql_and_values(
                    backend,
                    "DELETE FROM user_tombstones WHERE deleted_at_secs < ?1",
                    [Value::from(cutoff_secs)],
                ),
            ],
        }
    }

    /// The condition a keyed write adds to its write (PostgreSQL): the key's transaction-scoped
    /// advisory lock, taken without waiting. Not taken: the same key's write is running now,
    /// and this one writes nothing.
    fn key_lock(claim: &KeyClaim) -> Expr {
        Func::cust(Alias::new("pg_try_advisory_xact_lock"))
            .arg(claim.lock)
            .into()
    }

    /// [`insert`] as one row selected under the key's lock, returning the user ([`keyed`];
    /// each value cast, as a SELECT list gives the server no column to infer its type from).
    pub fn insert_under_key_lock(user: &users::Model, claim: &KeyClaim) -> InsertStatement {
        let mut row = Query::select();
        for column in Column::iter() {
            let value = user.get(column);
            let sql_type = pg_type(&value);
            row.expr(Func::cast_as(Expr::val(value), Alias::new(sql_type.name())));
        }
        row.and_where(key_lock(claim));
        let mut insert = Query::insert();
        insert
            .into_table(Users)
            .columns(Column::iter())
            .select_from(row)
            .expect("one value per column");
        insert.returning(Query::returning().columns(Column::iter()));
        insert
    }

    /// [`update_returning`] under the key's lock ([`keyed`]).
    pub fn update_under_key_lock(
        id: Uuid,
        changes: UserChanges,
        versions: Option<Vec<i64>>,
        now: DateTime<Utc>,
        claim: &KeyClaim,
    ) -> UpdateStatement {
        let mut update = update_returning(id, changes, versions, now);
        update.and_where(key_lock(claim));
        update
    }

    /// A keyed write as one statement (PostgreSQL), so its key commits with it or not at all:
    /// `write` (under the key's lock: [`insert_under_key_lock`], [`update_under_key_lock`])
    /// and the key with the user written, in `idempotency_keys`. Returns that user; no row
    /// when it wrote nothing.
    ///
    /// No probe for the key's answer first: a repeat is rare, and meets the key's unique index
    /// (or the email's, or an `If-Match` it no longer matches) and writes nothing; its answer
    /// is looked up then ([`find_key`]). A probe on every write cost more than repeats ever
    /// do (bench/idempotency/README.md).
    pub fn keyed(write: Statement, claim: &KeyClaim) -> Statement {
        let mut values = write.values.map(|values| values.0).unwrap_or_default();
        values.extend([
            Value::from(claim.hash),
            Value::from(claim.fingerprint),
            Value::from(claim.ttl_secs),
        ]);
        let (hash, fingerprint, ttl) = (values.len() - 2, values.len() - 1, values.len());
        let columns = user_columns();
        let sql = format!(
            "WITH written AS ({write}), \
             stored AS (INSERT INTO {KEYS} (key_hash, fingerprint, expires_at_secs, {columns}) \
             SELECT ${hash}, ${fingerprint}, {now} + ${ttl}, {columns} FROM written) \
             SELECT {columns} FROM written",
            write = write.sql,
            now = now_secs(DbBackend::Postgres),
        );
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    /// SQLite: a keyed write's first step in its transaction: takes the key unless it has a
    /// live answer (one row touched: taken), replacing an expired one.
    pub fn claim_key(claim: &KeyClaim) -> Statement {
        Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!(
                "INSERT INTO {KEYS} (key_hash, fingerprint, expires_at_secs) \
                 VALUES (?1, ?2, unixepoch() + ?3) ON CONFLICT (key_hash) DO UPDATE SET \
                 fingerprint = excluded.fingerprint, expires_at_secs = excluded.expires_at_secs \
                 WHERE {KEYS}.expires_at_secs <= unixepoch()"
            ),
            [
                Value::from(claim.hash),
                Value::from(claim.fingerprint),
                Value::from(claim.ttl_secs),
            ],
        )
    }

    /// SQLite: a keyed write's answer, stored under the key it claimed.
    pub fn store_answer(claim: &KeyClaim, user: &users::Model) -> Statement {
        let mut update = Query::update();
        update.table(Alias::new(KEYS));
        for column in Column::iter() {
            update.value(Alias::new(column.as_str()), user.get(column));
        }
        update.and_where(Expr::col(Alias::new("key_hash")).eq(claim.hash));
        DbBackend::Sqlite.build(&update)
    }

    /// A key's stored answer, whether it is still live.
    pub fn find_key(backend: DbBackend, claim: &KeyClaim) -> Statement {
        Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT expires_at_secs > {now} AS live, fingerprint, {columns} FROM {KEYS} \
                 WHERE key_hash = {param}",
                now = now_secs(backend),
                columns = user_columns(),
                param = placeholder(backend, 1),
            ),
            [Value::from(claim.hash)],
        )
    }

    /// Forgets keys expired at the database's clock, a batch per statement (by the expiry
    /// index; PostgreSQL deletes by key through `= ANY`, as [`purge_tombstones`] does); with
    /// `claim`, only its key (a write found it expired).
    pub fn purge_keys(backend: DbBackend, claim: Option<&KeyClaim>) -> Statement {
        let expired = format!("expires_at_secs <= {}", now_secs(backend));
        let (sql, values) = match claim {
            Some(claim) => (
                format!(
                    "DELETE FROM {KEYS} WHERE key_hash = {} AND {expired}",
                    placeholder(backend, 1)
                ),
                vec![Value::from(claim.hash)],
            ),
            None => {
                let batch = format!(
                    "SELECT key_hash FROM {KEYS} WHERE {expired} \
                     ORDER BY expires_at_secs LIMIT {PURGE_BATCH}"
                );
                let sql = match backend {
                    DbBackend::Postgres => {
                        format!("DELETE FROM {KEYS} WHERE key_hash = ANY(ARRAY({batch}))")
                    }
                    _ => format!("DELETE FROM {KEYS} WHERE key_hash IN ({batch})"),
                };
                (sql, Vec::new())
            }
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    /// The database's clock in Unix seconds: every instance expires keys at one time.
    fn now_secs(backend: DbBackend) -> &'static str {
        match backend {
            DbBackend::Postgres => "extract(epoch FROM now())::bigint",
            _ => "unixepoch()",
        }
    }

    /// The user's columns, as a key's answer stores them too.
    fn user_columns() -> String {
        Column::iter()
            .map(|column| column.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn delete(id: Uuid, versions: Option<Vec<i64>>) -> DeleteMany<Users> {
        let mut delete = Users::delete_many().filter(Column::Id.eq(id));
        if let Some(versions) = versions {
            delete = delete.filter(Column::Version.is_in(versions));
        }
        delete
    }
}

/// Tombstones or idempotency keys forgotten per statement: a short write, however many
/// expired at once.
pub const PURGE_BATCH: u64 = 1000;

/// The idempotency keys' table (migration `idempotency_keys`).
const KEYS: &str = "idempotency_keys";

/// The statements' execution, one path for both backends ([`Database::fetch`],
/// [`Database::execute`]).
#[derive(Clone)]
pub struct UserRepository {
    db: Database,
}

impl UserRepository {
    pub fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    fn target(operation: Operation) -> Target {
        Target {
            operation,
            collection: Users.table_name(),
        }
    }

    fn keys(operation: Operation) -> Target {
        Target {
            operation,
            collection: KEYS,
        }
    }

    /// The statement built for the database's dialect.
    fn build(&self, statement: &impl QueryTrait) -> Statement {
        statement.build(self.db.backend())
    }

    /// Runs a statement that returns users.
    async fn users(
        &self,
        operation: Operation,
        statement: &Statement,
        freshness: Freshness,
    ) -> Result<Vec<users::Model>, ErrorKind> {
        self.db
            .fetch(Self::target(operation), statement, freshness, user_of)
            .await
    }

    /// The primary's WAL position now, past every commit acknowledged so far: a write's
    /// `Consistency-Token`. `None` without a replica (every read is on the primary), or when
    /// it cannot be read (the write is committed all the same; reads with `None` go to the
    /// primary).
    pub async fn committed_position(&self) -> Option<Lsn> {
        self.db.replica.as_ref()?;
        let statement = Statement::from_string(DbBackend::Postgres, PRIMARY_POSITION);
        let target = Self::target(Operation::WalPosition);
        let positions = self
            .db
            .fetch(target, &statement, Freshness::Latest, |row| {
                row.get::<Option<i64>>(POSITION_COLUMN)
            })
            .await;
        match positions.ok()?.first() {
            Some(Some(position)) => Some(Lsn(*position as u64)),
            _ => None,
        }
    }

    /// Creates a user; with `key`, once per key (a repeat answers the first's user).
    pub async fn create(&self, new: NewUser, key: Option<&KeyClaim>) -> Result<Written, RepoError> {
        let now = now();
        let user = users::Model {
            id: Uuid::now_v7(),
            email: new.email,
            name: new.name,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        if let Some(claim) = key {
            let written = self.keyed(claim, &Write::Create(user)).await?;
            // An insert always writes a row: none is a fault.
            return written.ok_or(RepoError::Other(ErrorKind::Other));
        }
        // Duplicates are caught by the unique index, never by a racy SELECT beforehand.
        let statement = self.build(&statements::insert(&user));
        self.db
            .execute(Self::target(Operation::CreateUser), &statement)
            .await?;
        Ok(Written::Fresh(user))
    }

    pub async fn find_by_id(
        &self,
        id: Uuid,
        freshness: Freshness,
    ) -> Result<users::Model, RepoError> {
        let operation = Operation::FindUserById;
        let statement = self.build(&statements::find_by_id(id));
        let found = self.users(operation, &statement, freshness).await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| record_not_found(operation).into())
    }

    pub async fn find_by_email(
        &self,
        email: &str,
        freshness: Freshness,
    ) -> Result<users::Model, RepoError> {
        let operation = Operation::FindUserByEmail;
        let statement = self.build(&statements::find_by_email(email));
        let found = self.users(operation, &statement, freshness).await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| record_not_found(operation).into())
    }

    pub async fn list(&self, query: ListQuery, freshness: Freshness) -> Result<Page, RepoError> {
        let statement = self.build(&statements::list(self.db.backend(), &query));
        let rows = self.users(query.operation(), &statement, freshness).await?;
        Ok(paginate(rows, &query))
    }

    /// Updates a user; with `key`, once per key (a repeat answers the first's user).
    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        precondition: Precondition,
        key: Option<&KeyClaim>,
    ) -> Result<Written, RepoError> {
        if changes.is_empty() {
            // Nothing to write (nor to key): a write's answer, as new as the primary's.
            let current = self.find_by_id(id, Freshness::Latest).await?;
            return if precondition.admits(current.version) {
                Ok(Written::Fresh(current))
            } else {
                Err(RepoError::VersionMismatch)
            };
        }
        let versions = self.versions(id, precondition).await?;
        let write = Write::Update {
            id,
            changes,
            versions,
            now: now(),
        };
        let written = match key {
            Some(claim) => self.keyed(claim, &write).await?,
            None => {
                let statement = write.plain(self.db.backend());
                let updated = self
                    .users(Operation::UpdateUser, &statement, Freshness::Latest)
                    .await?;
                updated.into_iter().next().map(Written::Fresh)
            }
        };
        match written {
            Some(written) => Ok(written),
            None => Err(self.why_unmatched(id).await),
        }
    }

    /// A write under an idempotency key: it runs once, its answer stored with it; a repeat of
    /// its request is answered from the store, another request under the key refused. `None`:
    /// the write matched no row (nothing stored: a retry runs again).
    async fn keyed(&self, claim: &KeyClaim, write: &Write) -> Result<Option<Written>, RepoError> {
        // Twice at most: a key found expired is forgotten, and the write runs again.
        for _ in 0..2 {
            let outcome = match self.db.backend() {
                DbBackend::Postgres => self.keyed_statement(claim, write).await,
                _ => self.keyed_transaction(claim, write).await,
            };
            // A unique violation: the email's, or the key's, stored since the statement's
            // snapshot by a write of the same key, or expired and not yet purged.
            let Err(RepoError::EmailTaken) = outcome else {
                return outcome;
            };
            match self.stored_answer(claim).await? {
                None => return Err(RepoError::EmailTaken),
                Some(stored) if stored.live => return stored.answer(claim).map(Some),
                Some(_) => {
                    let forget = statements::purge_keys(self.db.backend(), Some(claim));
                    let target = Self::keys(Operation::PurgeIdempotencyKeys);
                    self.db.execute(target, &forget).await?;
                }
            }
        }
        Err(RepoError::EmailTaken)
    }

    /// The key's stored answer ([`statements::find_key`]), live or not.
    async fn stored_answer(&self, claim: &KeyClaim) -> Result<Option<Stored>, RepoError> {
        let statement = statements::find_key(self.db.backend(), claim);
        let target = Self::keys(Operation::FindIdempotencyKey);
        let found = self
            .db
            .fetch(target, &statement, Freshness::Latest, stored_of)
            .await?;
        Ok(found.into_iter().next())
    }

    /// PostgreSQL: the keyed write as one statement ([`statements::keyed`]). Nothing written:
    /// the key's live answer if it has one (a repeat); else, for an update, why it did not
    /// match; else the key's lock was held ([`RepoError::IdempotencyInProgress`]).
    async fn keyed_statement(
        &self,
        claim: &KeyClaim,
        write: &Write,
    ) -> Result<Option<Written>, RepoError> {
        let statement = statements::keyed(write.under_key_lock(claim), claim);
        let written = self
            .users(write.operation(), &statement, Freshness::Latest)
            .await?;
        if let Some(user) = written.into_iter().next() {
            return Ok(Some(Written::Fresh(user)));
        }
        if let Some(stored) = self.stored_answer(claim).await?
            && stored.live
        {
            return stored.answer(claim).map(Some);
        }
        let Write::Update { id, versions, .. } = write else {
            return Err(RepoError::IdempotencyInProgress);
        };
        match self.version_now(*id).await? {
            None => Err(record_not_found(Operation::UserVersion).into()),
            Some(version) if admits(versions.as_deref(), version) => {
                Err(RepoError::IdempotencyInProgress)
            }
            Some(_) => Err(RepoError::VersionMismatch),
        }
    }

    /// SQLite: the keyed write as a transaction: claim the key, write, store the answer.
    async fn keyed_transaction(
        &self,
        claim: &KeyClaim,
        write: &Write,
    ) -> Result<Option<Written>, RepoError> {
        let backend = self.db.backend();
        let transaction = self.db.begin().await?;
        let claimed = transaction
            .execute(
                Self::keys(Operation::ClaimIdempotencyKey),
                &statements::claim_key(claim),
            )
            .await?;
        if claimed == 0 {
            // A live answer (the transaction ends unused).
            let statement = statements::find_key(backend, claim);
            let target = Self::keys(Operation::FindIdempotencyKey);
            let found = transaction.fetch(target, &statement, stored_of).await?;
            let stored = found
                .into_iter()
                .next()
                .ok_or(RepoError::Other(ErrorKind::Other))?;
            return stored.answer(claim).map(Some);
        }
        let target = Self::target(write.operation());
        let statement = write.plain(backend);
        let user = match write {
            Write::Create(user) => {
                transaction.execute(target, &statement).await?;
                Some(user.clone())
            }
            Write::Update { .. } => {
                let updated = transaction.fetch(target, &statement, user_of).await?;
                updated.into_iter().next()
            }
        };
        // No row: rolled back as the transaction drops.
        let Some(user) = user else { return Ok(None) };
        transaction
            .execute(
                Self::keys(Operation::StoreIdempotencyKey),
                &statements::store_answer(claim, &user),
            )
            .await?;
        transaction.commit().await?;
        Ok(Some(Written::Fresh(user)))
    }

    pub async fn delete(&self, id: Uuid, precondition: Precondition) -> Result<(), RepoError> {
        let versions = self.versions(id, precondition).await?;
        let statement = self.build(&statements::delete(id, versions));
        let deleted = self
            .db
            .execute(Self::target(Operation::DeleteUser), &statement)
            .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(self.why_unmatched(id).await)
        }
    }

    /// A page of the change feed after `since` (from the start without one). A token from
    /// before the oldest forgotten deletion is [`RepoError::ChangesExpired`].
    pub async fn changes(
        &self,
        since: Option<ChangeToken>,
        limit: u64,
        freshness: Freshness,
    ) -> Result<ChangePage, RepoError> {
        let from = since.unwrap_or(ChangeToken::START);
        let statement = statements::changes(self.db.backend(), from, limit);
        let target = Self::target(Operation::ListUserChanges);
        let rows = self
            .db
            .fetch(target, &statement, freshness, change_of)
            .await?;
        let (below, purged_below) = rows
            .first()
            .map_or((0, 0), |row| (row.below, row.purged_below));
        // Expired only if a deletion after it was forgotten (nothing is before 0).
        if purged_below > 0 && since.is_some_and(|since| since.position < purged_below) {
            return Err(RepoError::ChangesExpired);
        }
        let changes: Vec<(ChangeToken, Change)> =
            rows.into_iter().filter_map(|row| row.change).collect();
        let next = match changes.last() {
            // Nothing new: the same position (the horizon may have moved with other
            // databases' transactions; reading from here again costs one empty index range).
            None => from,
            Some((last, _)) if changes.len() as u64 >= limit => *last,
            // Everything below `below` has been read; never go back (a replica behind the
            // primary that issued `since` has a lower `below`).
            Some(_) => from.max(ChangeToken::before(below)),
        };
        Ok(ChangePage {
            changes: changes.into_iter().map(|(_, change)| change).collect(),
            next,
        })
    }

    /// Forgets tombstones deleted more than `retention` ago (the feed's horizon), in batches.
    pub async fn purge_tombstones(&self, retention: std::time::Duration) -> Result<(), RepoError> {
        let cutoff =
            Utc::now().timestamp() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let target = Self::target(Operation::PurgeTombstones);
        match statements::purge_tombstones(self.db.backend(), cutoff).as_slice() {
            // One batch per statement, until one forgets nothing.
            [batch] => while self.db.execute(target, batch).await? > 0 {},
            steps => {
                for step in steps {
                    self.db.execute(target, step).await?;
                }
            }
        }
        Ok(())
    }

    /// Forgets idempotency keys past their time, in batches.
    pub async fn purge_idempotency_keys(&self) -> Result<(), RepoError> {
        let statement = statements::purge_keys(self.db.backend(), None);
        let target = Self::keys(Operation::PurgeIdempotencyKeys);
        while self.db.execute(target, &statement).await? > 0 {}
        Ok(())
    }

    /// The versions a conditional write filters on (`None`: any), or, when it can match none
    /// (only tags that are not versions of ours), why.
    async fn versions(
        &self,
        id: Uuid,
        precondition: Precondition,
    ) -> Result<Option<Vec<i64>>, RepoError> {
        match precondition {
            Precondition::Any => Ok(None),
            Precondition::OneOf(versions) if versions.is_empty() => {
                Err(self.why_unmatched(id).await)
            }
            Precondition::OneOf(versions) => Ok(Some(versions)),
        }
    }

    /// After a conditional write touched no row: was the user missing, or its version wrong?
    async fn why_unmatched(&self, id: Uuid) -> RepoError {
        match self.version_now(id).await {
            Ok(Some(_)) => RepoError::VersionMismatch,
            Ok(None) => record_not_found(Operation::UserVersion).into(),
            Err(error) => error,
        }
    }

    /// The user's version on the primary now; `None`: no such user.
    async fn version_now(&self, id: Uuid) -> Result<Option<i64>, RepoError> {
        let statement = self.build(&statements::version_of(id));
        let found = self
            .db
            .fetch(
                Self::target(Operation::UserVersion),
                &statement,
                Freshness::Latest,
                |row| row.get::<i64>(Column::Version.as_str()),
            )
            .await?;
        Ok(found.into_iter().next())
    }
}

/// A write that an idempotency key may guard, built in the form each path runs.
enum Write {
    Create(users::Model),
    Update {
        id: Uuid,
        changes: UserChanges,
        versions: Option<Vec<i64>>,
        now: DateTime<Utc>,
    },
}

impl Write {
    fn operation(&self) -> Operation {
        match self {
            Write::Create(_) => Operation::CreateUser,
            Write::Update { .. } => Operation::UpdateUser,
        }
    }

    /// The write unguarded: as it runs without a key, and in SQLite's keyed transaction (an
    /// update returns its row; an insert returns nothing, its row is known).
    fn plain(&self, backend: DbBackend) -> Statement {
        match self {
            Write::Update {
                id,
                changes,
                versions,
                now,
            } => backend.build(&statements::update_returning(
                *id,
                changes.clone(),
                versions.clone(),
                *now,
            )),
            Write::Create(user) => backend.build(&statements::insert(user).into_query()),
        }
    }

    /// PostgreSQL's form under a key: under its lock, returning the user written.
    fn under_key_lock(&self, claim: &KeyClaim) -> Statement {
        let backend = DbBackend::Postgres;
        match self {
            Write::Create(user) => backend.build(&statements::insert_under_key_lock(user, claim)),
            Write::Update {
                id,
                changes,
                versions,
                now,
            } => backend.build(&statements::update_under_key_lock(
                *id,
                changes.clone(),
                versions.clone(),
                *now,
                claim,
            )),
        }
    }
}

/// A key's stored answer: the request it answered and the user it wrote.
struct Stored {
    /// Not yet expired.
    live: bool,
    fingerprint: Uuid,
    user: users::Model,
}

impl Stored {
    /// The answer to a repeat of the request it stored; another request is refused.
    fn answer(self, claim: &KeyClaim) -> Result<Written, RepoError> {
        if self.fingerprint == claim.fingerprint {
            Ok(Written::Replayed(self.user))
        } else {
            Err(RepoError::IdempotencyKeyReused)
        }
    }
}

/// A row of [`statements::find_key`].
fn stored_of(row: Row<'_>) -> Result<Stored, ExecError> {
    Ok(Stored {
        live: row.get("live")?,
        fingerprint: row.get("fingerprint")?,
        user: user_of(row)?,
    })
}

/// A row of `users`, read by the entity's column names.
fn user_of(row: Row<'_>) -> Result<users::Model, ExecError> {
    Ok(users::Model {
        id: row.get(Column::Id.as_str())?,
        email: row.get(Column::Email.as_str())?,
        name: row.get(Column::Name.as_str())?,
        created_at: row.get(Column::CreatedAt.as_str())?,
        updated_at: row.get(Column::UpdatedAt.as_str())?,
        version: row.get(Column::Version.as_str())?,
    })
}

/// The change feed's position column (migration `change_feed`; not an entity field: it is the
/// database's to set).
const CHANGE_POSITION: &str = "change_position";

/// A row of the change feed's statement.
struct ChangeRow {
    below: i64,
    purged_below: i64,
    /// `None` on the one row of a page without changes.
    change: Option<(ChangeToken, Change)>,
}

fn change_of(row: Row<'_>) -> Result<ChangeRow, ExecError> {
    let below = row.get("below")?;
    let purged_below = row.get("purged_below")?;
    let change = match row.get::<Option<Uuid>>(Column::Id.as_str())? {
        None => None,
        Some(id) => {
            let version = row.get(Column::Version.as_str())?;
            let position = row.get(CHANGE_POSITION)?;
            let user = match row.get::<Option<String>>(Column::Email.as_str())? {
                None => None,
                Some(email) => Some(users::Model {
                    id,
                    email,
                    name: row.get(Column::Name.as_str())?,
                    created_at: row.get(Column::CreatedAt.as_str())?,
                    updated_at: row.get(Column::UpdatedAt.as_str())?,
                    version,
                }),
            };
            Some((ChangeToken { position, id }, Change { id, version, user }))
        }
    };
    Ok(ChangeRow {
        below,
        purged_below,
        change,
    })
}

/// Cuts the extra row off and makes the cursor from the last row kept.
fn paginate(mut items: Vec<users::Model>, query: &ListQuery) -> Page {
    let has_more = items.len() as u64 > query.limit;
    items.truncate(query.limit as usize);
    let order = query.order();
    let next = has_more.then(|| items.last()).flatten().map(|last| Cursor {
        at: match order {
            Order::CreatedDesc | Order::NameAsc => last.created_at,
            Order::UpdatedAsc => last.updated_at,
        },
        id: last.id,
        name: match order {
            Order::NameAsc => last.name.clone(),
            Order::CreatedDesc | Order::UpdatedAsc => String::new(),
        },
    });
    Page { items, next }
}

/// The current time at the database's precision (microseconds), so what a response shows and
/// a cursor carries is exactly what is stored.
fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
