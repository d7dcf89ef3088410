//! Connecting to PostgreSQL. TLS, against a server of the test's own that accepts only TLS:
//! the `sslmode` values and `sslrootcert` as managed PostgreSQL needs them, and start-up errors
//! that name the cause (`paysync migrate` and `paysync serve` connect the same way). And the
//! sessions paysync opens: named, and probed by the server.

use std::process::Output;

use crate::support::serve_process::{database_url, paysync};
use crate::support::tls_postgres::TlsPostgres;

async fn migrate(url: &str) -> Output {
    paysync()
        .arg("migrate")
        .env("DATABASE_URL", url)
        .output()
        .await
        .unwrap()
}

fn logs(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `require` encrypts (the server refuses anything else); `disable` is refused with a hint
/// to ask for TLS; `prefer` (the default) uses TLS where the server offers it. (`allow` tries
/// without TLS first and, in sqlx, does not try again with it: not for such a server.)
#[tokio::test]
async fn require_connects_to_a_server_that_accepts_only_tls() {
    let server = TlsPostgres::start();
    for mode in ["sslmode=require", "sslmode=prefer", ""] {
        let output = migrate(&server.url("127.0.0.1", mode)).await;
        assert!(output.status.success(), "{mode}: {}", logs(&output));
    }
    let refused = migrate(&server.url("127.0.0.1", "sslmode=disable")).await;
    assert_eq!(refused.status.code(), Some(1));
    let text = logs(&refused);
    assert!(text.contains("set sslmode=require"), "{text}");
}

/// `verify-full` with the CA that signed the server's certificate connects by the name in it;
/// a wrong CA, or a host the certificate does not name, fails at start-up saying so.
/// `verify-ca` checks the CA, not the name.
#[tokio::test]
async fn verify_full_checks_the_ca_and_the_host_and_says_which_failed() {
    let server = TlsPostgres::start();
    let ca = server.ca.display().to_string();
    let other_ca = server.other_ca.display().to_string();

    let ok = migrate(&server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(ok.status.success(), "{}", logs(&ok));
    let by_ip =
        migrate(&server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await;
    assert!(by_ip.status.success(), "verify-ca: {}", logs(&by_ip));

    let wrong_ca = migrate(&server.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await;
    assert_eq!(wrong_ca.status.code(), Some(1));
    let text = logs(&wrong_ca);
    assert!(text.contains("not signed by a trusted CA"), "{text}");

    let wrong_host = migrate(&server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert_eq!(wrong_host.status.code(), Some(1));
    let text = logs(&wrong_host);
    assert!(text.contains("does not name the host"), "{text}");

    // The server starts the same way: a wrong CA stops it before it serves.
    let serve = paysync()
        .args(["serve", "--insecure-no-auth"])
        .env(
            "DATABASE_URL",
            server.url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other_ca}"),
            ),
        )
        .env("PAYSYNC_LISTEN", "127.0.0.1:0")
        .env("STRIPE_API_KEY", "sk_test_paysync")
        .output()
        .await
        .unwrap();
    assert_eq!(serve.status.code(), Some(1));
    assert!(
        logs(&serve).contains("not signed by a trusted CA"),
        "{}",
        logs(&serve)
    );
}

/// Every session paysync opens names itself (`pg_stat_activity` shows `paysync`) and has the
/// server probe it, so a replica whose node died frees its locks within a minute; a name the
/// URL gives wins.
#[sqlx::test]
async fn sessions_name_themselves_and_are_probed_by_the_server(pool: sqlx::PgPool) {
    let url = database_url(&pool);
    let paysync = paysync::store::connect(&url.clone().into(), 2)
        .await
        .unwrap();
    let (name, idle, interval, count): (String, String, String, String) = sqlx::query_as(
        "select current_setting('application_name'), current_setting('tcp_keepalives_idle'), \
         current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count')",
    )
    .fetch_one(&paysync)
    .await
    .unwrap();
    assert_eq!(
        (
            name.as_str(),
            idle.as_str(),
            interval.as_str(),
            count.as_str()
        ),
        ("paysync", "30", "10", "3")
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    let named = format!("{url}{separator}application_name=billing-worker");
    let named = paysync::store::connect(&named.into(), 1).await.unwrap();
    let name: String = sqlx::query_scalar("select current_setting('application_name')")
        .fetch_one(&named)
        .await
        .unwrap();
    assert_eq!(name, "billing-worker");
}
