//! Sliding: the trailing window `(t − size, t]`, exact at a declared
//! granularity. Events are kept in buckets of width `granularity` (`size` a
//! multiple of it); as of `t` the value is the `size/granularity` buckets up to
//! and including the one holding `t`, that one only up to `t`: it always
//! includes the event being scored, never one stamped after it, and its older
//! edge moves in steps of `granularity` (it spans between `size − granularity`
//! and `size` of event time).
//!
//! Every event goes into its bucket and, until the floor has left its bucket
//! behind, among the entity's recent events too. A read whose bucket holds an
//! event stamped after `t` (applied first: the stream was out of order) takes
//! that bucket from the recent events up to `t`; every other read is the
//! buckets' merge alone.

use super::{bucket_of, Aggregator, Buckets, Observation, Reading, Recent, Window};
use crate::aggregate::AggState;

#[derive(Debug, Clone, Copy)]
pub struct Sliding {
    granularity_us: i64,
    /// Buckets per window.
    buckets: i64,
}

impl Sliding {
    /// `size_us` is rounded down to whole buckets (the pipeline check refuses other sizes).
    pub fn new(size_us: i64, granularity_us: i64) -> Self {
        let granularity_us = granularity_us.max(1);
        Self {
            granularity_us,
            buckets: (size_us / granularity_us).max(1),
        }
    }
}

impl Window for Sliding {
    type State<S: AggState> = Buckets<S>;

    type Kept = Recent;

    fn add<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut Buckets<A::State>,
        recent: &mut Recent,
        obs: &Observation,
    ) {
        state.add(agg, bucket_of(obs.time_us, self.granularity_us), obs);
        recent.insert(obs);
    }

    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &Buckets<A::State>,
        recent: &Recent,
        at_us: i64,
    ) -> Reading {
        let g = self.granularity_us;
        let newest = bucket_of(at_us, g);
        let first = newest - self.buckets + 1;
        // The earliest event stamped after `t`: when it shares `t`'s bucket, that
        // bucket holds something a read at `t` must leave out.
        let mixed = recent
            .first_after(at_us)
            .is_some_and(|later| bucket_of(later.time_us, g) == newest);
        if !mixed {
            return state.read(agg, first, newest, at_us);
        }
        let mut known = A::State::default();
        recent
            .through(at_us)
            .filter(|obs| bucket_of(obs.time_us, g) == newest)
            .for_each(|obs| agg.add(&mut known, obs));
        state.read_with(agg, first, newest - 1, Some(&known), at_us)
    }

    fn evict<A: Aggregator>(
        &self,
        _: &A,
        state: &mut Buckets<A::State>,
        recent: &mut Recent,
        floor_us: i64,
    ) {
        let floor_bucket = bucket_of(floor_us, self.granularity_us);
        state.evict_before(floor_bucket - self.buckets + 1);
        // No read goes below the floor, so none reads an earlier bucket partly.
        recent.forget_settled(floor_bucket.saturating_mul(self.granularity_us));
        recent.shrink();
    }

    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &Buckets<A::State>) -> usize {
        state.heap_bytes(agg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::testing::check_table;

    #[test]
    fn sliding_table() {
        // size 60, granularity 10: as of t, buckets ⌊t/10⌋−5 ..= ⌊t/10⌋.
        check_table(
            &Sliding::new(60, 10),
            &[
                ("includes_now", &[(5, 1.0), (37, 2.0)], 37, 3.0, 2),
                (
                    "oldest_bucket_in_until_it_slides",
                    &[(5, 1.0), (37, 2.0)],
                    59,
                    3.0,
                    2,
                ),
                (
                    "oldest_bucket_out_at_granularity",
                    &[(5, 1.0), (37, 2.0)],
                    60,
                    2.0,
                    1,
                ),
                // t − size = 4 < 5, but the bucket [0,10) left at 60: the older edge is
                // rounded up to the granularity, never reaching past `size`.
                (
                    "edge_rounds_to_granularity",
                    &[(5, 1.0), (64, 2.0)],
                    64,
                    2.0,
                    1,
                ),
                (
                    "out_of_order_within_window",
                    &[(50, 4.0), (20, 1.0), (45, 2.0), (11, 8.0)],
                    55,
                    15.0,
                    4,
                ),
                (
                    "later_bucket_not_counted",
                    &[(10, 1.0), (95, 5.0)],
                    30,
                    1.0,
                    1,
                ),
                ("empty_reads_zero", &[(10, 1.0)], 200, 0.0, 0),
                // 38 came first but is stamped after the read at 35, in the same
                // bucket [30, 40): the bucket is read up to 35.
                (
                    "later_stamped_event_in_the_same_bucket_left_out",
                    &[(38, 8.0), (12, 1.0), (31, 2.0)],
                    35,
                    3.0,
                    2,
                ),
                (
                    "read_at_an_events_own_time",
                    &[(31, 2.0), (35, 4.0)],
                    35,
                    6.0,
                    2,
                ),
            ],
        );
    }

    #[test]
    fn sliding_reads_are_as_of_their_time_whatever_arrived_first() {
        crate::window::testing::check_as_of(&Sliding::new(60, 10), 10);
        crate::window::testing::check_as_of(&Sliding::new(60, 10), 25);
        crate::window::testing::check_as_of(&Sliding::new(5, 5), 12);
    }

    #[test]
    fn recent_events_go_once_the_floor_leaves_their_bucket() {
        use crate::aggregate::Mean;
        use crate::window::testing::Fed;
        let w = Sliding::new(60, 10);
        let mut fed = Fed::new(&w, &Mean, &[(3, 1.0), (14, 2.0), (17, 3.0), (25, 4.0)]);
        fed.evict(&w, &Mean, 16);
        let left: Vec<i64> = fed.recent.through(i64::MAX).map(|o| o.time_us).collect();
        assert_eq!(
            left,
            vec![14, 17, 25],
            "the bucket [10, 20) holding the floor stays"
        );
        assert_eq!(
            fed.read(&w, &Mean, 16),
            Reading::Double(1.5),
            "3 and 14, not 17"
        );
        fed.evict(&w, &Mean, 99);
        assert_eq!((fed.recent.len(), fed.recent.heap_bytes()), (0, 0));
    }
}
