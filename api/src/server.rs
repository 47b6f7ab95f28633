//! Serving a built [`App`]: the listeners, the two servers (public and admin), the background
//! housekeeping, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use observability::metrics::Metrics;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{Route, Server};

use crate::app::{App, StartupError};
use crate::config::Config;
use crate::db::Database;
use crate::http::connections::GuardedAcceptor;
use crate::users::repository::UserRepository;

/// The two bound listeners: the public API (with its connection limits) and the admin
/// endpoints (`/metrics`).
pub struct Listeners {
    pub public: GuardedAcceptor<TcpAcceptor>,
    pub admin: TcpAcceptor,
}

impl Listeners {
    /// Binds both addresses of `config` (port 0 picks a free port, for tests).
    pub async fn bind(config: &Config) -> Result<Self, StartupError> {
        // The listener's metrics are set from here on: the recorder must be in place.
        observability::metrics::Metrics::install();
        Ok(Self {
            public: GuardedAcceptor::new(bind(config.http_addr).await?, config.connections),
            admin: bind(config.admin_addr).await?,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        local_addr(self.public.inner())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpAcceptor, StartupError> {
    TcpListener::bind(addr)
        .into_acceptor()
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

fn local_addr(acceptor: &TcpAcceptor) -> SocketAddr {
    acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .expect("a TCP acceptor has a socket address")
}

/// Serves `app` until SIGINT or SIGTERM, then drains in-flight requests.
pub async fn run(app: App, listeners: Listeners) -> io::Result<()> {
    Box::pin(run_until(app, listeners, shutdown_signal())).await
}

/// Serves `app` until `shutdown` completes: stops accepting, lets in-flight requests finish
/// within `SHUTDOWN_GRACE_SECS`, then closes the pool.
pub async fn run_until(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let public = app.endpoint();
    let App {
        config,
        db,
        metrics,
        ..
    } = app;
    let refresh_pool = {
        let db = db.clone();
        move || db.record_pools()
    };
    refresh_pool();
    let background = tokio::spawn(housekeeping(
        metrics.clone(),
        db.clone(),
        refresh_pool.clone(),
        config.pool.metrics_interval,
        config.changes_retention,
    ));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = Route::new().at(
        "/metrics",
        poem::endpoint::make_sync(move |_| {
            // Read the pool now, so a scrape never shows a stale pool.
            refresh_pool();
            poem::Response::builder()
                .content_type("text/plain; version=0.0.4")
                .body(metrics.render())
        }),
    );
    let admin_server = tokio::spawn(
        Server::new_with_acceptor(listeners.admin).run_with_graceful_shutdown(
            admin,
            async {
                let _ = admin_stopped.await;
            },
            Some(config.shutdown_grace),
        ),
    );
    let served = Server::new_with_acceptor(listeners.public)
        .run_with_graceful_shutdown(public, shutdown, Some(config.shutdown_grace))
        .await;
    let _ = stop_admin.send(());
    let _ = admin_server.await;
    background.abort();
    if let Err(error) = db.close().await {
        tracing::warn!(%error, "closing the database pool failed");
    }
    tracing::info!("stopped");
    served
}

/// Every `interval`: recycles old and idle database connections, refreshes the pool gauges,
/// forgets the change feed's tombstones past `retention` and expired idempotency keys; runs
/// the recorder's upkeep.
async fn housekeeping(
    metrics: Metrics,
    db: Database,
    refresh_pool: impl Fn(),
    interval: std::time::Duration,
    retention: std::time::Duration,
) {
    let users = UserRepository::new(&db);
    let mut pool_tick = tokio::time::interval(interval);
    let mut upkeep_tick = tokio::time::interval(observability::metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = pool_tick.tick() => {
                db.housekeeping().await;
                refresh_pool();
                // Retried at the next tick; meanwhile what expired only waits longer.
                if let Err(error) = users.purge_tombstones(retention).await {
                    tracing::warn!(%error, "forgetting expired tombstones failed");
                }
                if let Err(error) = users.purge_idempotency_keys().await {
                    tracing::warn!(%error, "forgetting expired idempotency keys failed");
                }
            }
            _ = upkeep_tick.tick() => metrics.run_upkeep(),
        }
    }
}

/// Raises the open-files soft limit to the hard limit, as Go's runtime does: every client
/// connection is a descriptor, and the soft limit is often a small default.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received: draining in-flight requests");
}
