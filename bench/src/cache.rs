//! The bench's own Redis for the `cached` configuration: nothing on disk, flushed before each
//! service start (and before the skewed scenario, which starts cold), its memory read after
//! the warm-up.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub const PORT: u16 = 16379;

pub fn url() -> String {
    format!("redis://127.0.0.1:{PORT}/0")
}

pub struct Server {
    child: Child,
}

impl Server {
    pub async fn start() -> Result<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &PORT.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("start redis-server (Debian package redis-server)")?;
        let server = Self { child };
        for _ in 0..100 {
            if server.cli(&["PING"]).is_ok_and(|reply| reply == "PONG") {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server did not start on port {PORT}")
    }

    pub fn flush(&self) -> Result<()> {
        self.cli(&["FLUSHALL"]).map(drop)
    }

    /// `used_memory` of `INFO memory`, in bytes.
    pub fn used_memory(&self) -> Result<u64> {
        let info = self.cli(&["INFO", "memory"])?;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok())
            .context("used_memory in INFO memory")
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &PORT.to_string()])
            .args(args)
            .output()
            .context("run redis-cli")?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cache calls that failed or timed out, and calls not made while an instance recovered, from
/// two scrapes of `/metrics`.
pub fn failures(before: &str, after: &str) -> f64 {
    let failed =
        |line: &str| line.contains(r#"result="error""#) || line.contains(r#"result="bypass""#);
    increase(before, after, failed)
}

/// Reads answered by the cache, of all reads asked of it, from two scrapes of `/metrics`.
pub fn hit_ratio(before: &str, after: &str) -> Option<f64> {
    let read = |line: &str| {
        (line.contains(r#"operation="user.get""#) || line.contains(r#"operation="user.lookup""#))
            && !line.contains(r#"result="ok""#)
    };
    let hits = increase(before, after, |line| {
        read(line) && line.contains(r#"result="hit""#)
    });
    let asked = increase(before, after, read);
    (asked > 0.0).then(|| hits / asked)
}

fn increase(before: &str, after: &str, selected: impl Fn(&str) -> bool) -> f64 {
    crate::scrape::increase(before, after, observability::cache::REQUESTS, selected)
}
