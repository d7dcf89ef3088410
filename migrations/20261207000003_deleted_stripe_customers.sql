-- no-transaction
-- A Stripe customer whose deletion paysync has seen is never adopted afterwards: Stripe does
-- not deliver events in order, and a `customer.created` arriving after the customer's
-- `customer.deleted` would otherwise bring it back as a live local customer. The deletion
-- events are few, so this index stays small; built concurrently, so an upgrade does not stop
-- webhook intake on a large table (hence no transaction around this migration).
create index concurrently if not exists processed_events_deleted_idx
    on processed_events (stripe_customer_id) where type = 'customer.deleted';
