-- A dead letter whose cause is gone is closed, not left open forever (an open one keeps
-- paysync_dead_letters_open above zero and pages someone). Closed and replayed letters are
-- both done; `closed_reason` says why a letter was closed without a replay.
alter table dead_letters add column closed_at timestamptz;
alter table dead_letters add column closed_reason text;

drop index dead_letters_open_idx;
create index dead_letters_open_idx on dead_letters (first_failed_at)
    where replayed_at is null and closed_at is null;

-- A customer deleted on both sides (deleted locally, and Stripe synced to that: deleted,
-- soft-deleted or gone there) has nothing left to sync: the outbound dead letters of its
-- earlier changes (an update that raced a deletion in Stripe and got 404) are closed. Here,
-- rather than in each of the paths that can finish a deletion (a Stripe event applied alone
-- or in a batch, the outbound sync of a local delete), so no path can miss it.
create function paysync_close_dead_letters_of_deleted() returns trigger
language plpgsql as $$
begin
    update dead_letters set closed_at = now(),
        closed_reason = 'the customer was deleted on both sides'
    where source = 'outbound' and key = new.id::text
      and replayed_at is null and closed_at is null;
    return null;
end;
$$;

create trigger customers_deleted_on_both_sides
    after update of deleted_at, stripe_synced_version on customers
    for each row
    when (new.deleted_at is not null and new.stripe_synced_version >= new.version
          and (old.deleted_at is null or old.stripe_synced_version < old.version))
    execute function paysync_close_dead_letters_of_deleted();
