//! Waking a worker when rows it waits for commit (LISTEN/NOTIFY), with a slow poll as the
//! fallback for missed notifications and a lost listener connection.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

pub struct Wakeup {
    pool: PgPool,
    channel: &'static str,
    listener: Option<PgListener>,
    poll_interval: Duration,
}

impl Wakeup {
    pub async fn new(pool: &PgPool, channel: &'static str, poll_interval: Duration) -> Self {
        Self {
            pool: pool.clone(),
            channel,
            listener: Self::listen(pool, channel).await,
            poll_interval,
        }
    }

    async fn listen(pool: &PgPool, channel: &str) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(pool).await.ok()?;
        listener.listen(channel).await.ok()?;
        Some(listener)
    }

    /// Returns after a notification or the poll interval, whichever comes first.
    pub async fn wait(&mut self) {
        let notified = async {
            match &mut self.listener {
                Some(listener) => listener.recv().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let lost = tokio::select! {
            () = tokio::time::sleep(self.poll_interval) => false,
            ok = notified => !ok,
        };
        if lost || self.listener.is_none() {
            self.listener = Self::listen(&self.pool, self.channel).await;
        }
    }
}
