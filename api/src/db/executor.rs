//! One way to run a statement, whichever the backend. [`Database::fetch`] and
//! [`Database::execute`] take a statement built for [`Database::backend`], run it (PostgreSQL:
//! on the pipelined connections, a read on the replica where its freshness allows; SQLite:
//! through SeaORM's statement execution), observe it ([`observe`]), and read its rows by
//! column name ([`Row`]), so a repository writes each operation once.

use sea_orm::sea_query::Value;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, Statement,
    TransactionTrait, TryGetable,
};
use tokio_postgres::types::FromSql;

use super::observe::{Call, Failure, observe};
use super::postgres::PgError;
use super::{Database, ErrorKind, Freshness, Operation, replica};
use observability::db::Pool;

/// A failed statement, on either backend.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Sqlite(#[from] DbErr),
}

impl Failure for ExecError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Postgres(error) => error.kind(),
            ExecError::Sqlite(error) => error.kind(),
        }
    }

    fn sqlstate(&self) -> Option<String> {
        match self {
            ExecError::Postgres(error) => Failure::sqlstate(error),
            ExecError::Sqlite(error) => error.sqlstate(),
        }
    }
}

impl From<tokio_postgres::Error> for ExecError {
    fn from(error: tokio_postgres::Error) -> Self {
        ExecError::Postgres(PgError::Driver(error))
    }
}

/// One row of a result, whichever backend returned it.
#[derive(Clone, Copy)]
pub enum Row<'a> {
    Postgres(&'a tokio_postgres::Row),
    Sqlite(&'a QueryResult),
}

impl Row<'_> {
    /// The value of `column`.
    pub fn get<T>(&self, column: &str) -> Result<T, ExecError>
    where
        T: for<'r> FromSql<'r> + TryGetable,
    {
        match self {
            Row::Postgres(row) => Ok(row.try_get(column)?),
            Row::Sqlite(row) => Ok(row.try_get("", column)?),
        }
    }
}

/// What the repository names for a statement: its operation and its table.
#[derive(Clone, Copy)]
pub struct Target {
    pub operation: Operation,
    /// `db.collection.name`.
    pub collection: &'static str,
}

impl Database {
    /// The SQL dialect statements are built for.
    pub fn backend(&self) -> DbBackend {
        match self.pg {
            Some(_) => DbBackend::Postgres,
            None => self.orm.get_database_backend(),
        }
    }

    /// The `pool` label of statements on the primary: only with a replica configured.
    pub fn primary_pool(&self) -> Option<Pool> {
        self.replica.as_ref().map(|_| Pool::Primary)
    }

    /// Runs a statement that returns rows, each read by `decode`: on PostgreSQL where
    /// `freshness` allows (a write's statements: [`Freshness::Latest`], the primary).
    pub async fn fetch<T>(
        &self,
        target: Target,
        statement: &Statement,
        freshness: Freshness,
        decode: impl Fn(Row<'_>) -> Result<T, ExecError>,
    ) -> Result<Vec<T>, ErrorKind> {
        let decode = &decode;
        match &self.pg {
            Some(pg) => {
                replica::route(pg, self.replica.as_deref(), freshness, |pipelines, pool| {
                    let rows =
                        pipelines.query(target.operation.lane(), &statement.sql, values(statement));
                    observe(self.call(target, &statement.sql, pool), async move {
                        rows.await?
                            .iter()
                            .map(|row| decode(Row::Postgres(row)))
                            .collect()
                    })
                })
                .await
            }
            None => {
                let call = self.call(target, &statement.sql, None);
                fetch_orm(&self.orm, call, statement, decode).await
            }
        }
    }

    /// Runs a statement that returns no rows, on the primary; the number of rows it touched.
    pub async fn execute(&self, target: Target, statement: &Statement) -> Result<u64, ErrorKind> {
        let call = self.call(target, &statement.sql, self.primary_pool());
        match &self.pg {
            Some(pg) => {
                let lane = target.operation.lane();
                observe(call, pg.execute(lane, &statement.sql, values(statement))).await
            }
            None => execute_orm(&self.orm, call, statement).await,
        }
    }

    /// SQLite: a transaction, for writes that must commit together (PostgreSQL's write them
    /// as one statement, the pipelined connections holding no transaction open).
    pub async fn begin(&self) -> Result<Transaction<'_>, ErrorKind> {
        let transaction = self.orm.begin().await.map_err(|error| error.kind())?;
        Ok(Transaction {
            db: self,
            transaction,
        })
    }

    fn call<'a>(&self, target: Target, sql: &'a str, pool: Option<Pool>) -> Call<'a> {
        Call {
            operation: target.operation,
            backend: self.backend(),
            collection: target.collection,
            sql,
            pool,
        }
    }
}

/// Statements that commit together or not at all (SQLite; see [`Database::begin`]); rolled
/// back when dropped uncommitted.
pub struct Transaction<'a> {
    db: &'a Database,
    transaction: DatabaseTransaction,
}

impl Transaction<'_> {
    pub async fn fetch<T>(
        &self,
        target: Target,
        statement: &Statement,
        decode: impl Fn(Row<'_>) -> Result<T, ExecError>,
    ) -> Result<Vec<T>, ErrorKind> {
        let call = self.db.call(target, &statement.sql, None);
        fetch_orm(&self.transaction, call, statement, &decode).await
    }

    pub async fn execute(&self, target: Target, statement: &Statement) -> Result<u64, ErrorKind> {
        let call = self.db.call(target, &statement.sql, None);
        execute_orm(&self.transaction, call, statement).await
    }

    pub async fn commit(self) -> Result<(), ErrorKind> {
        self.transaction
            .commit()
            .await
            .map_err(|error| error.kind())
    }
}

/// A statement that returns rows, through SeaORM (SQLite).
async fn fetch_orm<T>(
    connection: &impl ConnectionTrait,
    call: Call<'_>,
    statement: &Statement,
    decode: &impl Fn(Row<'_>) -> Result<T, ExecError>,
) -> Result<Vec<T>, ErrorKind> {
    observe(call, async {
        connection
            .query_all_raw(statement.clone())
            .await?
            .iter()
            .map(|row| decode(Row::Sqlite(row)))
            .collect()
    })
    .await
}

/// A statement that returns no rows, through SeaORM (SQLite); the rows it touched.
async fn execute_orm(
    connection: &impl ConnectionTrait,
    call: Call<'_>,
    statement: &Statement,
) -> Result<u64, ErrorKind> {
    let executed = async {
        let result = connection.execute_raw(statement.clone()).await?;
        Ok::<_, ExecError>(result.rows_affected())
    };
    observe(call, executed).await
}

/// A statement's values.
fn values(statement: &Statement) -> &[Value] {
    statement
        .values
        .as_ref()
        .map(|values| values.0.as_slice())
        .unwrap_or_default()
}
