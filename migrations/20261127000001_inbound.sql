-- Stripe → local (DESIGN.md §2 Inbound, Catch-up).

-- The last write paysync made to this customer in Stripe: when the request was sent and when
-- Stripe's answer arrived (paysync's clock). Stripe applied it in between. A Stripe event
-- created before the request was sent describes a state that write replaced, so the inbound
-- worker skips it; an event from within the window (give or take clock skew) may be on either
-- side of the write, so the inbound worker asks Stripe for its current state instead.
alter table customers add column stripe_write_started_at timestamptz;
alter table customers add column stripe_written_at timestamptz;

-- SHA-256 of the synced fields as Stripe holds them, as far as paysync knows: what it last
-- wrote, or the last Stripe change it applied. An event carrying exactly this content tells
-- nothing new (it is paysync's own write coming back, even where Stripe does not report the
-- request's Idempotency-Key), so it never counts as a Stripe-side change.
alter table customers add column stripe_synced_hash bytea;

-- The inbox keeps an event as the JSON text Stripe sent: nothing queries inside it, and json
-- (checked, kept as text) costs the ingress far less than decomposing every event into jsonb.
alter table processed_events alter column payload type json using payload::json;

-- The janitor forgets processed events by age (they only guard against redeliveries, which
-- stop within Stripe's 30-day event retention).
create index processed_events_received_idx on processed_events (received_at);
