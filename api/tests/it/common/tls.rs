//! TLS servers of a test's own: a CA and certificates generated for the test (rcgen), a
//! PostgreSQL cluster that serves them (`initdb`, TLS only, client certificates accepted), and
//! the helpers to read what `pg_stat_ssl` says of a service's connections.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sea_orm::sqlx::{self, Connection, PgConnection};

use super::free_port;

/// A CA, a server certificate for `localhost` signed by it, and a client certificate for the
/// user `certuser`; PEM files in a directory of their own.
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

/// The user that logs in with a client certificate (its certificate's CN).
pub const CERT_USER: &str = "certuser";

impl Certificates {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let (ca_pem, ca) = authority("user-service test CA");
        write("ca.pem", &ca_pem);
        let (cert, key) = leaf(&ca, "localhost", &["localhost", "127.0.0.1", "::1"]);
        write("server.pem", &cert);
        write("server.key", &key);
        let (cert, key) = leaf(&ca, CERT_USER, &[]);
        write("client.pem", &cert);
        write("client.key", &key);
        // Another CA, which signed nothing the servers present.
        write("other-ca.pem", &authority("another CA").0);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(ca: &Issuer<'_, KeyPair>, common_name: &str, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A PostgreSQL cluster of the test's own that accepts TLS connections only: trusted for
/// `postgres`, by client certificate (signed by the test CA) for [`CERT_USER`]. Dropping it
/// stops and removes it.
pub struct TlsPostgres {
    dir: PathBuf,
    pub port: u16,
}

impl TlsPostgres {
    pub fn start(certificates: &Certificates) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "user-service-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        let port = free_port();
        let cluster = Self { dir, port };
        let data = cluster.dir.join("data");
        std::fs::create_dir_all(&cluster.dir).unwrap();
        as_postgres_owner(&cluster.dir);
        run(Command::new(pg_bin("initdb"))
            .args(["-D", &data.display().to_string()])
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]));
        // PostgreSQL reads the key only if its owner alone can.
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(certificates.dir.path().join(name), data.join(name)).unwrap();
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all {CERT_USER} ::1/128 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl all all ::1/128 trust\n"
            ),
        )
        .unwrap();
        as_postgres_owner(&data);
        set_mode(&data.join("server.key"), 0o600);
        run(Command::new(pg_bin("pg_ctl"))
            .args(["-D", &data.display().to_string()])
            .args(["-l", &cluster.dir.join("server.log").display().to_string()])
            .args(["-w", "-t", "60", "start", "-o"])
            .arg(format!(
                "-c port={port} -c listen_addresses='127.0.0.1,::1' \
                 -c unix_socket_directories='{}' -c ssl=on -c ssl_cert_file=server.pem \
                 -c ssl_key_file=server.key -c ssl_ca_file=ca.pem -c fsync=off \
                 -c max_connections=50 -c shared_buffers=16MB",
                cluster.dir.display()
            )));
        run(Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-h", &cluster.dir.display().to_string()])
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-c", &format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER")]));
        cluster
    }

    /// `postgres://user@host:port/postgres?` followed by `params`.
    pub fn url(&self, user: &str, host: &str, params: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D", &self.dir.join("data").display().to_string()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = Command::new(pg_bin("pg_ctl"))
            .args(["-D", &self.dir.join("data").display().to_string()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed PostgreSQL's program `name`.
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.path()))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|version| version.join("bin").join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `command`, as the postgres user when this process is root (PostgreSQL refuses root).
fn run(command: &mut Command) {
    let output = if is_root() {
        let mut wrapped = Command::new("runuser");
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped.output()
    } else {
        command.output()
    }
    .expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{:?}: {}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn as_postgres_owner(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:", &path.display().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether each connection named `application_name` uses TLS, as the server sees them.
pub async fn encrypted(admin_url: &str, application_name: &str) -> Vec<bool> {
    let mut admin = PgConnection::connect(admin_url).await.unwrap();
    let rows: Vec<(bool,)> = sqlx::query_as(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
         WHERE a.application_name = $1",
    )
    .bind(application_name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let _ = admin.close().await;
    rows.into_iter().map(|(ssl,)| ssl).collect()
}
