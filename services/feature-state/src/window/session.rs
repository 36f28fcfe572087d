//! Session: an entity's events grouped into runs in which consecutive events
//! are less than `gap` apart. As of `t` the value is the session open at `t`
//! among the events stamped up to `t`: the one that started at or before `t`
//! and whose last event is less than `gap` before `t`; empty when there is none
//! (the entity has been idle for `gap`). An out-of-order event that bridges
//! two sessions merges them. The sessions hold the events the floor has
//! passed; the later ones wait among the entity's recent events, and a read
//! adds those up to `t` to a copy of the sessions.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Aggregator, Observation, Reading, Recent, Window};
use crate::aggregate::AggState;

#[derive(Debug, Clone, Copy)]
pub struct Session {
    gap_us: i64,
}

impl Session {
    pub fn new(gap_us: i64) -> Self {
        Self {
            gap_us: gap_us.max(1),
        }
    }
}

/// The sessions of one entity, ascending and at least `gap` apart. The first
/// is held in the row itself, as window buckets are ([`super::Buckets`]);
/// serialized as the sequence of sessions, as when it was a `Vec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sessions<S> {
    /// (first event time, last event time, state).
    items: SmallVec<[(i64, i64, S); 1]>,
}

impl<S> Default for Sessions<S> {
    fn default() -> Self {
        Self {
            items: SmallVec::new(),
        }
    }
}

impl Session {
    fn add_to<A: Aggregator>(&self, agg: &A, state: &mut Sessions<A::State>, obs: &Observation) {
        let t = obs.time_us;
        let gap = self.gap_us;
        // Sessions this event touches: it lies less than `gap` from them.
        let touches = |&(start, end, _): &(i64, i64, A::State)| {
            t > start.saturating_sub(gap) && t < end.saturating_add(gap)
        };
        let first = state.items.iter().position(touches);
        match first {
            None => {
                let at = state.items.partition_point(|(start, _, _)| *start < t);
                let mut s = A::State::default();
                agg.add(&mut s, obs);
                state.items.insert(at, (t, t, s));
            }
            Some(i) => {
                let count = state.items[i..].iter().take_while(|x| touches(x)).count();
                let mut merged = state.items.drain(i + 1..i + count).collect::<Vec<_>>();
                let target = &mut state.items[i];
                for (start, end, s) in merged.drain(..) {
                    target.0 = target.0.min(start);
                    target.1 = target.1.max(end);
                    agg.merge(&mut target.2, &s);
                }
                target.0 = target.0.min(t);
                target.1 = target.1.max(t);
                agg.add(&mut target.2, obs);
            }
        }
    }

    fn read_open<A: Aggregator>(&self, agg: &A, state: &Sessions<A::State>, at_us: i64) -> Reading {
        state
            .items
            .iter()
            .find(|(start, end, _)| *start <= at_us && at_us < end.saturating_add(self.gap_us))
            .map_or_else(
                || agg.read(&A::State::default(), at_us),
                |(_, _, s)| agg.read(s, at_us),
            )
    }
}

impl Window for Session {
    type State<S: AggState> = Sessions<S>;

    type Kept = Recent;

    fn add<A: Aggregator>(
        &self,
        _: &A,
        _: &mut Sessions<A::State>,
        recent: &mut Recent,
        obs: &Observation,
    ) {
        recent.insert(obs);
    }

    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &Sessions<A::State>,
        recent: &Recent,
        at_us: i64,
    ) -> Reading {
        let mut known = recent.through(at_us).peekable();
        if known.peek().is_none() {
            return self.read_open(agg, state, at_us);
        }
        let mut sessions = state.clone();
        known.for_each(|obs| self.add_to(agg, &mut sessions, obs));
        self.read_open(agg, &sessions, at_us)
    }

    fn evict<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut Sessions<A::State>,
        recent: &mut Recent,
        floor_us: i64,
    ) {
        for obs in recent.take_through(floor_us) {
            self.add_to(agg, state, &obs);
        }
        recent.shrink();
        // A session that ended `gap` before the floor can neither be read nor
        // grow again (an event still waiting is stamped after the floor).
        state
            .items
            .retain(|(_, end, _)| end.saturating_add(self.gap_us) > floor_us);
        if state.items.spilled() && state.items.len() <= 1 {
            state.items.shrink_to_fit();
        }
    }

    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &Sessions<A::State>) -> usize {
        let buffer = match state.items.spilled() {
            true => state.items.capacity() * std::mem::size_of::<(i64, i64, A::State)>(),
            false => 0,
        };
        buffer
            + state
                .items
                .iter()
                .map(|(_, _, s)| agg.heap_bytes(s))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::testing::check_table;

    #[test]
    fn session_table() {
        // gap 10.
        check_table(
            &Session::new(10),
            &[
                ("one_event_opens_a_session", &[(100, 1.0)], 100, 1.0, 1),
                (
                    "events_under_gap_apart_chain",
                    &[(100, 1.0), (109, 2.0), (118, 4.0)],
                    118,
                    7.0,
                    3,
                ),
                (
                    "gap_apart_starts_a_new_one",
                    &[(100, 1.0), (110, 2.0)],
                    110,
                    2.0,
                    1,
                ),
                (
                    "still_open_just_before_gap",
                    &[(100, 1.0), (105, 2.0)],
                    114,
                    3.0,
                    2,
                ),
                (
                    "closed_after_gap_of_silence",
                    &[(100, 1.0), (105, 2.0)],
                    115,
                    0.0,
                    0,
                ),
                (
                    "earlier_session_read_in_its_time",
                    &[(100, 1.0), (200, 2.0)],
                    104,
                    1.0,
                    1,
                ),
                ("before_any_session_is_empty", &[(100, 1.0)], 99, 0.0, 0),
                // 100 and 115 are two sessions until 108 arrives late and bridges them.
                (
                    "late_event_bridges_two_sessions",
                    &[(100, 1.0), (115, 2.0), (108, 4.0)],
                    115,
                    7.0,
                    3,
                ),
                (
                    "late_event_extends_start",
                    &[(100, 1.0), (95, 2.0)],
                    100,
                    3.0,
                    2,
                ),
                // 108 came first but is stamped after the read: the session open
                // at 104 holds 100 alone.
                (
                    "later_stamped_event_left_out",
                    &[(108, 4.0), (100, 1.0)],
                    104,
                    1.0,
                    1,
                ),
            ],
        );
    }

    #[test]
    fn session_reads_are_as_of_their_time_whatever_arrived_first() {
        crate::window::testing::check_as_of(&Session::new(10), 10);
        crate::window::testing::check_as_of(&Session::new(3), 25);
    }

    #[test]
    fn sessions_stay_sorted_and_apart() {
        let w = Session::new(10);
        let mut s = Sessions::<u64>::default();
        for t in [50, 10, 30, 31, 70, 12, 60] {
            w.add_to(&crate::aggregate::Count, &mut s, &Observation::at(t, 0.0));
        }
        let spans: Vec<(i64, i64, u64)> = s.items.to_vec();
        // 10,12 | 30,31 | 50 | 60 | 70: exactly `gap` apart is apart.
        assert_eq!(
            spans,
            vec![
                (10, 12, 2),
                (30, 31, 2),
                (50, 50, 1),
                (60, 60, 1),
                (70, 70, 1)
            ]
        );
    }
}
