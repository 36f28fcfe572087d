//! Tumbling: back-to-back windows `[k·size, (k+1)·size)`. As of `t` the value
//! is the last complete one, `[b − size, b)` with `b = ⌊t/size⌋·size`, as a
//! stream processor emits a window once it closes: it changes once per `size`
//! and never includes the event being scored.

use super::{bucket_of, Aggregator, Buckets, Observation, Reading, Window};
use crate::aggregate::AggState;

#[derive(Debug, Clone, Copy)]
pub struct Tumbling {
    size_us: i64,
}

impl Tumbling {
    pub fn new(size_us: i64) -> Self {
        Self {
            size_us: size_us.max(1),
        }
    }
}

impl Window for Tumbling {
    type State<S: AggState> = Buckets<S>;

    /// It reads only windows closed by the read time: nothing stamped after
    /// it is in them, whatever arrived first.
    type Kept = ();

    fn add<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut Buckets<A::State>,
        _: &mut (),
        obs: &Observation,
    ) {
        state.add(agg, bucket_of(obs.time_us, self.size_us), obs);
    }

    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &Buckets<A::State>,
        _: &(),
        at_us: i64,
    ) -> Reading {
        let previous = bucket_of(at_us, self.size_us) - 1;
        state.read(agg, previous, previous, at_us)
    }

    fn evict<A: Aggregator>(
        &self,
        _: &A,
        state: &mut Buckets<A::State>,
        _: &mut (),
        floor_us: i64,
    ) {
        state.evict_before(bucket_of(floor_us, self.size_us) - 1);
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
    fn tumbling_table() {
        // size 10: windows [0,10), [10,20), [20,30), …
        check_table(
            &Tumbling::new(10),
            &[
                ("first_window_still_open", &[(1, 1.0), (5, 2.0)], 9, 0.0, 0),
                ("closes_at_its_end", &[(1, 1.0), (5, 2.0)], 10, 3.0, 2),
                ("end_is_exclusive", &[(1, 1.0), (10, 2.0)], 15, 1.0, 1),
                (
                    "current_window_not_included",
                    &[(3, 1.0), (12, 5.0), (19, 7.0)],
                    19,
                    1.0,
                    1,
                ),
                (
                    "two_windows_back_is_gone",
                    &[(3, 1.0), (12, 5.0)],
                    25,
                    5.0,
                    1,
                ),
                ("empty_window_reads_zero", &[(3, 1.0)], 25, 0.0, 0),
                // Out of order within the closed window: still counted.
                (
                    "late_arrival_into_closed_window",
                    &[(15, 1.0), (4, 2.0), (8, 3.0)],
                    12,
                    5.0,
                    2,
                ),
                (
                    "negative_times_align_too",
                    &[(-15, 1.0), (-11, 2.0), (-1, 4.0)],
                    0,
                    4.0,
                    1,
                ),
            ],
        );
    }

    #[test]
    fn tumbling_reads_are_as_of_their_time_whatever_arrived_first() {
        crate::window::testing::check_as_of(&Tumbling::new(10), 10);
        crate::window::testing::check_as_of(&Tumbling::new(10), 35);
    }
}
