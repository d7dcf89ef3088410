-- Fencing paysync's own writes against the ones that land late (a request that stalled on the
-- way while its sender died, or timed out, and another replica moved on). Both columns are
-- nullable without a default: adding them rewrites nothing, and no index reads them, so the
-- HOT updates of applied Stripe changes stay HOT.

-- The version paysync last wrote to Stripe (its `metadata.paysync_version`). A Stripe
-- customer holding an older one holds a stale write of paysync's, never a Stripe change.
-- Unknown (null) until paysync's next write: rows from before this column never match.
alter table customers add column stripe_written_version bigint;

-- Until when the last create attempt (stripe_create_attempted_at, now the LAST attempt, set
-- before every create call) may still reach Stripe; null once Stripe answered it. No replica
-- creates the customer again before then: a lookup cannot see a create still on the wire.
alter table customers add column stripe_create_in_flight_until timestamptz;
