-- Let PostgreSQL update a customer in place (a HOT update: no new entry in any index) when a
-- Stripe change is applied to it. An update can be HOT only if no column an index reads (as a
-- key, an expression or in its predicate) changes value; every applied change bumps `version`
-- and `stripe_synced_version` and sets `updated_at`, which the queue indexes read, so every
-- applied event wrote a new entry into each of the customer's indexes. The queue indexes now
-- read two generated columns instead, which keep their value when a synced customer takes a
-- Stripe change (false and null before and after).

-- Room on each page for the new version of a row, which a HOT update must place on the same
-- page. Set first: adding the stored columns below rewrites the table, which then leaves
-- that room on the pages of the rows already there too.
alter table customers set (fillfactor = 85);

-- A change that Stripe has not been sent.
alter table customers
    add column unsynced boolean not null
        generated always as (stripe_synced_version < version) stored,
    -- When the oldest local change still waiting for Stripe was made (queue health); null
    -- when none waits.
    add column pending_since timestamptz
        generated always as (
            case when stripe_synced_version < version and sync_state = 'pending'
                 then updated_at end
        ) stored;

drop index customers_unsynced_idx;
drop index customers_pending_since_idx;
-- Served by customers_unsynced_idx: its one user does not filter on deleted_at.
drop index customers_pending_account_idx;

create index customers_unsynced_idx on customers (account, id) where unsynced;
create index customers_pending_since_idx on customers (pending_since)
    where pending_since is not null;
