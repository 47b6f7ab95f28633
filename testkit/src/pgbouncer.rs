//! A PgBouncer of one's own (Debian's, 1.18) in transaction mode, in front of the local
//! PostgreSQL (127.0.0.1:5432), trusting one user: the contract suite runs through one with
//! `DB_PREPARED_STATEMENTS=false`, and so does the bench's `pgbouncer` configuration.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where PostgreSQL listens, as the URLs name it.
const POSTGRES: &str = "127.0.0.1:5432";

pub struct PgBouncer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts it on `port` for `user` (who logs in to PostgreSQL without a password); returns
    /// once it accepts connections.
    pub async fn start(user: &str, port: u16) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             max_client_conn = 2000\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n",
            users = dir.path().join("users.txt").display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config)?;
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n"))?;
        // PgBouncer refuses to run as root: as root, it runs as the postgres user, who must
        // read these files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let mut command = Command::new("pgbouncer");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("start pgbouncer (Debian's package pgbouncer): {error}"),
                )
            })?;
        let bouncer = Self {
            port,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(bouncer);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(io::Error::other(format!(
            "pgbouncer did not start on port {port}"
        )))
    }

    /// `url` (a database on the local PostgreSQL) through this PgBouncer.
    pub fn url_of(&self, url: &str) -> String {
        url_through(url, self.port)
    }
}

/// `url` through a PgBouncer on `port`.
pub fn url_through(url: &str, port: u16) -> String {
    url.replacen(POSTGRES, &format!("127.0.0.1:{port}"), 1)
}

/// `url` straight to PostgreSQL, whether or not it went through a PgBouncer on `port`.
pub fn url_direct(url: &str, port: u16) -> String {
    url.replacen(&format!("127.0.0.1:{port}"), POSTGRES, 1)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
