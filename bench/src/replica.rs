//! The bench's streaming replica of the local PostgreSQL (`scripts/pg-replica.sh attach`), for
//! the `replica` configuration: taken after seeding, so it holds the bench databases, and
//! taken down (cluster and replication slot) when the run ends.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const PORT: u16 = 15433;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-replica.sh");

pub struct Server {
    dir: PathBuf,
}

impl Server {
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("userbench-replica-{}", std::process::id()));
        let status = Command::new("bash")
            .args([SCRIPT, "attach"])
            .arg(&dir)
            .args(["5432", &PORT.to_string()])
            .status()
            .context("run scripts/pg-replica.sh")?;
        if !status.success() {
            bail!("scripts/pg-replica.sh attach failed: {status}");
        }
        Ok(Self { dir })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "down"])
            .arg(&self.dir)
            .status();
    }
}

/// `url` (a bench database on the local PostgreSQL) on the replica.
pub fn url_of(url: &str) -> String {
    url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{PORT}"), 1)
}

/// Where a scenario's reads went, from two scrapes of `/metrics`: the share the replica
/// answered, and the reads sent to the primary instead, by reason.
pub fn summary(before: &str, after: &str) -> String {
    use api::db::Operation;
    use observability::db::{Fallback, Pool, QUERY_DURATION, REPLICA_FALLBACKS};
    let reads = [
        Operation::FindUserById,
        Operation::FindUserByEmail,
        Operation::ListUsers,
        Operation::ListUsersUpdatedSince,
    ];
    let count = format!("{QUERY_DURATION}_count");
    let reads_on = |pool: Pool| {
        crate::scrape::increase(before, after, &count, |line| {
            line.contains(&format!("pool=\"{}\"", pool.as_str()))
                && reads
                    .iter()
                    .any(|read| line.contains(&format!("operation=\"{}\"", read.as_str())))
        })
    };
    let (replica, primary) = (reads_on(Pool::Replica), reads_on(Pool::Primary));
    let share = 100.0 * replica / (replica + primary).max(1.0);
    let fallbacks: Vec<String> = Fallback::ALL
        .iter()
        .map(|fallback| {
            let reason = fallback.as_str();
            let count = crate::scrape::increase(before, after, REPLICA_FALLBACKS, |line| {
                line.contains(&format!("reason=\"{reason}\""))
            });
            format!("{reason} {count:.0}")
        })
        .collect();
    format!(
        "  reads on the replica {share:.1}%  to the primary instead: {}",
        fallbacks.join(", ")
    )
}
