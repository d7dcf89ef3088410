//! The composition root: builds paysync from its [`Settings`] and runs its tasks under one
//! cancellation token, so SIGTERM stops intake, drains in-flight work and exits cleanly.
//! Building binds the listener and creates the clients (so configuration errors surface
//! before serving) but starts nothing; [`Application::run`] starts every task.

mod cli;
mod handlers;
mod janitor;
mod reconcile;
mod settings;
mod wiring;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use cli::{customers, dead_letters, migrate};
pub use reconcile::reconcile;
pub use settings::{PolicySource, Settings, StripeCalls, serve};

use crate::http::{self, ServerLimits};
use crate::store::locks::LockPool;

/// A task of the running application, started by [`Application::run`] with its shutdown
/// token.
type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A bound, not yet running paysync server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    http: ServerLimits,
    shutdown_timeout: Duration,
    pool: PgPool,
    locks: LockPool,
    tasks: Vec<Task>,
}

impl Application {
    /// Binds the listener (so callers can learn the port when binding port 0) and wires every
    /// part; nothing runs yet.
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let wired = wiring::wire(&settings, &pool).await?;
        Ok(Self {
            listener,
            router: http::router(wired.state, settings.auth.clone(), settings.http),
            http: settings.http,
            shutdown_timeout: settings.shutdown_timeout,
            pool,
            locks: wired.locks,
            tasks: wired.tasks,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish for up to
    /// the shutdown timeout, and waits for every task to stop.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        info!(%addr, "listening");
        let running: Vec<_> = self
            .tasks
            .into_iter()
            .map(|task| tokio::spawn(task(shutdown.clone())))
            .collect();
        http::server::serve(
            self.listener,
            self.router,
            self.http,
            shutdown.clone(),
            self.shutdown_timeout,
        )
        .await;
        shutdown.cancel();
        for task in running {
            if let Err(e) = task.await {
                warn!(error = %e, "a task failed");
            }
        }
        self.locks.close().await;
        self.pool.close().await;
        info!("stopped");
        Ok(())
    }
}
