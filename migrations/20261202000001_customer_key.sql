-- A customer's sync-lock key, as `store::locks::customer_key` computes it in Rust: the two
-- 64-bit halves of the id XORed. Applying events on arrival tries the locks of the rows it
-- reads in the same statement, so the key must be computable in SQL; a test holds the two
-- definitions equal.
create function paysync_customer_key(id uuid) returns bigint
    language sql immutable strict parallel safe
as $$
    select ('x' || encode(substring(uuid_send(id) from 1 for 8), 'hex'))::bit(64)::bigint
         # ('x' || encode(substring(uuid_send(id) from 9 for 8), 'hex'))::bit(64)::bigint
$$;
