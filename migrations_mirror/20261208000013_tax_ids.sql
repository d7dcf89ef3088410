-- stripe.tax_ids as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists tax_ids (
    "id" text primary key,
    "object" text,
    "country" text,
    "customer" text,
    "type" text,
    "value" text,
    "created" integer,
    "livemode" boolean,
    "owner" jsonb,
    "last_synced_at" timestamp with time zone
);
alter table tax_ids
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create index if not exists stripe_tax_ids_customer_idx ON tax_ids USING btree (customer);
