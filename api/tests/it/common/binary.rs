//! The real api binary, started on its own ports, for tests that need a process: signals,
//! sockets, logs, resource limits.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::free_port;

pub struct Binary {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Its stdout and stderr, read as they are written (a full pipe would block its logging).
    logs: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

fn drain(stream: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes).await;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

impl Binary {
    /// Starts the binary on `database_url` with `env`, JSON logs on stdout, and neither tokens
    /// nor a rate limit (set, so a developer's `.env` cannot configure them) unless `env` does;
    /// `ulimit` runs it under that `ulimit` argument (e.g. `-n 96`). Returns once it listens.
    pub async fn start(database_url: &str, env: &[(&str, &str)], ulimit: Option<&str>) -> Self {
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let binary = env!("CARGO_BIN_EXE_api");
        let mut command = match ulimit {
            Some(limit) => {
                let mut command = Command::new("sh");
                command.args(["-c", &format!("ulimit {limit} && exec \"$0\""), binary]);
                command
            }
            None => Command::new(binary),
        };
        command
            .env("DATABASE_URL", database_url)
            .env("HTTP_ADDR", public.to_string())
            .env("ADMIN_ADDR", admin.to_string())
            .env("LOG_FORMAT", "json")
            .env("SHUTDOWN_GRACE_SECS", "5")
            .env("API_TOKENS", "")
            .env("RATE_LIMIT_PER_SECOND", "")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let logs = Some((drain(child.stdout.take()), drain(child.stderr.take())));
        for _ in 0..300 {
            if TcpStream::connect(public).await.is_ok() {
                return Self {
                    child,
                    public,
                    admin,
                    logs,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGTERM, a clean exit without a panic, and the log lines it wrote.
    pub async fn stop(mut self) -> String {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        let (stdout, stderr) = self.output().await;
        assert!(status.success(), "{status}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stdout
    }

    /// The value of one series of its `/metrics`, e.g. `foo_total{a="b"}`.
    pub async fn counter(&self, series: &str) -> f64 {
        let metrics = exchange(
            self.admin,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("scrape");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} in\n{metrics}"))
    }

    /// Creates a user through the public listener: the whole 201 response (status line,
    /// headers, body).
    pub async fn create(&self, email: &str, name: &str) -> String {
        let body = serde_json::json!({ "email": email, "name": name }).to_string();
        let created = exchange(
            self.public,
            &format!(
                "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
        .unwrap();
        assert!(created.starts_with("HTTP/1.1 201"), "{created}");
        created
    }

    /// Kills it; the log lines it wrote.
    pub async fn kill(mut self) -> String {
        self.child.kill().await.unwrap();
        self.output().await.0
    }

    async fn output(&mut self) -> (String, String) {
        match self.logs.take() {
            Some((stdout, stderr)) => (stdout.await.unwrap(), stderr.await.unwrap()),
            None => Default::default(),
        }
    }
}

/// Sends `request` on a new connection and reads until the server closes it.
pub async fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
