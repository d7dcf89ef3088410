-- stripe.refunds as supabase/stripe-sync-engine keeps it (same columns, compatible types: its
-- enum columns are text here, so a value Stripe adds later is stored, not refused), plus
-- paysync's columns: the complete object, its policy and the event that wrote it.
create table if not exists refunds (
    "id" text primary key,
    "object" text,
    "amount" integer,
    "balance_transaction" text,
    "charge" text,
    "created" integer,
    "currency" text,
    "destination_details" jsonb,
    "metadata" jsonb,
    "payment_intent" text,
    "reason" text,
    "receipt_number" text,
    "source_transfer_reversal" text,
    "status" text,
    "transfer_reversal" text,
    "updated_at" timestamp with time zone not null default timezone('utc'::text, now()),
    "last_synced_at" timestamp with time zone
);
alter table refunds
    add column if not exists _raw_data jsonb,
    add column if not exists _account text,
    add column if not exists _event_id text,
    add column if not exists _truncated_lists text[] not null default '{}';
create index if not exists stripe_refunds_charge_idx ON refunds USING btree (charge);
create index if not exists stripe_refunds_payment_intent_idx ON refunds USING btree (payment_intent);
create or replace trigger handle_updated_at before update on refunds for each row execute function set_updated_at();
