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
}

impl TestRedis {
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            server: None,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let server = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
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

    async fn try_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
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

    pub fn url(&self) -> String {
        format!("redis://:{PASSWORD}@{}/0", self.address())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// A connection of the test's own, to look at or change what the service stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
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
