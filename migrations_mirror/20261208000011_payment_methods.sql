-- stripe.payment_methods as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists payment_methods (
    "id" text primary key,
    "object" text,
    "created" integer,
    "customer" text,
    "type" text,
    "billing_details" jsonb,
    "metadata" jsonb,
    "card" jsonb,
    "last_synced_at" timestamp with time zone
);
alter table payment_methods
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create index if not exists stripe_payment_methods_customer_idx ON payment_methods USING btree (customer);
