//! Which offsets of each partition are being worked on, and so how far the consumer may
//! commit: never past the lowest message still in flight, so a crash re-delivers what was
//! not finished and never skips it, however the concurrent work finishes.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct InFlight {
    partitions: HashMap<i32, Partition>,
}

#[derive(Debug)]
struct Partition {
    running: BTreeSet<i64>,
    /// One past the highest offset taken.
    next: i64,
    /// The commit position last reported.
    committed: i64,
}

impl InFlight {
    /// `offset` of `partition` is being worked on.
    pub fn start(&mut self, partition: i32, offset: i64) {
        // The first offset taken is where the partition stood: nothing to commit before it.
        let entry = self.partitions.entry(partition).or_insert(Partition {
            running: BTreeSet::new(),
            next: offset,
            committed: offset,
        });
        entry.running.insert(offset);
        entry.next = entry.next.max(offset + 1);
    }

    /// `offset` of `partition` is done. Returns the partition's new commit position (the next
    /// offset to read after a restart) when it moved.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let entry = self.partitions.get_mut(&partition)?;
        entry.running.remove(&offset);
        let position = entry.running.first().copied().unwrap_or(entry.next);
        (position > entry.committed).then(|| {
            entry.committed = position;
            position
        })
    }

    /// Messages being worked on.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.partitions.values().map(|p| p.running.len()).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_position_waits_for_the_lowest_offset_still_running() {
        let mut in_flight = InFlight::default();
        for offset in 10..13 {
            in_flight.start(0, offset);
        }
        assert_eq!(in_flight.finish(0, 11), None, "10 still runs");
        assert_eq!(in_flight.finish(0, 12), None);
        assert_eq!(in_flight.finish(0, 10), Some(13));
        assert!(in_flight.is_empty());
    }

    #[test]
    fn partitions_are_independent() {
        let mut in_flight = InFlight::default();
        in_flight.start(0, 5);
        in_flight.start(1, 7);
        assert_eq!(in_flight.finish(1, 7), Some(8));
        assert_eq!(in_flight.len(), 1);
    }

    proptest! {
        /// Whatever order the work finishes in, the position never passes an offset that has
        /// not finished, never goes back, and ends one past the last offset.
        #[test]
        fn the_position_never_passes_unfinished_work(order in Just((0..40_i64).collect::<Vec<_>>()).prop_shuffle()) {
            let mut in_flight = InFlight::default();
            for offset in 0..40 {
                in_flight.start(3, offset);
            }
            let mut finished = BTreeSet::new();
            let mut last = 0;
            for offset in order {
                finished.insert(offset);
                if let Some(position) = in_flight.finish(3, offset) {
                    prop_assert!(position > last);
                    prop_assert!((0..position).all(|o| finished.contains(&o)));
                    last = position;
                }
            }
            prop_assert_eq!(last, 40);
        }
    }
}
