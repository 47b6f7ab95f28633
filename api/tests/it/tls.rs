//! TLS to PostgreSQL on every connection the service opens, with libpq's `sslmode` meanings,
//! against real TLS servers: the machine's PostgreSQL (Debian's self-signed certificate for
//! `localhost`) and a cluster of the test's own with a CA and certificates the test generates.

use poem::http::StatusCode;
use poem::test::TestClient;
use serde_json::json;

use crate::common::tls::{CERT_USER, Certificates, TlsPostgres, encrypted};
use crate::common::{Backend, TestDb, admin_url, test_config};

/// The machine's certificate (Debian's `ssl-cert-snakeoil`: self-signed, for `localhost`).
const MACHINE_CERTIFICATE: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// `url` with its `sslmode=disable` replaced by `params`, and its host by `host`.
fn with_tls(url: &str, host: &str, params: &str) -> String {
    url.replace("sslmode=disable", params)
        .replacen("127.0.0.1", host, 1)
}

/// Builds the service on `url`, serves a write and a read, and returns whether each of its
/// connections (named `application_name`) is encrypted, as `pg_stat_ssl` sees them from
/// `admin`.
async fn serve(url: &str, application_name: &str, admin: &str) -> Vec<bool> {
    let config = test_config(url, &[("DB_APPLICATION_NAME", application_name)]);
    let app = api::build(config).await.expect("build the app over TLS");
    let client = TestClient::new(app.endpoint());
    let created = client
        .post("/api/v1/users")
        .body_json(&json!({ "email": format!("{application_name}@example.com"), "name": "T" }))
        .send()
        .await;
    created.assert_status(StatusCode::CREATED);
    client
        .get("/api/v1/users")
        .send()
        .await
        .assert_status_is_ok();
    let connections = encrypted(admin, application_name).await;
    drop(app);
    connections
}

/// `prefer` (libpq's default) and `require` encrypt every connection, the pipelines' and the
/// migrations' alike (before: five of six were plaintext under `prefer`, and `require` did not
/// start); `disable` encrypts none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_encrypted_as_sslmode_asks() {
    let db = TestDb::new(Backend::Postgres).await;
    for (mode, expected) in [("prefer", true), ("require", true), ("disable", false)] {
        let name = format!("tls-{mode}-{}", db.name());
        let url = with_tls(db.url(), "127.0.0.1", &format!("sslmode={mode}"));
        let connections = serve(&url, &name, &admin_url()).await;
        assert!(
            connections.len() >= 5,
            "{mode}: the warm connections carry DB_APPLICATION_NAME: {connections:?}"
        );
        assert!(
            connections.iter().all(|&ssl| ssl == expected),
            "sslmode={mode}: {connections:?}"
        );
    }
}

/// `verify-ca` checks the chain and not the name; `verify-full` checks both, so the machine's
/// certificate (for `localhost`) is refused on `127.0.0.1`, naming the server and the reason,
/// and accepted on `localhost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_and_verify_full_check_what_libpq_checks() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = format!("sslrootcert={MACHINE_CERTIFICATE}");
    let verify_ca = with_tls(db.url(), "127.0.0.1", &format!("sslmode=verify-ca&{root}"));
    let name = format!("tls-ca-{}", db.name());
    assert!(
        serve(&verify_ca, &name, &admin_url())
            .await
            .iter()
            .all(|&ssl| ssl)
    );
    let on_localhost = with_tls(
        db.url(),
        "localhost",
        &format!("sslmode=verify-full&{root}"),
    );
    let name = format!("tls-full-{}", db.name());
    assert!(
        serve(&on_localhost, &name, &admin_url())
            .await
            .iter()
            .all(|&ssl| ssl)
    );

    let wrong_name = with_tls(
        db.url(),
        "127.0.0.1",
        &format!("sslmode=verify-full&{root}"),
    );
    let error = api::build(test_config(&wrong_name, &[]))
        .await
        .err()
        .expect("a certificate for another name is refused")
        .to_string();
    assert!(
        error.contains("127.0.0.1:5432") && error.contains("not valid for name"),
        "{error}"
    );
}

/// A cluster of the test's own, with a CA the test made: `verify-full` on `localhost`
/// connects; another CA is refused at start-up with the reason; a client certificate logs in
/// where `pg_hba.conf` asks for one (`cert`), and without one the server says no.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_its_own_ca_and_client_certificates() {
    let certificates = Certificates::generate();
    let cluster = TlsPostgres::start(&certificates);
    let admin = cluster.url("postgres", "localhost", "sslmode=require");
    let ca = certificates.path("ca.pem");
    let full = cluster.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(
        serve(&full, "tls-own-ca", &admin)
            .await
            .iter()
            .all(|&ssl| ssl)
    );

    let other = certificates.path("other-ca.pem");
    let untrusted = cluster.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    );
    let error = api::build(test_config(&untrusted, &[]))
        .await
        .err()
        .expect("a certificate from another CA is refused")
        .to_string();
    let endpoint = format!("localhost:{}", cluster.port);
    assert!(
        error.contains(&endpoint) && error.contains("UnknownIssuer"),
        "{error}"
    );

    let client_cert = format!(
        "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        certificates.path("client.pem"),
        certificates.path("client.key")
    );
    let with_certificate = cluster.url(CERT_USER, "localhost", &client_cert);
    assert!(
        serve(&with_certificate, "tls-client-cert", &admin)
            .await
            .iter()
            .all(|&ssl| ssl)
    );
    let without = cluster.url(
        CERT_USER,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let error = api::build(test_config(&without, &[]))
        .await
        .err()
        .expect("no client certificate, no login")
        .to_string();
    assert!(
        error.contains(&endpoint) && error.contains("certificate"),
        "{error}"
    );
}
