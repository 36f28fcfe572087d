//! Windows: which of an entity's events a feature summarises, as of a time `t`.
//!
//! One [`Window`] per file. Each keeps, per entity, the aggregation states its
//! reads need: lifetime one state; tumbling, hopping and sliding windows one
//! state per bucket of event time (sparse: only buckets that saw events);
//! session windows one state per session. Boundaries are aligned to the Unix
//! epoch. A read at `t` covers the window as of `t` at the window's
//! granularity: an event applied earlier but stamped later than `t` counts when
//! it falls in a bucket (or session) the read covers.
//!
//! | window | value as of `t` |
//! |---|---|
//! | lifetime | every event since the entity appeared |
//! | tumbling(size) | the last complete window `[b−size, b)`, `b = ⌊t/size⌋·size` |
//! | hopping(size, hop) | the last complete window `[b−size, b)`, `b = ⌊t/hop⌋·hop` |
//! | sliding(size, g) | the `size/g` buckets of width `g` up to and including `t`'s |
//! | session(gap) | the session open at `t`: events less than `gap` apart, the last within `gap` before `t` |
//!
//! State is trimmed by [`Window::evict`] against a floor no later add or read
//! goes below (the lowest partition watermark), so trimming never changes a value.

mod buckets;
mod hopping;
mod lifetime;
mod session;
mod sliding;
mod tumbling;

pub use buckets::Buckets;
pub use hopping::Hopping;
pub use lifetime::Lifetime;
pub use session::{Session, Sessions};
pub use sliding::Sliding;
pub use tumbling::Tumbling;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::aggregate::{AggState, Aggregator, Observation, Reading};

/// What a window keeps per entity must be plain data the store can snapshot.
pub trait WindowState: Default + Clone + Serialize + DeserializeOwned + Send + 'static {}
impl<T: Default + Clone + Serialize + DeserializeOwned + Send + 'static> WindowState for T {}

pub trait Window: Send + 'static {
    type State<S: AggState>: WindowState;

    fn add<A: Aggregator>(&self, agg: &A, state: &mut Self::State<A::State>, obs: &Observation);
    fn read<A: Aggregator>(&self, agg: &A, state: &Self::State<A::State>, at_us: i64) -> Reading;
    /// Drops what no add or read at or after `floor_us` can reach.
    fn evict<S: AggState>(&self, state: &mut Self::State<S>, floor_us: i64);
    /// Heap bytes the state holds beyond its own size.
    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &Self::State<A::State>) -> usize;
}

/// `⌊t / width⌋`, also for times before 1970.
pub(crate) fn bucket_of(t: i64, width: i64) -> i64 {
    t.div_euclid(width)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::aggregate::{testing::assert_reading, Count, Sum};

    /// Adds events `(time, value)` in the order given and reads the sum (and count) at `at`.
    pub fn sum_at<W: Window>(window: &W, events: &[(i64, f64)], at: i64) -> (Reading, Reading) {
        let mut sums = W::State::<f64>::default();
        let mut counts = W::State::<u64>::default();
        for &(t, v) in events {
            window.add(&Sum, &mut sums, &Observation::at(t, v));
            window.add(&Count, &mut counts, &Observation::at(t, v));
        }
        (
            window.read(&Sum, &sums, at),
            window.read(&Count, &counts, at),
        )
    }

    /// Name, events (time, value) in arrival order, read time, expected sum and count.
    pub type Case<'a> = (&'a str, &'a [(i64, f64)], i64, f64, i64);

    /// Each case: events (time, value) in arrival order, the read time, the expected sum
    /// and count. Also checks that evicting at the read time changes no value.
    pub fn check_table<W: Window>(window: &W, cases: &[Case]) {
        for &(name, events, at, sum, count) in cases {
            let (s, c) = sum_at(window, events, at);
            assert_reading(s, Reading::Double(sum), &format!("{name}: sum"));
            assert_eq!(c, Reading::Int(count), "{name}: count");
            let mut sums = W::State::<f64>::default();
            for &(t, v) in events {
                window.add(&Sum, &mut sums, &Observation::at(t, v));
            }
            window.evict(&mut sums, at);
            assert_reading(
                window.read(&Sum, &sums, at),
                Reading::Double(sum),
                &format!("{name}: after evicting at the read time"),
            );
        }
    }
}
