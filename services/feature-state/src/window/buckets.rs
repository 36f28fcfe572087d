//! The sparse bucket list tumbling, hopping and sliding windows share: one
//! aggregation state per bucket of event time that saw an event, in bucket order.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::aggregate::{AggState, Aggregator, Observation, Reading};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buckets<S> {
    /// (bucket index, state), ascending by index.
    items: VecDeque<(i64, S)>,
}

impl<S> Default for Buckets<S> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
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
                self.items.push_front((bucket, state));
            }
        }
    }

    /// The merged state of buckets `first..=last`, read.
    pub fn read<A: Aggregator<State = S>>(&self, agg: &A, first: i64, last: i64) -> Reading {
        let mut inside = self
            .items
            .iter()
            .filter(|(b, _)| (first..=last).contains(b));
        let Some((_, one)) = inside.next() else {
            return agg.read(&S::default());
        };
        // The common case: one bucket, no merge, no copy.
        let mut rest = inside.map(|(_, s)| s).peekable();
        match rest.peek() {
            None => agg.read(one),
            Some(_) => agg.read_merged(one, &mut rest),
        }
    }

    /// Drops buckets before `first`.
    pub fn evict_before(&mut self, first: i64) {
        while self.items.front().is_some_and(|(b, _)| *b < first) {
            self.items.pop_front();
        }
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        } else if self.items.capacity() > 2 * self.items.len() + 4 {
            // The window shrank (an idle stretch): give the memory back.
            self.items.shrink_to(self.items.len() + 2);
        }
    }

    pub fn heap_bytes<A: Aggregator<State = S>>(&self, agg: &A) -> usize {
        self.items.capacity() * std::mem::size_of::<(i64, S)>()
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
