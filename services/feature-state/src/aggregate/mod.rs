//! Aggregations: what a feature computes over the events in its window.
//!
//! One [`Aggregator`] per file. Each keeps a small state that two windows'
//! worth of events can be merged from, so a window keeps one state per bucket
//! or session and merges them when it is read. Every state is plain data:
//! the store snapshots it, nothing here touches storage.

mod count;
mod distinct_count;
mod last;
mod max;
mod mean;
mod min;
mod since_last;
mod stddev;
mod sum;

pub use count::Count;
pub use distinct_count::DistinctCount;
pub use last::Last;
pub use max::Max;
pub use mean::Mean;
pub use min::Min;
pub use since_last::SinceLast;
pub use stddev::Stddev;
pub use sum::Sum;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One event as a feature sees it; plain data, since windows keep their
/// recent ones as they came ([`crate::window::Recent`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub time_us: i64,
    /// The field's numeric value (0 for `count`, which reads no field).
    pub value: f64,
    /// A 64-bit fingerprint of the field's value (what `distinct_count` counts).
    pub fingerprint: u64,
    /// Orders events with the same time (a hash of the event id), so `last` does not
    /// depend on arrival order.
    pub tiebreak: u64,
}

impl Observation {
    pub fn at(time_us: i64, value: f64) -> Self {
        Self {
            time_us,
            value,
            fingerprint: value.to_bits(),
            tiebreak: 0,
        }
    }
}

/// What a feature reads as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    Int(i64),
    Double(f64),
    /// Nothing to summarise: the mean, minimum, … of no events.
    Empty,
}

impl Reading {
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(i as f64),
            Self::Double(d) => Some(d),
            Self::Empty => None,
        }
    }

    pub fn to_value(self) -> Option<millrace_proto::Value> {
        match self {
            Self::Int(i) => Some(millrace_proto::Value::int(i)),
            Self::Double(d) => Some(millrace_proto::Value::double(d)),
            Self::Empty => None,
        }
    }
}

/// The state an aggregation keeps must be plain data the store can snapshot.
pub trait AggState: Clone + Default + Serialize + DeserializeOwned + Send + 'static {}
impl<T: Clone + Default + Serialize + DeserializeOwned + Send + 'static> AggState for T {}

pub trait Aggregator: Send + 'static {
    type State: AggState;

    fn add(&self, state: &mut Self::State, obs: &Observation);
    /// Folds `other` (events disjoint from `into`'s) into `into`.
    fn merge(&self, into: &mut Self::State, other: &Self::State);
    /// What the state reads as when the feature is read at `at_us` (the
    /// scored event's time, or the clock for a lookup): only aggregations
    /// that measure up to the read (`since_last`) look at it.
    fn read(&self, state: &Self::State, at_us: i64) -> Reading;
    /// Reads the merge of `first` and `rest` (disjoint events) without
    /// keeping it: a window of several buckets is read this way per vector.
    fn read_merged<'s>(
        &self,
        first: &'s Self::State,
        rest: &mut dyn Iterator<Item = &'s Self::State>,
        at_us: i64,
    ) -> Reading {
        let mut acc = first.clone();
        for s in rest {
            self.merge(&mut acc, s);
        }
        self.read(&acc, at_us)
    }
    /// Heap bytes the state holds beyond its own size.
    fn heap_bytes(&self, _state: &Self::State) -> usize {
        0
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Adds `values` (at times 0, 1, …) one by one, and also as two halves merged,
    /// and checks both read `expected`.
    pub fn check<A: Aggregator>(agg: &A, name: &str, values: &[f64], expected: Reading) {
        let obs: Vec<Observation> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Observation::at(i as i64, v))
            .collect();
        let mut one = A::State::default();
        for o in &obs {
            agg.add(&mut one, o);
        }
        assert_reading(agg.read(&one, 0), expected, &format!("{name}: added"));
        let (left, right) = obs.split_at(obs.len() / 2);
        let (mut a, mut b) = (A::State::default(), A::State::default());
        left.iter().for_each(|o| agg.add(&mut a, o));
        right.iter().for_each(|o| agg.add(&mut b, o));
        agg.merge(&mut a, &b);
        assert_reading(agg.read(&a, 0), expected, &format!("{name}: merged"));
        let mut c = A::State::default();
        agg.merge(&mut c, &one);
        assert_reading(
            agg.read(&c, 0),
            expected,
            &format!("{name}: merged into empty"),
        );
    }

    pub fn assert_reading(got: Reading, expected: Reading, what: &str) {
        match (got, expected) {
            (Reading::Double(g), Reading::Double(e)) => {
                assert!(
                    (g - e).abs() <= 1e-9 * e.abs().max(1.0),
                    "{what}: {g} != {e}"
                )
            }
            _ => assert_eq!(got, expected, "{what}"),
        }
    }
}
