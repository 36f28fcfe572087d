//! `min`: the field's smallest value; empty over no events.

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Min;

impl Aggregator for Min {
    type State = Option<f64>;

    fn add(&self, state: &mut Option<f64>, obs: &Observation) {
        *state = Some(state.map_or(obs.value, |m| m.min(obs.value)));
    }

    fn merge(&self, into: &mut Option<f64>, other: &Option<f64>) {
        if let Some(v) = *other {
            *into = Some(into.map_or(v, |m| m.min(v)));
        }
    }

    fn read(&self, state: &Option<f64>, _at_us: i64) -> Reading {
        state.map_or(Reading::Empty, Reading::Double)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn min_table() {
        let cases: [(&str, &[f64], Reading); 3] = [
            ("no_events_is_empty", &[], Reading::Empty),
            ("negative_wins", &[3.0, -2.0, 10.0], Reading::Double(-2.0)),
            (
                "visibility",
                &[10.0, 10.0, 0.25, 2.0],
                Reading::Double(0.25),
            ),
        ];
        for (name, values, expected) in cases {
            check(&Min, name, values, expected);
        }
    }
}
