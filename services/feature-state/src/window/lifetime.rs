//! Lifetime: every event since the entity appeared (or reappeared after its
//! TTL expired). One state, never trimmed.

use super::{Aggregator, Observation, Reading, Window};
use crate::aggregate::AggState;

#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime;

impl Window for Lifetime {
    type State<S: AggState> = S;

    fn add<A: Aggregator>(&self, agg: &A, state: &mut A::State, obs: &Observation) {
        agg.add(state, obs);
    }

    fn read<A: Aggregator>(&self, agg: &A, state: &A::State, _at_us: i64) -> Reading {
        agg.read(state)
    }

    fn evict<S: AggState>(&self, _: &mut S, _floor_us: i64) {}

    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &A::State) -> usize {
        agg.heap_bytes(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::testing::check_table;

    #[test]
    fn lifetime_table() {
        check_table(
            &Lifetime,
            &[
                ("nothing_yet", &[], 100, 0.0, 0),
                (
                    "everything_counts",
                    &[(1, 1.0), (50, 2.0), (99, 3.0)],
                    100,
                    6.0,
                    3,
                ),
                (
                    "out_of_order_counts_too",
                    &[(99, 3.0), (1, 1.0)],
                    100,
                    4.0,
                    2,
                ),
                // Lifetime keeps no history: an event applied before, stamped after
                // the read time, is in the value.
                (
                    "later_stamped_event_counts",
                    &[(1, 1.0), (500, 2.0)],
                    100,
                    3.0,
                    2,
                ),
            ],
        );
    }
}
