//! `last`: the value of the event with the latest event time (ties broken
//! by the event's id hash), so an out-of-order arrival does not change it;
//! empty over no events.

use serde::{Deserialize, Serialize};

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Last;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LastState {
    /// (event time, tie-break, value) of the latest event.
    pub latest: Option<(i64, u64, f64)>,
}

impl Aggregator for Last {
    type State = LastState;

    fn add(&self, state: &mut LastState, obs: &Observation) {
        let candidate = (obs.time_us, obs.tiebreak, obs.value);
        if state
            .latest
            .is_none_or(|(t, b, _)| (obs.time_us, obs.tiebreak) >= (t, b))
        {
            state.latest = Some(candidate);
        }
    }

    fn merge(&self, into: &mut LastState, other: &LastState) {
        if let Some((t, b, v)) = other.latest {
            self.add(
                into,
                &Observation {
                    time_us: t,
                    value: v,
                    fingerprint: 0,
                    tiebreak: b,
                },
            );
        }
    }

    fn read(&self, state: &LastState, _at_us: i64) -> Reading {
        state
            .latest
            .map_or(Reading::Empty, |(_, _, v)| Reading::Double(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{assert_reading, check};

    #[test]
    fn last_table() {
        let cases: [(&str, &[f64], Reading); 3] = [
            ("no_events_is_empty", &[], Reading::Empty),
            ("latest_time_wins", &[1.0, 2.0, 3.0], Reading::Double(3.0)),
            ("temperatures", &[39.9, 41.0, 37.4], Reading::Double(37.4)),
        ];
        for (name, values, expected) in cases {
            check(&Last, name, values, expected);
        }
    }

    #[test]
    fn out_of_order_events_do_not_replace_a_later_one() {
        let obs = |t: i64, tiebreak: u64, v: f64| Observation {
            time_us: t,
            value: v,
            fingerprint: 0,
            tiebreak,
        };
        // (arrival order, expected): times decide, then the tie-break, never arrival.
        let cases: [(&str, Vec<Observation>, f64); 3] = [
            (
                "later_then_earlier",
                vec![obs(10, 0, 1.0), obs(5, 0, 2.0)],
                1.0,
            ),
            (
                "same_time_higher_tiebreak",
                vec![obs(5, 9, 1.0), obs(5, 3, 2.0)],
                1.0,
            ),
            (
                "same_time_arrival_reversed",
                vec![obs(5, 3, 2.0), obs(5, 9, 1.0)],
                1.0,
            ),
        ];
        for (name, arrivals, expected) in cases {
            let mut s = LastState::default();
            arrivals.iter().for_each(|o| Last.add(&mut s, o));
            assert_reading(Last.read(&s, 0), Reading::Double(expected), name);
        }
    }
}
