//! The label join: predictions meet their labels on `label_key`, whichever
//! arrives first, within a bounded store.
//!
//! - A prediction with no label yet waits; a label joins every prediction
//!   waiting on its key (one per model version, usually).
//! - A label that found nobody waits in turn, and joins each model version's
//!   prediction once as they come.
//! - A label that joined on arrival is kept a little longer, among the last
//!   [`JOINED_ON_ARRIVAL_KEPT`]: PREDICTIONS and LABELS are consumed side by side,
//!   so a label can land between two model versions' predictions of one event
//!   (a shadow's, a challenger's), and the later ones still need it.
//! - Time is event time: each side's clock is the newest event time it has
//!   seen, the join's clock is the older of the two, and anything older than
//!   the join's clock minus the TTL expires. So nothing expires before both
//!   streams have moved past it: LABELS skips the stages PREDICTIONS crosses,
//!   and on a fast replay leads it by days of event time. Event time (not the
//!   wall clock) keeps a replay after a crash identical.
//! - Each side is bounded; past the bound the oldest (by event time) is evicted.
//!
//! Expired and evicted predictions are unmatched; labels count as unmatched only
//! if they never joined anything. Model versions are interned: the store holds
//! a small number per waiting prediction instead of two strings. A label key is
//! stored once ([`LabelKey`]) however many orders and maps name it.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::input::{LabelRecord, PredictionRecord};

use crate::quality::Labelled;
use crate::stats::ModelVersion;

/// How many labels that joined on arrival stay for model versions still to come:
/// the lag, in labels, one stream may have on the other.
pub const JOINED_ON_ARRIVAL_KEPT: usize = 10_000;

/// A label key, shared by the maps and orders that name it, with its hash:
/// a record's key is hashed once (SipHash with this process's random keys, so
/// keys chosen by a producer cannot be made to collide), and the maps below
/// only ever read that hash, when they look a key up and when they grow.
/// Snapshotted as a string.
#[derive(Debug, Clone)]
pub struct LabelKey {
    hash: u64,
    text: Arc<str>,
}

impl LabelKey {
    fn new(text: &str) -> Self {
        Self {
            hash: key_hash(text),
            text: Arc::from(text),
        }
    }

    fn probe(&self) -> Probe<'_> {
        Probe {
            hash: self.hash,
            text: &self.text,
        }
    }
}

fn key_hash(text: &str) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(text)
}

impl PartialEq for LabelKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for LabelKey {}

impl Hash for LabelKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A key being looked up: its text where the record holds it, and its hash.
#[derive(Clone, Copy)]
struct Probe<'a> {
    hash: u64,
    text: &'a str,
}

impl<'a> Probe<'a> {
    fn of(text: &'a str) -> Self {
        Self {
            hash: key_hash(text),
            text,
        }
    }

    fn to_key(self) -> LabelKey {
        LabelKey {
            hash: self.hash,
            text: Arc::from(self.text),
        }
    }
}

/// What the maps compare: a stored key or a probe, by hash and text.
trait Key {
    fn parts(&self) -> Probe<'_>;
}

impl Key for LabelKey {
    fn parts(&self) -> Probe<'_> {
        self.probe()
    }
}

impl Key for Probe<'_> {
    fn parts(&self) -> Probe<'_> {
        *self
    }
}

impl<'a> Borrow<dyn Key + 'a> for LabelKey {
    fn borrow(&self) -> &(dyn Key + 'a) {
        self
    }
}

impl Hash for dyn Key + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.parts().hash);
    }
}

impl PartialEq for dyn Key + '_ {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.parts(), other.parts());
        a.hash == b.hash && a.text == b.text
    }
}

impl Eq for dyn Key + '_ {}

/// Hands the map the hash a [`LabelKey`] carries.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called; fold anything else in all the same.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<LabelKey, V, BuildHasherDefault<KeyHasher>>;

impl Serialize for LabelKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for LabelKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::new(&String::deserialize(deserializer)?))
    }
}

/// Everything the join has counted since the first message.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinCounts {
    pub labels: u64,
    /// Prediction–label pairs formed.
    pub matched: u64,
    pub predictions_expired: u64,
    pub predictions_evicted: u64,
    pub labels_expired: u64,
    pub labels_evicted: u64,
    /// A newer label for the same key replaced one that had joined nothing.
    pub labels_superseded: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    pub ttl_us: i64,
    pub max_predictions: usize,
    pub max_labels: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WaitingPrediction {
    seq: u64,
    /// Index in [`LabelJoin::versions`].
    version: u32,
    score: f64,
    predicted_positive: bool,
    event_time_us: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptLabel {
    seq: u64,
    positive: bool,
    event_time_us: i64,
    /// Model versions (indexes in [`LabelJoin::versions`]) this label has joined.
    joined: Vec<u32>,
    /// It joined predictions the moment it arrived (see [`JOINED_ON_ARRIVAL_KEPT`]).
    on_arrival: bool,
}

/// A prediction joined with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The model version, as [`LabelJoin::intern`] numbers it (see [`LabelJoin::version`]).
    pub version: u32,
    pub sample: Labelled,
    /// Label event time minus prediction event time (never negative).
    pub label_delay_us: i64,
}

/// The store. Only the waiting predictions and kept labels are snapshotted; the
/// orders over them (expiry, eviction, the arrival queue) are rebuilt on load.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "JoinData")]
pub struct LabelJoin {
    /// Every model version seen, in order of first sight.
    versions: Vec<ModelVersion>,
    predictions: KeyMap<Vec<WaitingPrediction>>,
    labels: KeyMap<KeptLabel>,
    next_seq: u64,
    /// The newest event time of each side.
    prediction_clock_us: i64,
    label_clock_us: i64,
    pub counts: JoinCounts,
    /// (event time, seq) → label key: the expiry and eviction order.
    #[serde(skip_serializing)]
    prediction_order: BTreeMap<(i64, u64), LabelKey>,
    #[serde(skip_serializing)]
    label_order: BTreeMap<(i64, u64), LabelKey>,
    /// (label key, seq) of the labels that joined on arrival, oldest first.
    #[serde(skip_serializing)]
    joined_on_arrival: VecDeque<(LabelKey, u64)>,
    /// Kept labels that have not joined any prediction yet.
    #[serde(skip_serializing)]
    unjoined_labels: usize,
}

#[derive(Deserialize)]
struct JoinData {
    versions: Vec<ModelVersion>,
    predictions: KeyMap<Vec<WaitingPrediction>>,
    labels: KeyMap<KeptLabel>,
    next_seq: u64,
    prediction_clock_us: i64,
    label_clock_us: i64,
    counts: JoinCounts,
}

impl From<JoinData> for LabelJoin {
    fn from(d: JoinData) -> Self {
        let prediction_order = d
            .predictions
            .iter()
            .flat_map(|(key, waiting)| {
                waiting
                    .iter()
                    .map(move |w| ((w.event_time_us, w.seq), key.clone()))
            })
            .collect();
        let label_order = d
            .labels
            .iter()
            .map(|(key, l)| ((l.event_time_us, l.seq), key.clone()))
            .collect();
        let mut arrivals: Vec<(u64, LabelKey)> = d
            .labels
            .iter()
            .filter(|(_, l)| l.on_arrival)
            .map(|(key, l)| (l.seq, key.clone()))
            .collect();
        arrivals.sort_unstable_by_key(|(seq, _)| *seq);
        let unjoined_labels = d.labels.values().filter(|l| l.joined.is_empty()).count();
        Self {
            versions: d.versions,
            predictions: d.predictions,
            labels: d.labels,
            next_seq: d.next_seq,
            prediction_clock_us: d.prediction_clock_us,
            label_clock_us: d.label_clock_us,
            counts: d.counts,
            prediction_order,
            label_order,
            joined_on_arrival: arrivals.into_iter().map(|(seq, key)| (key, seq)).collect(),
            unjoined_labels,
        }
    }
}

impl LabelJoin {
    /// Predictions waiting for their label.
    pub fn waiting_predictions(&self) -> usize {
        self.prediction_order.len()
    }

    /// Labels kept that have not joined any prediction yet.
    pub fn waiting_labels(&self) -> usize {
        self.unjoined_labels
    }

    /// Labels kept in all (joined ones wait for other model versions).
    pub fn kept_labels(&self) -> usize {
        self.labels.len()
    }

    /// The number of a model version in this join, numbering it on first sight.
    pub fn intern(&mut self, version: &ModelVersion) -> u32 {
        let found = self.versions.iter().position(|v| v == version);
        let index = found.unwrap_or_else(|| {
            self.versions.push(version.clone());
            self.versions.len() - 1
        });
        // More model versions than u32 holds cannot be seen in one process's life.
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// The model version [`LabelJoin::intern`] numbered `id`.
    pub fn version(&self, id: u32) -> Option<&ModelVersion> {
        self.versions.get(id as usize)
    }

    /// [`LabelJoin::on_prediction_of`] for the prediction's own model version.
    pub fn on_prediction(&mut self, p: &PredictionRecord, limits: JoinLimits) -> Option<Joined> {
        let version = self.intern(&ModelVersion::of(p));
        self.on_prediction_of(version, p, limits)
    }

    /// Applies a prediction of the model version numbered `version`; answers
    /// the pair when its label was waiting.
    pub fn on_prediction_of(
        &mut self,
        version: u32,
        p: &PredictionRecord,
        limits: JoinLimits,
    ) -> Option<Joined> {
        self.prediction_clock_us = self.prediction_clock_us.max(p.event_time_us);
        let label_key = p.label_key();
        if label_key.is_empty() {
            return None;
        }
        let probe = Probe::of(label_key);
        if let Some(label) = self.labels.get_mut(&probe as &dyn Key) {
            if !label.joined.contains(&version) {
                if label.joined.is_empty() {
                    self.unjoined_labels -= 1;
                }
                label.joined.push(version);
                let (positive, label_time) = (label.positive, label.event_time_us);
                self.counts.matched += 1;
                return Some(joined(
                    version,
                    p.score,
                    p.predicted_positive,
                    p.event_time_us,
                    positive,
                    label_time,
                ));
            }
        }
        let seq = self.next();
        let waiting = WaitingPrediction {
            seq,
            version,
            score: p.score,
            predicted_positive: p.predicted_positive,
            event_time_us: p.event_time_us,
        };
        match self.predictions.get_key_value(&probe as &dyn Key) {
            Some((key, _)) => {
                self.prediction_order
                    .insert((p.event_time_us, seq), key.clone());
                if let Some(list) = self.predictions.get_mut(&probe as &dyn Key) {
                    list.push(waiting);
                }
            }
            None => {
                // A key already kept for a label is shared, not copied.
                let key = match self.labels.get_key_value(&probe as &dyn Key) {
                    Some((key, _)) => key.clone(),
                    None => probe.to_key(),
                };
                self.prediction_order
                    .insert((p.event_time_us, seq), key.clone());
                self.predictions.insert(key, vec![waiting]);
            }
        }
        while self.prediction_order.len() > limits.max_predictions.max(1) {
            self.drop_oldest_prediction();
            self.counts.predictions_evicted += 1;
        }
        None
    }

    pub fn on_label(&mut self, l: &LabelRecord, limits: JoinLimits) -> Vec<Joined> {
        let mut out = Vec::new();
        self.on_label_into(l, limits, &mut out);
        out
    }

    /// Applies a label; adds the pairs it formed to `out`.
    pub fn on_label_into(&mut self, l: &LabelRecord, limits: JoinLimits, out: &mut Vec<Joined>) {
        self.counts.labels += 1;
        self.label_clock_us = self.label_clock_us.max(l.event_time_us);
        let probe = Probe::of(l.label_key());
        let positive = l.value >= 0.5;
        let mut joined_versions = Vec::new();
        let mut key = None;
        if let Some((waiting_key, waiting)) = self.predictions.remove_entry(&probe as &dyn Key) {
            key = Some(waiting_key);
            for w in waiting {
                self.prediction_order.remove(&(w.event_time_us, w.seq));
                self.counts.matched += 1;
                if !joined_versions.contains(&w.version) {
                    joined_versions.push(w.version);
                }
                out.push(joined(
                    w.version,
                    w.score,
                    w.predicted_positive,
                    w.event_time_us,
                    positive,
                    l.event_time_us,
                ));
            }
        }
        if let Some((old_key, old)) = self.labels.remove_entry(&probe as &dyn Key) {
            key.get_or_insert(old_key);
            self.label_order.remove(&(old.event_time_us, old.seq));
            if old.joined.is_empty() {
                self.unjoined_labels -= 1;
                self.counts.labels_superseded += 1;
            }
        }
        let key = key.unwrap_or_else(|| probe.to_key());
        let seq = self.next();
        let on_arrival = !joined_versions.is_empty();
        if on_arrival {
            self.joined_on_arrival.push_back((key.clone(), seq));
        } else {
            self.unjoined_labels += 1;
        }
        self.label_order.insert((l.event_time_us, seq), key.clone());
        self.labels.insert(
            key,
            KeptLabel {
                seq,
                positive,
                event_time_us: l.event_time_us,
                joined: joined_versions,
                on_arrival,
            },
        );
        while self.joined_on_arrival.len() > JOINED_ON_ARRIVAL_KEPT {
            if let Some((key, seq)) = self.joined_on_arrival.pop_front() {
                self.forget_label(&key, seq);
            }
        }
        while self.labels.len() > limits.max_labels.max(1) {
            if self.drop_oldest_label() {
                self.counts.labels_evicted += 1;
            }
        }
    }

    /// Expires everything older than the join's clock minus the TTL.
    pub fn expire(&mut self, limits: JoinLimits) {
        let clock = self.prediction_clock_us.min(self.label_clock_us);
        let horizon = clock.saturating_sub(limits.ttl_us);
        while self
            .prediction_order
            .first_key_value()
            .is_some_and(|((t, _), _)| *t < horizon)
        {
            self.drop_oldest_prediction();
            self.counts.predictions_expired += 1;
        }
        while self
            .label_order
            .first_key_value()
            .is_some_and(|((t, _), _)| *t < horizon)
        {
            if self.drop_oldest_label() {
                self.counts.labels_expired += 1;
            }
        }
    }

    fn drop_oldest_prediction(&mut self) {
        let Some(((_, seq), key)) = self.prediction_order.pop_first() else {
            return;
        };
        if let Some(waiting) = self.predictions.get_mut(&key) {
            waiting.retain(|w| w.seq != seq);
            if waiting.is_empty() {
                self.predictions.remove(&key);
            }
        }
    }

    /// Drops the oldest label; answers whether it had joined nothing.
    fn drop_oldest_label(&mut self) -> bool {
        let Some((_, key)) = self.label_order.pop_first() else {
            return false;
        };
        match self.labels.remove(&key) {
            Some(label) if label.joined.is_empty() => {
                self.unjoined_labels -= 1;
                true
            }
            _ => false,
        }
    }

    /// Forgets a joined label, if the one under `key` is still the one numbered `seq`.
    fn forget_label(&mut self, key: &LabelKey, seq: u64) {
        if let Some(label) = self.labels.get(key).filter(|l| l.seq == seq) {
            let order = (label.event_time_us, label.seq);
            let unjoined = label.joined.is_empty();
            self.labels.remove(key);
            self.label_order.remove(&order);
            if unjoined {
                self.unjoined_labels -= 1;
            }
        }
    }

    fn next(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

fn joined(
    version: u32,
    score: f64,
    predicted_positive: bool,
    prediction_time_us: i64,
    positive: bool,
    label_time_us: i64,
) -> Joined {
    Joined {
        version,
        sample: Labelled {
            score,
            predicted_positive,
            positive,
            event_time_us: prediction_time_us,
        },
        label_delay_us: label_time_us.saturating_sub(prediction_time_us).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: JoinLimits = JoinLimits {
        ttl_us: 100,
        max_predictions: 10,
        max_labels: 10,
    };

    use millrace_proto::{Label, Prediction};

    fn prediction(key: &str, version: &str, score: f64, t: i64) -> PredictionRecord {
        Prediction {
            event_id: format!("{key}-{version}"),
            model: "fraud".into(),
            model_version: version.into(),
            score,
            predicted_positive: score >= 0.5,
            label_key: key.into(),
            event_time_us: t,
            ..Default::default()
        }
        .into()
    }

    fn label(key: &str, value: f64, t: i64) -> LabelRecord {
        Label {
            event_id: format!("label-{key}"),
            label_key: key.into(),
            value,
            event_time_us: t,
            ..Default::default()
        }
        .into()
    }

    fn versions<'a>(join: &'a LabelJoin, joined: &[Joined]) -> Vec<&'a str> {
        joined
            .iter()
            .filter_map(|j| join.version(j.version))
            .map(|v| v.version.as_str())
            .collect()
    }

    #[test]
    fn label_after_prediction_joins_every_waiting_version() {
        let mut j = LabelJoin::default();
        assert_eq!(
            j.on_prediction(&prediction("k", "1", 0.9, 10), LIMITS),
            None
        );
        assert_eq!(
            j.on_prediction(&prediction("k", "2", 0.2, 10), LIMITS),
            None
        );
        let out = j.on_label(&label("k", 1.0, 40), LIMITS);
        assert_eq!(versions(&j, &out), ["1", "2"]);
        assert_eq!(
            out[0].sample,
            Labelled {
                score: 0.9,
                predicted_positive: true,
                positive: true,
                event_time_us: 10
            }
        );
        assert_eq!(out[0].label_delay_us, 30);
        assert_eq!(j.waiting_predictions(), 0);
        assert_eq!((j.waiting_labels(), j.kept_labels()), (0, 1));
        // A third version arriving later still finds the label, once.
        let late = j.on_prediction(&prediction("k", "3", 0.4, 11), LIMITS);
        assert_eq!(late.map(|x| x.sample.positive), Some(true));
        assert!(j
            .on_prediction(&prediction("k", "3", 0.4, 12), LIMITS)
            .is_none());
        assert_eq!(j.counts.matched, 3);
    }

    #[test]
    fn label_before_prediction_waits_and_joins() {
        let mut j = LabelJoin::default();
        assert!(j.on_label(&label("k", 0.0, 50), LIMITS).is_empty());
        assert_eq!(j.waiting_labels(), 1);
        let out = j.on_prediction(&prediction("k", "1", 0.7, 20), LIMITS);
        let out = out.expect("joined");
        assert_eq!((out.sample.positive, out.sample.score), (false, 0.7));
        assert_eq!(j.waiting_labels(), 0);
    }

    #[test]
    fn expiry_waits_for_both_sides_and_counts_unmatched_in_event_time() {
        let mut j = LabelJoin::default();
        j.on_prediction(&prediction("a", "1", 0.5, 10), LIMITS);
        j.on_label(&label("b", 1.0, 20), LIMITS);
        j.on_prediction(&prediction("c", "1", 0.5, 30), LIMITS);
        j.on_label(&label("c", 1.0, 35), LIMITS); // joins: kept, but not unmatched later
        j.expire(LIMITS);
        assert_eq!(
            j.counts.predictions_expired, 0,
            "clock 30: nothing older than -70"
        );
        j.on_prediction(&prediction("d", "1", 0.5, 125), LIMITS);
        j.expire(LIMITS);
        assert_eq!(
            (j.counts.predictions_expired, j.counts.labels_expired),
            (0, 0),
            "predictions ran ahead, labels stand at 35: a label may still come for a"
        );
        j.on_label(&label("y", 1.0, 126), LIMITS); // clock 125: horizon 25
        j.expire(LIMITS);
        assert_eq!(
            (j.counts.predictions_expired, j.counts.labels_expired),
            (1, 1),
            "a (10) and b (20) expired"
        );
        j.on_label(&label("z", 1.0, 500), LIMITS); // labels ahead now: clock still 125
        j.expire(LIMITS);
        assert_eq!(
            (j.counts.predictions_expired, j.counts.labels_expired),
            (1, 1)
        );
        j.on_prediction(&prediction("e", "1", 0.5, 500), LIMITS); // clock 500: horizon 400
        j.expire(LIMITS);
        assert_eq!(
            (j.counts.predictions_expired, j.counts.labels_expired),
            (2, 2),
            "d and y expired; c's label had joined: dropped without counting"
        );
        assert_eq!((j.waiting_predictions(), j.waiting_labels()), (1, 1));
    }

    #[test]
    fn bounded_stores_evict_the_oldest() {
        let limits = JoinLimits {
            max_predictions: 2,
            max_labels: 2,
            ..LIMITS
        };
        let mut j = LabelJoin::default();
        for (key, t) in [("a", 3), ("b", 1), ("c", 2)] {
            j.on_prediction(&prediction(key, "1", 0.5, t), limits);
        }
        assert_eq!(j.counts.predictions_evicted, 1);
        assert!(
            j.on_label(&label("b", 1.0, 5), limits).is_empty(),
            "b was oldest"
        );
        let out = j.on_label(&label("a", 1.0, 5), limits);
        assert_eq!(versions(&j, &out), ["1"]);
        j.on_label(&label("x", 1.0, 6), limits); // 3 kept labels: b (unjoined) goes
        assert_eq!(j.counts.labels_evicted, 1);
        assert_eq!(j.kept_labels(), 2);
    }

    #[test]
    fn a_newer_label_supersedes_an_unjoined_one() {
        let mut j = LabelJoin::default();
        j.on_label(&label("k", 1.0, 10), LIMITS);
        j.on_label(&label("k", 0.0, 11), LIMITS);
        assert_eq!(j.counts.labels_superseded, 1);
        assert_eq!(j.waiting_labels(), 1);
        let out = j.on_prediction(&prediction("k", "1", 0.1, 5), LIMITS);
        assert_eq!(out.map(|o| o.sample.positive), Some(false));
    }

    #[test]
    fn labels_that_joined_on_arrival_stay_only_among_the_last_ones() {
        let mut j = LabelJoin::default();
        let limits = JoinLimits {
            max_labels: 1_000_000,
            ttl_us: i64::MAX,
            max_predictions: 1_000_000,
        };
        let n = JOINED_ON_ARRIVAL_KEPT + 5;
        for i in 0..n {
            let key = format!("k{i}");
            j.on_prediction(&prediction(&key, "1", 0.5, i as i64), limits);
            assert_eq!(j.on_label(&label(&key, 1.0, i as i64), limits).len(), 1);
        }
        assert_eq!(j.kept_labels(), JOINED_ON_ARRIVAL_KEPT);
        // The oldest went without being counted as unmatched; a recent one still joins v2.
        assert_eq!(j.counts.labels_evicted + j.counts.labels_expired, 0);
        assert!(j
            .on_prediction(&prediction("k0", "2", 0.5, 0), limits)
            .is_none());
        let recent = format!("k{}", n - 1);
        assert!(j
            .on_prediction(&prediction(&recent, "2", 0.5, 0), limits)
            .is_some());
    }

    /// The snapshot keeps the layout it had with `String` keys: maps of label
    /// key to waiting predictions and to kept labels.
    #[test]
    fn the_snapshot_layout_is_maps_of_strings() {
        #[derive(Serialize, Deserialize)]
        struct Layout {
            versions: Vec<ModelVersion>,
            predictions: HashMap<String, Vec<WaitingPrediction>>,
            labels: HashMap<String, KeptLabel>,
            next_seq: u64,
            prediction_clock_us: i64,
            label_clock_us: i64,
            counts: JoinCounts,
        }
        let mut j = LabelJoin::default();
        j.on_prediction(&prediction("a", "1", 0.5, 10), LIMITS);
        j.on_prediction(&prediction("a", "2", 0.5, 10), LIMITS);
        j.on_label(&label("b", 1.0, 20), LIMITS);
        let bytes = postcard::to_stdvec(&j).expect("encode");
        let layout: Layout = postcard::from_bytes(&bytes).expect("the old layout reads it");
        assert_eq!(layout.predictions["a"].len(), 2);
        assert_eq!(layout.labels["b"].seq, 3);
        let back: LabelJoin =
            postcard::from_bytes(&postcard::to_stdvec(&layout).expect("encode")).expect("decode");
        assert_eq!(back, j);
        // A loaded key is found by a record's key.
        let mut back = back;
        let out = back.on_label(&label("a", 0.0, 30), LIMITS);
        assert_eq!(versions(&back, &out), ["1", "2"]);
    }

    #[test]
    fn join_round_trips_through_postcard() {
        let mut j = LabelJoin::default();
        j.on_prediction(&prediction("a", "1", 0.5, 10), LIMITS);
        j.on_label(&label("b", 1.0, 20), LIMITS);
        j.on_prediction(&prediction("c", "1", 0.5, 30), LIMITS);
        j.on_label(&label("c", 1.0, 31), LIMITS); // joins on arrival: queued
        let back: LabelJoin =
            postcard::from_bytes(&postcard::to_stdvec(&j).expect("encode")).expect("decode");
        // The orders rebuilt on load are the ones kept while running.
        assert_eq!(back, j);
    }
}
