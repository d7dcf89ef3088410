//! Connecting to PostgreSQL: TLS as the URL asks (`sslmode` disable, allow, prefer, require,
//! verify-ca, verify-full; `sslrootcert` for a private CA, else the system's roots), a session
//! that names itself (`application_name`, so `pg_stat_activity` shows paysync) and that the
//! server probes (TCP keepalives: a replica whose node died frees its advisory locks within
//! about a minute, not the OS default of two hours), and start-up errors that say what to fix.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// How long a request may wait for a pooled connection before it fails (503/500 rather than
/// hanging while PostgreSQL is down).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The session name unless the URL gives one (`?application_name=…`).
const APPLICATION_NAME: &str = "paysync";

/// The server's keepalive probes on each session: idle seconds before the first, seconds
/// between them, and how many unanswered end the session (30 + 10 × 3 = one minute). Set with
/// `SET` after connecting rather than as a startup `options` parameter, which PgBouncer
/// refuses.
const KEEPALIVES: &str =
    "set tcp_keepalives_idle = 30; set tcp_keepalives_interval = 10; set tcp_keepalives_count = 3";

/// The connection settings of a database URL, with paysync's session name.
pub fn connect_options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    let options = anyhow::Context::context(
        PgConnectOptions::from_str(url.expose_secret()),
        "DATABASE_URL is not a valid PostgreSQL URL",
    )?;
    Ok(match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(APPLICATION_NAME),
    })
}

/// Pool settings every paysync pool shares: each new session gets its keepalives.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().after_connect(|conn, _| {
        Box::pin(async move {
            sqlx::raw_sql(KEEPALIVES).execute(conn).await?;
            Ok(())
        })
    })
}

/// Opens the connection pool and checks that PostgreSQL answers.
pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    let pool = pool_options()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await;
    pool.map_err(|e| {
        let error = anyhow::Error::new(e);
        let context = format!("connecting to PostgreSQL at {}", describe_url(url));
        match tls_hint(&error) {
            Some(hint) => error.context(format!("{context}: {hint}")),
            None => error.context(context),
        }
    })
}

/// What to do about a TLS failure, from the error's causes.
fn tls_hint(error: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{error:#}");
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        Some(
            "the server's TLS certificate is not signed by a trusted CA (sslrootcert names the CA file to trust)",
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some(
            "the server's TLS certificate does not name the host in DATABASE_URL (sslmode=verify-full checks it; connect by a name the certificate has)",
        )
    } else if text.contains("no encryption") || text.contains("SSL off") {
        Some(
            "the server accepts only TLS connections from here: set sslmode=require (or verify-full) in DATABASE_URL",
        )
    } else if text.contains("server does not support TLS") || text.contains("does not support SSL")
    {
        Some("the server does not offer TLS, which sslmode asks for")
    } else {
        None
    }
}

/// Where a database URL points, without its credentials, for logs and error messages.
pub fn describe_url(url: &SecretString) -> String {
    match PgConnectOptions::from_str(url.expose_secret()) {
        Ok(options) => format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        ),
        Err(_) => "(unparseable DATABASE_URL)".to_owned(),
    }
}
