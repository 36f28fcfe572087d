//! Sliding: the trailing window `(t − size, t]`, exact at a declared
//! granularity. Events are kept in buckets of width `granularity` (`size` a
//! multiple of it); as of `t` the value is the `size/granularity` buckets up to
//! and including the one holding `t`, so it always includes the event being
//! scored and its older edge moves in steps of `granularity`: it spans between
//! `size − granularity` and `size` of event time.

use super::{bucket_of, Aggregator, Buckets, Observation, Reading, Window};
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

    fn add<A: Aggregator>(&self, agg: &A, state: &mut Buckets<A::State>, obs: &Observation) {
        state.add(agg, bucket_of(obs.time_us, self.granularity_us), obs);
    }

    fn read<A: Aggregator>(&self, agg: &A, state: &Buckets<A::State>, at_us: i64) -> Reading {
        let newest = bucket_of(at_us, self.granularity_us);
        state.read(agg, newest - self.buckets + 1, newest)
    }

    fn evict<S: AggState>(&self, state: &mut Buckets<S>, floor_us: i64) {
        state.evict_before(bucket_of(floor_us, self.granularity_us) - self.buckets + 1);
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
            ],
        );
    }
}
