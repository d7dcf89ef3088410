-- SyncPolicy: customers of several accounts, each synced by its policy.

-- Under `deletion: Orphan`, a customer whose other side was deleted stays, unlinked.
alter table customers drop constraint customers_sync_state_check;
alter table customers add constraint customers_sync_state_check
    check (sync_state in ('pending', 'synced', 'failed', 'orphaned'));

-- Pending customers of one account (a policy switched to Enforce, or added, sends them).
create index customers_pending_account_idx
    on customers (account, id) where stripe_synced_version < version and deleted_at is null;

-- A dead letter belongs to a policy: listed with it, and an inbound one replayed for it.
alter table dead_letters add column account text not null default 'default';
