use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use proptest::prelude::*;

use super::fixture::{Account, Key};
use super::*;

/// Counts what the scan processed, and keeps each segment's last checkpoint; fails once
/// `fail_after` pages were processed (a process killed mid-run).
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<String, u32>>,
    saved: Mutex<BTreeMap<i32, Segment>>,
    pages: Mutex<u64>,
    fail_after: Option<u64>,
}

#[async_trait]
impl PageSink for Recorder {
    async fn process(
        &self,
        customers: Vec<StripeCustomer>,
        _listed_at: chrono::DateTime<chrono::Utc>,
        checkpoint: Vec<Segment>,
    ) -> Result<(), ScanError> {
        {
            let mut pages = self.pages.lock().unwrap();
            if self.fail_after.is_some_and(|limit| *pages >= limit) {
                return Err(ScanError::Sink("killed".into()));
            }
            *pages += 1;
        }
        let mut seen = self.seen.lock().unwrap();
        for customer in customers {
            *seen.entry(customer.id).or_default() += 1;
        }
        let mut saved = self.saved.lock().unwrap();
        for segment in checkpoint {
            saved.insert(segment.id, segment);
        }
        Ok(())
    }
}

const UNTIL: i64 = 1_700_100_000;

fn scan(
    account: Arc<Account>,
    sink: Arc<Recorder>,
    max: usize,
    segments: Vec<Segment>,
) -> Result<ScanStats, ScanError> {
    let next_id = segments.iter().map(|s| s.id).max().unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(
        Scan {
            lister: account,
            sink,
            pace: Arc::new(Pace::new(None, max)),
            filtered: true,
            next_id,
        }
        .run(segments),
    )
}

/// Accounts of `count` customers created over `spread` seconds before `UNTIL` (1: all in
/// one second), with ids that do not follow creation order.
fn account() -> impl Strategy<Value = Vec<Key>> {
    (
        prop_oneof![0usize..2500, Just(100), Just(200), Just(1000), Just(2000)],
        prop_oneof![Just(1i64), Just(3), Just(50), Just(100_000)],
        any::<u64>(),
    )
        .prop_map(|(count, spread, seed)| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..count)
                .map(|n| {
                    let created = UNTIL - 1 - rng.random_range(0..spread);
                    (created, format!("cus_{:016x}{n:05}", rng.random::<u64>()))
                })
                .collect()
        })
}

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every customer that exists for the whole scan is processed exactly once, and none
    /// twice, however the account is split and whatever is created or deleted meanwhile.
    #[test]
    fn the_segmented_scan_sees_every_customer_exactly_once(
        customers in account(),
        churn in prop_oneof![Just(0.0), Just(0.3)],
        max in prop_oneof![Just(1usize), Just(4), Just(16)],
        seed in any::<u64>(),
    ) {
        let account = Arc::new(
            Account::new(customers.clone(), seed).with_churn(churn, UNTIL - 1),
        );
        let sink = Arc::new(Recorder::default());
        let stats = scan(account.clone(), sink.clone(), max, vec![Segment::whole(UNTIL)]).unwrap();
        let seen = sink.seen.lock().unwrap();
        let survivors: Vec<&Key> = customers.iter().filter(|k| account.live().contains(*k)).collect();
        for (_, id) in &survivors {
            prop_assert_eq!(seen.get(id).copied(), Some(1), "{} not seen exactly once", id);
        }
        prop_assert!(seen.values().all(|count| *count == 1));
        prop_assert_eq!(stats.customers, seen.len() as u64);
        // The account was split (the case worth proving), unless one cursor was all it had.
        if max >= 4 && customers.len() > 200 {
            prop_assert!(sink.saved.lock().unwrap().len() > 2, "never split");
        }
    }
}

#[test]
fn pages_of_exactly_a_hundred_end_without_an_empty_listing_error() {
    let customers: Vec<Key> = (0..300)
        .map(|n| (UNTIL - 1 - n / 100, format!("cus_{n:04}")))
        .collect();
    let account = Arc::new(Account::new(customers, 1));
    let sink = Arc::new(Recorder::default());
    let stats = scan(account, sink.clone(), 8, vec![Segment::whole(UNTIL)]).unwrap();
    assert_eq!(stats.customers, 300);
    assert_eq!(sink.seen.lock().unwrap().len(), 300);
}

#[test]
fn a_killed_scan_resumes_from_its_checkpoints() {
    let customers: Vec<Key> = (0..5000)
        .map(|n| (UNTIL - 1 - n / 7, format!("cus_{n:05}")))
        .collect();
    let full = Arc::new(Recorder::default());
    let whole = scan(
        Arc::new(Account::new(customers.clone(), 2)),
        full,
        4,
        vec![Segment::whole(UNTIL)],
    )
    .unwrap();

    let account = Arc::new(Account::new(customers.clone(), 2));
    let killed = Arc::new(Recorder {
        fail_after: Some(20),
        ..Recorder::default()
    });
    assert!(
        scan(
            account.clone(),
            killed.clone(),
            4,
            vec![Segment::whole(UNTIL)]
        )
        .is_err()
    );
    let saved: Vec<Segment> = killed.saved.lock().unwrap().values().cloned().collect();
    assert!(saved.iter().any(|s| !s.done), "something left to resume");

    let resumed = Arc::new(Recorder::default());
    let rest = scan(account, resumed.clone(), 4, saved).unwrap();
    let mut seen = killed.seen.lock().unwrap().clone();
    for (id, count) in resumed.seen.lock().unwrap().iter() {
        *seen.entry(id.clone()).or_default() += count;
    }
    for (_, id) in &customers {
        assert!(seen.contains_key(id), "{id} never seen");
    }
    assert!(
        rest.pages < whole.pages,
        "resumed {} pages of {}",
        rest.pages,
        whole.pages
    );
}
