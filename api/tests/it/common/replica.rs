//! A PostgreSQL primary of the test's own and its streaming replica (`scripts/pg-replica.sh
//! pair`): a test can delay, stop and restart them without touching another test's. Dropping
//! the pair stops both and removes them (`down`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sea_orm::sqlx::{self, Connection, PgConnection};

use super::free_port;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-replica.sh");

pub struct ReplicaPair {
    dir: PathBuf,
    primary_port: u16,
    replica_port: u16,
}

#[derive(Clone, Copy)]
pub enum Server {
    Primary,
    Replica,
}

impl Server {
    fn as_str(self) -> &'static str {
        match self {
            Server::Primary => "primary",
            Server::Replica => "replica",
        }
    }
}

/// The pairs' directories: `user-service-replica-<pid>-<n>`.
const PREFIX: &str = "user-service-replica-";

impl ReplicaPair {
    pub fn start() -> Self {
        remove_stale_pairs();
        // A directory name only: the script makes it, for the postgres user when run as root.
        let dir =
            std::env::temp_dir().join(format!("{PREFIX}{}-{}", std::process::id(), free_port()));
        let pair = Self {
            dir,
            primary_port: free_port(),
            replica_port: free_port(),
        };
        pair.script(&[
            "pair",
            &pair.primary_port.to_string(),
            &pair.replica_port.to_string(),
        ]);
        pair
    }

    fn script(&self, args: &[&str]) {
        let (command, rest) = args.split_first().expect("a command");
        let output = Command::new("bash")
            .arg(SCRIPT)
            .arg(command)
            .arg(&self.dir)
            .args(rest)
            .output()
            .expect("run scripts/pg-replica.sh");
        assert!(
            output.status.success(),
            "pg-replica.sh {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable")
    }

    pub fn primary_url(&self) -> String {
        Self::url(self.primary_port)
    }

    pub fn replica_url(&self) -> String {
        Self::url(self.replica_port)
    }

    pub fn stop(&self, server: Server) {
        self.script(&["stop", server.as_str()]);
    }

    pub fn restart(&self, server: Server) {
        self.script(&["start", server.as_str()]);
    }

    /// Suspends a server with its connections open: nothing it is sent gets an answer.
    pub fn freeze(&self, server: Server) {
        self.script(&["freeze", server.as_str()]);
    }

    pub fn thaw(&self, server: Server) {
        self.script(&["thaw", server.as_str()]);
    }

    /// Makes the replica hold every commit back this long before applying it (restarting it,
    /// so the setting holds from the next commit on).
    pub async fn delay_replay(&self, delay: Duration) {
        let sql = format!(
            "ALTER SYSTEM SET recovery_min_apply_delay = '{}ms'",
            delay.as_millis()
        );
        self.on_replica(&sql).await;
        self.stop(Server::Replica);
        self.restart(Server::Replica);
    }

    /// Stops the replica applying WAL (it stays up, and falls behind with every commit).
    pub async fn pause_replay(&self) {
        self.on_replica("SELECT pg_wal_replay_pause()").await;
        let mut replica = PgConnection::connect(&self.replica_url()).await.unwrap();
        for _ in 0..400 {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut replica)
                .await
                .unwrap();
            if state == "paused" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica did not pause within 10 s");
    }

    async fn on_replica(&self, sql: &str) {
        let mut replica = PgConnection::connect(&self.replica_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut replica)
            .await
            .unwrap();
        let _ = replica.close().await;
    }

    /// Waits until the replica has replayed the primary's WAL up to `lsn` (a
    /// `Consistency-Token`).
    pub async fn replayed(&self, lsn: &str) {
        let mut replica = PgConnection::connect(&self.replica_url()).await.unwrap();
        for _ in 0..400 {
            let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(lsn)
                .fetch_one(&mut replica)
                .await
                .unwrap();
            if done {
                let _ = replica.close().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica did not replay {lsn} within 10 s");
    }
}

impl Drop for ReplicaPair {
    fn drop(&mut self) {
        down(&self.dir);
    }
}

fn down(dir: &std::path::Path) {
    let _ = Command::new("bash")
        .arg(SCRIPT)
        .arg("down")
        .arg(dir)
        .status();
}

/// Takes down the pairs of test processes that died before dropping theirs.
fn remove_stale_pairs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            down(&entry.path());
        }
    }
}
