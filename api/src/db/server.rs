//! How the service reaches a PostgreSQL server, for every connection it opens there (the
//! pipelines, the replica's, the migrations and their lock): the URL's settings, TLS with
//! libpq's `sslmode` meanings on rustls, and the `application_name` a DBA sees.
//!
//! tokio-postgres knows `sslmode` only as `disable`, `prefer` and `require`, and neither
//! `sslrootcert` nor client certificates, so the `ssl*` parameters are read here and the rest
//! of the URL is the driver's. The same settings are given to sqlx (the migrations' pool), so
//! every connection of the service is secured alike.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio_postgres::config::{Host, SslMode as DriverSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{CancelToken, Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// PostgreSQL's port when the URL names none.
const DEFAULT_PORT: u16 = 5432;

/// The URL parameters read here rather than by the driver.
const SSL_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext; the certificate is not checked. libpq's
    /// default. (`allow`, libpq's plaintext-first variant, is taken as this.)
    #[strum(serialize = "prefer", serialize = "allow")]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, the certificate signed by a trusted root; the name it is for is not checked.
    VerifyCa,
    /// TLS, the certificate signed by a trusted root and issued for the host connected to.
    VerifyFull,
}

/// Where trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// The system's store (no `sslrootcert`, or `sslrootcert=system` as in libpq 16).
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// Why a URL cannot be used. Never holds the URL itself (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("not a URL")]
    Syntax,
    #[error("sslmode={0:?}: expected disable, allow, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error("sslcert and sslkey go together")]
    ClientCertificateHalf,
    #[error("{parameter}={path}: {reason}")]
    File {
        parameter: &'static str,
        path: String,
        reason: String,
    },
    #[error("no trusted root certificates in the system's store: give sslrootcert")]
    NoSystemRoots,
    #[error("TLS settings: {0}")]
    Tls(#[from] TlsError),
    #[error("{}", with_causes(.0))]
    Driver(#[from] tokio_postgres::Error),
}

/// A connection that could not be opened: where to, with which `sslmode`, and why (refused,
/// name resolution, authentication, a certificate that does not verify), never the password.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot connect to PostgreSQL at {endpoint} (sslmode={mode}): {}",
    with_causes(source)
)]
pub struct ConnectError {
    pub endpoint: String,
    pub mode: SslMode,
    #[source]
    pub source: tokio_postgres::Error,
}

impl ConnectError {
    pub fn driver(&self) -> &tokio_postgres::Error {
        &self.source
    }
}

/// The task that drives one connection's socket.
pub type Driver =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// One PostgreSQL server as the service connects to it.
#[derive(Clone)]
pub struct PgServer {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
    roots: Option<Roots>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    /// The URL without its `ssl*` parameters, for sqlx. Holds the password: never shown.
    driver_url: String,
    endpoint: String,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("endpoint", &self.endpoint)
            .field("sslmode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// Reads a `postgres://` URL; `application_name` names the connections unless the URL
    /// does. Certificate files are read now, so a missing or unreadable one stops start-up.
    pub fn parse(url: &str, application_name: &str) -> Result<Self, ServerError> {
        let mut parsed = url::Url::parse(url).map_err(|_| ServerError::Syntax)?;
        let (ssl, rest): (Vec<_>, Vec<_>) = parsed
            .query_pairs()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .partition(|(key, _)| SSL_PARAMETERS.contains(&key.as_str()));
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&rest);
        }
        let driver_url = parsed.to_string();
        let ssl = |name: &str| {
            ssl.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let mut mode = match ssl("sslmode") {
            None => SslMode::Prefer,
            Some(mode) => mode.parse().map_err(|_| ServerError::SslMode(mode))?,
        };
        let roots = ssl("sslrootcert").map(|path| match path.as_str() {
            "system" => Roots::System,
            _ => Roots::File(path.into()),
        });
        // libpq: with a root certificate file, `require` verifies the chain as `verify-ca`.
        if mode == SslMode::Require && matches!(roots, Some(Roots::File(_))) {
            mode = SslMode::VerifyCa;
        }
        let client_certificate = match (ssl("sslcert"), ssl("sslkey")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => return Err(ServerError::ClientCertificateHalf),
        };
        let mut config: tokio_postgres::Config = driver_url.parse()?;
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.ssl_mode(match mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(
            mode,
            roots.as_ref(),
            client_certificate.as_ref(),
        )?);
        let endpoint = endpoint(&config);
        Ok(Self {
            config,
            tls,
            mode,
            roots,
            client_certificate,
            driver_url,
            endpoint,
        })
    }

    /// `host:port` (or the socket's path), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// Runs every statement of its connections under this `statement_timeout`.
    pub fn statement_timeout(mut self, timeout: Option<Duration>) -> Self {
        if let Some(timeout) = timeout {
            self.config
                .options(format!("-c statement_timeout={}", timeout.as_millis()));
        }
        self
    }

    /// Gives up a connection attempt (TCP and TLS) after this.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout(timeout);
        self
    }

    /// Opens a connection; its [`Driver`] must be spawned for the client to work.
    pub async fn connect(&self) -> Result<(Client, Driver), ConnectError> {
        // Boxed: the TLS handshake's state would otherwise size every future that connects.
        Box::pin(self.config.connect(self.tls.clone()))
            .await
            .map_err(|source| ConnectError {
                endpoint: self.endpoint.clone(),
                mode: self.mode,
                source,
            })
    }

    /// Cancels what runs on a connection's backend, over the same kind of connection.
    pub async fn cancel(&self, token: CancelToken) -> Result<(), tokio_postgres::Error> {
        token.cancel_query(self.tls.clone()).await
    }

    /// The same server, settings and TLS, for sqlx.
    pub fn sqlx_options(&self) -> Result<PgConnectOptions, ServerError> {
        let options: PgConnectOptions = self.driver_url.parse().map_err(|_| ServerError::Syntax)?;
        let mut options = options
            .application_name(self.config.get_application_name().unwrap_or_default())
            .ssl_mode(match self.mode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                SslMode::Require => PgSslMode::Require,
                SslMode::VerifyCa => PgSslMode::VerifyCa,
                SslMode::VerifyFull => PgSslMode::VerifyFull,
            });
        if let Some(Roots::File(path)) = &self.roots {
            options = options.ssl_root_cert(path);
        }
        if let Some((cert, key)) = &self.client_certificate {
            options = options.ssl_client_cert(cert).ssl_client_key(key);
        }
        Ok(options)
    }
}

/// An error and what caused it, as one line: the driver's own message names only the kind of
/// failure ("error performing TLS handshake"), its source says why.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        line.push_str(": ");
        line.push_str(&error.to_string());
        cause = error.source();
    }
    line
}

fn endpoint(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) if host.contains(':') => format!("[{host}]:{port}"),
        Some(Host::Tcp(host)) => format!("{host}:{port}"),
        Some(Host::Unix(path)) => format!("{}/.s.PGSQL.{port}", path.display()),
        None => format!("localhost:{port}"),
    }
}

/// rustls' settings for `mode`: what is verified, against which roots, with which client
/// certificate.
fn client_config(
    mode: SslMode,
    roots: Option<&Roots>,
    client_certificate: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = root_store(roots.unwrap_or(&Roots::System))?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| ServerError::Tls(TlsError::General(error.to_string())))?;
            Some(webpki)
        }
    };
    let verifier = Arc::new(LibpqVerifier {
        chain,
        check_name: mode == SslMode::VerifyFull,
        provider: Arc::clone(&provider),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|error| file_error("sslkey", key, error))?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

fn root_store(roots: &Roots) -> Result<RootCertStore, ServerError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => {
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if store.is_empty() {
                return Err(ServerError::NoSystemRoots);
            }
        }
        Roots::File(path) => {
            let (added, _) = store.add_parsable_certificates(certificates("sslrootcert", path)?);
            if added == 0 {
                return Err(file_error("sslrootcert", path, "no certificate in it"));
            }
        }
    }
    Ok(store)
}

/// The certificates of the PEM file `path`, named by the URL `parameter` that gave it.
fn certificates(
    parameter: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| file_error(parameter, path, error))
}

fn file_error(
    parameter: &'static str,
    path: &std::path::Path,
    reason: impl fmt::Display,
) -> ServerError {
    ServerError::File {
        parameter,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What libpq checks of the server's certificate: nothing (`prefer`, `require`: encrypted, the
/// certificate taken as it comes), the chain to a trusted root (`verify-ca`), or the chain and
/// the host name (`verify-full`). The handshake's signatures are checked in every mode, so the
/// server holds the certificate's key.
#[derive(Debug)]
struct LibpqVerifier {
    /// `None`: the chain is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_parameters_are_read_here_and_the_rest_is_the_drivers() {
        let server = PgServer::parse(
            "postgres://u:secret@db.example:6432/users?sslmode=require&connect_timeout=3",
            "user-service",
        )
        .unwrap();
        assert_eq!(server.endpoint(), "db.example:6432");
        assert_eq!(server.ssl_mode(), SslMode::Require);
        assert_eq!(server.config.get_application_name(), Some("user-service"));
        assert_eq!(server.config.get_ssl_mode(), DriverSslMode::Require);
        assert!(!server.driver_url.contains("sslmode"));
        assert!(!format!("{server:?}").contains("secret"), "{server:?}");
    }

    #[test]
    fn libpq_defaults_and_spellings() {
        let parse = |url: &str| PgServer::parse(url, "svc").map(|server| server.ssl_mode());
        assert_eq!(parse("postgres://u@h/d").unwrap(), SslMode::Prefer);
        assert_eq!(
            parse("postgres://u@h/d?sslmode=allow").unwrap(),
            SslMode::Prefer
        );
        assert_eq!(
            parse("postgres://u@h/d?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            parse("postgres://u@h/d?sslmode=verify-full&sslrootcert=system").unwrap(),
            SslMode::VerifyFull
        );
        assert!(matches!(
            parse("postgres://u@h/d?sslmode=verify"),
            Err(ServerError::SslMode(_))
        ));
        assert!(matches!(
            parse("postgres://u@h/d?sslcert=/c.pem"),
            Err(ServerError::ClientCertificateHalf)
        ));
        let missing = parse("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("sslrootcert=/nonexistent/ca.pem"),
            "{missing}"
        );
        let named = PgServer::parse("postgres://u@h/d?application_name=mine", "svc").unwrap();
        assert_eq!(named.config.get_application_name(), Some("mine"));
    }
}
