-- The paysync data model (DESIGN.md §4). Every later capability (relay, outbound and inbound
-- workers, reconciler, catch-up) reads and writes these tables, so they are created together.

-- Customers as the application sees them, plus the columns sync needs.
create table customers (
    id                    uuid primary key,
    -- The SyncPolicy / Stripe account this customer syncs with.
    account               text        not null default 'default',
    email                 text        not null,
    name                  text,
    phone                 text,
    description           text,
    metadata              jsonb       not null default '{}'::jsonb,
    -- Bumped by every change (local or inbound); the outbound worker syncs up to it.
    version               bigint      not null default 1 check (version >= 1),
    deleted_at            timestamptz,
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now(),
    stripe_id             text unique,
    -- The highest version Stripe is known to match (0: never synced).
    stripe_synced_version bigint      not null default 0 check (stripe_synced_version >= 0),
    -- `created` of the last Stripe event applied, so older events never overwrite newer ones.
    stripe_event_at       timestamptz,
    sync_state            text        not null default 'pending'
                          check (sync_state in ('pending', 'synced', 'failed')),
    sync_error            text,
    constraint metadata_is_object check (jsonb_typeof(metadata) = 'object')
);

-- Email is unique among live customers of an account, case-insensitively; a deleted customer
-- keeps its row (for sync) but frees its email.
create unique index customers_live_email_key
    on customers (account, lower(email)) where deleted_at is null;
-- Customers that still have to reach Stripe (outbound worker, reconciler).
create index customers_unsynced_idx
    on customers (account, id) where stripe_synced_version < version;

-- Transactional outbox: one row per committed local change, written in the same transaction.
create table outbox (
    id           uuid primary key, -- UUIDv7: ordered by creation
    customer_id  uuid        not null references customers (id),
    op           text        not null check (op in ('create', 'update', 'delete')),
    -- The customer version this change produced.
    version      bigint      not null,
    created_at   timestamptz not null default now(),
    published_at timestamptz
);

-- The relay's work queue: unpublished rows in order.
create index outbox_unpublished_idx on outbox (id) where published_at is null;
create index outbox_customer_idx on outbox (customer_id, id);

-- Wake the relay as soon as a change commits (NOTIFY is delivered on commit); a slow poll is
-- the fallback.
create function outbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('paysync_outbox', '');
    return null;
end;
$$;

create trigger outbox_notify
    after insert on outbox
    for each statement execute function outbox_notify();

-- Stripe events seen, for deduplication; with the PostgreSQL transport also the inbox.
create table processed_events (
    event_id           text primary key,
    type               text        not null,
    account            text        not null default 'default',
    stripe_customer_id text,
    received_at        timestamptz not null default now(),
    -- The event body, kept while the event waits in the inbox (PostgreSQL transport).
    payload            jsonb,
    -- Inbox claim: a worker owns the row until then.
    claimed_until      timestamptz,
    processed_at       timestamptz,
    -- applied | duplicate | stale | echo | ignored | dead_lettered
    outcome            text
);

create index processed_events_inbox_idx
    on processed_events (received_at) where processed_at is null;

-- Messages that exhausted their retries or were rejected for good; replayable.
create table dead_letters (
    id               uuid primary key,
    source           text        not null check (source in ('outbound', 'inbound')),
    -- Local customer id (outbound) or Stripe event id (inbound).
    key              text        not null,
    payload          jsonb       not null,
    error            text        not null,
    attempts         integer     not null check (attempts >= 1),
    first_failed_at  timestamptz not null default now(),
    last_failed_at   timestamptz not null default now(),
    replayed_at      timestamptz
);

create index dead_letters_open_idx on dead_letters (first_failed_at) where replayed_at is null;
create index dead_letters_key_idx on dead_letters (source, key);

-- One row per reconciliation run (diff and apply, or report only in Observe mode).
create table reconcile_runs (
    id          uuid primary key,
    policy      text        not null,
    account     text        not null default 'default',
    mode        text        not null check (mode in ('enforce', 'observe')),
    dry_run     boolean     not null default false,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    scanned     bigint      not null default 0,
    drift       bigint      not null default 0,
    repaired    bigint      not null default 0,
    failed      bigint      not null default 0,
    error       text
);

create index reconcile_runs_policy_idx on reconcile_runs (policy, started_at desc);

-- Events API cursor per policy / Stripe account, for catch-up after missed webhooks.
create table sync_cursors (
    account            text primary key,
    last_event_id      text,
    last_event_created timestamptz,
    updated_at         timestamptz not null default now()
);

-- Responses of POSTs made with an Idempotency-Key, so a retry returns the first response.
create table idempotency_keys (
    key                 text primary key,
    -- SHA-256 of the request, so reusing a key for a different request is refused.
    request_fingerprint bytea       not null,
    -- Set in the same transaction that claims the key, so other sessions never see it null.
    response_status     smallint,
    -- The exact bytes sent, so a replay is identical to the first response.
    response_body       text,
    created_at          timestamptz not null default now()
);

create index idempotency_keys_created_idx on idempotency_keys (created_at);
