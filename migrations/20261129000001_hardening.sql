-- Hardening (a poison message never stops a queue).

-- A dead letter keeps the message exactly as it arrived, as bytes: whatever it holds (a NUL
-- that neither text nor jsonb can store, invalid UTF-8, something that is not JSON at all),
-- setting it aside can never fail on its content.
alter table dead_letters alter column payload type bytea using convert_to(payload::text, 'UTF8');

-- A replayed inbound event is decided on the Stripe customer as it is at replay time (the
-- dead letter may be old, and its cause is usually fixed in Stripe), not on the old payload.
alter table processed_events add column refetch boolean not null default false;

-- Queue health: the oldest change not yet in Stripe (readiness details, metrics).
create index customers_pending_since_idx
    on customers (updated_at) where stripe_synced_version < version and sync_state = 'pending';
