-- stripe.customers as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists customers (
    "id" text primary key,
    "object" text,
    "address" jsonb,
    "description" text,
    "email" text,
    "metadata" jsonb,
    "name" text,
    "phone" text,
    "shipping" jsonb,
    "balance" integer,
    "created" integer,
    "currency" text,
    "default_source" text,
    "delinquent" boolean,
    "discount" jsonb,
    "invoice_prefix" text,
    "invoice_settings" jsonb,
    "livemode" boolean,
    "next_invoice_sequence" integer,
    "preferred_locales" jsonb,
    "tax_exempt" text,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "deleted" boolean not null default false,
    "last_synced_at" timestamp with time zone
);
alter table customers
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on customers for each row execute function set_updated_at();
