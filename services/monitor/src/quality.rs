//! Model quality from labelled predictions: accuracy, precision and recall at
//! the model's own decision, ROC AUC (ties count half), log loss, Brier score,
//! calibration by bins, and the positive rates of predictions and labels.
//!
//! A window reduces its samples to a [`ScoreTally`]: exact integer counts of
//! the confusion matrix plus a multiset score → (negatives, positives). Every
//! figure is computed from the tally in one pass over the distinct scores, so
//! adding or dropping a sample is O(log n) and no figure drifts from rounding
//! accumulated over millions of updates. Each model version keeps two windows:
//! the last N labelled predictions, and those within T seconds of event time
//! of the newest one.
//!
//! A window keeps its tally as samples come and go only once [`tracked`](CountWindow::track):
//! the board tracks the windows its alert rules read (every `evaluate_every`
//! labels). A window only the gauges and the API read (once a second at most)
//! builds its tally when asked, which costs less than updating an ordered
//! multiset of up to `max_window_samples` scores on every label.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::keyed::Keyed;
use crate::stats::ModelVersion;

/// One prediction with its label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Labelled {
    pub score: f64,
    pub predicted_positive: bool,
    pub positive: bool,
    /// The prediction's event time: what the event-time window orders by.
    pub event_time_us: i64,
}

/// Scores clamped this far inside (0, 1) before taking logs, as scikit-learn does.
const LOG_EPSILON: f64 = 1e-15;

/// An f64 as a u64 whose order is the numeric order (negative zero is zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ScoreKey(u64);

impl ScoreKey {
    fn of(score: f64) -> Self {
        let score = if score == 0.0 { 0.0 } else { score };
        let bits = score.to_bits();
        Self(if score.is_sign_negative() {
            !bits
        } else {
            bits | (1 << 63)
        })
    }

    fn score(self) -> f64 {
        let bits = if self.0 & (1 << 63) != 0 {
            self.0 & !(1 << 63)
        } else {
            !self.0
        };
        f64::from_bits(bits)
    }
}

/// What a window is reduced to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScoreTally {
    /// [true negatives, false positives, false negatives, true positives]
    confusion: [u64; 4],
    /// score → [negatives, positives]
    by_score: BTreeMap<ScoreKey, [u64; 2]>,
}

impl ScoreTally {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Labelled>) -> Self {
        let mut tally = Self::default();
        for s in samples {
            tally.add(s);
        }
        tally
    }

    pub fn add(&mut self, s: &Labelled) {
        self.confusion[Self::cell(s)] += 1;
        self.by_score.entry(ScoreKey::of(s.score)).or_default()[usize::from(s.positive)] += 1;
    }

    pub fn remove(&mut self, s: &Labelled) {
        let cell = &mut self.confusion[Self::cell(s)];
        *cell = cell.saturating_sub(1);
        let key = ScoreKey::of(s.score);
        if let Some(counts) = self.by_score.get_mut(&key) {
            let c = &mut counts[usize::from(s.positive)];
            *c = c.saturating_sub(1);
            if *counts == [0, 0] {
                self.by_score.remove(&key);
            }
        }
    }

    fn cell(s: &Labelled) -> usize {
        usize::from(s.positive) * 2 + usize::from(s.predicted_positive)
    }

    pub fn len(&self) -> u64 {
        self.confusion.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn positives(&self) -> u64 {
        self.confusion[2] + self.confusion[3]
    }

    fn negatives(&self) -> u64 {
        self.confusion[0] + self.confusion[1]
    }

    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.confusion[0] + self.confusion[3], self.len())
    }

    /// Of the predicted positives, how many were; undefined without any.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.confusion[3], self.confusion[1] + self.confusion[3])
    }

    /// Of the positives, how many were predicted; undefined without any.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.confusion[3], self.positives())
    }

    pub fn predicted_positive_rate(&self) -> Option<f64> {
        ratio(self.confusion[1] + self.confusion[3], self.len())
    }

    pub fn label_positive_rate(&self) -> Option<f64> {
        ratio(self.positives(), self.len())
    }

    /// [`Self::ranked`]'s ROC AUC alone.
    fn ranked_auc(&self) -> Ranked {
        let mut negatives_below: u128 = 0;
        let mut twice_wins: u128 = 0;
        for [neg, pos] in self.by_score.values() {
            let (n, p) = (u128::from(*neg), u128::from(*pos));
            twice_wins += p * (2 * negatives_below + n);
            negatives_below += n;
        }
        let (pos, neg) = (self.positives(), self.negatives());
        Ranked {
            roc_auc: (pos > 0 && neg > 0)
                .then(|| twice_wins as f64 / (2.0 * pos as f64 * neg as f64)),
            log_loss: None,
            brier: None,
            calibration_error: None,
            calibration: Vec::new(),
        }
    }

    /// The figures that rank or bin the scores, in one pass over the distinct
    /// scores (the multiset is walked once per evaluation, whatever its size).
    ///
    /// - ROC AUC: the probability that a random positive scores above a random
    ///   negative, a tie counting one half (the Mann–Whitney form), exact in
    ///   integers (twice the sum of wins); undefined unless both classes are present;
    /// - log loss: mean negative log-likelihood of the labels under the scores;
    /// - Brier: mean squared difference between score and label;
    /// - calibration: `bins` equal-width bins over [0, 1] (a score of 1 falls in
    ///   the last, scores outside are clamped into the end bins), and the expected
    ///   calibration error, the count-weighted mean gap between each bin's mean
    ///   score and its positive rate.
    fn ranked(&self, bins: usize) -> Ranked {
        let bins = bins.max(1);
        let mut negatives_below: u128 = 0;
        let mut twice_wins: u128 = 0;
        let (mut log_loss, mut brier) = (0.0f64, 0.0f64);
        // (count, positives, score sum) per bin
        let mut acc = vec![(0u64, 0u64, 0.0f64); bins];
        for (key, [neg, pos]) in &self.by_score {
            let s = key.score();
            let (n, p) = (u128::from(*neg), u128::from(*pos));
            twice_wins += p * (2 * negatives_below + n);
            negatives_below += n;
            let (negf, posf) = (*neg as f64, *pos as f64);
            let clamped = s.clamp(LOG_EPSILON, 1.0 - LOG_EPSILON);
            // Most distinct scores hold one class only: no logarithm for the other.
            if *pos > 0 {
                log_loss -= posf * clamped.ln();
            }
            if *neg > 0 {
                log_loss -= negf * (1.0 - clamped).ln();
            }
            brier += posf * (1.0 - s).powi(2) + negf * s.powi(2);
            let bin = &mut acc[bin_of_unit(s, bins)];
            bin.0 += neg + pos;
            bin.1 += pos;
            bin.2 += s * (negf + posf);
        }
        let total = self.len();
        let (pos, neg) = (self.positives(), self.negatives());
        let calibration: Vec<CalibrationBin> = acc
            .into_iter()
            .enumerate()
            .map(|(i, (count, positives, score_sum))| CalibrationBin {
                upper: (i + 1) as f64 / bins as f64,
                count,
                mean_score: (count > 0).then(|| score_sum / count as f64),
                positive_rate: ratio(positives, count),
            })
            .collect();
        let mean = |sum: f64| (total > 0).then(|| sum / total as f64);
        let gaps: f64 = calibration
            .iter()
            .filter_map(|b| Some(b.count as f64 * (b.mean_score? - b.positive_rate?).abs()))
            .sum();
        Ranked {
            roc_auc: (pos > 0 && neg > 0)
                .then(|| twice_wins as f64 / (2.0 * pos as f64 * neg as f64)),
            log_loss: mean(log_loss),
            brier: mean(brier),
            calibration_error: mean(gaps),
            calibration,
        }
    }

    pub fn figures(&self, bins: usize) -> QualityFigures {
        self.figures_with(bins, true)
    }

    /// [`Self::figures`], leaving log loss, Brier and calibration out (`None`,
    /// empty) unless `curve`: alert rules on accuracy or ROC AUC alone then
    /// cost a walk of the scores without a logarithm per score.
    pub fn figures_with(&self, bins: usize, curve: bool) -> QualityFigures {
        let ranked = if curve {
            self.ranked(bins)
        } else {
            self.ranked_auc()
        };
        QualityFigures {
            labelled: self.len(),
            accuracy: self.accuracy(),
            precision: self.precision(),
            recall: self.recall(),
            roc_auc: ranked.roc_auc,
            log_loss: ranked.log_loss,
            brier: ranked.brier,
            calibration_error: ranked.calibration_error,
            predicted_positive_rate: self.predicted_positive_rate(),
            label_positive_rate: self.label_positive_rate(),
            calibration: ranked.calibration,
        }
    }

    #[cfg(test)]
    fn roc_auc(&self) -> Option<f64> {
        self.ranked(1).roc_auc
    }

    #[cfg(test)]
    fn log_loss(&self) -> Option<f64> {
        self.ranked(1).log_loss
    }

    #[cfg(test)]
    fn brier(&self) -> Option<f64> {
        self.ranked(1).brier
    }

    #[cfg(test)]
    fn calibration(&self, bins: usize) -> Vec<CalibrationBin> {
        self.ranked(bins).calibration
    }

    #[cfg(test)]
    fn calibration_error(&self, bins: usize) -> Option<f64> {
        self.ranked(bins).calibration_error
    }
}

/// What [`ScoreTally::ranked`] computes in its one pass.
struct Ranked {
    roc_auc: Option<f64>,
    log_loss: Option<f64>,
    brier: Option<f64>,
    calibration_error: Option<f64>,
    calibration: Vec<CalibrationBin>,
}

fn bin_of_unit(score: f64, bins: usize) -> usize {
    // Truncation is the point: the bin's index.
    ((score.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1)
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationBin {
    /// The bin holds scores below this (the last one also 1.0 itself).
    pub upper: f64,
    pub count: u64,
    pub mean_score: Option<f64>,
    pub positive_rate: Option<f64>,
}

/// Every quality figure of one window; `None` where it is undefined (no labels,
/// one class only, no predicted positives, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityFigures {
    pub labelled: u64,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub roc_auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub calibration_error: Option<f64>,
    pub predicted_positive_rate: Option<f64>,
    pub label_positive_rate: Option<f64>,
    pub calibration: Vec<CalibrationBin>,
}

/// The last `capacity` labelled predictions.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "CountWindowData")]
pub struct CountWindow {
    samples: VecDeque<Labelled>,
    /// Kept up to date while tracked; built when asked otherwise.
    #[serde(skip_serializing)]
    tally: Option<ScoreTally>,
}

#[derive(Deserialize)]
struct CountWindowData {
    samples: VecDeque<Labelled>,
}

impl From<CountWindowData> for CountWindow {
    fn from(data: CountWindowData) -> Self {
        Self {
            samples: data.samples,
            tally: None,
        }
    }
}

/// Windows are equal by their samples; the tally is derived from them.
impl PartialEq for CountWindow {
    fn eq(&self, other: &Self) -> bool {
        self.samples == other.samples
    }
}

impl CountWindow {
    pub fn push(&mut self, sample: Labelled, capacity: usize) {
        self.samples.push_back(sample);
        if let Some(t) = &mut self.tally {
            t.add(&sample);
        }
        while self.samples.len() > capacity.max(1) {
            if let (Some(old), Some(t)) = (self.samples.pop_front(), &mut self.tally) {
                t.remove(&old);
            }
        }
    }

    /// Keeps the tally up to date from now on (for a window read often).
    pub fn track(&mut self) {
        if self.tally.is_none() {
            self.tally = Some(ScoreTally::of(&self.samples));
        }
    }

    pub fn tally(&self) -> Cow<'_, ScoreTally> {
        match &self.tally {
            Some(t) => Cow::Borrowed(t),
            None => Cow::Owned(ScoreTally::of(&self.samples)),
        }
    }
}

/// Labelled predictions whose event time lies within the window's span of the
/// newest one, at most `max_samples` (the oldest go first). Kept in event-time
/// order; labels mostly join in that order, so a sample is nearly always appended.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "TimeWindowData")]
pub struct TimeWindow {
    samples: VecDeque<Labelled>,
    newest_us: i64,
    /// Samples too old for the window when they arrived, or pushed out by the cap.
    dropped: u64,
    /// Kept up to date while tracked; built when asked otherwise.
    #[serde(skip_serializing)]
    tally: Option<ScoreTally>,
}

#[derive(Deserialize)]
struct TimeWindowData {
    samples: VecDeque<Labelled>,
    newest_us: i64,
    dropped: u64,
}

impl From<TimeWindowData> for TimeWindow {
    fn from(data: TimeWindowData) -> Self {
        Self {
            samples: data.samples,
            newest_us: data.newest_us,
            dropped: data.dropped,
            tally: None,
        }
    }
}

/// Windows are equal by what they hold; the tally is derived from it.
impl PartialEq for TimeWindow {
    fn eq(&self, other: &Self) -> bool {
        (&self.samples, self.newest_us, self.dropped)
            == (&other.samples, other.newest_us, other.dropped)
    }
}

impl TimeWindow {
    pub fn push(&mut self, sample: Labelled, span_us: i64, max_samples: usize) {
        self.newest_us = self.newest_us.max(sample.event_time_us);
        let oldest_kept = self.newest_us.saturating_sub(span_us);
        if sample.event_time_us < oldest_kept {
            self.dropped += 1;
        } else {
            let t = sample.event_time_us;
            // After every sample at or before it: equal times keep their arrival order.
            if self
                .samples
                .back()
                .is_none_or(|last| last.event_time_us <= t)
            {
                self.samples.push_back(sample);
            } else {
                let at = self.samples.partition_point(|s| s.event_time_us <= t);
                self.samples.insert(at, sample);
            }
            if let Some(tally) = &mut self.tally {
                tally.add(&sample);
            }
        }
        while let Some(oldest) = self.samples.front() {
            let too_old = oldest.event_time_us < oldest_kept;
            if !too_old && self.samples.len() <= max_samples.max(1) {
                break;
            }
            if let (Some(old), Some(tally)) = (self.samples.pop_front(), &mut self.tally) {
                tally.remove(&old);
            }
            if !too_old {
                self.dropped += 1;
            }
        }
    }

    /// Keeps the tally up to date from now on (for a window read often).
    pub fn track(&mut self) {
        if self.tally.is_none() {
            self.tally = Some(ScoreTally::of(&self.samples));
        }
    }

    pub fn tally(&self) -> Cow<'_, ScoreTally> {
        match &self.tally {
            Some(t) => Cow::Borrowed(t),
            None => Cow::Owned(ScoreTally::of(&self.samples)),
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Both windows of one model version.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionQuality {
    /// Labelled predictions ever joined for this version.
    pub labelled: u64,
    pub by_labels: CountWindow,
    pub by_time: TimeWindow,
}

/// Quality of every model version that has labelled predictions.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityBook {
    pub versions: Keyed<ModelVersion, VersionQuality>,
}

/// The window settings a book needs.
#[derive(Debug, Clone, Copy)]
pub struct QualityWindows {
    pub labels: usize,
    pub span_us: i64,
    pub max_time_samples: usize,
}

impl QualityBook {
    /// Records a labelled prediction; answers the version's count of labelled predictions.
    pub fn record(
        &mut self,
        version: &ModelVersion,
        sample: Labelled,
        windows: QualityWindows,
    ) -> u64 {
        let at = self.position_or_insert(version);
        self.record_at(at, sample, windows)
    }

    /// The position of a version's windows (see [`Keyed`]), adding them on first sight.
    pub fn position_or_insert(&mut self, version: &ModelVersion) -> usize {
        self.versions
            .position_or_insert(version, ModelVersion::clone, VersionQuality::default)
    }

    /// [`QualityBook::record`] at a version's position.
    pub fn record_at(&mut self, position: usize, sample: Labelled, windows: QualityWindows) -> u64 {
        let Some(q) = self.versions.at_mut(position) else {
            return 0;
        };
        q.labelled += 1;
        q.by_labels.push(sample, windows.labels);
        q.by_time
            .push(sample, windows.span_us, windows.max_time_samples);
        q.labelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(score: f64, positive: bool) -> Labelled {
        Labelled {
            score,
            predicted_positive: score >= 0.5,
            positive,
            event_time_us: 0,
        }
    }

    #[test]
    fn figures_without_the_curve_keep_auc_and_counts_and_leave_the_rest_out() {
        let t = ScoreTally::of(&[s(0.9, true), s(0.8, false), s(0.3, true), s(0.2, false)]);
        let (full, lean) = (t.figures(10), t.figures_with(10, false));
        assert_eq!(lean.roc_auc, Some(0.75));
        assert_eq!(
            (lean.roc_auc, lean.accuracy, lean.precision, lean.labelled),
            (full.roc_auc, full.accuracy, full.precision, full.labelled)
        );
        assert_eq!(
            (lean.log_loss, lean.brier, lean.calibration_error),
            (None, None, None)
        );
        assert!(full.log_loss.is_some() && lean.calibration.is_empty());
    }

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-12,
            (None, None) => true,
            _ => false,
        }
    }

    #[test]
    fn roc_auc_matches_hand_counts_with_ties_as_half() {
        // (name, samples, AUC counted by hand over every positive × negative pair)
        let cases: Vec<(&str, Vec<Labelled>, Option<f64>)> = vec![
            (
                "perfect_ranking",
                vec![s(0.1, false), s(0.2, false), s(0.8, true), s(0.9, true)],
                Some(1.0),
            ),
            (
                "inverted_ranking",
                vec![s(0.9, false), s(0.1, true)],
                Some(0.0),
            ),
            (
                // pos 0.8 vs neg {0.2, 0.6}: 2 wins; pos 0.6 vs neg {0.2, 0.6}: 1 win + 1 tie;
                // pos 0.4 vs neg {0.2, 0.6}: 1 win. (2 + 1.5 + 1) / (3 × 2) = 0.75
                "tie_between_a_positive_and_a_negative_counts_half",
                vec![
                    s(0.8, true),
                    s(0.6, true),
                    s(0.4, true),
                    s(0.2, false),
                    s(0.6, false),
                ],
                Some(0.75),
            ),
            (
                "every_score_equal_is_a_coin_flip",
                vec![s(0.5, true), s(0.5, false), s(0.5, true), s(0.5, false)],
                Some(0.5),
            ),
            (
                // pos {0.7, 0.3, 0.3}, neg {0.3, 0.1}: 0.7 → 2; 0.3 → 0.5 + 1 each → 2 × 1.5;
                // (2 + 3) / 6
                "ties_among_positives_and_with_a_negative",
                vec![
                    s(0.7, true),
                    s(0.3, true),
                    s(0.3, true),
                    s(0.3, false),
                    s(0.1, false),
                ],
                Some(5.0 / 6.0),
            ),
            ("only_positives_is_undefined", vec![s(0.9, true)], None),
            ("no_labels_is_undefined", vec![], None),
        ];
        for (name, samples, expected) in cases {
            let got = ScoreTally::of(&samples).roc_auc();
            assert!(close(got, expected), "{name}: {got:?} vs {expected:?}");
        }
    }

    #[test]
    fn threshold_metrics_log_loss_and_brier_match_hand_values() {
        // scores / labels / predicted (>= 0.5):
        // 0.9 1 P (TP), 0.6 0 P (FP), 0.4 1 N (FN), 0.2 0 N (TN), 0.8 1 P (TP)
        let samples = [
            s(0.9, true),
            s(0.6, false),
            s(0.4, true),
            s(0.2, false),
            s(0.8, true),
        ];
        let t = ScoreTally::of(&samples);
        let log_loss = -(0.9f64.ln() + 0.4f64.ln() + 0.4f64.ln() + 0.8f64.ln() + 0.8f64.ln()) / 5.0;
        let brier = (0.01 + 0.36 + 0.36 + 0.04 + 0.04) / 5.0;
        let cases = [
            ("accuracy", t.accuracy(), Some(3.0 / 5.0)),
            ("precision", t.precision(), Some(2.0 / 3.0)),
            ("recall", t.recall(), Some(2.0 / 3.0)),
            (
                "predicted_positive_rate",
                t.predicted_positive_rate(),
                Some(3.0 / 5.0),
            ),
            (
                "label_positive_rate",
                t.label_positive_rate(),
                Some(3.0 / 5.0),
            ),
            ("log_loss", t.log_loss(), Some(log_loss)),
            ("brier", t.brier(), Some(brier)),
            // pos {0.9, 0.4, 0.8} vs neg {0.6, 0.2}: 2 + 1 + 2 = 5 of 6
            ("roc_auc", t.roc_auc(), Some(5.0 / 6.0)),
        ];
        for (name, got, expected) in cases {
            assert!(close(got, expected), "{name}: {got:?} vs {expected:?}");
        }
    }

    #[test]
    fn a_window_without_labels_has_no_figures() {
        let f = ScoreTally::default().figures(4);
        assert_eq!(f.labelled, 0);
        for (name, v) in [
            ("accuracy", f.accuracy),
            ("precision", f.precision),
            ("recall", f.recall),
            ("roc_auc", f.roc_auc),
            ("log_loss", f.log_loss),
            ("brier", f.brier),
            ("calibration_error", f.calibration_error),
            ("predicted_positive_rate", f.predicted_positive_rate),
            ("label_positive_rate", f.label_positive_rate),
        ] {
            assert_eq!(v, None, "{name}");
        }
        assert_eq!(f.calibration.len(), 4);
        assert!(f
            .calibration
            .iter()
            .all(|b| b.count == 0 && b.mean_score.is_none() && b.positive_rate.is_none()));
    }

    #[test]
    fn undefined_ratios_stay_undefined_with_labels() {
        // Nothing predicted positive: precision undefined. No positive labels: recall and AUC.
        let t = ScoreTally::of(&[s(0.1, false), s(0.3, false)]);
        assert_eq!(t.precision(), None);
        assert_eq!(t.recall(), None);
        assert_eq!(t.roc_auc(), None);
        assert_eq!(t.accuracy(), Some(1.0));
    }

    #[test]
    fn log_loss_clamps_certain_wrong_answers() {
        let t = ScoreTally::of(&[s(0.0, true)]);
        let expected = -(LOG_EPSILON.ln());
        assert!(close(t.log_loss(), Some(expected)), "{:?}", t.log_loss());
    }

    #[test]
    fn calibration_bins_and_expected_calibration_error() {
        // 4 bins. [0, .25): 0.1 (neg), 0.2 (pos) → mean .15, rate .5
        // [.5, .75): 0.6 (pos) → .6, 1.0; [.75, 1]: 1.0 (pos), 0.8 (neg) → .9, .5
        let samples = [
            s(0.1, false),
            s(0.2, true),
            s(0.6, true),
            s(1.0, true),
            s(0.8, false),
        ];
        let t = ScoreTally::of(&samples);
        let bins = t.calibration(4);
        let got: Vec<(u64, Option<f64>, Option<f64>)> = bins
            .iter()
            .map(|b| (b.count, b.mean_score, b.positive_rate))
            .collect();
        let want = [
            (2, Some(0.15), Some(0.5)),
            (0, None, None),
            (1, Some(0.6), Some(1.0)),
            (2, Some(0.9), Some(0.5)),
        ];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.0, w.0, "bin {i} count");
            assert!(
                close(g.1, w.1) && close(g.2, w.2),
                "bin {i}: {g:?} vs {w:?}"
            );
        }
        assert_eq!(bins[3].upper, 1.0);
        // (2 × .35 + 1 × .4 + 2 × .4) / 5
        assert!(close(t.calibration_error(4), Some(1.9 / 5.0)));
    }

    #[test]
    fn removing_samples_restores_the_tally() {
        let a = [s(0.3, true), s(0.3, false), s(0.7, true)];
        let mut t = ScoreTally::of(&a);
        t.add(&s(0.9, false));
        t.remove(&s(0.9, false));
        assert_eq!(t, ScoreTally::of(&a));
        for x in &a {
            t.remove(x);
        }
        assert_eq!(t, ScoreTally::default());
    }

    #[test]
    fn score_keys_order_like_the_numbers() {
        let mut xs = [0.5, -1.0, 0.0, -0.0, 1.0, 1e-300, -1e-300, 0.25];
        let mut keys: Vec<ScoreKey> = xs.iter().map(|x| ScoreKey::of(*x)).collect();
        keys.sort();
        xs.sort_by(f64::total_cmp);
        let back: Vec<f64> = keys.iter().map(|k| k.score()).collect();
        let want: Vec<f64> = xs
            .iter()
            .map(|x| if *x == 0.0 { 0.0 } else { *x })
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn count_window_keeps_the_last_n() {
        let mut w = CountWindow::default();
        for (score, positive) in [(0.0, true), (0.1, false), (0.2, true), (0.3, true)] {
            w.push(s(score, positive), 3);
        }
        assert_eq!(w.tally().len(), 3);
        let want = ScoreTally::of(&[s(0.1, false), s(0.2, true), s(0.3, true)]);
        assert_eq!(*w.tally(), want);
        // Tracked from here on: the kept tally follows the samples.
        w.track();
        w.push(s(0.4, false), 3);
        let want = ScoreTally::of(&[s(0.2, true), s(0.3, true), s(0.4, false)]);
        assert!(matches!(w.tally(), Cow::Borrowed(_)));
        assert_eq!(*w.tally(), want);
    }

    #[test]
    fn time_window_drops_what_is_older_than_its_span_and_beyond_its_cap() {
        let at = |t: i64, positive| Labelled {
            event_time_us: t,
            ..s(0.5, positive)
        };
        for tracked in [false, true] {
            let mut w = TimeWindow::default();
            if tracked {
                w.track();
            }
            w.push(at(100, true), 50, 10);
            w.push(at(120, false), 50, 10);
            w.push(at(160, true), 50, 10); // 100 is now older than 160 - 50
            assert_eq!(w.tally().len(), 2);
            w.push(at(90, true), 50, 10); // arrives too late for the window
            assert_eq!((w.tally().len(), w.dropped()), (2, 1));
            w.push(at(161, true), 50, 2); // the cap pushes out 120
            assert_eq!(*w.tally(), ScoreTally::of(&[at(160, true), at(161, true)]));
            assert_eq!(w.dropped(), 2);
            assert_eq!(matches!(w.tally(), Cow::Borrowed(_)), tracked);
        }
    }

    #[test]
    fn time_window_keeps_late_arrivals_in_event_time_order() {
        let at = |t: i64| Labelled {
            event_time_us: t,
            ..s(0.1 * t as f64, t % 2 == 0)
        };
        let mut w = TimeWindow::default();
        for t in [3, 5, 4, 1, 6] {
            w.push(at(t), 100, 10);
        }
        let times: Vec<i64> = w.samples.iter().map(|x| x.event_time_us).collect();
        assert_eq!(times, [1, 3, 4, 5, 6]);
        // The cap drops the oldest by event time, not by arrival.
        w.push(at(2), 100, 4);
        let times: Vec<i64> = w.samples.iter().map(|x| x.event_time_us).collect();
        assert_eq!(times, [3, 4, 5, 6]);
        assert_eq!(w.dropped(), 2);
    }

    #[test]
    fn windows_rebuild_their_tally_from_a_snapshot() {
        let mut book = QualityBook::default();
        let v = ModelVersion::new("fraud", "1");
        let windows = QualityWindows {
            labels: 2,
            span_us: 1_000,
            max_time_samples: 10,
        };
        for (i, positive) in [true, false, true].into_iter().enumerate() {
            let sample = Labelled {
                event_time_us: i as i64,
                ..s(0.2 * i as f64, positive)
            };
            book.record(&v, sample, windows);
        }
        let bytes = postcard::to_stdvec(&book).expect("encode");
        let back: QualityBook = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, book);
        assert_eq!(back.versions[&v].by_labels.tally().len(), 2);
        assert_eq!(back.versions[&v].by_time.tally().len(), 3);
    }
}
