-- stripe.products as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists products (
    "id" text primary key,
    "object" text,
    "active" boolean,
    "description" text,
    "metadata" jsonb,
    "name" text,
    "created" integer,
    "images" jsonb,
    "livemode" boolean,
    "package_dimensions" jsonb,
    "shippable" boolean,
    "statement_descriptor" text,
    "unit_label" text,
    "updated" integer,
    "url" text,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "marketing_features" jsonb,
    "default_price" text,
    "last_synced_at" timestamp with time zone
);
alter table products
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create or replace trigger handle_updated_at before update on products for each row execute function set_updated_at();
