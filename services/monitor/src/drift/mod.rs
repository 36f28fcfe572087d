//! Drift of a value's distribution (a feature, or a model version's score)
//! against a reference: the first `reference_events` values, frozen once
//! complete, or a model version's training distribution from its metadata
//! ([`Reference::from_steps`]); compared with a sliding window of the last
//! `window_events` values every `evaluate_every` values.
//!
//! The reference fixes the bins once: numeric values by the reference's
//! quantiles (open-ended at both ends, so a value outside the reference's range
//! still lands somewhere), categorical values by their most frequent
//! categories plus one bin for every other value. Each statistic is a
//! [`DriftStatistic`] in its own file: [`psi`] and [`ks`].
//!
//! Nothing is sorted per evaluation. A numeric value entering the window is
//! placed once among the reference's distinct values, in a *bucket*: equal to
//! the j-th distinct value, or strictly between the (j−1)-th and the j-th. The
//! window keeps a count per bucket as values come and go; PSI bins and the
//! exact KS statistic are both read from those counts in one pass over them
//! (see [`ks::ks_of_buckets`]). Placing a value is a search among at most a few
//! distinct values: a [`Guide`] cuts the reference's range into as many
//! equal-width cells as it has distinct values and remembers where each starts.

pub mod ks;
pub mod psi;

use std::collections::VecDeque;
use std::ops::Range;

use millrace_chassis::config::FeatureKind;
use serde::{Deserialize, Serialize};

use crate::keyed::Keyed;
use crate::stats::ModelVersion;

/// One way of measuring how far the current window is from the reference.
pub trait DriftStatistic {
    /// The statistic, or `None` where it does not apply to this kind of value.
    fn measure(&self, reference: &Reference, current: &Current<'_>) -> Option<f64>;
}

/// How values fall into bins; fixed when the reference is frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Binning {
    /// Bin `i` holds values in `[edges[i-1], edges[i])`; the first and last are open.
    Quantiles { edges: Vec<f64> },
    /// One bin per listed value (ascending), then one for every other value.
    Categories { values: Vec<f64> },
}

impl Binning {
    /// Edges at the `bins`-quantiles of `sorted`, without repeats and without one
    /// at the minimum (a bin below every reference value would only be empty).
    pub fn quantiles(sorted: &[f64], bins: usize) -> Self {
        let steps = Steps::of_sorted(sorted);
        Self::quantiles_of(&steps, bins)
    }

    /// [`Self::quantiles`] of the values the steps describe: the k-th edge is
    /// the value at index ⌊k·n/bins⌋ of them in order.
    fn quantiles_of(steps: &Steps, bins: usize) -> Self {
        let mut edges: Vec<f64> = Vec::with_capacity(bins);
        let n = u128::from(steps.size());
        if let Some(&min) = steps.distinct.first() {
            for k in 1..bins.max(1) {
                let i = (k as u128 * n / bins as u128) as u64;
                let j = steps.cumulative.partition_point(|c| *c <= i);
                let Some(&edge) = steps.distinct.get(j) else {
                    break;
                };
                if edge > min && edges.last().is_none_or(|last| edge > *last) {
                    edges.push(edge);
                }
            }
        }
        Self::Quantiles { edges }
    }

    /// The `max` most frequent values (ties broken by the smaller value).
    pub fn categories(values: &[f64], max: usize) -> Self {
        let mut sorted: Vec<f64> = values.iter().map(|v| canonical(*v)).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        Self::categories_of(&Steps::of_sorted(&sorted), max)
    }

    fn categories_of(steps: &Steps, max: usize) -> Self {
        let mut by_count: Vec<(f64, u64)> = steps.masses().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
        let mut kept: Vec<f64> = by_count
            .into_iter()
            .take(max.max(1))
            .map(|(v, _)| v)
            .collect();
        kept.sort_by(f64::total_cmp);
        Self::Categories { values: kept }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Quantiles { edges } => edges.len() + 1,
            Self::Categories { values } => values.len() + 1,
        }
    }

    /// Never: there is always at least the catch-all bin.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn bin_of(&self, v: f64) -> usize {
        match self {
            Self::Quantiles { edges } => edges.partition_point(|e| *e <= v),
            Self::Categories { values } => values
                .binary_search_by(|c| c.total_cmp(&canonical(v)))
                .unwrap_or(values.len()),
        }
    }

    pub fn counts<'a>(&self, values: impl IntoIterator<Item = &'a f64>) -> Vec<u64> {
        let mut counts = vec![0; self.len()];
        for v in values {
            counts[self.bin_of(*v)] += 1;
        }
        counts
    }
}

/// An empirical distribution function at its steps: `cumulative[j]` values
/// are at or below `distinct[j]` (ascending, finite).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steps {
    pub distinct: Vec<f64>,
    pub cumulative: Vec<u64>,
}

impl Steps {
    fn of_sorted(sorted: &[f64]) -> Self {
        let mut steps = Self::default();
        for (i, v) in sorted.iter().enumerate() {
            match steps.distinct.last() {
                Some(last) if last == v => {
                    if let Some(c) = steps.cumulative.last_mut() {
                        *c = i as u64 + 1;
                    }
                }
                _ => {
                    steps.distinct.push(*v);
                    steps.cumulative.push(i as u64 + 1);
                }
            }
        }
        steps
    }

    /// Checks steps that came from outside (a model's metadata).
    pub fn new(distinct: Vec<f64>, cumulative: Vec<u64>) -> Result<Self, String> {
        if distinct.len() != cumulative.len() {
            return Err(format!(
                "{} values but {} cumulative counts",
                distinct.len(),
                cumulative.len()
            ));
        }
        let distinct: Vec<f64> = distinct.into_iter().map(canonical).collect();
        if let Some(v) = distinct.iter().find(|v| !v.is_finite()) {
            return Err(format!("value {v} is not finite"));
        }
        if distinct.windows(2).any(|w| w[0] >= w[1]) {
            return Err("values are not strictly ascending".into());
        }
        if cumulative.first() == Some(&0) || cumulative.windows(2).any(|w| w[0] >= w[1]) {
            return Err("cumulative counts are not positive and strictly ascending".into());
        }
        Ok(Self {
            distinct,
            cumulative,
        })
    }

    pub fn size(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Each distinct value with how many values equal it.
    fn masses(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let below = std::iter::once(0).chain(self.cumulative.iter().copied());
        self.distinct
            .iter()
            .zip(self.cumulative.iter().zip(below))
            .map(|(v, (at, below))| (*v, at - below))
    }
}

/// -0.0 is 0.0 as a category.
fn canonical(v: f64) -> f64 {
    if v == 0.0 {
        0.0
    } else {
        v
    }
}

/// Where a reference came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceSource {
    /// The first `reference_events` values observed.
    #[default]
    FirstEvents,
    /// The data this model version was trained on (its registry metadata).
    Training { model: String, version: String },
}

impl ReferenceSource {
    /// As the health report and the metrics name it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FirstEvents => "first_events",
            Self::Training { .. } => "training",
        }
    }
}

/// The frozen reference window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub source: ReferenceSource,
    pub kind: FeatureKind,
    /// How many values it holds.
    pub size: u64,
    /// Numeric: its distinct values, ascending, and how many of its values are
    /// at or below each (the empirical distribution at each step).
    pub distinct: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub binning: Binning,
    /// Its count per PSI bin.
    pub counts: Vec<u64>,
    /// The PSI bin of each bucket (see [`Reference::bucket_of`]).
    bucket_bins: Vec<u32>,
    /// Where to search `distinct` for a value; rebuilt on load.
    #[serde(skip)]
    guide: Guide,
}

/// Cuts `[distinct[0], distinct[last]]` into equal-width cells; `starts[c]` is
/// the first distinct value whose cell is `c` or later. A value's cell bounds
/// where it can fall among the distinct values: every value of an earlier cell
/// is smaller, every value of a later one larger (the cell of a value never
/// decreases as the value grows), so the search covers one cell's values only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guide {
    low: f64,
    scale: f64,
    starts: Vec<u32>,
}

impl Guide {
    fn build(distinct: &[f64]) -> Self {
        let (Some(&low), Some(&high)) = (distinct.first(), distinct.last()) else {
            return Self::default();
        };
        let cells = distinct.len();
        let scale = cells as f64 / (high - low);
        if !(scale.is_finite() && scale > 0.0) || u32::try_from(cells).is_err() {
            return Self::default();
        }
        let mut guide = Self {
            low,
            scale,
            starts: Vec::with_capacity(cells + 1),
        };
        for c in 0..=cells {
            let start = distinct.partition_point(|d| guide.cell(*d, cells) < c);
            guide.starts.push(u32::try_from(start).unwrap_or(u32::MAX));
        }
        guide
    }

    /// Non-decreasing in `v`: subtraction, multiplication by a positive number,
    /// and the saturating cast all keep order.
    fn cell(&self, v: f64, cells: usize) -> usize {
        (((v - self.low) * self.scale) as usize).min(cells - 1)
    }

    /// The range of `distinct` holding the position of `v`, when built.
    fn range(&self, v: f64) -> Option<Range<usize>> {
        let cells = self.starts.len().checked_sub(1).filter(|c| *c > 0)?;
        let c = self.cell(v, cells);
        Some(self.starts[c] as usize..self.starts[c + 1] as usize)
    }
}

impl Reference {
    /// The reference of the first values observed.
    pub fn freeze(mut values: Vec<f64>, spec: &DriftSpec) -> Self {
        for v in &mut values {
            *v = canonical(*v);
        }
        values.sort_unstable_by(f64::total_cmp);
        Self::from_steps(
            Steps::of_sorted(&values),
            spec,
            ReferenceSource::FirstEvents,
        )
    }

    /// The reference whose values the steps describe, binned as
    /// [`Self::freeze`] bins the same values.
    pub fn from_steps(steps: Steps, spec: &DriftSpec, source: ReferenceSource) -> Self {
        let binning = match spec.kind {
            FeatureKind::Numeric => Binning::quantiles_of(&steps, spec.bins),
            FeatureKind::Categorical => Binning::categories_of(&steps, spec.max_categories),
        };
        let mut counts = vec![0; binning.len()];
        for (v, mass) in steps.masses() {
            counts[binning.bin_of(v)] += mass;
        }
        let size = steps.size();
        // Categories need no steps: no KS, and the bins are the buckets.
        let Steps {
            distinct,
            cumulative,
        } = match spec.kind {
            FeatureKind::Numeric => steps,
            FeatureKind::Categorical => Steps::default(),
        };
        let bucket_bins = match spec.kind {
            // Gap j holds values strictly below distinct[j] and above distinct[j-1];
            // every edge is a reference value, so the bin is fixed per bucket.
            FeatureKind::Numeric => (0..=2 * distinct.len())
                .map(|b| {
                    let j = b / 2;
                    let bin = if b % 2 == 0 {
                        match distinct.get(j) {
                            Some(d) => match &binning {
                                Binning::Quantiles { edges } => edges.partition_point(|e| e < d),
                                Binning::Categories { .. } => 0,
                            },
                            None => binning.len() - 1,
                        }
                    } else {
                        binning.bin_of(distinct[j])
                    };
                    u32::try_from(bin).unwrap_or(u32::MAX)
                })
                .collect(),
            FeatureKind::Categorical => (0..binning.len())
                .map(|b| u32::try_from(b).unwrap_or(u32::MAX))
                .collect(),
        };
        let guide = Guide::build(&distinct);
        Self {
            source,
            kind: spec.kind,
            size,
            distinct,
            cumulative,
            binning,
            counts,
            bucket_bins,
            guide,
        }
    }

    /// The bucket of a value: for numeric values `2j + 1` when it equals the j-th
    /// distinct reference value, `2j` when it lies strictly between the (j−1)-th
    /// and the j-th (or beyond the last); for categorical values its bin.
    pub fn bucket_of(&self, v: f64) -> u32 {
        let bucket = match self.kind {
            FeatureKind::Numeric => {
                let j = match self.guide.range(v) {
                    Some(cell) => {
                        let start = cell.start;
                        // A cell holds one value on average: a scan beats a search.
                        start
                            + self.distinct.get(cell).map_or(0, |run| {
                                if run.len() <= 8 {
                                    run.iter().take_while(|d| **d < v).count()
                                } else {
                                    run.partition_point(|d| *d < v)
                                }
                            })
                    }
                    None => self.distinct.partition_point(|d| *d < v),
                };
                if self.distinct.get(j) == Some(&v) {
                    2 * j + 1
                } else {
                    2 * j
                }
            }
            FeatureKind::Categorical => self.binning.bin_of(v),
        };
        u32::try_from(bucket).unwrap_or(u32::MAX)
    }

    pub fn buckets(&self) -> usize {
        self.bucket_bins.len()
    }
}

/// The current window as the statistics read it: its count per bucket and per PSI bin.
pub struct Current<'a> {
    pub len: u64,
    pub bucket_counts: &'a [u32],
    pub counts: &'a [u64],
}

/// How one value is watched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftSpec {
    pub kind: FeatureKind,
    pub bins: usize,
    pub max_categories: usize,
    pub reference_events: usize,
    pub window_events: usize,
    pub evaluate_every: u64,
}

/// What one evaluation found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftFigures {
    pub psi: Option<f64>,
    pub ks: Option<f64>,
    /// How many values had been observed when it was measured.
    pub at_value: u64,
}

/// The reference and the sliding window of one value.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TrackerData")]
pub struct DriftTracker {
    filling: Vec<f64>,
    reference: Option<Reference>,
    /// The window's values, as their buckets.
    window: VecDeque<u32>,
    after_reference: u64,
    /// Finite values observed.
    pub observed: u64,
    /// Values that were not finite (NaN, ±∞): counted, never binned.
    pub skipped: u64,
    pub last: Option<DriftFigures>,
    /// The window's count per bucket and per PSI bin, kept as values come and
    /// go (so an evaluation reads them instead of counting); rebuilt from `window` on load.
    #[serde(skip_serializing)]
    bucket_counts: Vec<u32>,
    #[serde(skip_serializing)]
    bin_counts: Vec<u64>,
}

#[derive(Deserialize)]
struct TrackerData {
    filling: Vec<f64>,
    reference: Option<Reference>,
    window: VecDeque<u32>,
    after_reference: u64,
    observed: u64,
    skipped: u64,
    last: Option<DriftFigures>,
}

impl From<TrackerData> for DriftTracker {
    fn from(mut d: TrackerData) -> Self {
        if let Some(r) = &mut d.reference {
            r.guide = Guide::build(&r.distinct);
        }
        let mut tracker = Self {
            filling: d.filling,
            reference: d.reference,
            window: d.window,
            after_reference: d.after_reference,
            observed: d.observed,
            skipped: d.skipped,
            last: d.last,
            bucket_counts: Vec::new(),
            bin_counts: Vec::new(),
        };
        tracker.recount();
        tracker
    }
}

impl DriftTracker {
    /// Takes one value; answers the figures when this value completes an
    /// evaluation: once the window is first full, then every `evaluate_every`.
    pub fn observe(&mut self, v: f64, spec: &DriftSpec) -> Option<DriftFigures> {
        if !v.is_finite() {
            self.skipped += 1;
            return None;
        }
        self.observed += 1;
        let Some(reference) = &self.reference else {
            self.filling.push(v);
            if self.filling.len() >= spec.reference_events.max(1) {
                let reference = Reference::freeze(std::mem::take(&mut self.filling), spec);
                self.reference = Some(reference);
                self.recount();
            }
            return None;
        };
        let size = spec.window_events.max(1);
        let bucket = reference.bucket_of(v);
        self.window.push_back(bucket);
        if let Some(c) = self.bucket_counts.get_mut(bucket as usize) {
            *c += 1;
        }
        if let Some(c) = reference
            .bucket_bins
            .get(bucket as usize)
            .and_then(|bin| self.bin_counts.get_mut(*bin as usize))
        {
            *c += 1;
        }
        while self.window.len() > size {
            if let Some(old) = self.window.pop_front() {
                if let Some(c) = self.bucket_counts.get_mut(old as usize) {
                    *c = c.saturating_sub(1);
                }
                if let Some(c) = reference
                    .bucket_bins
                    .get(old as usize)
                    .and_then(|bin| self.bin_counts.get_mut(*bin as usize))
                {
                    *c = c.saturating_sub(1);
                }
            }
        }
        self.after_reference += 1;
        let size = size as u64;
        if self.after_reference < size
            || !(self.after_reference - size).is_multiple_of(spec.evaluate_every.max(1))
        {
            return None;
        }
        let current = Current {
            len: self.window.len() as u64,
            bucket_counts: &self.bucket_counts,
            counts: &self.bin_counts,
        };
        let figures = DriftFigures {
            psi: psi::Psi.measure(reference, &current),
            ks: ks::Ks.measure(reference, &current),
            at_value: self.observed,
        };
        self.last = Some(figures);
        Some(figures)
    }

    /// Compares from now on with `reference` (a model's training data) instead
    /// of the first values. What the window held was placed against the
    /// reference it replaces, so the window starts over.
    pub fn install(&mut self, reference: Reference) {
        self.filling = Vec::new();
        self.window.clear();
        self.after_reference = 0;
        self.last = None;
        self.reference = Some(reference);
        self.recount();
    }

    /// Where the reference comes from (`FirstEvents` while it fills).
    pub fn source(&self) -> &ReferenceSource {
        const FILLING: &ReferenceSource = &ReferenceSource::FirstEvents;
        self.reference.as_ref().map_or(FILLING, |r| &r.source)
    }

    /// Counts the window per bucket and per bin from scratch (a new reference, a load).
    fn recount(&mut self) {
        let Some(reference) = &self.reference else {
            return;
        };
        self.bucket_counts = vec![0; reference.buckets()];
        self.bin_counts = vec![0; reference.counts.len()];
        for b in &self.window {
            if let Some(c) = self.bucket_counts.get_mut(*b as usize) {
                *c += 1;
            }
            if let Some(c) = reference
                .bucket_bins
                .get(*b as usize)
                .and_then(|bin| self.bin_counts.get_mut(*bin as usize))
            {
                *c += 1;
            }
        }
    }

    pub fn reference_size(&self) -> usize {
        self.reference.as_ref().map_or(self.filling.len(), |r| {
            usize::try_from(r.size).unwrap_or(usize::MAX)
        })
    }

    pub fn window_size(&self) -> usize {
        self.window.len()
    }
}

/// Every watched feature (by name) and every model version's score.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftBook {
    pub features: Keyed<String, DriftTracker>,
    pub scores: Keyed<ModelVersion, DriftTracker>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: FeatureKind) -> DriftSpec {
        DriftSpec {
            kind,
            bins: 4,
            max_categories: 2,
            reference_events: 8,
            window_events: 4,
            evaluate_every: 2,
        }
    }

    #[test]
    fn quantile_edges_skip_repeats_and_the_minimum() {
        let cases: [(&str, Vec<f64>, usize, Vec<f64>); 4] = [
            (
                "distinct",
                (0..8).map(f64::from).collect(),
                4,
                vec![2.0, 4.0, 6.0],
            ),
            (
                "repeated_values_merge_bins",
                vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0],
                4,
                vec![2.0],
            ),
            ("constant_is_one_bin", vec![5.0; 6], 3, vec![]),
            ("empty", vec![], 4, vec![]),
        ];
        for (name, sorted, bins, edges) in cases {
            assert_eq!(
                Binning::quantiles(&sorted, bins),
                Binning::Quantiles { edges },
                "{name}"
            );
        }
        let b = Binning::quantiles(&[0.0, 1.0, 2.0, 3.0], 2);
        let bins: Vec<usize> = [-5.0, 0.0, 1.9, 2.0, 99.0]
            .iter()
            .map(|v| b.bin_of(*v))
            .collect();
        assert_eq!(bins, [0, 0, 0, 1, 1]);
    }

    /// The guided search places every value where a search of all distinct
    /// values does: between, on, below and above them, ties and uneven spreads included.
    #[test]
    fn guided_buckets_match_a_full_search() {
        let s = spec(FeatureKind::Numeric);
        let mut state = 11u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let shapes: [fn(u64) -> f64; 5] = [
            |x| (x % 1000) as f64 / 7.0,
            |x| ((x % 100) as f64).exp(), // a long tail: most cells empty
            |x| (x % 3) as f64,           // few distinct values
            |x| -1e300 + (x % 2) as f64 * 2e300,
            |_| 4.25, // one value: no guide
        ];
        for (i, shape) in shapes.iter().enumerate() {
            let values: Vec<f64> = (0..500).map(|_| shape(next())).collect();
            let r = Reference::freeze(values.clone(), &s);
            let full = |v: f64| {
                let j = r.distinct.partition_point(|d| *d < v);
                let on = r.distinct.get(j) == Some(&v);
                u32::try_from(2 * j + usize::from(on)).unwrap_or(u32::MAX)
            };
            let mut probes: Vec<f64> = values;
            probes.extend(r.distinct.iter().map(|d| d + d.abs() * 1e-9 + 1e-12));
            probes.extend(r.distinct.iter().map(|d| d - d.abs() * 1e-9 - 1e-12));
            probes.extend([f64::MIN, -1e308, -1.0, 0.0, 1e-300, 1e308, f64::MAX]);
            for v in probes {
                assert_eq!(r.bucket_of(v), full(v), "shape {i}, value {v}");
            }
        }
    }

    #[test]
    fn categories_keep_the_most_frequent_and_pool_the_rest() {
        let b = Binning::categories(&[3.0, 1.0, 3.0, 2.0, 2.0, 7.0, 3.0], 2);
        assert_eq!(
            b,
            Binning::Categories {
                values: vec![2.0, 3.0]
            }
        );
        let bins: Vec<usize> = [2.0, 3.0, 1.0, 42.0].iter().map(|v| b.bin_of(*v)).collect();
        assert_eq!(bins, [0, 1, 2, 2]);
        assert_eq!(b.counts(&[2.0, 9.0, 9.0]), [1, 0, 2]);
    }

    #[test]
    fn tracker_freezes_the_reference_then_evaluates_on_schedule() {
        let s = spec(FeatureKind::Numeric);
        let mut t = DriftTracker::default();
        let mut evaluated_at = Vec::new();
        for i in 0..8 {
            assert_eq!(t.observe(f64::from(i), &s), None, "reference value {i}");
        }
        assert_eq!(t.reference_size(), 8);
        // Window of 4 first full at the 4th value after the reference, then every 2.
        for i in 0..9 {
            if let Some(f) = t.observe(f64::from(i % 8), &s) {
                evaluated_at.push(f.at_value);
            }
        }
        assert_eq!(evaluated_at, [12, 14, 16]);
        assert_eq!(t.window_size(), 4);
        assert_eq!(t.observe(f64::NAN, &s), None);
        assert_eq!((t.observed, t.skipped), (17, 1));
    }

    #[test]
    fn a_window_like_the_reference_scores_low_and_a_shifted_one_high() {
        let s = DriftSpec {
            reference_events: 100,
            window_events: 100,
            bins: 10,
            evaluate_every: 100,
            ..spec(FeatureKind::Numeric)
        };
        let mut same = DriftTracker::default();
        let mut shifted = DriftTracker::default();
        let mut last = (None, None);
        for i in 0..200 {
            let v = f64::from(i % 100);
            let a = same.observe(v, &s);
            let b = shifted.observe(if i < 100 { v } else { v + 50.0 }, &s);
            if a.is_some() {
                last = (a, b);
            }
        }
        let (Some(a), Some(b)) = last else {
            panic!("both evaluated at value 200");
        };
        assert_eq!((a.psi, a.ks), (Some(0.0), Some(0.0)));
        assert_eq!(b.ks, Some(0.5));
        assert!(b.psi.is_some_and(|p| p > 1.0), "{b:?}");
    }

    #[test]
    fn categorical_values_have_psi_and_no_ks() {
        let s = DriftSpec {
            max_categories: 10,
            ..spec(FeatureKind::Categorical)
        };
        let mut t = DriftTracker::default();
        let mut last = None;
        for v in [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 3.0] {
            last = t.observe(v, &s).or(last);
        }
        let f = last.expect("evaluated when the window filled");
        assert_eq!(f.ks, None);
        // reference 4 × 1, 4 × 2, other 0 → window 3 × 1, 0 × 2, 1 × other
        let e = psi::EMPTY_BIN_PROPORTION;
        let want = (0.75 - 0.5) * (0.75f64 / 0.5).ln()
            + (e - 0.5) * (e / 0.5).ln()
            + (0.25 - e) * (0.25 / e).ln();
        let got = f.psi.expect("psi");
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn counts_kept_as_values_come_and_go_equal_a_recount() {
        for kind in [FeatureKind::Numeric, FeatureKind::Categorical] {
            let s = DriftSpec {
                reference_events: 50,
                window_events: 30,
                ..spec(kind)
            };
            let mut t = DriftTracker::default();
            for i in 0..500u32 {
                t.observe(f64::from((i * 7919) % 23), &s);
                if i % 37 == 0 || i == 499 {
                    let mut fresh = t.clone();
                    fresh.recount();
                    assert_eq!(
                        (&t.bucket_counts, &t.bin_counts),
                        (&fresh.bucket_counts, &fresh.bin_counts),
                        "{kind:?} after {i}"
                    );
                }
            }
            let window: u64 = t.bin_counts.iter().sum();
            assert_eq!(window, 30);
        }
    }

    #[test]
    fn tracker_round_trips_through_postcard() {
        let s = spec(FeatureKind::Numeric);
        let mut t = DriftTracker::default();
        for i in 0..11 {
            t.observe(f64::from(i), &s);
        }
        let back: DriftTracker =
            postcard::from_bytes(&postcard::to_stdvec(&t).expect("encode")).expect("decode");
        assert_eq!(back, t);
    }
}
