//! The bench's own PgBouncer (testkit's) on a fixed port, in front of the bench databases, for
//! the `pgbouncer` configuration.

use anyhow::Result;
use testkit::pgbouncer::{PgBouncer, url_direct, url_through};

pub const PORT: u16 = 16432;

/// PgBouncer for `user` (who logs in to PostgreSQL without a password, as the bench's does).
pub async fn start(user: &str) -> Result<PgBouncer> {
    Ok(PgBouncer::start(user, PORT).await?)
}

/// `url` through the bench's PgBouncer.
pub fn url_of(url: &str) -> String {
    url_through(url, PORT)
}

/// `url` directly, whether or not it goes through the bench's PgBouncer.
pub fn direct_of(url: &str) -> String {
    url_direct(url, PORT)
}
