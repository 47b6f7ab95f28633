//! The bench's own PgBouncer (Debian's 1.18) in transaction mode, in front of the bench
//! databases, for the `pgbouncer` configuration.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub const PORT: u16 = 16432;

pub struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// PgBouncer for `user` (who logs in to PostgreSQL without a password, as the bench's does).
    pub async fn start(user: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {PORT}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             max_client_conn = 1000\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n",
            users = dir.path().join("users.txt").display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config)?;
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let mut command = Command::new("pgbouncer");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // It refuses to run as root.
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start pgbouncer (Debian package pgbouncer)")?;
        let server = Self { child, _dir: dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", PORT))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("pgbouncer did not start on port {PORT}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `url` through the bench's PgBouncer.
pub fn url_of(url: &str) -> String {
    url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{PORT}"), 1)
}

/// `url` directly, whether or not it goes through the bench's PgBouncer.
pub fn direct_of(url: &str) -> String {
    url.replacen(&format!("127.0.0.1:{PORT}"), "127.0.0.1:5432", 1)
}
