//! Stripe billing objects as Stripe sends them in events (every field the mirror's tables map,
//! plus fields they do not, which only `_raw_data` keeps), and streams of their events.

use serde_json::{Value, json};

/// Every table the billing mirror fills from events, and the `object` of its kind.
pub const TABLES: [(&str, &str); 12] = [
    ("customers", "customer"),
    ("products", "product"),
    ("prices", "price"),
    ("plans", "plan"),
    ("coupons", "coupon"),
    ("subscriptions", "subscription"),
    ("invoices", "invoice"),
    ("charges", "charge"),
    ("payment_intents", "payment_intent"),
    ("payment_methods", "payment_method"),
    ("refunds", "refund"),
    ("tax_ids", "tax_id"),
];

/// A signed-ready event (not signed: see `webhooks::signature`).
pub fn event(event_id: &str, event_type: &str, created: i64, object: &Value) -> String {
    json!({
        "id": event_id, "object": "event", "api_version": "2024-06-20", "type": event_type,
        "created": created, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": object}
    })
    .to_string()
}

/// The object of `table` with id `id` in its `n`th state (fields that change with `n`: amounts,
/// statuses, names, metadata), about customer `customer`.
pub fn object(table: &str, id: &str, n: i64, customer: &str) -> Value {
    let metadata =
        json!({"order": format!("ord_{n}"), "tier": if n % 2 == 0 { "gold" } else { "silver" }});
    let created = 1_700_000_000 + n;
    match table {
        "customers" => json!({
            "id": id, "object": "customer", "address": {"city": "Lisbon", "country": "PT",
            "line1": format!("Rua {n}"), "line2": null, "postal_code": "1000-001", "state": null},
            "balance": n * 100, "created": created, "currency": "eur", "default_source": null,
            "delinquent": n % 3 == 0, "description": format!("customer v{n}"), "discount": null,
            "email": format!("{id}@example.com"), "invoice_prefix": "ABC123",
            "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null,
                                 "rendering_options": null},
            "livemode": false, "metadata": metadata, "name": format!("Customer {n}"),
            "next_invoice_sequence": n + 1, "phone": "+351 555 0100", "preferred_locales": ["pt", "en"],
            "shipping": null, "tax_exempt": "none", "test_clock": null
        }),
        "products" => json!({
            "id": id, "object": "product", "active": n % 4 != 3, "attributes": [], "created": created,
            "default_price": format!("price_{id}"), "description": format!("product v{n}"),
            "images": ["https://example.com/a.png"], "livemode": false,
            "marketing_features": [{"name": "Fast"}], "metadata": metadata,
            "name": format!("Product {n}"), "package_dimensions": null, "shippable": null,
            "statement_descriptor": null, "tax_code": null, "type": "service",
            "unit_label": "seat", "updated": created + 5, "url": null
        }),
        "prices" => json!({
            "id": id, "object": "price", "active": true, "billing_scheme": "per_unit",
            "created": created, "currency": "usd", "custom_unit_amount": null, "livemode": false,
            "lookup_key": format!("lk_{id}_{n}"), "metadata": metadata, "nickname": format!("nick {n}"),
            "product": "prod_shared", "recurring": {"aggregate_usage": null, "interval": "month",
            "interval_count": 1, "meter": null, "trial_period_days": null, "usage_type": "licensed"},
            "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
            "type": "recurring", "unit_amount": 1000 + n, "unit_amount_decimal": format!("{}", 1000 + n)
        }),
        "plans" => json!({
            "id": id, "object": "plan", "active": true, "aggregate_usage": null, "amount": 2000 + n,
            "amount_decimal": format!("{}", 2000 + n), "billing_scheme": "per_unit", "created": created,
            "currency": "usd", "interval": "month", "interval_count": 1, "livemode": false,
            "metadata": metadata, "meter": null, "nickname": format!("plan {n}"),
            "product": "prod_shared", "tiers_mode": null, "transform_usage": null,
            "trial_period_days": 14, "usage_type": "licensed"
        }),
        "coupons" => json!({
            "id": id, "object": "coupon", "amount_off": null, "created": created, "currency": null,
            "duration": "repeating", "duration_in_months": 3, "livemode": false,
            "max_redemptions": 100, "metadata": metadata, "name": format!("{n}% off"),
            "percent_off": 25.5, "redeem_by": null, "times_redeemed": n, "valid": true
        }),
        "subscriptions" => subscription(id, n, customer),
        "invoices" => invoice(id, n, customer),
        "charges" => json!({
            "id": id, "object": "charge", "amount": 5000 + n, "amount_captured": 5000 + n,
            "amount_refunded": n * 10, "application": null, "application_fee": null,
            "application_fee_amount": null, "balance_transaction": format!("txn_{id}"),
            "billing_details": {"email": null, "name": "Jane", "phone": null,
                                "address": {"city": null, "country": "US"}},
            "calculated_statement_descriptor": "PAYSYNC", "captured": true, "created": created,
            "currency": "usd", "customer": customer, "description": format!("charge v{n}"),
            "destination": null, "dispute": null, "disputed": false, "failure_balance_transaction": null,
            "failure_code": null, "failure_message": null, "fraud_details": {}, "invoice": format!("in_{customer}"),
            "livemode": false, "metadata": metadata, "on_behalf_of": null, "order": null,
            "outcome": {"network_status": "approved_by_network", "reason": null, "risk_level": "normal",
                        "risk_score": 32, "seller_message": "Payment complete.", "type": "authorized"},
            "paid": true, "payment_intent": format!("pi_{id}"), "payment_method": format!("pm_{customer}"),
            "payment_method_details": {"card": {"brand": "visa", "last4": "4242", "exp_month": 8,
                                                "exp_year": 2030}, "type": "card"},
            "receipt_email": "jane@example.com", "receipt_number": null,
            "receipt_url": "https://pay.stripe.com/receipts/x", "refunded": false,
            "refunds": {"object": "list", "data": [], "has_more": n % 5 == 4, "total_count": 0,
                        "url": format!("/v1/charges/{id}/refunds")},
            "review": null, "shipping": null, "source": null, "source_transfer": null,
            "statement_descriptor": null, "statement_descriptor_suffix": null,
            "status": if n % 3 == 2 { "failed" } else { "succeeded" }, "transfer_data": null,
            "transfer_group": null
        }),
        "payment_intents" => json!({
            "id": id, "object": "payment_intent", "amount": 5000 + n, "amount_capturable": 0,
            "amount_details": {"tip": {}}, "amount_received": if n > 0 { 5000 + n } else { 0 },
            "application": null, "application_fee_amount": null,
            "automatic_payment_methods": {"enabled": true}, "canceled_at": null,
            "cancellation_reason": null, "capture_method": "automatic",
            "client_secret": format!("{id}_secret_x"), "confirmation_method": "automatic",
            "created": created, "currency": "usd", "customer": customer,
            "description": format!("intent v{n}"), "invoice": format!("in_{customer}"),
            "last_payment_error": if n % 4 == 1 { json!({"code": "card_declined", "type": "card_error"}) } else { Value::Null },
            "latest_charge": format!("ch_{id}"), "livemode": false, "metadata": metadata,
            "next_action": null, "on_behalf_of": null, "payment_method": format!("pm_{customer}"),
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": ["card"], "processing": null, "receipt_email": null,
            "review": null, "setup_future_usage": null, "shipping": null,
            "statement_descriptor": null, "statement_descriptor_suffix": null,
            "status": pick(&["requires_payment_method", "processing", "succeeded"], n),
            "transfer_data": null, "transfer_group": null
        }),
        "payment_methods" => json!({
            "id": id, "object": "payment_method", "allow_redisplay": "unspecified",
            "billing_details": {"address": {"city": null, "country": "US", "line1": null,
                                "line2": null, "postal_code": "94107", "state": null},
                                "email": "jane@example.com", "name": format!("Jane {n}"), "phone": null},
            "card": {"brand": "visa", "checks": {"cvc_check": "pass"}, "country": "US",
                     "exp_month": 8, "exp_year": 2030 + n, "fingerprint": "fp", "funding": "credit",
                     "last4": "4242", "wallet": null},
            "created": created, "customer": if n % 4 == 3 { Value::Null } else { json!(customer) },
            "livemode": false, "metadata": metadata, "type": "card"
        }),
        "refunds" => json!({
            "id": id, "object": "refund", "amount": 100 + n, "balance_transaction": format!("txn_r{id}"),
            "charge": format!("ch_{customer}"), "created": created, "currency": "usd",
            "destination_details": {"card": {"reference_status": "pending", "type": "refund"}, "type": "card"},
            "metadata": metadata, "payment_intent": format!("pi_{customer}"),
            "reason": "requested_by_customer", "receipt_number": null,
            "source_transfer_reversal": null,
            "status": pick(&["pending", "succeeded", "failed"], n),
            "transfer_reversal": null
        }),
        "tax_ids" => json!({
            "id": id, "object": "tax_id", "country": "DE", "created": created,
            "customer": customer, "livemode": false,
            "owner": {"customer": customer, "type": "customer"}, "type": "eu_vat",
            "value": format!("DE{:09}", 123_456_000 + n),
            "verification": {"status": "pending", "verified_address": null, "verified_name": null}
        }),
        other => panic!("no billing object for {other}"),
    }
}

fn subscription(id: &str, n: i64, customer: &str) -> Value {
    let created = 1_700_000_000 + n;
    // Items come and go with the state: the first always, the second in even states.
    let mut items = vec![item(&format!("si_{id}_a"), id, n)];
    if n % 2 == 0 {
        items.push(item(&format!("si_{id}_b"), id, n));
    }
    json!({
        "id": id, "object": "subscription", "application": null,
        "application_fee_percent": null, "automatic_tax": {"enabled": false, "liability": null},
        "billing_cycle_anchor": created, "billing_mode": {"type": "classic"},
        "billing_thresholds": null, "cancel_at": null, "cancel_at_period_end": n % 5 == 4,
        "canceled_at": null, "cancellation_details": {"comment": null, "feedback": null, "reason": null},
        "collection_method": "charge_automatically", "created": created, "currency": "usd",
        "current_period_end": created + 2_592_000, "current_period_start": created,
        "customer": customer, "days_until_due": null,
        "default_payment_method": format!("pm_{customer}"), "default_source": null,
        "default_tax_rates": [], "description": null, "discount": null, "discounts": [],
        "ended_at": null, "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": items, "has_more": false, "total_count": items.len(),
                  "url": format!("/v1/subscription_items?subscription={id}")},
        "latest_invoice": format!("in_{id}_{n}"), "livemode": false, "metadata": {"seat": n},
        "next_pending_invoice_item_invoice": null, "on_behalf_of": null, "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null},
        "pending_invoice_item_interval": null, "pending_setup_intent": null, "pending_update": null,
        "plan": {"id": "plan_shared", "object": "plan", "amount": 2000, "currency": "usd",
                 "interval": "month"},
        "quantity": 1, "schedule": null, "start_date": created,
        "status": pick(&["trialing", "active", "past_due", "canceled"], n),
        "test_clock": null, "transfer_data": null, "trial_end": created + 1_209_600,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": created
    })
}

fn item(id: &str, subscription: &str, n: i64) -> Value {
    json!({
        "id": id, "object": "subscription_item", "billing_thresholds": null,
        "created": 1_700_000_000 + n, "current_period_end": 1_702_592_000 + n,
        "current_period_start": 1_700_000_000 + n, "discounts": [], "metadata": {"n": n},
        "plan": {"id": "plan_shared", "object": "plan"},
        "price": {"id": format!("price_{}", n % 3), "object": "price", "currency": "usd",
                  "unit_amount": 1000, "product": "prod_shared"},
        "quantity": n + 1, "subscription": subscription, "tax_rates": []
    })
}

fn invoice(id: &str, n: i64, customer: &str) -> Value {
    let created = 1_700_000_000 + n;
    let line = |k: i64| {
        json!({
            "id": format!("il_{id}_{k}"), "object": "line_item", "amount": 1000 * k,
            "currency": "usd", "description": format!("line {k}"), "quantity": 1,
            "period": {"start": created, "end": created + 2_592_000}
        })
    };
    json!({
        "id": id, "object": "invoice", "account_country": "US", "account_name": "paysync test",
        "account_tax_ids": null, "amount_due": 3000 + n, "amount_paid": if n % 3 == 2 { 3000 + n } else { 0 },
        "amount_overpaid": 0, "amount_remaining": if n % 3 == 2 { 0 } else { 3000 + n },
        "amount_shipping": 0, "application": null, "application_fee_amount": null,
        "attempt_count": n % 3, "attempted": n > 0, "auto_advance": n % 2 == 0,
        "automatic_tax": {"enabled": false, "liability": null, "status": null},
        "billing_reason": "subscription_cycle", "charge": format!("ch_{id}"),
        "collection_method": "charge_automatically", "created": created, "currency": "usd",
        "custom_fields": [{"name": "PO", "value": format!("PO-{n}")}],
        "customer": customer, "customer_address": {"city": "Berlin", "country": "DE"},
        "customer_email": format!("{customer}@example.com"), "customer_name": "Jane",
        "customer_phone": null, "customer_shipping": null, "customer_tax_exempt": "none",
        "customer_tax_ids": [], "default_payment_method": null, "default_source": null,
        "default_tax_rates": [], "description": format!("invoice v{n}"), "discount": null,
        "discounts": [], "due_date": null, "effective_at": created, "ending_balance": 0,
        "footer": null, "hosted_invoice_url": format!("https://invoice.stripe.com/i/{id}"),
        "invoice_pdf": format!("https://pay.stripe.com/invoice/{id}/pdf"),
        "last_finalization_error": null, "livemode": false, "metadata": {"n": n},
        "lines": {"object": "list", "data": [line(1), line(2)], "has_more": n % 4 == 3,
                  "total_count": if n % 4 == 3 { 12 } else { 2 }, "url": format!("/v1/invoices/{id}/lines")},
        "next_payment_attempt": null, "number": format!("ABC-{n:04}"), "on_behalf_of": null,
        "paid": n % 3 == 2, "payment_intent": format!("pi_{id}"),
        "payment_settings": {"default_mandate": null, "payment_method_options": null,
                             "payment_method_types": null},
        "period_end": created, "period_start": created - 2_592_000,
        "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
        "receipt_number": null, "starting_balance": 0, "statement_descriptor": null,
        "status": pick(&["draft", "open", "paid", "void"], n),
        "status_transitions": {"finalized_at": created, "marked_uncollectible_at": null,
                               "paid_at": null, "voided_at": null},
        "subscription": format!("sub_{customer}"), "subtotal": 3000 + n, "tax": null,
        "total": 3000 + n, "total_discount_amounts": [], "total_tax_amounts": [],
        "transfer_data": null, "webhooks_delivered_at": created
    })
}

/// The `n`th of `values`, round and round.
fn pick(values: &[&'static str], n: i64) -> &'static str {
    values[usize::try_from(n).unwrap_or_default() % values.len()]
}
