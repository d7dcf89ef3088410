-- stripe.subscriptions as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists subscriptions (
    "id" text primary key,
    "object" text,
    "cancel_at_period_end" boolean,
    "current_period_end" integer,
    "current_period_start" integer,
    "default_payment_method" text,
    "items" jsonb,
    "metadata" jsonb,
    "pending_setup_intent" text,
    "pending_update" jsonb,
    "status" text,
    "application_fee_percent" double precision,
    "billing_cycle_anchor" integer,
    "billing_thresholds" jsonb,
    "cancel_at" integer,
    "canceled_at" integer,
    "collection_method" text,
    "created" integer,
    "days_until_due" integer,
    "default_source" text,
    "default_tax_rates" jsonb,
    "discount" jsonb,
    "ended_at" integer,
    "livemode" boolean,
    "next_pending_invoice_item_invoice" integer,
    "pause_collection" jsonb,
    "pending_invoice_item_interval" jsonb,
    "start_date" integer,
    "transfer_data" jsonb,
    "trial_end" jsonb,
    "trial_start" jsonb,
    "schedule" text,
    "customer" text,
    "latest_invoice" text,
    "plan" text,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "last_synced_at" timestamp with time zone,
    "billing_mode" jsonb
);
alter table subscriptions
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on subscriptions for each row execute function set_updated_at();
