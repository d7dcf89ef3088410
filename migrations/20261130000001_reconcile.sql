-- The reconciler (DESIGN.md §7a): runs with their outcome and counts, the scan's checkpointed
-- segments (a run killed mid-way resumes from them), and the local customers a run has seen.

alter table reconcile_runs
    -- running (also a run whose process was killed or stopped: the next run of its policy
    -- resumes it), succeeded, or failed (Stripe or the database kept failing; `error`).
    add column outcome   text    not null default 'running'
        check (outcome in ('running', 'succeeded', 'failed')),
    -- schedule | start | manual (the API or `paysync reconcile --once`).
    add column trigger   text    not null default 'schedule'
        check (trigger in ('schedule', 'start', 'manual')),
    -- When the scan started: customers created in Stripe after it are live sync's to handle.
    add column scan_from timestamptz,
    -- Drift found, by kind (`stripe_only`, `stripe_changed`, ...): the report of the run.
    add column drift_by_kind jsonb not null default '{}'::jsonb,
    add column pages     bigint  not null default 0;

-- A run that is not finished: the one a restarted reconciler resumes.
create index reconcile_runs_unfinished_idx on reconcile_runs (policy) where finished_at is null;

-- The scan of a run, as `created` ranges of the Stripe account listed concurrently. A segment
-- is saved when it is split and after each page it processed (its cursor), so a restarted
-- run continues where it stopped.
create table reconcile_segments (
    run_id      uuid    not null references reconcile_runs (id) on delete cascade,
    segment     integer not null,
    created_gte bigint  not null,
    created_lt  bigint  not null,
    -- The last Stripe customer processed (`starting_after` of the next page).
    cursor      text,
    -- The second of `skip` (and of the cursor's customer).
    skip_second bigint  not null default 0,
    -- Ids of that second already processed, which a listing of this range may return again.
    skip        text[]  not null default '{}',
    done        boolean not null default false,
    primary key (run_id, segment)
);

-- Local customers matched to a Stripe customer by a run's scan; the ones left over are
-- looked at after it (deleted in Stripe, or never created there). Emptied when the run ends.
-- Unlogged (a row per customer per run, written and deleted within the run): after a crash of
-- PostgreSQL itself it is empty, and a resumed run then asks Stripe about every linked
-- customer it did not see again, slower but as correct.
create unlogged table reconcile_seen (
    run_id      uuid not null references reconcile_runs (id) on delete cascade,
    customer_id uuid not null,
    primary key (run_id, customer_id)
);
