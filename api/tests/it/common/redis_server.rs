//! A Redis server of the test's own, with a password, on a free port: tests can pause, stop,
//! restart and flush it without touching anyone else's (the machine's Redis is shared).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;

use super::free_port;

const PASSWORD: &str = "test-password";

pub struct TestRedis {
    port: u16,
    server: Option<Child>,
    /// TLS only, with these certificates (`ca.pem`, `server.pem`, `server.key`).
    tls: Option<std::path::PathBuf>,
}

impl TestRedis {
    pub async fn start() -> Self {
        Self::launched(None).await
    }

    /// A server that speaks TLS only, with the certificates in `certificates` (a server
    /// certificate for `localhost`).
    pub async fn start_tls(certificates: &super::tls::Certificates) -> Self {
        Self::launched(Some(certificates.dir.path().to_owned())).await
    }

    async fn launched(tls: Option<std::path::PathBuf>) -> Self {
        let mut redis = Self {
            port: free_port(),
            server: None,
            tls,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(dir) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"]),
        };
        let server = command
            .args([
                "--bind",
                "127.0.0.1",
                "-::1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.server = Some(server);
        for _ in 0..200 {
            if self.try_ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(self.url()),
            Some(dir) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(dir.join("ca.pem")).unwrap()),
                },
            ),
        }
    }

    async fn try_ping(&self) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        match client.get_multiplexed_async_connection().await {
            Ok(mut connection) => redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// `redis://`, or `rediss://` to `localhost` (the name its certificate is for) over TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://:{PASSWORD}@{}/0", self.address()),
            Some(_) => format!("rediss://:{PASSWORD}@localhost:{}/0", self.port),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// A connection of the test's own, to look at or change what the service stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's Redis")
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.connection().await.get(key).await.unwrap()
    }

    pub async fn del(&self, key: &str) {
        let _: () = self.connection().await.del(key).await.unwrap();
    }

    pub async fn flushall(&self) {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }

    /// SIGSTOP: connections stay open, nothing is answered (a hung or blackholed server).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.server.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the server: connections drop, new ones are refused.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// A new, empty server on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // SIGKILL ends a paused server too.
        self.stop();
    }
}
