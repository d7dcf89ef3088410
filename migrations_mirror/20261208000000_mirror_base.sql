-- The mirror of Stripe's billing objects, in the schema PAYSYNC_MIRROR_SCHEMA names (these
-- migrations run with only that schema on the search path). Its tables read as
-- supabase/stripe-sync-engine's do; an existing schema of that engine is taken over in place.

-- Keeps `updated_at` the time a row last changed, as the engine's tables do.
create or replace function set_updated_at() returns trigger
    language plpgsql
as $$
begin
    new.updated_at = now();
    return new;
end;
$$;

-- Objects deleted in Stripe whose rows are gone: an older event of one, arriving late, must not
-- bring it back. `deleted_at` is the deletion event's time.
create table if not exists _paysync_tombstones (
    kind text not null,
    id text not null,
    deleted_at timestamp with time zone not null,
    primary key (kind, id)
);
