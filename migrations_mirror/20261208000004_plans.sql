-- stripe.plans as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists plans (
    "id" text primary key,
    "object" text,
    "active" boolean,
    "amount" bigint,
    "created" integer,
    "product" text,
    "currency" text,
    "interval" text,
    "livemode" boolean,
    "metadata" jsonb,
    "nickname" text,
    "tiers_mode" text,
    "usage_type" text,
    "billing_scheme" text,
    "interval_count" bigint,
    "aggregate_usage" text,
    "transform_usage" text,
    "trial_period_days" bigint,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "last_synced_at" timestamp with time zone
);
alter table plans
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on plans for each row execute function set_updated_at();
