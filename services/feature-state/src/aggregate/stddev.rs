//! `stddev`: the population standard deviation √(Σ(x−mean)²/n), kept with
//! Welford's update and merged with Chan et al.'s pairwise formula, so it stays
//! accurate for values far from 0; empty over no events.

use serde::{Deserialize, Serialize};

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone, Copy, Default)]
pub struct Stddev;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Welford {
    pub n: u64,
    pub mean: f64,
    /// Σ(x − mean)².
    pub m2: f64,
}

impl Aggregator for Stddev {
    type State = Welford;

    fn add(&self, s: &mut Welford, obs: &Observation) {
        s.n += 1;
        let delta = obs.value - s.mean;
        s.mean += delta / s.n as f64;
        s.m2 += delta * (obs.value - s.mean);
    }

    fn merge(&self, into: &mut Welford, other: &Welford) {
        if other.n == 0 {
            return;
        }
        if into.n == 0 {
            *into = *other;
            return;
        }
        let n = into.n + other.n;
        let delta = other.mean - into.mean;
        let (na, nb, nf) = (into.n as f64, other.n as f64, n as f64);
        into.mean += delta * nb / nf;
        into.m2 += other.m2 + delta * delta * na * nb / nf;
        into.n = n;
    }

    fn read(&self, s: &Welford, _at_us: i64) -> Reading {
        if s.n == 0 {
            Reading::Empty
        } else {
            Reading::Double((s.m2 / s.n as f64).max(0.0).sqrt())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn stddev_table() {
        let cases: [(&str, &[f64], Reading); 5] = [
            ("no_events_is_empty", &[], Reading::Empty),
            ("one_value_is_zero", &[42.0], Reading::Double(0.0)),
            // mean 5, squared deviations 9+1+1+1+0+0+4+16 = 32, /8 = 4.
            (
                "textbook_population",
                &[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0],
                Reading::Double(2.0),
            ),
            ("constant_is_zero", &[3.5, 3.5, 3.5], Reading::Double(0.0)),
            // Far from zero: a naive Σx²−(Σx)²/n loses every digit here.
            (
                "large_offset_stays_exact",
                &[1e9 + 4.0, 1e9 + 7.0, 1e9 + 13.0, 1e9 + 16.0],
                Reading::Double(22.5f64.sqrt()),
            ),
        ];
        for (name, values, expected) in cases {
            check(&Stddev, name, values, expected);
        }
    }
}
