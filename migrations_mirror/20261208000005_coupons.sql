-- stripe.coupons as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists coupons (
    "id" text primary key,
    "object" text,
    "name" text,
    "valid" boolean,
    "created" integer,
    "updated" integer,
    "currency" text,
    "duration" text,
    "livemode" boolean,
    "metadata" jsonb,
    "redeem_by" integer,
    "amount_off" bigint,
    "percent_off" double precision,
    "times_redeemed" bigint,
    "max_redemptions" bigint,
    "duration_in_months" bigint,
    "percent_off_precise" double precision,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "last_synced_at" timestamp with time zone
);
alter table coupons
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on coupons for each row execute function set_updated_at();
