//! `mean`: the field's arithmetic mean; empty over no events.

use serde::{Deserialize, Serialize};

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Mean;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanState {
    pub n: u64,
    pub sum: f64,
}

impl Aggregator for Mean {
    type State = MeanState;

    fn add(&self, state: &mut MeanState, obs: &Observation) {
        state.n += 1;
        state.sum += obs.value;
    }

    fn merge(&self, into: &mut MeanState, other: &MeanState) {
        into.n += other.n;
        into.sum += other.sum;
    }

    fn read(&self, state: &MeanState, _at_us: i64) -> Reading {
        if state.n == 0 {
            Reading::Empty
        } else {
            Reading::Double(state.sum / state.n as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn mean_table() {
        let cases: [(&str, &[f64], Reading); 3] = [
            ("no_events_is_empty", &[], Reading::Empty),
            ("one_value_is_itself", &[-4.0], Reading::Double(-4.0)),
            (
                "dep_delays",
                &[-5.0, 0.0, 15.0, 30.0],
                Reading::Double(10.0),
            ),
        ];
        for (name, values, expected) in cases {
            check(&Mean, name, values, expected);
        }
    }
}
