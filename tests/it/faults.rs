//! Trust under faults: each defect a chaos run found (replicas killed while Stripe calls
//! stall, retries, late writes, snapshots racing events), reproduced deterministically.
//! Each of these failed before the fix it names.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::app::{
    TestApp, inbound_settings, stripe_calls, syncing_settings, wait_for, with_webhooks,
};
use crate::support::customers::wait_synced;
use crate::support::events::{
    DEADLINE, customer_object, deliver_signed, event, inbound_app_settings, processed,
};
use crate::support::fault_proxy::{Aim, Fault, FaultProxy};
use crate::support::private_stripe::PrivateStripe;
use crate::support::reconcile::{reconcile_settings, spawn_app, start_reconcile, wait_reconciled};
use crate::support::serve_process::{PROCESS_DEADLINE, ServeProcess, database_url};
use crate::support::stripe::{LOCALSTRIPE, Localstripe, WebhookEndpoint, unique_email};
use crate::support::webhooks::{SECRET, now};

/// Longer than the tests' Stripe timeout (2 s), shorter than it plus the create fence (3 s):
/// the request lands after its sender gave up (or died), while a new create is still fenced.
const HELD: Duration = Duration::from_secs(4);

/// The API's view of a customer.
async fn customer(app: &TestApp, id: &str) -> Value {
    app.get_customer(id).await.json().await.unwrap()
}

/// Waits until the proxy has held `count` requests.
async fn held(proxy: &FaultProxy, count: u64) {
    wait_for("the proxy to hold a request", DEADLINE, || async {
        let held = proxy.injected().held;
        if held >= count {
            Ok(())
        } else {
            Err(format!("{held} held"))
        }
    })
    .await;
}

/// Waits until `count` held requests have reached Stripe (after their senders gave up).
async fn held_landed(proxy: &FaultProxy, count: u64) {
    wait_for("the held requests to reach Stripe", DEADLINE, || async {
        let landed = proxy.injected().held_landed;
        if landed >= count {
            Ok(())
        } else {
            Err(format!("{landed} landed"))
        }
    })
    .await;
}

/// Defect 1. Replica A (the real binary) sends a create that stalls on the way; A is killed
/// (its lock freed with its session) while the request is still on the wire, and it lands
/// later. Replica B must not create the customer again: the attempt fences every new create
/// until it can no longer land, and B then finds and links the customer A's request made.
/// (Before: B looked up, found nothing, and created a second Stripe customer.)
#[sqlx::test]
async fn a_create_still_on_the_wire_when_its_sender_dies_is_never_made_twice(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let email = unique_email("on-the-wire");
    // The email's local part: form encoding leaves it as it is.
    let marker = email.split('@').next().unwrap().to_owned();
    proxy
        .aim(
            Aim::new("POST", "/v1/customers").with_body(&marker),
            Fault::HoldThenForward(HELD),
        )
        .await;
    // Were B to create too, it would be rate limited once and retry, as in the chaos run.
    proxy
        .aim(
            Aim::new("POST", "/v1/customers").with_body(&marker),
            Fault::RateLimited {
                retry_after_secs: 1,
            },
        )
        .await;
    let a = ServeProcess::start(&[
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_API_KEY", "sk_test_paysync".to_owned()),
        ("STRIPE_API_BASE", proxy.base_url.clone()),
        ("STRIPE_TIMEOUT", "2s".to_owned()),
        ("STRIPE_CREATE_FENCE", "3s".to_owned()),
        ("PAYSYNC_NO_CATCH_UP", "true".to_owned()),
    ])
    .await;
    let created = a
        .post(
            &reqwest::Client::new(),
            "/v1/customers",
            &json!({"email": email}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    held(&proxy, 1).await;
    a.sigkill().await;

    let b = spawn_app(&pool, syncing_settings(&proxy.base_url)).await;
    let synced = wait_synced(&b, &id, 1).await;
    held_landed(&proxy, 1).await;
    let stripe = Localstripe::new();
    let in_stripe = stripe.customers_with_email(&email).await;
    assert_eq!(
        in_stripe.len(),
        1,
        "one Stripe customer for one local customer: {in_stripe:?}"
    );
    assert_eq!(in_stripe[0]["id"], synced["sync"]["stripe_id"]);
    assert_eq!(in_stripe[0]["metadata"]["paysync_id"], id.as_str());
    b.stop().await;
}

/// The latest `customer.updated` event of a Stripe customer whose object's name is `name`.
async fn last_update_named(stripe_id: &str, name: &str, since: i64) -> Option<String> {
    Localstripe::new()
        .events("customer.updated", since)
        .await
        .into_iter()
        .rfind(|e| e["data"]["object"]["id"] == stripe_id && e["data"]["object"]["name"] == name)
        .and_then(|e| e["id"].as_str().map(str::to_owned))
}

/// Defect 2. An update carrying version 2 stalls; the user's next write (version 3) reaches
/// Stripe; then the stalled version 2 lands last. Its webhook must not be applied as a Stripe
/// change (that rolled the acknowledged version 3 back on both sides): paysync recognises its
/// own stale write by `paysync_version` and sends the current version again.
#[sqlx::test]
async fn a_late_write_of_paysync_never_rolls_back_an_acknowledged_change(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let mut settings = with_webhooks(syncing_settings(&proxy.base_url));
    settings.inbound = Some(inbound_settings());
    let app = TestApp::spawn_settings(pool, settings).await;
    let endpoint = WebhookEndpoint::register(&app.url("/webhooks/stripe"), SECRET).await;
    let started = now();
    let email = unique_email("late-write");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();

    proxy
        .aim(
            Aim::new("POST", &format!("/v1/customers/{stripe_id}")).with_body("name=Second"),
            Fault::HoldThenForward(HELD),
        )
        .await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Second"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    held(&proxy, 1).await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Third"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK, "the acknowledged write");
    // The stalled version 2 lands after version 3, and its event comes back.
    held_landed(&proxy, 1).await;
    let late = wait_for("the late write's event", DEADLINE, || async {
        let stripe = Localstripe::new().customer(&stripe_id).await.unwrap();
        if stripe["metadata"]["paysync_version"] != "2" {
            return Err(format!("Stripe holds {stripe}"));
        }
        last_update_named(&stripe_id, "Second", started)
            .await
            .ok_or_else(|| "no event yet".to_owned())
    })
    .await;
    let outcome = processed(&app, &late).await;
    assert_eq!(outcome, "resent", "the late write is paysync's own");

    wait_for("both sides at the acknowledged write", DEADLINE, || async {
        let local = customer(&app, &id).await;
        let stripe = Localstripe::new().customer(&stripe_id).await.unwrap();
        if local["name"] == "Third"
            && stripe["name"] == "Third"
            && local["sync"]["state"] == "synced"
        {
            Ok(())
        } else {
            Err(format!("local {local}, Stripe {stripe}"))
        }
    })
    .await;
    endpoint.unregister().await;
    app.stop().await;
}

/// Defect 3. A reconcile lists a page (the customer named "Listed" in Stripe); a webhook then
/// applies a newer Stripe change ("Newer"); the run must not apply its older listing over it.
#[sqlx::test]
async fn a_listing_never_overwrites_an_event_applied_after_its_list_call(pool: PgPool) {
    let private = PrivateStripe::start().await;
    let proxy = FaultProxy::start_to(&private.base).await;
    let mut settings = with_webhooks(reconcile_settings(&proxy.base_url, json!({})));
    // The held answer must not time out (a retried list would see the newer state).
    settings.stripe_calls.timeout = Duration::from_secs(20);
    let app = spawn_app(&pool, settings).await;
    let email = unique_email("snapshot");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Changed in Stripe with no webhook: drift the listing will show.
    let stripe = Localstripe::at(&private.base);
    stripe
        .update_customer(&stripe_id, &[("name", "Listed")])
        .await;
    // The list call reaches Stripe at once; its answer is held while the event is applied.
    proxy
        .aim(
            // The list, not the probe of whether it filters by `created` before it.
            Aim::new("GET", "/v1/customers?limit=100").excluding("created"),
            Fault::Stall(Duration::from_secs(3)),
        )
        .await;
    let run = start_reconcile(&app, "default").await;
    wait_for("the listing to reach Stripe", DEADLINE, || async {
        let listed = proxy.recorded().await.iter().any(|r| {
            r.method == "GET"
                && r.path == "/v1/customers"
                && r.query.contains("limit=100")
                && !r.query.contains("created")
        });
        listed.then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let newer = stripe
        .update_customer(&stripe_id, &[("name", "Newer")])
        .await;
    deliver_signed(&app, &event("evt_newer", "customer.updated", now(), newer)).await;
    processed(&app, "evt_newer").await;
    assert_eq!(customer(&app, &id).await["name"], "Newer");

    let report = wait_reconciled(&app, "default", &run).await;
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(
        customer(&app, &id).await["name"],
        "Newer",
        "the listing was applied over a newer event"
    );
    app.stop().await;
}

/// Defect 6. With Stripe failing every call, a customer's outbound retry series runs for
/// seconds; a Stripe event about the customer must not wait behind the whole series (it used
/// to hold the customer's lock while sleeping between attempts): it is applied while the
/// series still retries.
#[sqlx::test]
async fn an_event_never_waits_behind_a_sync_retrying_against_a_failing_stripe(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let mut settings = with_webhooks(syncing_settings(&proxy.base_url));
    settings.inbound = Some(inbound_settings());
    let mut calls = stripe_calls();
    calls.max_attempts = 6;
    calls.backoff.base = Duration::from_secs(1);
    calls.backoff.max = Duration::from_secs(2);
    settings.stripe_calls = calls;
    let app = TestApp::spawn_settings(pool, settings).await;
    let email = unique_email("head-of-line");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();

    proxy.set_plan(vec![Some(Fault::Status(503))]).await;
    let before = proxy.requests();
    let patched = app
        .patch_customer(&id, &json!({"name": "Local change"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    wait_for("the sync's first failed attempt", DEADLINE, || async {
        (proxy.requests() > before)
            .then_some(())
            .ok_or_else(|| "no attempt yet".to_owned())
    })
    .await;
    let object = json!({"id": stripe_id, "object": "customer", "email": email,
        "description": "changed in Stripe", "metadata": {}});
    // Dated clear of paysync's create (an event within the clock skew of paysync's own write
    // is checked with Stripe first, which fails here too).
    deliver_signed(
        &app,
        &event("evt_head_of_line", "customer.updated", now() + 10, object),
    )
    .await;
    processed(&app, "evt_head_of_line").await;
    let open = app.get_json("/v1/dead-letters").await;
    assert_eq!(
        open["data"].as_array().unwrap().len(),
        0,
        "the event was applied only after the retry series gave up: {open}"
    );
    let synced = customer(&app, &id).await;
    assert_eq!(synced["description"], "changed in Stripe");
    proxy.set_plan(Vec::new()).await;
    app.stop().await;
}

/// Defect 7. An update that raced a deletion in Stripe (404) is dead-lettered; once the
/// deletion is applied locally the customer is deleted on both sides and the dead letter's
/// cause is gone: it is closed, and the open count returns to 0.
#[sqlx::test]
async fn a_dead_letter_whose_customer_is_deleted_on_both_sides_is_closed(pool: PgPool) {
    let mut settings = with_webhooks(syncing_settings(LOCALSTRIPE));
    settings.inbound = Some(inbound_settings());
    let app = TestApp::spawn_settings(pool, settings).await;
    let email = unique_email("raced-delete");
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe_id = wait_synced(&app, &id, 1).await["sync"]["stripe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stripe = Localstripe::new();
    stripe.delete_customer(&stripe_id).await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Too late"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let letter = wait_for("the update's dead letter", DEADLINE, || async {
        let open = app.get_json("/v1/dead-letters").await;
        open["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["key"] == id.as_str())
            .cloned()
            .ok_or_else(|| open.to_string())
    })
    .await;
    assert!(
        letter["error"].as_str().unwrap().contains("404"),
        "{letter}"
    );

    let deleted = json!({"id": stripe_id, "object": "customer", "deleted": true});
    deliver_signed(
        &app,
        &event("evt_deleted_too", "customer.deleted", now(), deleted),
    )
    .await;
    assert_eq!(processed(&app, "evt_deleted_too").await, "deleted");
    wait_for("the dead letter closed", DEADLINE, || async {
        let open = app.get_json("/v1/dead-letters").await;
        let ready = app.get_json("/readyz").await;
        if open["data"].as_array().unwrap().is_empty() && ready["queues"]["dead_letters_open"] == 0
        {
            Ok(())
        } else {
            Err(format!("{open} {ready}"))
        }
    })
    .await;
    let all = app.get_json("/v1/dead-letters?all=true").await;
    let closed = &all["data"][0];
    assert_eq!(closed["id"], letter["id"]);
    assert_eq!(
        closed["closed_reason"],
        "the customer was deleted on both sides"
    );
    let replayed = app
        .request(
            Method::POST,
            &format!("/v1/dead-letters/{}/replay", letter["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), StatusCode::CONFLICT);
    app.stop().await;
}

/// Defect 4. Every restart ran a full reconcile (thirteen in a five-minute chaos run), each
/// "repairing" changes that were merely in flight. A start now schedules the policy's first
/// run an interval after the last one any replica finished.
#[sqlx::test(migrations = false)]
async fn a_restart_does_not_reconcile_again_when_the_last_run_is_recent(pool: PgPool) {
    let private = PrivateStripe::start().await;
    let env = vec![
        ("DATABASE_URL", database_url(&pool)),
        ("STRIPE_API_KEY", "sk_test_paysync".to_owned()),
        ("STRIPE_API_BASE", private.base.clone()),
        ("PAYSYNC_NO_RECONCILE", "false".to_owned()),
        ("PAYSYNC_NO_CATCH_UP", "true".to_owned()),
    ];
    let first = ServeProcess::start(&env).await;
    first
        .log_line("never reconciled: reconciling now", PROCESS_DEADLINE)
        .await;
    wait_for("the start-up run to finish", DEADLINE, || async {
        let outcomes: Vec<String> = sqlx::query_scalar("select outcome from reconcile_runs")
            .fetch_all(&pool)
            .await
            .unwrap();
        (outcomes == ["succeeded"])
            .then_some(())
            .ok_or_else(|| format!("{outcomes:?}"))
    })
    .await;
    first.sigterm_and_wait().await;

    let second = ServeProcess::start(&env).await;
    let decided = second
        .log_line(
            "last reconcile finished recently enough: the next one is due an interval after it",
            PROCESS_DEADLINE,
        )
        .await;
    assert!(
        decided["next_in_seconds"].as_u64().unwrap() > 3000,
        "{decided}"
    );
    let runs: i64 = sqlx::query_scalar("select count(*) from reconcile_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "the restart reconciled again");
    second.sigterm_and_wait().await;
}

/// Found by the chaos run's design: Stripe does not deliver in order, and a customer created
/// and deleted in Stripe can reach paysync deleted first. Its older `customer.created` must
/// not bring it back as a live local customer (Stripe no longer has it).
#[sqlx::test]
async fn a_customer_deleted_in_stripe_is_not_brought_back_by_its_older_created_event(pool: PgPool) {
    let app = TestApp::spawn_settings(pool, inbound_app_settings(None, None)).await;
    let object = customer_object("cus_GoneFirst", "gone-first@example.com", "Gone");
    let deleted = event(
        "evt_gone_deleted",
        "customer.deleted",
        now(),
        object.clone(),
    );
    deliver_signed(&app, &deleted).await;
    assert_eq!(processed(&app, "evt_gone_deleted").await, "not_linked");
    let created = event("evt_gone_created", "customer.created", now() - 5, object);
    deliver_signed(&app, &created).await;
    assert_eq!(processed(&app, "evt_gone_created").await, "gone");
    assert_eq!(app.count("customers").await, 0);
    app.stop().await;
}

/// Found by the chaos run: a create that stalls (its sender times out and waits out the
/// fence) lands with the customer's first version while the user has already changed it.
/// Its `customer.created` event must not be applied over the acknowledged change (a conflict
/// settled `Newest` took it as the newer Stripe change): it is paysync's own older write.
#[sqlx::test]
async fn a_create_landing_after_a_local_change_never_rolls_it_back(pool: PgPool) {
    let proxy = FaultProxy::start().await;
    let mut settings = with_webhooks(syncing_settings(&proxy.base_url));
    settings.inbound = Some(inbound_settings());
    // The late create's event arrives while the sync still waits out the fence (its lock
    // free), as when Stripe's answer is held for long.
    settings.stripe_calls.create_fence = Duration::from_secs(10);
    let app = TestApp::spawn_settings(pool, settings).await;
    let endpoint = WebhookEndpoint::register(&app.url("/webhooks/stripe"), SECRET).await;
    let email = unique_email("late-create");
    let marker = email.split('@').next().unwrap().to_owned();
    proxy
        .aim(
            Aim::new("POST", "/v1/customers").with_body(&marker),
            Fault::HoldThenForward(HELD),
        )
        .await;
    let id = app.create_customer(&email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    held(&proxy, 1).await;
    let patched = app
        .patch_customer(&id, &json!({"name": "Changed meanwhile"}), None)
        .await;
    assert_eq!(patched.status(), StatusCode::OK, "the acknowledged write");
    held_landed(&proxy, 1).await;
    let stripe = Localstripe::new();
    let stripe_id = wait_for("the late create in Stripe", DEADLINE, || async {
        let found = stripe.customers_with_email(&email).await;
        found
            .first()
            .and_then(|c| c["id"].as_str().map(str::to_owned))
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let created = wait_for("the late create's event", DEADLINE, || async {
        Localstripe::new()
            .events("customer.created", now() - 120)
            .await
            .into_iter()
            .rfind(|e| e["data"]["object"]["id"] == stripe_id.as_str())
            .and_then(|e| e["id"].as_str().map(str::to_owned))
            .ok_or_else(|| "no event yet".to_owned())
    })
    .await;
    assert_ne!(processed(&app, &created).await, "applied");
    let synced = wait_synced(&app, &id, 2).await;
    assert_eq!(synced["name"], "Changed meanwhile");
    assert_eq!(synced["sync"]["stripe_id"], stripe_id.as_str());
    let in_stripe = stripe.customers_with_email(&email).await;
    assert_eq!(in_stripe.len(), 1, "{in_stripe:?}");
    assert_eq!(in_stripe[0]["name"], "Changed meanwhile");
    endpoint.unregister().await;
    app.stop().await;
}
