//! The sparse bucket list tumbling, hopping and sliding windows share: one
//! aggregation state per bucket of event time that saw an event, in bucket order.
//!
//! The first [`INLINE`] buckets live in the row itself: most entities hold one
//! or two, and a heap buffer of their own was a cache miss per update.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::aggregate::{AggState, Aggregator, Observation, Reading};

/// Buckets held in the row before they spill to the heap.
const INLINE: usize = 2;

/// Serialized as the sequence of its buckets, as when it was a `VecDeque`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buckets<S> {
    /// (bucket index, state), ascending by index.
    items: SmallVec<[(i64, S); INLINE]>,
}

impl<S> Default for Buckets<S> {
    fn default() -> Self {
        Self {
            items: SmallVec::new(),
        }
    }
}

impl<S: AggState> Buckets<S> {
    pub fn add<A: Aggregator<State = S>>(&mut self, agg: &A, bucket: i64, obs: &Observation) {
        // Events mostly land in the newest bucket: search from the back.
        let at = self.items.iter().rposition(|(b, _)| *b <= bucket);
        match at {
            Some(i) if self.items[i].0 == bucket => agg.add(&mut self.items[i].1, obs),
            Some(i) => {
                let mut state = S::default();
                agg.add(&mut state, obs);
                self.items.insert(i + 1, (bucket, state));
            }
            None => {
                let mut state = S::default();
                agg.add(&mut state, obs);
                self.items.insert(0, (bucket, state));
            }
        }
    }

    /// The merged state of buckets `first..=last`, read at `at_us`.
    pub fn read<A: Aggregator<State = S>>(
        &self,
        agg: &A,
        first: i64,
        last: i64,
        at_us: i64,
    ) -> Reading {
        self.read_with(agg, first, last, None, at_us)
    }

    /// [`Buckets::read`] with `more` (a state of other events) merged in.
    pub fn read_with<A: Aggregator<State = S>>(
        &self,
        agg: &A,
        first: i64,
        last: i64,
        more: Option<&S>,
        at_us: i64,
    ) -> Reading {
        let mut inside = self
            .items
            .iter()
            .filter(|(b, _)| (first..=last).contains(b))
            .map(|(_, s)| s)
            .chain(more);
        let Some(one) = inside.next() else {
            return agg.read(&S::default(), at_us);
        };
        // The common case: one bucket, no merge, no copy.
        let mut rest = inside.peekable();
        match rest.peek() {
            None => agg.read(one, at_us),
            Some(_) => agg.read_merged(one, &mut rest, at_us),
        }
    }

    /// Drops buckets before `first`.
    pub fn evict_before(&mut self, first: i64) {
        let before = self.items.iter().take_while(|(b, _)| *b < first).count();
        if before > 0 {
            self.items.drain(..before);
        }
        let len = self.items.len();
        if self.items.spilled() && (len <= INLINE || self.items.capacity() > 2 * len + 4) {
            // The window shrank (an idle stretch): give the memory back.
            self.items.shrink_to_fit();
        }
    }

    pub fn heap_bytes<A: Aggregator<State = S>>(&self, agg: &A) -> usize {
        let buffer = match self.items.spilled() {
            true => self.items.capacity() * std::mem::size_of::<(i64, S)>(),
            false => 0,
        };
        buffer
            + self
                .items
                .iter()
                .map(|(_, s)| agg.heap_bytes(s))
                .sum::<usize>()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::aggregate::Count;

    fn counted(buckets: &[i64]) -> Buckets<u64> {
        let mut b = Buckets::default();
        for &i in buckets {
            b.add(&Count, i, &Observation::at(0, 0.0));
        }
        b
    }

    #[test]
    fn snapshots_keep_the_bytes_of_the_former_vecdeque() {
        // Snapshots written before buckets were held in place still load.
        let b = counted(&[3, 1, 2, 2]);
        let was: VecDeque<(i64, u64)> = [(1, 1), (2, 2), (3, 1)].into();
        let bytes = postcard::to_stdvec(&b).expect("encode");
        assert_eq!(bytes, postcard::to_stdvec(&was).expect("encode"));
        assert_eq!(
            postcard::from_bytes::<Buckets<u64>>(&bytes).expect("decode"),
            b
        );
    }

    #[test]
    fn buckets_spill_past_the_inline_ones_and_come_back_when_evicted() {
        let mut b = counted(&[1, 2]);
        assert_eq!(b.heap_bytes(&Count), 0, "two buckets are held in place");
        b.add(&Count, 5, &Observation::at(0, 0.0));
        b.add(&Count, 0, &Observation::at(0, 0.0));
        assert!(b.heap_bytes(&Count) > 0);
        assert_eq!(b.read(&Count, 0, 5, 0), Reading::Int(4));
        assert_eq!(b.read(&Count, 2, 4, 0), Reading::Int(1));
        assert_eq!(b.read_with(&Count, 2, 4, Some(&3), 0), Reading::Int(4));
        assert_eq!(b.read_with(&Count, 7, 9, Some(&3), 0), Reading::Int(3));
        b.evict_before(5);
        assert_eq!((b.len(), b.heap_bytes(&Count)), (1, 0));
        assert_eq!(b.read(&Count, 0, 9, 0), Reading::Int(1));
        b.evict_before(6);
        assert!(b.is_empty());
    }
}
