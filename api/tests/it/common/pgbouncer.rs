//! A PgBouncer of the test's own (Debian's, 1.18) in transaction mode, in front of the test
//! PostgreSQL: the contract suite runs through it with `DB_PREPARED_STATEMENTS=false`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{admin_url, free_port};

pub struct PgBouncer {
    port: u16,
    server: Child,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        // The user the tests connect as, from TEST_DATABASE_URL.
        let user = admin_url()
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .and_then(|credentials| credentials.split(':').next())
            .unwrap_or("postgres")
            .to_owned();
        let config = format!(
            "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             max_client_conn = 2000\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n",
            users = dir.path().join("users.txt").display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).unwrap();
        std::fs::write(dir.path().join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        // PgBouncer refuses to run as root: as root, it runs as the postgres user, who must
        // read these files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut command = Command::new("pgbouncer");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            command.args(["-u", "postgres"]);
        }
        let bouncer = Self {
            port,
            server: command
                .arg(dir.path().join("pgbouncer.ini"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pgbouncer is installed (.ci/run installs it)"),
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return bouncer;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pgbouncer did not start on port {port}");
    }

    /// `url` (a database on the test PostgreSQL) through this PgBouncer.
    pub fn url_of(&self, url: &str) -> String {
        url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port), 1)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
