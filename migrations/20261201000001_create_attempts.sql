-- When paysync first tried to create the customer in Stripe (recorded, committed, before the
-- call). A create never attempted needs no lookup first: nothing in Stripe can be ours. Rows
-- from before this column may have been attempted without a record: they look up, as before.
alter table customers add column stripe_create_attempted_at timestamptz;
update customers set stripe_create_attempted_at = now() where stripe_id is null;
