//! A PgBouncer of the test's own (testkit's) in front of the test PostgreSQL, as the user
//! `TEST_DATABASE_URL` names.

pub use testkit::pgbouncer::PgBouncer;

use super::{admin_url, free_port};

pub async fn start() -> PgBouncer {
    PgBouncer::start(&testkit::user_of(&admin_url()), free_port())
        .await
        .expect("pgbouncer is installed (.ci/run installs it)")
}
