//! Lifetime: every event since the entity appeared (or reappeared after its
//! TTL expired), up to the read time. One state, never trimmed, holding the
//! events the floor has passed; the later ones wait among the entity's recent
//! events until it does, so that a read leaves out what is stamped after it.

use super::{Aggregator, Observation, Reading, Recent, Window};

#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime;

impl Window for Lifetime {
    type State<S: crate::aggregate::AggState> = S;

    type Kept = Recent;

    fn add<A: Aggregator>(&self, _: &A, _: &mut A::State, recent: &mut Recent, obs: &Observation) {
        recent.insert(obs);
    }

    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &A::State,
        recent: &Recent,
        at_us: i64,
    ) -> Reading {
        let mut known = recent.through(at_us).peekable();
        if known.peek().is_none() {
            return agg.read(state, at_us);
        }
        let mut since = A::State::default();
        known.for_each(|obs| agg.add(&mut since, obs));
        agg.read_merged(state, &mut std::iter::once(&since), at_us)
    }

    fn evict<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut A::State,
        recent: &mut Recent,
        floor_us: i64,
    ) {
        recent
            .take_settled(floor_us)
            .for_each(|obs| agg.add(state, &obs));
        recent.shrink();
    }

    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &A::State) -> usize {
        agg.heap_bytes(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Last, SinceLast};
    use crate::window::testing::{check_as_of, check_table, Fed};

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
                // An event applied before the read but stamped after it is not
                // in the value (it was, before reads were strictly as of `t`).
                (
                    "later_stamped_event_left_out",
                    &[(1, 1.0), (500, 2.0)],
                    100,
                    1.0,
                    1,
                ),
                (
                    "read_at_an_events_own_time",
                    &[(1, 1.0), (100, 2.0)],
                    100,
                    3.0,
                    2,
                ),
            ],
        );
    }

    #[test]
    fn lifetime_reads_are_as_of_their_time_whatever_arrived_first() {
        check_as_of(&Lifetime, 10);
        check_as_of(&Lifetime, 0);
    }

    #[test]
    fn settled_events_and_recent_ones_read_as_one() {
        // `last` and `since_last` over a plane's departures: a departure
        // stamped after the read never shows, settled or not.
        const MIN: i64 = 60_000_000;
        let departures = [(10 * MIN, 5.0), (200 * MIN, 40.0), (90 * MIN, 12.0)];
        let mut last = Fed::new(&Lifetime, &Last, &departures);
        let mut since = Fed::new(&Lifetime, &SinceLast, &departures);
        for floor in [i64::MIN, 50 * MIN, 100 * MIN] {
            last.evict(&Lifetime, &Last, floor);
            since.evict(&Lifetime, &SinceLast, floor);
            let what = format!("floor {floor}");
            assert_eq!(
                last.read(&Lifetime, &Last, 150 * MIN),
                Reading::Double(12.0),
                "{what}"
            );
            assert_eq!(
                last.read(&Lifetime, &Last, 250 * MIN),
                Reading::Double(40.0),
                "{what}"
            );
            assert_eq!(
                since.read(&Lifetime, &SinceLast, 150 * MIN),
                Reading::Double(3600.0),
                "{what}: an hour since the 90th minute"
            );
        }
        assert_eq!(
            last.recent.len(),
            1,
            "only the departure the floor has not passed waits"
        );
        last.evict(&Lifetime, &Last, 300 * MIN);
        assert_eq!((last.recent.len(), last.recent.heap_bytes()), (0, 0));
        assert_eq!(
            last.read(&Lifetime, &Last, 250 * MIN),
            Reading::Double(40.0)
        );
    }
}
