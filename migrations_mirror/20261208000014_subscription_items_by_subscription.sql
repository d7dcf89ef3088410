-- Items are looked up by their subscription on every subscription event (which items are gone):
-- without this index each such event scanned every item.
create index if not exists paysync_subscription_items_subscription_idx
    on subscription_items (subscription);
