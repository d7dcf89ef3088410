-- stripe.subscription_items as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists subscription_items (
    "id" text primary key,
    "object" text,
    "billing_thresholds" jsonb,
    "created" integer,
    "deleted" boolean,
    "metadata" jsonb,
    "quantity" integer,
    "price" text,
    "subscription" text,
    "tax_rates" jsonb,
    "current_period_end" integer,
    "current_period_start" integer,
    "last_synced_at" timestamp with time zone
);
alter table subscription_items
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
