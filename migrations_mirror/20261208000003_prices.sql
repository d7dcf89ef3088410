-- stripe.prices as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists prices (
    "id" text primary key,
    "object" text,
    "active" boolean,
    "currency" text,
    "metadata" jsonb,
    "nickname" text,
    "recurring" jsonb,
    "type" text,
    "unit_amount" integer,
    "billing_scheme" text,
    "created" integer,
    "livemode" boolean,
    "lookup_key" text,
    "tiers_mode" text,
    "transform_quantity" jsonb,
    "unit_amount_decimal" text,
    "product" text,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "last_synced_at" timestamp with time zone
);
alter table prices
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on prices for each row execute function set_updated_at();
