//! `count`: how many events.

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl Aggregator for Count {
    type State = u64;

    fn add(&self, state: &mut u64, _: &Observation) {
        *state += 1;
    }

    fn merge(&self, into: &mut u64, other: &u64) {
        *into += other;
    }

    fn read(&self, state: &u64, _at_us: i64) -> Reading {
        Reading::Int(i64::try_from(*state).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn count_table() {
        let cases: [(&str, &[f64], Reading); 3] = [
            ("no_events_count_zero", &[], Reading::Int(0)),
            ("one_event", &[7.0], Reading::Int(1)),
            (
                "values_do_not_matter",
                &[1.0, -3.0, 1.0, 0.0],
                Reading::Int(4),
            ),
        ];
        for (name, values, expected) in cases {
            check(&Count, name, values, expected);
        }
    }
}
