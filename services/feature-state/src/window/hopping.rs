//! Hopping: windows of length `size` starting every `hop` (`size` a multiple
//! of `hop`), so each event falls in `size/hop` of them. As of `t` the value is
//! the last complete one, `[b − size, b)` with `b = ⌊t/hop⌋·hop`: the last
//! `size` of event time, refreshed every `hop`, the current hop left out.
//! Kept as one bucket per hop.

use super::{bucket_of, Aggregator, Buckets, Observation, Reading, Window};
use crate::aggregate::AggState;

#[derive(Debug, Clone, Copy)]
pub struct Hopping {
    hop_us: i64,
    /// Hops per window.
    hops: i64,
}

impl Hopping {
    /// `size_us` is rounded down to whole hops (the pipeline check refuses other sizes).
    pub fn new(size_us: i64, hop_us: i64) -> Self {
        let hop_us = hop_us.max(1);
        Self {
            hop_us,
            hops: (size_us / hop_us).max(1),
        }
    }
}

impl Window for Hopping {
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
        state.add(agg, bucket_of(obs.time_us, self.hop_us), obs);
    }

    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &Buckets<A::State>,
        _: &(),
        at_us: i64,
    ) -> Reading {
        let end = bucket_of(at_us, self.hop_us);
        state.read(agg, end - self.hops, end - 1, at_us)
    }

    fn evict<A: Aggregator>(
        &self,
        _: &A,
        state: &mut Buckets<A::State>,
        _: &mut (),
        floor_us: i64,
    ) {
        state.evict_before(bucket_of(floor_us, self.hop_us) - self.hops);
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
    fn hopping_table() {
        // size 30, hop 10: as of t the window is [⌊t/10⌋·10 − 30, ⌊t/10⌋·10).
        check_table(
            &Hopping::new(30, 10),
            &[
                ("current_hop_left_out", &[(21, 1.0), (25, 2.0)], 29, 0.0, 0),
                (
                    "hop_boundary_closes_it",
                    &[(21, 1.0), (25, 2.0)],
                    30,
                    3.0,
                    2,
                ),
                (
                    "three_hops_summed",
                    &[(1, 1.0), (12, 2.0), (23, 4.0), (34, 8.0)],
                    34,
                    7.0,
                    3,
                ),
                (
                    "oldest_hop_slides_out",
                    &[(1, 1.0), (12, 2.0), (23, 4.0), (34, 8.0)],
                    40,
                    14.0,
                    3,
                ),
                (
                    "out_of_order_arrivals",
                    &[(34, 8.0), (12, 2.0), (1, 1.0), (23, 4.0)],
                    54,
                    12.0,
                    2,
                ),
                ("all_slid_out", &[(1, 1.0), (12, 2.0)], 50, 0.0, 0),
            ],
        );
    }

    #[test]
    fn hopping_reads_are_as_of_their_time_whatever_arrived_first() {
        crate::window::testing::check_as_of(&Hopping::new(30, 10), 10);
        crate::window::testing::check_as_of(&Hopping::new(30, 10), 35);
    }
}
