//! The real `paysync` binary: start-up, migrations, configuration errors, secrets kept out of
//! logs, graceful shutdown, a SIGKILL with changes in flight, Kafka end to end through tansu,
//! and the dead-letters CLI.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::wait_for;
use crate::support::events::insert_linked_many;
use crate::support::mock_kafka::MockKafka;
use crate::support::serve_process::{
    DB_PASSWORD, PROCESS_DEADLINE, ServeProcess, TOKEN, database_url, paysync,
};
use crate::support::stripe::{LOCALSTRIPE, Localstripe, WebhookEndpoint, unique_email};
use crate::support::tls_tansu::TlsTansu;
use crate::support::webhooks::{now, signature};

/// The tansu broker that `scripts/services up --kafka` starts.
const TANSU: &str = "127.0.0.1:19092";
const WEBHOOK_SECRET: &str = "whsec_binary_test";

/// Settings that sync to localstripe. Catch-up stays off: localstripe is shared by every
/// test, and catching up would adopt the other tests' customers.
fn stripe_env() -> Vec<(&'static str, String)> {
    vec![
        ("STRIPE_API_KEY", "sk_test_paysync".to_owned()),
        ("STRIPE_API_BASE", LOCALSTRIPE.to_owned()),
        ("STRIPE_BACKOFF_BASE", "20ms".to_owned()),
        ("STRIPE_BACKOFF_MAX", "500ms".to_owned()),
        ("PAYSYNC_NO_CATCH_UP", "true".to_owned()),
    ]
}

#[sqlx::test(migrations = false)]
async fn serve_migrates_serves_and_drains_on_sigterm(pool: PgPool) {
    let server = ServeProcess::start(&[
        ("DATABASE_URL", database_url(&pool)),
        ("PAYSYNC_API_TOKENS", format!("other-token,{TOKEN}")),
    ])
    .await;
    let created = server
        .post(
            &reqwest::Client::new(),
            "/v1/customers",
            &json!({"email": "binary@example.com"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let outbox: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox, 1,
        "serve applied the migrations and wrote the outbox row"
    );

    let logs = server.sigterm_and_wait().await;
    assert!(
        logs.contains("SIGTERM") && logs.contains("\"stopped\""),
        "{logs}"
    );
    assert!(logs.contains("STRIPE_API_KEY is not set"), "{logs}");
    assert!(!logs.contains(TOKEN), "a token was logged:\n{logs}");
    assert!(
        !logs.contains(DB_PASSWORD),
        "the database password was logged:\n{logs}"
    );
}

#[sqlx::test(migrations = false)]
async fn migrate_creates_the_schema_and_can_run_again(pool: PgPool) {
    for _ in 0..2 {
        let output = paysync()
            .arg("migrate")
            .env("DATABASE_URL", database_url(&pool))
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables \
         where table_schema = 'public' and table_name <> '_sqlx_migrations' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "customers",
            "dead_letters",
            "idempotency_keys",
            "outbox",
            "processed_events",
            "reconcile_runs",
            "reconcile_seen",
            "reconcile_segments",
            "sync_cursors"
        ]
    );
}

#[tokio::test]
async fn serve_without_tokens_explains_what_to_set() {
    let output = paysync()
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PAYSYNC_API_TOKENS"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

/// Switches set in the environment take what operators type: 1/0, true/false, yes/no,
/// on/off, in any case.
#[tokio::test]
async fn switches_in_the_environment_accept_what_operators_type() {
    let run = |insecure: &'static str, others: &'static str| async move {
        let mut command = paysync();
        command
            .arg("serve")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("PAYSYNC_INSECURE_NO_AUTH", insecure);
        for name in [
            "PAYSYNC_NO_CATCH_UP",
            "PAYSYNC_NO_OUTBOUND",
            "PAYSYNC_NO_RELAY",
            "PAYSYNC_NO_INBOUND",
            "PAYSYNC_NO_MIGRATE",
        ] {
            command.env(name, others);
        }
        let output = command.output().await.unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout),
        )
    };
    for on in ["1", "TRUE", "yes", "On"] {
        // Auth is off, so start-up goes on to the (unreachable) database.
        let (code, output) = run(on, on).await;
        assert_eq!(code, Some(1), "{on}: {output}");
        assert!(
            output.contains("connecting to PostgreSQL"),
            "{on}: {output}"
        );
    }
    for off in ["0", "false", "NO", "off"] {
        // Auth stays on and no token is set: the usage error that names the setting.
        let (code, output) = run(off, off).await;
        assert_eq!(code, Some(2), "{off}: {output}");
        assert!(output.contains("PAYSYNC_API_TOKENS"), "{off}: {output}");
    }
    let (code, output) = run("1", "maybe").await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("invalid value 'maybe'"), "{output}");
}

#[tokio::test]
async fn an_unreachable_database_fails_start_up_without_leaking_the_password() {
    let output = paysync()
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("postgres://paysync:{DB_PASSWORD}@127.0.0.1:1/paysync"),
        )
        .env("PAYSYNC_API_TOKENS", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("connecting to PostgreSQL at 127.0.0.1:1/paysync"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(DB_PASSWORD) && !stdout.contains(TOKEN),
        "{stdout}"
    );
}

/// 100 customers × 10 versions = 1,000 committed changes; the process is killed with SIGKILL
/// while they are being synced, restarted, and every customer must end in Stripe exactly once
/// at its last version.
async fn sigkill_with_a_thousand_changes_in_flight(
    pool: PgPool,
    transport_env: Vec<(&'static str, String)>,
) {
    let mut env = stripe_env();
    env.extend(transport_env);
    env.push(("DATABASE_URL", database_url(&pool)));
    // A budget well below the change rate, so the kill lands mid-way.
    env.push(("STRIPE_RATE_LIMIT", "40".to_owned()));
    let server = ServeProcess::start(&env).await;
    let client = reqwest::Client::new();

    let emails: Vec<String> = (0..100)
        .map(|i| unique_email(&format!("kill{i}")))
        .collect();
    let ids: Vec<String> = futures::stream::iter(&emails)
        .map(|email| {
            let request = server.post(&client, "/v1/customers", &json!({ "email": email }));
            async move {
                let created: Value = request.send().await.unwrap().json().await.unwrap();
                created["id"].as_str().unwrap().to_owned()
            }
        })
        .buffered(8)
        .collect()
        .await;
    let patches = ids
        .iter()
        .flat_map(|id| (2..=10).map(move |v| (id.clone(), v)));
    futures::stream::iter(patches)
        .map(|(id, version)| {
            let request = server.patch(
                &client,
                &format!("/v1/customers/{id}"),
                &json!({"name": format!("version {version}")}),
            );
            async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::OK) }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let changes: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(changes, 1000);

    let count_synced = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from customers where stripe_synced_version = version \
             and email = any($1)",
        )
        .bind(&emails)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    wait_for("some customers to be synced", PROCESS_DEADLINE, || async {
        let synced = count_synced().await;
        if synced >= 5 {
            Ok(())
        } else {
            Err(synced.to_string())
        }
    })
    .await;
    let synced_before_kill = count_synced().await;
    server.sigkill().await;
    assert!(
        synced_before_kill < 100,
        "the kill must land mid-way ({synced_before_kill} synced)"
    );

    let restarted = ServeProcess::start(&env).await;
    wait_for(
        "every customer synced at its last version",
        Duration::from_secs(120),
        || async {
            let synced = count_synced().await;
            if synced == 100 {
                Ok(())
            } else {
                Err(format!("{synced} of 100"))
            }
        },
    )
    .await;
    let stripe = Localstripe::new();
    for email in &emails {
        let found = stripe.customers_with_email(email).await;
        assert_eq!(
            found.len(),
            1,
            "exactly one Stripe customer for {email}: {found:?}"
        );
        // Patches ran concurrently, so the last committed name is whichever came last.
        let (name, stripe_id): (String, String) =
            sqlx::query_as("select name, stripe_id from customers where email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(found[0]["id"], stripe_id.as_str());
        assert_eq!(found[0]["name"], name.as_str());
        assert_eq!(found[0]["metadata"]["paysync_version"], "10");
    }
    restarted.sigterm_and_wait().await;
}

#[sqlx::test]
async fn a_sigkill_mid_sync_loses_and_duplicates_nothing_postgres_transport(pool: PgPool) {
    sigkill_with_a_thousand_changes_in_flight(pool, Vec::new()).await;
}

/// The same over Kafka (librdkafka's mock cluster in another process): the restarted consumer
/// resumes from the last committed offset after the killed member's session expires.
#[sqlx::test]
async fn a_sigkill_mid_sync_loses_and_duplicates_nothing_kafka_transport(pool: PgPool) {
    let kafka = MockKafka::start().await;
    let env = vec![
        ("KAFKA_BROKERS", kafka.bootstrap.clone()),
        ("KAFKA_OPTIONS", "reconnect.backoff.max.ms=500".to_owned()),
    ];
    sigkill_with_a_thousand_changes_in_flight(pool, env).await;
}

/// A REST change reaches Stripe through a Kafka that speaks TLS only, `KAFKA_OPTIONS` as a
/// managed Kafka needs them (`SSL` with the CA that signed the broker's certificate).
#[sqlx::test]
async fn changes_reach_stripe_through_kafka_over_tls(pool: PgPool) {
    let broker = TlsTansu::start(false).await;
    let mut env = stripe_env();
    env.push(("DATABASE_URL", database_url(&pool)));
    env.push(("KAFKA_BROKERS", broker.brokers()));
    env.push(("KAFKA_PARTITIONS", "1".to_owned()));
    env.push((
        "KAFKA_OPTIONS",
        format!(
            "security.protocol=SSL,ssl.ca.location={}",
            broker.certs.ca.display()
        ),
    ));
    let server = ServeProcess::start(&env).await;
    let email = unique_email("kafka-tls");
    create_and_wait_synced(&server, &pool, &json!({"email": email}), "over TLS").await;
    assert_eq!(
        Localstripe::new().customers_with_email(&email).await.len(),
        1
    );
    server.sigterm_and_wait().await;
}

/// Creates a customer through the server's REST API and waits until its first version reached
/// Stripe (`how`: by which path, for the failure message); its id.
async fn create_and_wait_synced(
    server: &ServeProcess,
    pool: &PgPool,
    body: &Value,
    how: &str,
) -> String {
    let created: Value = server
        .post(&reqwest::Client::new(), "/v1/customers", body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let what = format!("the customer to reach Stripe {how}");
    wait_for(&what, Duration::from_secs(60), || async {
        let synced: i64 =
            sqlx::query_scalar("select stripe_synced_version from customers where id = $1::uuid")
                .bind(&id)
                .fetch_one(pool)
                .await
                .unwrap();
        if synced == 1 {
            Ok(())
        } else {
            Err(synced.to_string())
        }
    })
    .await;
    id
}

/// SASL over TLS (`SASL_SSL`, SCRAM-SHA-512, the password from KAFKA_SASL_PASSWORD) is
/// exchanged with a broker that requires it; a refused login stops start-up with the
/// broker's answer, and the password is never logged. (tansu 0.6 creates SCRAM users only
/// over an authenticated connection and offers no PLAIN, so a successful login cannot be
/// shown with it.)
#[sqlx::test]
async fn sasl_over_tls_is_exchanged_and_a_refused_login_stops_start_up(pool: PgPool) {
    let broker = TlsTansu::start(true).await;
    let output = kafka_start_up(
        &pool,
        &broker,
        format!(
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=paysync,ssl.ca.location={}",
            broker.certs.ca.display()
        ),
    )
    .await;
    assert_eq!(output.0, Some(1), "{}", output.1);
    assert!(
        output.1.contains("SASL SCRAM authentication failed"),
        "{}",
        output.1
    );
    assert!(
        !output.1.contains("kafka-password-must-not-be-logged"),
        "{}",
        output.1
    );
}

/// `paysync serve` against `broker` with `options`: its exit code and its output.
async fn kafka_start_up(
    pool: &PgPool,
    broker: &TlsTansu,
    options: String,
) -> (Option<i32>, String) {
    let output = paysync()
        .arg("serve")
        .env("DATABASE_URL", database_url(pool))
        .env("PAYSYNC_API_TOKENS", TOKEN)
        .env("PAYSYNC_LISTEN", "127.0.0.1:0")
        .env("KAFKA_BROKERS", broker.brokers())
        .env("KAFKA_OPTIONS", options)
        .env("KAFKA_SASL_PASSWORD", "kafka-password-must-not-be-logged")
        .output()
        .await
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), logs)
}

/// A Kafka whose certificate the configured CA did not sign stops start-up with an error that
/// says so, instead of a server that never syncs.
#[sqlx::test]
async fn a_kafka_certificate_from_another_ca_fails_at_start_up(pool: PgPool) {
    let broker = TlsTansu::start(false).await;
    let options = format!(
        "security.protocol=SSL,ssl.ca.location={}",
        broker.certs.other_ca.display()
    );
    let (code, logs) = kafka_start_up(&pool, &broker, options).await;
    assert_eq!(code, Some(1), "{logs}");
    let failure = logs
        .lines()
        .find(|line| line.contains("paysync failed"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(failure.contains("certificate verify failed"), "{failure}");
}

/// The real binary over a real Kafka-protocol broker (tansu, a separate program), both ways:
/// a REST change reaches Stripe, and a change made in Stripe comes back as a webhook through
/// the inbound topic.
#[sqlx::test]
async fn changes_travel_both_ways_through_tansu(pool: PgPool) {
    let mut env = stripe_env();
    env.push(("DATABASE_URL", database_url(&pool)));
    env.push(("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()));
    env.push(("KAFKA_BROKERS", TANSU.to_owned()));
    // Fresh topics and consumer group per run, so runs never see each other's messages.
    env.push((
        "KAFKA_TOPIC_PREFIX",
        format!("paysync-e2e-{}", uuid::Uuid::now_v7().simple()),
    ));
    env.push(("KAFKA_PARTITIONS", "2".to_owned()));
    let server = ServeProcess::start(&env).await;
    let client = reqwest::Client::new();
    let email = unique_email("tansu");
    let body = json!({"email": email, "name": "Through tansu"});
    let id = create_and_wait_synced(&server, &pool, &body, "through tansu").await;
    let found = Localstripe::new().customers_with_email(&email).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"], "Through tansu");

    let endpoint = WebhookEndpoint::register(
        &format!("{}/webhooks/stripe", server.base_url),
        WEBHOOK_SECRET,
    )
    .await;
    let stripe_id = found[0]["id"].as_str().unwrap();
    Localstripe::new()
        .update_customer(stripe_id, &[("name", "Renamed in Stripe")])
        .await;
    wait_for(
        "the Stripe change to come back through tansu",
        Duration::from_secs(60),
        || async {
            let (name, version): (Option<String>, i64) =
                sqlx::query_as("select name, version from customers where id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if name.as_deref() == Some("Renamed in Stripe") && version == 2 {
                Ok(())
            } else {
                Err(format!("{name:?} at version {version}"))
            }
        },
    )
    .await;
    endpoint.unregister().await;
    let ready: Value = client
        .get(format!("{}/readyz", server.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["kafka"], "ok");
    let logs = server.sigterm_and_wait().await;
    assert!(logs.contains("Kafka transport"), "{logs}");
}

#[sqlx::test]
async fn the_dead_letters_cli_lists_and_replays(pool: PgPool) {
    let customer_id = uuid::Uuid::now_v7();
    sqlx::query("insert into customers (id, email, version) values ($1, 'cli@example.com', 3)")
        .bind(customer_id)
        .execute(&pool)
        .await
        .unwrap();
    let letter_id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into dead_letters (id, source, key, payload, error, attempts) \
         values ($1, 'outbound', $2, '{}', 'Stripe rejected create_customer with 400', 1)",
    )
    .bind(letter_id)
    .bind(customer_id.to_string())
    .execute(&pool)
    .await
    .unwrap();

    let listed = paysync()
        .args(["dead-letters", "list"])
        .env("DATABASE_URL", database_url(&pool))
        .output()
        .await
        .unwrap();
    assert!(listed.status.success());
    let stdout = String::from_utf8_lossy(&listed.stdout);
    let entry: Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["id"] == letter_id.to_string())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(entry["error"], "Stripe rejected create_customer with 400");

    let replayed = paysync()
        .args(["dead-letters", "replay", &letter_id.to_string()])
        .env("DATABASE_URL", database_url(&pool))
        .output()
        .await
        .unwrap();
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stdout)
    );
    let (replayed_at, queued): (bool, i64) = sqlx::query_as(
        "select (select replayed_at is not null from dead_letters where id = $1), \
                (select count(*) from outbox where customer_id = $2 and version = 3)",
    )
    .bind(letter_id)
    .bind(customer_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(replayed_at);
    assert_eq!(queued, 1, "the customer is queued for another sync");

    let again = paysync()
        .args(["dead-letters", "replay", &letter_id.to_string()])
        .env("DATABASE_URL", database_url(&pool))
        .output()
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "replaying twice is refused");
}

/// 10,000 verified deliveries (1,000 customers × 10 changes) wait in the inbox; the binary
/// applying them is killed with SIGKILL part-way and restarted. Every event ends applied once
/// (or skipped as older than one applied after it), none is lost, none applied twice, and
/// every customer ends at its newest change.
#[sqlx::test]
async fn a_sigkill_mid_apply_loses_and_repeats_nothing(pool: PgPool) {
    const CUSTOMERS: usize = 1_000;
    const CHANGES: usize = 10;
    insert_linked_many(&pool, "kill-apply", "killapply", CUSTOMERS).await;
    let mut env = vec![
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET.to_owned()),
    ];
    // Queue everything through the real ingress first, with nothing applying it.
    let mut ingress_env = env.clone();
    ingress_env.push(("PAYSYNC_NO_INBOUND", "true".to_owned()));
    let ingress = ServeProcess::start(&ingress_env).await;
    let client = reqwest::Client::new();
    let base = chrono::Utc::now().timestamp() - 600;
    let deliveries = (1..=CHANGES).flat_map(|change| {
        (1..=CUSTOMERS).map(move |n| {
            json!({
                "id": format!("evt_killapply_{n}_{change}"), "object": "event",
                "type": "customer.updated", "created": base + change as i64,
                "data": {"object": {"id": format!("cus_killapply{n}"), "object": "customer",
                    "email": format!("kill-apply-{n}@example.com"), "name": format!("v{change}")}}
            })
            .to_string()
        })
    });
    futures::stream::iter(deliveries)
        .map(|body| {
            let request = client
                .post(format!("{}/webhooks/stripe", ingress.base_url))
                .header("content-type", "application/json")
                .header("stripe-signature", signature(WEBHOOK_SECRET, now(), &body))
                .body(body);
            async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::OK) }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    ingress.sigterm_and_wait().await;

    let count_processed = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from processed_events where processed_at is not null",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // Small batches, one worker: slow enough for the kill to land part-way.
    env.push(("PAYSYNC_INBOUND_BATCH", "5".to_owned()));
    env.push(("PAYSYNC_INBOUND_CONCURRENCY", "1".to_owned()));
    let applying = ServeProcess::start(&env).await;
    wait_for("some events applied", PROCESS_DEADLINE, || async {
        let done = count_processed().await;
        if done >= 500 {
            Ok(())
        } else {
            Err(done.to_string())
        }
    })
    .await;
    applying.sigkill().await;
    let before_restart = count_processed().await;
    assert!(
        before_restart < (CUSTOMERS * CHANGES) as i64,
        "the kill must land part-way ({before_restart} applied)"
    );

    env.truncate(2);
    let restarted = ServeProcess::start(&env).await;
    wait_for("every event handled", Duration::from_secs(120), || async {
        let done = count_processed().await;
        if done == (CUSTOMERS * CHANGES) as i64 {
            Ok(())
        } else {
            Err(format!("{done} of {}", CUSTOMERS * CHANGES))
        }
    })
    .await;
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "select outcome, count(*) from processed_events group by outcome order by outcome",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|(outcome, _)| outcome == "applied" || outcome == "stale"),
        "{outcomes:?}"
    );
    // Each customer: at its newest change, one version per applied event.
    let wrong: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "select c.stripe_id, c.name, c.version, \
                (select count(*) from processed_events p \
                 where p.stripe_customer_id = c.stripe_id and p.outcome = 'applied') \
         from customers c \
         where c.name is distinct from 'v10' or c.version <> 1 + \
               (select count(*) from processed_events p \
                where p.stripe_customer_id = c.stripe_id and p.outcome = 'applied')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        wrong.is_empty(),
        "{} customers wrong, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    restarted.sigterm_and_wait().await;
}

/// Refused webhook deliveries are logged at warn with the reason and the client's address,
/// never the body or a secret, and at a bounded rate however many arrive.
#[sqlx::test]
async fn refused_webhooks_are_logged_with_reason_and_address_at_a_bounded_rate(pool: PgPool) {
    const SECRET: &str = "whsec_binary_secret_must_not_be_logged";
    const MARKER: &str = "body-must-not-be-logged";
    let server = ServeProcess::start(&[
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
    ])
    .await;
    let client = reqwest::Client::new();
    let body = format!(r#"{{"id": "evt_forged", "note": "{MARKER}"}}"#);
    for _ in 0..100 {
        let response = client
            .post(format!("{}/webhooks/stripe", server.base_url))
            .header(
                "stripe-signature",
                format!("t={},v1={}", now(), "0".repeat(64)),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let logs = server.sigterm_and_wait().await;
    assert!(!logs.contains(MARKER), "the body reached the logs");
    assert!(!logs.contains(SECRET), "the secret reached the logs");
    let refusals: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["message"] == "webhook delivery refused")
        .collect();
    // A burst of 10, then one a second while the requests last.
    assert!(
        (1..=15).contains(&refusals.len()),
        "{} refusal lines",
        refusals.len()
    );
    for refusal in &refusals {
        assert_eq!(refusal["level"], "WARN");
        assert_eq!(refusal["outcome"], "bad_signature");
        assert!(refusal["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(refusal["reason"].as_str().unwrap().contains("signature"));
    }
}

/// `paysync customers list --sync-state failed` shows what is not in sync, as the API does.
#[sqlx::test]
async fn the_customers_cli_lists_by_sync_state(pool: PgPool) {
    sqlx::query(
        "insert into customers (id, email, sync_state, sync_error) values \
         ($1, 'ok@example.com', 'synced', null), ($2, 'bad@example.com', 'failed', 'Stripe said no')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    let listed = paysync()
        .args(["customers", "list", "--sync-state", "failed"])
        .env("DATABASE_URL", database_url(&pool))
        .output()
        .await
        .unwrap();
    assert!(listed.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|v: &Value| v.get("email").is_some())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["email"], "bad@example.com");
    assert_eq!(lines[0]["sync"]["error"], "Stripe said no");
}

/// The CLI reads the settings file `scripts/run` writes (PAYSYNC_ENV_FILE), so a second
/// terminal reaches the same database; a variable in the environment wins over the file, and
/// a file that does not parse is a usage error naming it.
#[sqlx::test]
async fn the_cli_reads_the_settings_file_and_the_environment_wins(pool: PgPool) {
    sqlx::query("insert into customers (id, email) values ($1, 'from-file@example.com')")
        .bind(uuid::Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("paysync-env-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("run.env");
    let list = |env: Vec<(&'static str, String)>| {
        let mut command = paysync();
        command.args(["customers", "list"]).envs(env);
        async move { command.output().await.unwrap() }
    };

    std::fs::write(&file, format!("DATABASE_URL=\"{}\"\n", database_url(&pool))).unwrap();
    let listed = list(vec![("PAYSYNC_ENV_FILE", file.display().to_string())]).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains("from-file@example.com"), "{stdout}");

    std::fs::write(&file, "DATABASE_URL=postgres://nobody@127.0.0.1:1/none\n").unwrap();
    let listed = list(vec![
        ("PAYSYNC_ENV_FILE", file.display().to_string()),
        ("DATABASE_URL", database_url(&pool)),
    ])
    .await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("from-file@example.com"));

    std::fs::write(&file, "DATABASE_URL=\"unterminated\n").unwrap();
    let refused = list(vec![("PAYSYNC_ENV_FILE", file.display().to_string())]).await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("PAYSYNC_ENV_FILE=") && stderr.contains("run.env"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A command pointed at a database paysync never migrated says what to do, not a bare
/// `relation "dead_letters" does not exist`.
#[sqlx::test(migrations = false)]
async fn the_cli_on_an_unmigrated_database_says_to_migrate(pool: PgPool) {
    for args in [&["dead-letters", "list"][..], &["customers", "list"]] {
        let output = paysync()
            .args(args)
            .env("DATABASE_URL", database_url(&pool))
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        // Commands that print data log to stderr.
        let logs = String::from_utf8_lossy(&output.stderr);
        assert!(logs.contains("run `paysync migrate`"), "{logs}");
        assert!(!logs.contains("does not exist"), "{logs}");
    }
}
