//! The service under test: the release binary started with a named configuration, and its
//! resource use read from /proc.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const PUBLIC: &str = "127.0.0.1:18080";
const ADMIN: &str = "127.0.0.1:19464";

pub struct Service {
    child: Child,
    pid: u32,
}

impl Service {
    pub async fn start(
        binary: &Path,
        database_url: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::start_under(&[], binary, database_url, env).await
    }

    /// As [`Self::start`], run by `wrapper` (e.g. valgrind and its options) when not empty.
    pub async fn start_under(
        wrapper: &[String],
        binary: &Path,
        database_url: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("HTTP_ADDR", PUBLIC)
            .env("ADMIN_ADDR", ADMIN)
            .env("RUN_MIGRATIONS", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid = child.id().context("the service's pid")?;
        let service = Service { child, pid };
        // Generous: under valgrind the start takes seconds.
        for _ in 0..1200 {
            if get(PUBLIC.parse()?, "/health/ready")
                .await
                .is_ok_and(|status| status == 200)
            {
                return Ok(service);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the service did not become ready")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        status_kib(self.pid, "VmRSS:") * 1024
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        ticks / clock_ticks()
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let mut stream = TcpStream::connect(ADMIN).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(())
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<u16> {
    Ok(get_with_body(addr, path).await?.0)
}

/// A GET on a connection of its own: the status and the body.
pub async fn get_with_body(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let status = std::str::from_utf8(response.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or_else(Vec::new, |head| response[head + 4..].to_vec());
    Ok((status, body))
}
