//! `distinct_count`: how many different values the field took.
//!
//! Exact and bounded: the state keeps each value's 64-bit fingerprint (FNV-1a
//! of its canonical text, the same for a value whatever event carries it) in a
//! sorted vector, 8 bytes per value. Two different values share a fingerprint
//! with probability about n²/2⁶⁵ (3·10⁻¹² at 10,000 values). Once `bound`
//! values are held the count saturates at `bound`: new values are counted in
//! `feature_state_distinct_saturated_total` and not kept, so memory never
//! exceeds `8·bound` bytes per entity and window bucket.

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Aggregator, Observation, Reading};

#[derive(Debug, Clone)]
pub struct DistinctCount {
    bound: usize,
    saturated: IntCounter,
}

impl DistinctCount {
    pub fn new(bound: usize, saturated: IntCounter) -> Self {
        Self {
            bound: bound.max(1),
            saturated,
        }
    }
}

/// Serialized as when `fingerprints` was a `Vec`: a sequence either way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DistinctState {
    /// Sorted, without repeats; the first two in place (a window bucket
    /// mostly holds one or two values, and a buffer of their own was a cache
    /// miss per read).
    pub fingerprints: SmallVec<[u64; 2]>,
    /// A value was refused because `bound` were held.
    pub saturated: bool,
}

impl DistinctCount {
    fn insert(&self, state: &mut DistinctState, fingerprint: u64) {
        if let Err(at) = state.fingerprints.binary_search(&fingerprint) {
            if state.fingerprints.len() >= self.bound {
                if !state.saturated {
                    self.saturated.inc();
                }
                state.saturated = true;
            } else {
                state.fingerprints.insert(at, fingerprint);
            }
        }
    }
}

impl Aggregator for DistinctCount {
    type State = DistinctState;

    fn add(&self, state: &mut DistinctState, obs: &Observation) {
        self.insert(state, obs.fingerprint);
    }

    fn merge(&self, into: &mut DistinctState, other: &DistinctState) {
        if into.fingerprints.is_empty() && other.fingerprints.len() <= self.bound {
            into.fingerprints.clone_from(&other.fingerprints);
        } else {
            let mut merged =
                SmallVec::with_capacity(into.fingerprints.len() + other.fingerprints.len());
            let (mut a, mut b) = (
                into.fingerprints.iter().peekable(),
                other.fingerprints.iter().peekable(),
            );
            while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
                merged.push(x.min(y));
                if x <= y {
                    a.next();
                }
                if y <= x {
                    b.next();
                }
            }
            merged.extend(a.copied());
            merged.extend(b.copied());
            if merged.len() > self.bound {
                merged.truncate(self.bound);
                into.saturated = true;
            }
            into.fingerprints = merged;
        }
        into.saturated |= other.saturated;
    }

    fn read(&self, state: &DistinctState, _at_us: i64) -> Reading {
        Reading::Int(i64::try_from(state.fingerprints.len()).unwrap_or(i64::MAX))
    }

    /// Counts the union of the buckets' sorted fingerprints in one pass, as
    /// `merge` would hold them (capped at `bound`) but without building it:
    /// cloning and merging the vectors per read was a tenth of feature-state's
    /// CPU end to end.
    fn read_merged<'s>(
        &self,
        first: &'s DistinctState,
        rest: &mut dyn Iterator<Item = &'s DistinctState>,
        _at_us: i64,
    ) -> Reading {
        let mut held: [&[u64]; 32] = [&[]; 32];
        let mut spilled: Vec<&[u64]> = Vec::new();
        let mut k = 0;
        for state in std::iter::once(first).chain(rest) {
            if spilled.is_empty() && k < held.len() {
                held[k] = &state.fingerprints;
                k += 1;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&held[..k]);
                }
                spilled.push(&state.fingerprints);
            }
        }
        let heads = match spilled.is_empty() {
            true => &mut held[..k],
            false => &mut spilled[..],
        };
        let count = union_len(heads).min(self.bound);
        Reading::Int(i64::try_from(count).unwrap_or(i64::MAX))
    }

    fn heap_bytes(&self, state: &DistinctState) -> usize {
        match state.fingerprints.spilled() {
            true => state.fingerprints.capacity() * 8,
            false => 0,
        }
    }
}

/// How many different values sorted, repeat-free `runs` hold together: a
/// few values (the usual window) are sorted together on the stack; more are
/// merged run by run.
fn union_len(runs: &mut [&[u64]]) -> usize {
    const FEW: usize = 64;
    let total: usize = runs.iter().map(|r| r.len()).sum();
    if total <= FEW {
        let mut all = [0u64; FEW];
        let mut n = 0;
        for run in runs.iter() {
            all[n..n + run.len()].copy_from_slice(run);
            n += run.len();
        }
        let all = &mut all[..n];
        all.sort_unstable();
        return all.len() - all.windows(2).filter(|w| w[0] == w[1]).count();
    }
    let mut count = 0;
    while let Some(&least) = runs.iter().filter_map(|r| r.first()).min() {
        count += 1;
        for run in runs.iter_mut() {
            if let Some((&head, tail)) = run.split_first() {
                if head == least {
                    *run = tail;
                }
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::check;

    #[test]
    fn reading_many_buckets_counts_what_merging_them_would_hold() {
        let state = |values: &[u64]| {
            let mut s = DistinctState::default();
            for &v in values {
                let obs = Observation {
                    fingerprint: v,
                    ..Observation::at(0, 0.0)
                };
                distinct(1000).add(&mut s, &obs);
            }
            s
        };
        // (name, bound, buckets): overlapping, disjoint, empty, more than the stack holds, saturated.
        let many: Vec<Vec<u64>> = (0..40u64).map(|i| vec![i, i + 1, 100]).collect();
        let cases: Vec<(&str, usize, Vec<Vec<u64>>)> = vec![
            (
                "overlapping",
                100,
                vec![vec![1, 2, 3], vec![2, 3, 4], vec![9]],
            ),
            ("disjoint", 100, vec![vec![5], vec![6], vec![7, 8]]),
            ("with_empty", 100, vec![vec![], vec![1], vec![]]),
            ("spilled_past_32", 1000, many.clone()),
            (
                "just_past_the_stack_sort",
                1000,
                (0..22u64).map(|i| vec![i, i + 1, i + 2]).collect(),
            ),
            ("capped_at_bound", 10, many),
        ];
        for (name, bound, buckets) in cases {
            let agg = distinct(bound);
            let states: Vec<DistinctState> = buckets.iter().map(|b| state(b)).collect();
            let mut merged = states[0].clone();
            for s in &states[1..] {
                agg.merge(&mut merged, s);
            }
            let read = agg.read_merged(&states[0], &mut states[1..].iter(), 0);
            assert_eq!(read, agg.read(&merged, 0), "{name}");
        }
    }

    fn distinct(bound: usize) -> DistinctCount {
        DistinctCount::new(bound, IntCounter::new("t", "t").expect("counter"))
    }

    #[test]
    fn distinct_count_table() {
        // `Observation::at` fingerprints the value's bits: equal values, equal fingerprints.
        let cases: [(&str, usize, &[f64], Reading); 5] = [
            ("no_events_count_zero", 10, &[], Reading::Int(0)),
            (
                "repeats_count_once",
                10,
                &[1.0, 2.0, 1.0, 1.0, 3.0],
                Reading::Int(3),
            ),
            ("all_different", 10, &[5.0, 4.0, 3.0, 2.0], Reading::Int(4)),
            (
                "bound_saturates",
                3,
                &[1.0, 2.0, 3.0, 4.0, 5.0, 1.0],
                Reading::Int(3),
            ),
            (
                "exactly_at_bound",
                3,
                &[1.0, 2.0, 3.0, 3.0],
                Reading::Int(3),
            ),
        ];
        for (name, bound, values, expected) in cases {
            check(&distinct(bound), name, values, expected);
        }
    }

    #[test]
    fn saturation_is_counted_once_per_state_and_flagged() {
        let agg = distinct(2);
        let mut s = DistinctState::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            agg.add(&mut s, &Observation::at(0, v));
        }
        assert!(s.saturated);
        assert_eq!(s.fingerprints.len(), 2);
        assert_eq!(agg.saturated.get(), 1);
    }

    #[test]
    fn snapshots_keep_the_bytes_of_the_former_vec() {
        #[derive(Serialize)]
        struct Former {
            fingerprints: Vec<u64>,
            saturated: bool,
        }
        let state = DistinctState {
            fingerprints: [4, 7, 9].into_iter().collect(),
            saturated: true,
        };
        let former = Former {
            fingerprints: vec![4, 7, 9],
            saturated: true,
        };
        let bytes = postcard::to_stdvec(&state).expect("encode");
        assert_eq!(bytes, postcard::to_stdvec(&former).expect("encode"));
        assert_eq!(
            postcard::from_bytes::<DistinctState>(&bytes).expect("decode"),
            state
        );
    }
}
