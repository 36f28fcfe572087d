//! `since_last`: the seconds from the entity's latest event (its event time)
//! to the time the feature is read at (the scored event's time, or the clock
//! for a lookup); empty over no events. It reads no field. What it measures
//! is a gap in event time, so it only makes sense over the entity's whole
//! history (the pipeline check allows no window): a vehicle's time since its
//! previous trip, a customer's since their last order.
//!
//! The window reads as of the read time ([`crate::window`]), so the latest
//! event it sees is never after it: the gap is never negative (it is floored
//! at 0 all the same, should a caller read before the state's events).

use serde::{Deserialize, Serialize};

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct SinceLast;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SinceLastState {
    /// Event time of the latest event (µs since the epoch).
    pub latest_us: Option<i64>,
}

impl Aggregator for SinceLast {
    type State = SinceLastState;

    fn add(&self, state: &mut SinceLastState, obs: &Observation) {
        state.latest_us = state.latest_us.max(Some(obs.time_us));
    }

    fn merge(&self, into: &mut SinceLastState, other: &SinceLastState) {
        into.latest_us = into.latest_us.max(other.latest_us);
    }

    fn read(&self, state: &SinceLastState, at_us: i64) -> Reading {
        state.latest_us.map_or(Reading::Empty, |latest| {
            Reading::Double(at_us.saturating_sub(latest).max(0) as f64 / 1e6)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::{assert_reading, check};

    const MIN: i64 = 60_000_000;

    fn read_after(times: &[i64], at: i64) -> Reading {
        let mut s = SinceLastState::default();
        for &t in times {
            SinceLast.add(&mut s, &Observation::at(t, 0.0));
        }
        SinceLast.read(&s, at)
    }

    #[test]
    fn since_last_table() {
        // (name, event times in arrival order, read time, expected seconds)
        let cases: [(&str, &[i64], i64, Reading); 6] = [
            ("no_events_is_empty", &[], 10 * MIN, Reading::Empty),
            ("one_event", &[MIN], 46 * MIN, Reading::Double(2700.0)),
            (
                "latest_in_event_time_not_arrival",
                &[50 * MIN, 10 * MIN],
                80 * MIN,
                Reading::Double(1800.0),
            ),
            (
                "read_at_the_event_itself",
                &[7 * MIN],
                7 * MIN,
                Reading::Double(0.0),
            ),
            (
                "fractions_of_a_second",
                &[0],
                1_500_000,
                Reading::Double(1.5),
            ),
            // A read before the latest event (a window never asks for one) is no gap.
            ("never_negative", &[9 * MIN], 3 * MIN, Reading::Double(0.0)),
        ];
        for (name, times, at, expected) in cases {
            assert_reading(read_after(times, at), expected, name);
        }
    }

    #[test]
    fn merged_states_keep_the_latest() {
        // `check` reads at time 0 after events at 0, 1 and 2 µs, so the gap floors
        // at 0: it shows that adding and merging agree.
        check(
            &SinceLast,
            "merge_agrees_with_add",
            &[1.0, 2.0, 3.0],
            Reading::Double(0.0),
        );
        let (mut a, mut b) = (SinceLastState::default(), SinceLastState::default());
        SinceLast.add(&mut a, &Observation::at(30 * MIN, 0.0));
        SinceLast.add(&mut b, &Observation::at(20 * MIN, 0.0));
        SinceLast.merge(&mut b, &a);
        assert_eq!(b.latest_us, Some(30 * MIN));
        SinceLast.merge(&mut a, &SinceLastState::default());
        assert_eq!(
            a.latest_us,
            Some(30 * MIN),
            "merging nothing changes nothing"
        );
    }

    #[test]
    fn its_state_snapshots_as_plain_data() {
        let s = SinceLastState {
            latest_us: Some(1_357_034_400_000_000),
        };
        let bytes = postcard::to_stdvec(&s).expect("encode");
        assert_eq!(
            postcard::from_bytes::<SinceLastState>(&bytes).expect("decode"),
            s
        );
    }
}
