//! The database operations the service reports, by name: the `operation` label of
//! `database_query_duration_seconds` and `database_errors_total`. An enum, so a name cannot be
//! misspelt at a call site into a series that was never registered at 0.

use strum::{EnumIter, IntoEnumIterator, IntoStaticStr};

use super::postgres::Lane;

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, IntoStaticStr)]
pub enum Operation {
    #[strum(serialize = "user.create")]
    CreateUser,
    #[strum(serialize = "user.find_by_id")]
    FindUserById,
    #[strum(serialize = "user.find_by_email")]
    FindUserByEmail,
    #[strum(serialize = "user.list")]
    ListUsers,
    #[strum(serialize = "user.list_updated_since")]
    ListUsersUpdatedSince,
    #[strum(serialize = "user.search_by_name")]
    SearchUsersByName,
    #[strum(serialize = "user.update")]
    UpdateUser,
    #[strum(serialize = "user.delete")]
    DeleteUser,
    #[strum(serialize = "user.version_of")]
    UserVersion,
    /// A page of the change feed.
    #[strum(serialize = "user.list_changes")]
    ListUserChanges,
    /// Tombstones past the feed's retention, and the expiry mark of older tokens.
    #[strum(serialize = "user.purge_tombstones")]
    PurgeTombstones,
    /// The primary's WAL position after a write, for its `Consistency-Token`.
    #[strum(serialize = "wal.position")]
    WalPosition,
    /// An idempotency key's stored answer, read after a keyed write wrote nothing.
    #[strum(serialize = "idempotency_key.find")]
    FindIdempotencyKey,
    /// SQLite: a keyed write takes its key, in the write's transaction.
    #[strum(serialize = "idempotency_key.claim")]
    ClaimIdempotencyKey,
    /// SQLite: a keyed write's answer, stored in the write's transaction.
    #[strum(serialize = "idempotency_key.store")]
    StoreIdempotencyKey,
    /// Expired idempotency keys, forgotten.
    #[strum(serialize = "idempotency_key.purge")]
    PurgeIdempotencyKeys,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The SQL statement kind it runs: OpenTelemetry's `db.operation.name`.
    pub fn sql_verb(self) -> &'static str {
        match self {
            Operation::CreateUser => "INSERT",
            Operation::FindUserById
            | Operation::FindUserByEmail
            | Operation::ListUsers
            | Operation::ListUsersUpdatedSince
            | Operation::SearchUsersByName
            | Operation::UserVersion
            | Operation::ListUserChanges
            | Operation::WalPosition
            | Operation::FindIdempotencyKey => "SELECT",
            Operation::ClaimIdempotencyKey => "INSERT",
            Operation::UpdateUser | Operation::StoreIdempotencyKey => "UPDATE",
            Operation::DeleteUser
            | Operation::PurgeTombstones
            | Operation::PurgeIdempotencyKeys => "DELETE",
        }
    }

    /// Which connections run it (`db/postgres.rs`): writes, and the read that explains a
    /// write's outcome, on the write lane; reads of one row by key on the point lane; lists
    /// and searches on the scan lane.
    pub fn lane(self) -> Lane {
        match self {
            Operation::CreateUser
            | Operation::UpdateUser
            | Operation::DeleteUser
            | Operation::UserVersion
            | Operation::PurgeTombstones
            | Operation::FindIdempotencyKey
            | Operation::ClaimIdempotencyKey
            | Operation::StoreIdempotencyKey
            | Operation::PurgeIdempotencyKeys => Lane::Write,
            Operation::FindUserById | Operation::FindUserByEmail | Operation::WalPosition => {
                Lane::Point
            }
            Operation::ListUsers
            | Operation::ListUsersUpdatedSince
            | Operation::SearchUsersByName
            | Operation::ListUserChanges => Lane::Scan,
        }
    }

    /// Registers every (operation, kind) error counter at 0, so dashboards and alerts read 0
    /// rather than "no data" before the first error.
    pub fn register_all() {
        let names: Vec<&'static str> = Operation::iter().map(Operation::as_str).collect();
        observability::db::register_operations(&names);
    }
}
