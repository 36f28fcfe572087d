//! `sum`: the field's total; 0 over no events.

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

impl Aggregator for Sum {
    type State = f64;

    fn add(&self, state: &mut f64, obs: &Observation) {
        *state += obs.value;
    }

    fn merge(&self, into: &mut f64, other: &f64) {
        *into += other;
    }

    fn read(&self, state: &f64, _at_us: i64) -> Reading {
        Reading::Double(*state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn sum_table() {
        let cases: [(&str, &[f64], Reading); 3] = [
            ("no_events_sum_zero", &[], Reading::Double(0.0)),
            ("mixed_signs", &[2.5, -1.0, 4.0], Reading::Double(5.5)),
            (
                "precip_hours",
                &[0.0, 0.02, 0.1, 0.0],
                Reading::Double(0.12),
            ),
        ];
        for (name, values, expected) in cases {
            check(&Sum, name, values, expected);
        }
    }
}
