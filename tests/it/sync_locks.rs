//! Customers' sync locks: as many held at once as syncs in flight, on two database sessions,
//! each still exclusive (within this process too) and visible to the inbound worker's
//! transaction locks.

use std::time::Duration;

use paysync::domain::CustomerId;
use paysync::store::locks::{CUSTOMER_LOCK_SESSIONS, LockPool, customer_key};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::support::app::wait_for;

const DEADLINE: Duration = Duration::from_secs(10);

/// How many of `keys` another session could take as a transaction lock now (as the inbound
/// worker does); the locks it takes end with its transaction.
async fn free_elsewhere(pool: &PgPool, keys: &[i64]) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let free: i64 = sqlx::query_scalar(
        "select count(*) filter (where pg_try_advisory_xact_lock(key)) from unnest($1::int8[]) key",
    )
    .bind(keys)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    free
}

/// Sessions holding customer (one-key) advisory locks in this database.
async fn sessions_holding(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(distinct pid) from pg_locks where locktype = 'advisory' and objsubid = 1 \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn two_hundred_syncs_hold_their_locks_on_two_sessions(pool: PgPool) {
    // A lock pool of exactly the shared sessions: a lock that needed a connection of its
    // own would wait for one and time out.
    let held = PgPoolOptions::new()
        .max_connections(CUSTOMER_LOCK_SESSIONS as u32)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let locks = LockPool::new(held.clone());
    let ids: Vec<CustomerId> = (0..200).map(|_| CustomerId::new()).collect();
    let keys: Vec<i64> = ids.iter().map(|id| customer_key(*id)).collect();

    let taken = futures::future::try_join_all(ids.iter().map(|id| locks.lock_customer(*id)))
        .await
        .unwrap();
    assert_eq!(free_elsewhere(&pool, &keys).await, 0, "every lock is held");
    assert!(sessions_holding(&pool).await <= CUSTOMER_LOCK_SESSIONS as i64);

    // A second sync of a customer in this process waits for the first.
    let second = locks.lock_customer(ids[0]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second)
            .await
            .is_err(),
        "a held lock was taken twice in one process"
    );
    let waiting = tokio::spawn({
        let locks = locks.clone();
        let id = ids[0];
        async move { locks.lock_customer(id).await }
    });
    let mut taken = taken.into_iter();
    taken.next().unwrap().release().await.unwrap();
    let second = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting sync took the lock once it was released")
        .unwrap()
        .unwrap();

    // One dropped without release (a cancelled task) is freed all the same.
    drop(taken.next().unwrap());
    wait_for("the dropped lock freed", DEADLINE, || async {
        match free_elsewhere(&pool, &keys[1..2]).await {
            1 => Ok(()),
            _ => Err("still held".to_owned()),
        }
    })
    .await;

    second.release().await.unwrap();
    for lock in taken {
        lock.release().await.unwrap();
    }
    assert_eq!(
        free_elsewhere(&pool, &keys).await,
        200,
        "every lock released"
    );
}

#[sqlx::test]
async fn a_sync_lock_waits_for_the_inbound_workers_transaction(pool: PgPool) {
    let locks = LockPool::new(pool.clone());
    let id = CustomerId::new();
    let mut inbound = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(customer_key(id))
        .execute(&mut *inbound)
        .await
        .unwrap();
    let sync = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock_customer(id).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !sync.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        early.is_err(),
        "the sync took a lock the inbound worker holds"
    );
    inbound.commit().await.unwrap();
    let lock = tokio::time::timeout(DEADLINE, sync)
        .await
        .expect("the sync took the lock once the transaction ended")
        .unwrap()
        .unwrap();
    assert_eq!(free_elsewhere(&pool, &[customer_key(id)]).await, 0);
    lock.release().await.unwrap();
    assert_eq!(free_elsewhere(&pool, &[customer_key(id)]).await, 1);
}

/// A shared session that ends (its backend terminated, as a restarted or failed-over
/// PostgreSQL would) frees the locks on it; the next lock on it opens a new session, and the
/// release of a lock that ended with the old one succeeds without touching the new.
#[sqlx::test]
async fn a_lost_session_is_replaced_and_its_locks_are_free(pool: PgPool) {
    let locks = LockPool::new(pool.clone());
    let id = CustomerId::new();
    let key = customer_key(id);
    let held = locks.lock_customer(id).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "select count(pg_terminate_backend(pid)) from pg_locks \
         where locktype = 'advisory' and objsubid = 1 \
         and database = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one session held the lock");
    wait_for("the lost session's lock freed", DEADLINE, || async {
        match free_elsewhere(&pool, &[key]).await {
            1 => Ok(()),
            _ => Err("still held".to_owned()),
        }
    })
    .await;

    // The first use of the lost session fails (the caller retries, as for any database
    // error); after that, locks work on a new session.
    let same_session = |other: &CustomerId| {
        customer_key(*other).rem_euclid(CUSTOMER_LOCK_SESSIONS as i64)
            == key.rem_euclid(CUSTOMER_LOCK_SESSIONS as i64)
    };
    let other = std::iter::repeat_with(CustomerId::new)
        .find(same_session)
        .unwrap();
    let again = wait_for("a lock on a new session", DEADLINE, || async {
        locks.lock_customer(other).await.map_err(|e| e.to_string())
    })
    .await;
    held.release()
        .await
        .expect("releasing a lock its lost session freed");
    assert_eq!(free_elsewhere(&pool, &[customer_key(other)]).await, 0);
    again.release().await.unwrap();
    assert_eq!(free_elsewhere(&pool, &[customer_key(other)]).await, 1);
}

/// Applying on arrival tries a customer's sync lock in SQL (`paysync_customer_key`, a
/// migration), while outbound syncs hold it by the Rust key: the two must be one key.
#[sqlx::test]
async fn the_sql_key_of_a_customer_is_the_rust_one(pool: PgPool) {
    let mut ids: Vec<uuid::Uuid> = (0..500).map(|_| CustomerId::new().as_uuid()).collect();
    ids.extend([
        uuid::Uuid::nil(),
        uuid::Uuid::max(),
        uuid::Uuid::from_u64_pair(u64::MAX, 1),
        uuid::Uuid::from_u64_pair(1 << 63, 0),
        uuid::Uuid::from_u64_pair(0, 1 << 63),
    ]);
    let in_sql: Vec<i64> = sqlx::query_scalar(
        "select paysync_customer_key(id) from unnest($1::uuid[]) with ordinality u(id, n) \
             order by n",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    let in_rust: Vec<i64> = ids
        .iter()
        .map(|id| customer_key(CustomerId::from_uuid(*id)))
        .collect();
    assert_eq!(in_sql, in_rust);
}
