//! The label join: a feature vector waits here for its label, or a label
//! (which may arrive first) for its vector, keyed by the label key (the
//! business key the pipeline's `[label]` rule names).
//!
//! Bounded twice: at most `capacity` entries (the oldest by event time go
//! first, counted as evicted) and at most `ttl` of event time behind the
//! join's clock (older entries expire, counted by what they were waiting
//! for). The clock is the older of the two sides' newest event times: an
//! entry expires only once both streams have moved past it, so a stream that
//! runs ahead of the other (LABELS skips the stages FEATURES crosses, and on
//! a fast replay leads it by days of event time) expires nothing early. Time
//! is event time, never the wall clock, so replaying the same messages after
//! a crash expires exactly the same entries.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Waiting<V> {
    /// A scored vector waiting for its label.
    Vector(V),
    /// A label (0/1) waiting for its vector.
    Label(f64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry<V> {
    waiting: Waiting<V>,
    time_us: i64,
    serial: u64,
}

/// What the join has done, for metrics (and kept in the snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinCounts {
    /// Labels matched to a vector.
    pub joined: u64,
    /// Of those, labels that arrived before their vector.
    pub label_first: u64,
    /// Vectors whose label never came within the TTL.
    pub expired_vectors: u64,
    /// Labels whose vector never came within the TTL: unmatched.
    pub expired_labels: u64,
    /// Entries dropped because the store was full.
    pub evicted: u64,
    /// A second vector or label for a key already waiting replaced the first.
    pub replaced: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelJoin<V> {
    capacity: usize,
    ttl_us: i64,
    entries: HashMap<String, Entry<V>>,
    /// (event time, serial) → key, oldest first.
    by_time: BTreeMap<(i64, u64), String>,
    /// The newest event time of each side: vectors, labels.
    newest_vector_us: i64,
    newest_label_us: i64,
    serial: u64,
    /// How many entries are labels (kept, not counted per call: the store can be large).
    labels_waiting: usize,
    pub counts: JoinCounts,
}

impl<V> LabelJoin<V> {
    pub fn new(capacity: usize, ttl_us: i64) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl_us: ttl_us.max(0),
            entries: HashMap::new(),
            by_time: BTreeMap::new(),
            newest_vector_us: i64::MIN,
            newest_label_us: i64::MIN,
            serial: 0,
            labels_waiting: 0,
            counts: JoinCounts::default(),
        }
    }

    /// Applies new bounds (from the pipeline file) to a restored store.
    pub fn set_bounds(&mut self, capacity: usize, ttl_us: i64) {
        self.capacity = capacity.max(1);
        self.ttl_us = ttl_us.max(0);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many labels wait for their vector.
    pub fn waiting_labels(&self) -> usize {
        self.labels_waiting
    }

    /// Keeps `labels_waiting` in step as an entry leaves.
    fn left(&mut self, waiting: Waiting<V>) -> Waiting<V> {
        if matches!(waiting, Waiting::Label(_)) {
            self.labels_waiting -= 1;
        }
        waiting
    }

    /// A scored vector arrives: answers its label if that came first, else it waits.
    pub fn offer_vector(&mut self, key: &str, vector: V, time_us: i64) -> Option<(V, f64)> {
        if let Some(Waiting::Label(_)) = self.entries.get(key).map(|e| &e.waiting) {
            if let Some(Waiting::Label(label)) = self.remove(key) {
                self.counts.joined += 1;
                self.counts.label_first += 1;
                return Some((vector, label));
            }
        }
        self.insert(key, Waiting::Vector(vector), time_us);
        None
    }

    /// A label arrives: answers the vector it labels if that is waiting, else it waits.
    pub fn offer_label(&mut self, key: &str, label: f64, time_us: i64) -> Option<V> {
        if let Some(Waiting::Vector(_)) = self.entries.get(key).map(|e| &e.waiting) {
            if let Some(Waiting::Vector(vector)) = self.remove(key) {
                self.counts.joined += 1;
                self.advance(true, time_us);
                return Some(vector);
            }
        }
        self.insert(key, Waiting::Label(label), time_us);
        None
    }

    fn remove(&mut self, key: &str) -> Option<Waiting<V>> {
        let entry = self.entries.remove(key)?;
        self.by_time.remove(&(entry.time_us, entry.serial));
        Some(self.left(entry.waiting))
    }

    fn insert(&mut self, key: &str, waiting: Waiting<V>, time_us: i64) {
        if self.remove(key).is_some() {
            self.counts.replaced += 1;
        }
        let is_label = matches!(waiting, Waiting::Label(_));
        if is_label {
            self.labels_waiting += 1;
        }
        self.serial += 1;
        self.by_time.insert((time_us, self.serial), key.to_string());
        self.entries.insert(
            key.to_string(),
            Entry {
                waiting,
                time_us,
                serial: self.serial,
            },
        );
        while self.entries.len() > self.capacity {
            if self.drop_oldest().is_none() {
                break;
            }
            self.counts.evicted += 1;
        }
        self.advance(is_label, time_us);
    }

    /// Moves one side's event time forward and expires what fell behind the
    /// TTL of the join's clock, the older side's newest time.
    fn advance(&mut self, label: bool, time_us: i64) {
        let newest = match label {
            true => &mut self.newest_label_us,
            false => &mut self.newest_vector_us,
        };
        *newest = (*newest).max(time_us);
        let clock = self.newest_vector_us.min(self.newest_label_us);
        let horizon = clock.saturating_sub(self.ttl_us);
        while let Some((&(t, _), _)) = self.by_time.first_key_value() {
            if t >= horizon {
                break;
            }
            match self.drop_oldest() {
                Some(Waiting::Vector(_)) => self.counts.expired_vectors += 1,
                Some(Waiting::Label(_)) => self.counts.expired_labels += 1,
                None => break,
            }
        }
    }

    fn drop_oldest(&mut self) -> Option<Waiting<V>> {
        let (_, key) = self.by_time.pop_first()?;
        let entry = self.entries.remove(&key)?;
        Some(self.left(entry.waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_label_after_its_vector_joins() {
        let mut j = LabelJoin::new(10, 60 * S);
        assert_eq!(j.offer_vector("f1", "v1", 0), None);
        assert_eq!(j.offer_label("f1", 1.0, 5 * S), Some("v1"));
        assert!(j.is_empty());
        assert_eq!(j.counts.joined, 1);
        assert_eq!(j.counts.label_first, 0);
    }

    #[test]
    fn a_label_before_its_vector_joins_when_the_vector_comes() {
        let mut j = LabelJoin::new(10, 60 * S);
        assert_eq!(j.offer_label("f1", 0.0, 0), None);
        assert_eq!(j.waiting_labels(), 1);
        assert_eq!(j.offer_vector("f1", "v1", S), Some(("v1", 0.0)));
        assert!(j.is_empty());
        assert_eq!((j.counts.joined, j.counts.label_first), (1, 1));
    }

    #[test]
    fn entries_expire_once_both_sides_have_moved_past_the_ttl() {
        let mut j = LabelJoin::new(10, 60 * S);
        j.offer_vector("old-vector", "v", 0);
        j.offer_label("old-label", 1.0, 10 * S);
        j.offer_vector("recent", "v", 50 * S);
        // Vectors run ahead to 200 s while labels stand at 10 s: a label may
        // still come for the vector at 0 s, so nothing expires.
        j.offer_vector("ahead", "v", 200 * S);
        assert_eq!((j.counts.expired_vectors, j.counts.expired_labels), (0, 0));
        // Labels reach 65 s: the vector at 0 s is older than 60 s; the label at 10 s is not.
        j.offer_label("other", 1.0, 65 * S);
        assert_eq!((j.counts.expired_vectors, j.counts.expired_labels), (1, 0));
        // 71 s: now the label at 10 s expires, unmatched.
        j.offer_label("later", 1.0, 71 * S);
        assert_eq!(j.counts.expired_labels, 1);
        assert_eq!(
            j.offer_label("old-vector", 1.0, 71 * S),
            None,
            "expired, so no join"
        );
        assert_eq!(j.len(), 5, "recent, ahead and three labels");
        assert_eq!(j.waiting_labels(), 3);
    }

    #[test]
    fn a_full_store_evicts_the_oldest() {
        let mut j = LabelJoin::new(2, 3600 * S);
        j.offer_vector("a", 1, 3 * S);
        j.offer_vector("b", 2, S);
        j.offer_vector("c", 3, 2 * S);
        assert_eq!(j.counts.evicted, 1);
        assert_eq!(
            j.offer_label("b", 1.0, 4 * S),
            None,
            "b was the oldest by event time"
        );
        assert_eq!(j.offer_label("a", 1.0, 4 * S), Some(1));
    }

    #[test]
    fn a_repeated_key_replaces_and_counts() {
        let mut j = LabelJoin::new(10, 60 * S);
        j.offer_vector("k", 1, 0);
        j.offer_vector("k", 2, S);
        assert_eq!(j.counts.replaced, 1);
        assert_eq!(j.offer_label("k", 1.0, 2 * S), Some(2));
    }

    #[test]
    fn the_store_round_trips_through_postcard() {
        let mut j = LabelJoin::new(10, 60 * S);
        j.offer_vector("a", vec![1.0, 2.0], 0);
        j.offer_label("b", 1.0, S);
        let bytes = postcard::to_stdvec(&j).unwrap();
        let back: LabelJoin<Vec<f64>> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, j);
    }
}
