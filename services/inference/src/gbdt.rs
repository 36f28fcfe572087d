//! Gradient-boosted trees for a binary label, trained here rather than by a
//! crate: smartcore has no gradient boosting, and of the pure-Rust crates
//! measured on the flight-delay task (issue 20 has the comparison) the one
//! fast enough (forust-ml) was less accurate than this trainer with the same
//! parameters, the others fit in tens of seconds to minutes (perpetual, whose
//! stable release also needs a nightly compiler; gbdt). Owning the trainer
//! also gives a model that is the same bit for bit whatever the thread count,
//! an artifact format checked on load, and no new dependency. Inference
//! retrains off the serving path, so a fit must take seconds on a few hundred
//! thousand rows with two cores: hence the histogram algorithm below.
//!
//! # Training ([`fit`])
//! - Each input is cut into at most [`GbdtParams::max_bins`] quantile bins
//!   (one byte per value); a non-finite value is *missing* and has a bin of
//!   its own. Split search then scans bin histograms, not sorted values.
//! - Each round fits one tree to the gradients and hessians of the log loss
//!   (Newton boosting): the leaf value is `-G / (H + l2)`, shrunk by the
//!   learning rate.
//! - Trees grow leaf-wise (the leaf whose best split gains most is split next)
//!   up to `max_leaves`, bounded by `max_depth`, `min_rows_in_leaf` and
//!   `min_child_weight`.
//! - At every split the missing rows try both sides and go where the gain is
//!   larger; that direction is stored and used at scoring time. A node that
//!   saw no missing value sends them to its heavier side.
//! - Only the smaller child's histogram is built from its rows; the larger
//!   one's is the parent's minus the smaller's.
//! - Histograms are built feature by feature on up to `threads` threads; each
//!   feature's sums are accumulated in row order on one thread, so the model
//!   is the same bit for bit whatever the thread count. Row and feature
//!   subsampling draw from a generator seeded by `seed`: same data, same
//!   parameters, same model.
//!
//! # Scoring
//! The trees are flattened into one node array in preorder (a split's left
//! child is the next node), so scoring a row walks a few cache lines per tree
//! and allocates nothing. A split sends a row left when its value is at or
//! below the split's threshold, a non-finite value the stored way.

use std::collections::BinaryHeap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::model::sigmoid;
use crate::scorer::Scorer;

/// How a model is trained. Every field has a default, so a partial object (or
/// `{}`) is a valid parameter set; an unknown field is refused, so a misspelt
/// parameter in a pipeline file is an error rather than silently the default.
/// The defaults were chosen on January 2013 alone (trained on the 1st–24th,
/// checked on the 25th–31st): regularised trees and subsampling beat more
/// rounds there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    /// Boosting rounds: one tree each.
    pub rounds: usize,
    /// Shrinkage applied to every leaf value.
    pub learning_rate: f64,
    /// Leaves per tree (leaf-wise growth stops there).
    pub max_leaves: usize,
    /// Depth bound per tree; 0 leaves the depth to `max_leaves` alone.
    pub max_depth: usize,
    /// Training rows a leaf must keep.
    pub min_rows_in_leaf: usize,
    /// Hessian sum a leaf must keep (log loss: rows weighted by p(1-p)).
    pub min_child_weight: f64,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// A split must gain at least this much (log-loss Newton gain).
    pub min_split_gain: f64,
    /// Value bins per input (2..=255); one more bin holds missing values.
    pub max_bins: usize,
    /// Fraction of rows each tree is fit on (1.0 = all).
    pub row_subsample: f64,
    /// Fraction of inputs each tree may split on (1.0 = all).
    pub feature_subsample: f64,
    /// Seeds row and feature subsampling.
    pub seed: u64,
    /// Threads building histograms; 0 = the machine's available parallelism.
    /// The model does not depend on it.
    pub threads: usize,
}

impl Default for GbdtParams {
    fn default() -> Self {
        Self {
            rounds: 200,
            learning_rate: 0.05,
            max_leaves: 31,
            max_depth: 0,
            min_rows_in_leaf: 50,
            min_child_weight: 1e-3,
            l2: 10.0,
            min_split_gain: 0.0,
            max_bins: 255,
            row_subsample: 0.8,
            feature_subsample: 0.8,
            seed: 7,
            threads: 0,
        }
    }
}

/// Why a model cannot be trained or loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GbdtError {
    #[error("no inputs to train on")]
    NoInputs,
    #[error("no rows to train on")]
    NoRows,
    #[error("{values} values are not a whole number of rows of {width} inputs")]
    Ragged { values: usize, width: usize },
    #[error("{rows} rows but {labels} labels")]
    LabelCount { rows: usize, labels: usize },
    #[error("label {value} of row {row} is not in [0, 1]")]
    Label { row: usize, value: f64 },
    #[error("too many rows ({0}); at most 4294967295")]
    TooManyRows(usize),
    #[error("parameter {name}: {message}")]
    Param { name: &'static str, message: String },
    #[error("gradient-boosted trees: {0}")]
    Invalid(String),
}

impl GbdtParams {
    fn check(&self) -> Result<(), GbdtError> {
        let bad = |name: &'static str, message: &str| {
            Err(GbdtError::Param {
                name,
                message: message.into(),
            })
        };
        let fraction = |x: f64| x > 0.0 && x <= 1.0;
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate", "must be a positive number");
        }
        if self.max_leaves < 2 {
            return bad("max_leaves", "must be at least 2");
        }
        if !(2..=255).contains(&self.max_bins) {
            return bad("max_bins", "must be within 2..=255");
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad("l2", "must be a number >= 0");
        }
        if !(self.min_child_weight.is_finite() && self.min_child_weight >= 0.0) {
            return bad("min_child_weight", "must be a number >= 0");
        }
        if !(self.min_split_gain.is_finite() && self.min_split_gain >= 0.0) {
            return bad("min_split_gain", "must be a number >= 0");
        }
        if !fraction(self.row_subsample) {
            return bad("row_subsample", "must be within (0, 1]");
        }
        if !fraction(self.feature_subsample) {
            return bad("feature_subsample", "must be within (0, 1]");
        }
        Ok(())
    }
}

/// Marks a leaf in [`Node::feature`].
const LEAF: u32 = u32::MAX;
/// Set in [`Node::feature`] when a split sends missing values left.
const MISSING_LEFT: u32 = 1 << 31;

/// One node of the flattened trees, 16 bytes so a tree's top levels share
/// cache lines. A split's left child is the next node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    /// A split's threshold (left when `x <= value`), a leaf's raw score.
    value: f64,
    /// The input a split reads, with [`MISSING_LEFT`] when missing values go
    /// left; or [`LEAF`].
    feature: u32,
    /// A split's right child.
    right: u32,
}

impl Node {
    fn leaf(value: f64) -> Self {
        Self {
            value,
            feature: LEAF,
            right: 0,
        }
    }

    fn split(feature: u32, threshold: f64, missing_left: bool, right: u32) -> Self {
        Self {
            value: threshold,
            feature: feature | if missing_left { MISSING_LEFT } else { 0 },
            right,
        }
    }

    fn is_leaf(&self) -> bool {
        self.feature == LEAF
    }

    fn input(&self) -> usize {
        (self.feature & !MISSING_LEFT) as usize
    }

    fn missing_left(&self) -> bool {
        self.feature & MISSING_LEFT != 0
    }
}

/// A trained ensemble: `P(positive) = sigmoid(base_score + Σ tree(x))`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Stored", into = "Stored")]
pub struct GbdtModel {
    inputs: Vec<String>,
    threshold: f64,
    base_score: f64,
    /// The first node of each tree.
    roots: Vec<u32>,
    nodes: Vec<Node>,
    /// What it was trained with, for the record.
    params: GbdtParams,
}

/// The stored form: the node array as parallel columns (compact JSON).
#[derive(Serialize, Deserialize)]
struct Stored {
    inputs: Vec<String>,
    threshold: f64,
    base_score: f64,
    #[serde(default)]
    params: GbdtParams,
    /// The first node of each tree.
    roots: Vec<u32>,
    /// The input each node splits on; null for a leaf.
    feature: Vec<Option<u32>>,
    /// A split's threshold, a leaf's raw score.
    value: Vec<f64>,
    /// A split's right child (its left child is the next node); 0 for a leaf.
    right: Vec<u32>,
    /// Where a split sends missing values.
    missing_left: Vec<bool>,
}

impl From<GbdtModel> for Stored {
    fn from(m: GbdtModel) -> Self {
        Self {
            feature: m
                .nodes
                .iter()
                .map(|n| (!n.is_leaf()).then(|| n.input() as u32))
                .collect(),
            value: m.nodes.iter().map(|n| n.value).collect(),
            right: m.nodes.iter().map(|n| n.right).collect(),
            missing_left: m.nodes.iter().map(|n| n.missing_left()).collect(),
            inputs: m.inputs,
            threshold: m.threshold,
            base_score: m.base_score,
            params: m.params,
            roots: m.roots,
        }
    }
}

impl TryFrom<Stored> for GbdtModel {
    type Error = GbdtError;

    fn try_from(s: Stored) -> Result<Self, GbdtError> {
        let n = s.feature.len();
        if s.value.len() != n || s.right.len() != n || s.missing_left.len() != n {
            return Err(GbdtError::Invalid(
                "the node columns differ in length".into(),
            ));
        }
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(match s.feature[i] {
                None => Node::leaf(s.value[i]),
                Some(f) if f < MISSING_LEFT => {
                    Node::split(f, s.value[i], s.missing_left[i], s.right[i])
                }
                Some(f) => return Err(GbdtError::Invalid(format!("node {i} splits on input {f}"))),
            });
        }
        let model = GbdtModel {
            inputs: s.inputs,
            threshold: s.threshold,
            base_score: s.base_score,
            roots: s.roots,
            nodes,
            params: s.params,
        };
        model.validate()?;
        Ok(model)
    }
}

impl GbdtModel {
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    pub fn params(&self) -> &GbdtParams {
        &self.params
    }

    /// The log-odds of the positive class.
    pub fn raw_score(&self, row: &[f64]) -> f64 {
        let mut sum = self.base_score;
        for &root in &self.roots {
            let mut i = root as usize;
            loop {
                let node = self.nodes[i];
                if node.is_leaf() {
                    sum += node.value;
                    break;
                }
                let x = row.get(node.input()).copied().unwrap_or(f64::NAN);
                let left = if x.is_finite() {
                    x <= node.value
                } else {
                    node.missing_left()
                };
                i = if left { i + 1 } else { node.right as usize };
            }
        }
        sum
    }

    /// How often each input is split on, by input name.
    pub fn split_counts(&self) -> Vec<(String, usize)> {
        let mut counts = vec![0; self.inputs.len()];
        for n in self.nodes.iter().filter(|n| !n.is_leaf()) {
            if let Some(c) = counts.get_mut(n.input()) {
                *c += 1;
            }
        }
        self.inputs.iter().cloned().zip(counts).collect()
    }

    /// Every tree must be a well-formed preorder block: children after their
    /// parent and inside the tree, splits on existing inputs, finite numbers.
    /// Scoring relies on it to stay in bounds and to terminate.
    fn validate(&self) -> Result<(), GbdtError> {
        let invalid = |m: String| Err(GbdtError::Invalid(m));
        if !self.base_score.is_finite() {
            return invalid("the base score is not finite".into());
        }
        let n = self.nodes.len();
        for (t, &root) in self.roots.iter().enumerate() {
            let start = root as usize;
            let end = match self.roots.get(t + 1) {
                Some(&next) => next as usize,
                None => n,
            };
            if start >= end || end > n {
                return invalid(format!("tree {t} spans nodes {start}..{end} of {n}"));
            }
            if t == 0 && start != 0 {
                return invalid("the first tree does not start at node 0".into());
            }
            for i in start..end {
                let node = self.nodes[i];
                if !node.value.is_finite() {
                    return invalid(format!("node {i} has a non-finite value"));
                }
                if node.is_leaf() {
                    continue;
                }
                if node.input() >= self.inputs.len() {
                    return invalid(format!(
                        "node {i} splits on input {} of {}",
                        node.input(),
                        self.inputs.len()
                    ));
                }
                let right = node.right as usize;
                if i + 1 >= end || right <= i + 1 || right >= end {
                    return invalid(format!(
                        "node {i} has children {} and {right} outside its tree {start}..{end}",
                        i + 1
                    ));
                }
            }
        }
        if self.roots.is_empty() && n > 0 {
            return invalid(format!("{n} nodes but no tree"));
        }
        Ok(())
    }
}

impl Scorer for GbdtModel {
    fn kind(&self) -> &'static str {
        "gbdt"
    }

    fn reads_missing(&self) -> bool {
        true
    }

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score_row(&self, row: &[f64]) -> f64 {
        sigmoid(self.raw_score(row))
    }
}

/// Trains a model on `rows` (row-major, `inputs.len()` values each; a
/// non-finite value is missing) and `labels` (0/1, or a probability in
/// between). The model's threshold is 0.5 until [`GbdtModel::with_threshold`].
pub fn fit(
    inputs: &[String],
    rows: &[f64],
    labels: &[f64],
    params: &GbdtParams,
) -> Result<GbdtModel, GbdtError> {
    params.check()?;
    let width = inputs.len();
    if width == 0 {
        return Err(GbdtError::NoInputs);
    }
    if !rows.len().is_multiple_of(width) {
        return Err(GbdtError::Ragged {
            values: rows.len(),
            width,
        });
    }
    let n = rows.len() / width;
    if n != labels.len() {
        return Err(GbdtError::LabelCount {
            rows: n,
            labels: labels.len(),
        });
    }
    if n == 0 {
        return Err(GbdtError::NoRows);
    }
    if u32::try_from(n).is_err() {
        return Err(GbdtError::TooManyRows(n));
    }
    if let Some((row, &value)) = labels
        .iter()
        .enumerate()
        .find(|(_, y)| !(0.0..=1.0).contains(*y))
    {
        return Err(GbdtError::Label { row, value });
    }
    let threads = match params.threads {
        0 => std::thread::available_parallelism().map_or(1, |t| t.get()),
        t => t,
    };
    let binned = Binned::new(rows, width, n, params.max_bins, threads);
    let model = Trainer::new(&binned, labels, params, threads).run(inputs);
    model.validate()?;
    Ok(model)
}

/// Every input cut into bins: bin 0 holds missing values, bins `1..=k` the
/// values in order, `upper[b - 1]` the largest value of bin `b` (exclusive of
/// the last bin, which is unbounded).
struct Binned {
    n: usize,
    /// Column-major bin numbers, `n` per input.
    bins: Vec<Vec<u8>>,
    /// Upper edges per input; value bins are `upper.len() + 1`.
    upper: Vec<Vec<f64>>,
}

/// Values looked at to place the bin edges; beyond that, an even sample.
const BINNING_SAMPLE: usize = 200_000;

impl Binned {
    fn new(rows: &[f64], width: usize, n: usize, max_bins: usize, threads: usize) -> Self {
        let mut bins = vec![Vec::new(); width];
        let mut upper = vec![Vec::new(); width];
        let per_thread = width.div_ceil(threads.max(1));
        std::thread::scope(|s| {
            for (chunk, (bins, upper)) in bins
                .chunks_mut(per_thread)
                .zip(upper.chunks_mut(per_thread))
                .enumerate()
            {
                s.spawn(move || {
                    for (k, (bins, upper)) in bins.iter_mut().zip(upper.iter_mut()).enumerate() {
                        let j = chunk * per_thread + k;
                        let column = || rows.iter().skip(j).step_by(width).copied();
                        *upper = edges(column(), n, max_bins);
                        *bins = column().map(|x| bin_of(upper, x)).collect();
                    }
                });
            }
        });
        Self { n, bins, upper }
    }
}

/// The bin of `x` given a column's upper edges.
fn bin_of(upper: &[f64], x: f64) -> u8 {
    if x.is_finite() {
        // At most 254 edges, so at most 255.
        (1 + upper.partition_point(|&e| e < x)) as u8
    } else {
        0
    }
}

/// Upper edges of at most `max_bins` bins of roughly equal counts, cut only
/// between distinct values: midway, so values unseen in training fall to the
/// nearer side.
fn edges(column: impl Iterator<Item = f64>, n: usize, max_bins: usize) -> Vec<f64> {
    let step = n.div_ceil(BINNING_SAMPLE).max(1);
    let mut values: Vec<f64> = column.step_by(step).filter(|x| x.is_finite()).collect();
    values.sort_unstable_by(f64::total_cmp);
    // (value, count) of each distinct value (-0.0 and 0.0 are one).
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for v in values.iter().map(|&v| if v == 0.0 { 0.0 } else { v }) {
        match distinct.last_mut() {
            Some((last, count)) if *last == v => *count += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let midway = |a: f64, b: f64| {
        let m = a + (b - a) / 2.0;
        if m >= a && m < b {
            m
        } else {
            a
        }
    };
    let mut out = Vec::new();
    if distinct.len() <= max_bins {
        for w in distinct.windows(2) {
            out.push(midway(w[0].0, w[1].0));
        }
        return out;
    }
    let total = values.len() as f64;
    let mut seen = 0usize;
    for (i, w) in distinct.windows(2).enumerate() {
        seen += w[0].1;
        let bins_left = max_bins - 1 - out.len();
        if bins_left == 0 {
            break;
        }
        // Cut once this bin holds its share of what is left, or when the
        // remaining distinct values only just fill the remaining bins.
        let remaining_values = distinct.len() - 1 - i;
        let target = (out.len() + 1) as f64 * total / max_bins as f64;
        if seen as f64 >= target || remaining_values <= bins_left {
            out.push(midway(w[0].0, w[1].0));
        }
    }
    out
}

/// Gradient, hessian and row count of one histogram bin.
#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    g: f64,
    h: f64,
    n: u32,
}

impl Bin {
    fn add(&mut self, o: &Bin) {
        self.g += o.g;
        self.h += o.h;
        self.n += o.n;
    }

    fn minus(&self, o: &Bin) -> Bin {
        Bin {
            g: self.g - o.g,
            h: self.h - o.h,
            n: self.n.saturating_sub(o.n),
        }
    }
}

/// Bins per input in a histogram: 255 value bins and the missing bin.
const SLOTS: usize = 256;

/// A leaf's histograms, `SLOTS` bins per input, input-major.
type Histogram = Vec<Bin>;

/// The best way found to split a leaf.
#[derive(Debug, Clone, Copy)]
struct Split {
    gain: f64,
    feature: usize,
    /// Value bins `1..=bin` go left.
    bin: usize,
    missing_left: bool,
    left: Bin,
}

/// A leaf of the tree being grown: rows `order[start..end]`, and the rows
/// left out of this tree's sample that fall in it, `rest[rest.0..rest.1]`.
struct Grow {
    node: usize,
    start: usize,
    end: usize,
    rest: (usize, usize),
    depth: usize,
    sum: Bin,
    hist: Option<Histogram>,
    best: Option<Split>,
}

/// A node of the tree being grown; children are filled in as it splits.
#[derive(Debug, Clone, Copy, Default)]
struct TrainNode {
    split: Option<(usize, usize, bool)>,
    left: usize,
    right: usize,
    value: f64,
}

/// A finished leaf: its node, its rows in `order` and in `rest`.
type LeafRows = (usize, Range<usize>, Range<usize>);

/// For the heap of splittable leaves: the larger gain first, then the older leaf.
struct Candidate {
    gain: f64,
    leaf: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.gain
            .total_cmp(&o.gain)
            .then_with(|| o.leaf.cmp(&self.leaf))
    }
}

struct Trainer<'a> {
    data: &'a Binned,
    labels: &'a [f64],
    params: &'a GbdtParams,
    threads: usize,
    /// Current raw score of every row.
    raw: Vec<f64>,
    grad: Vec<f64>,
    hess: Vec<f64>,
    /// Rows the current tree is fit on, grouped by leaf.
    order: Vec<u32>,
    /// The other rows (subsampling), grouped by the leaf they fall in.
    rest: Vec<u32>,
    scratch: Vec<u32>,
    /// Gradient and hessian of the rows of the leaf being histogrammed, in order.
    ordered: Vec<(f64, f64)>,
    /// Inputs the current tree may split on.
    features: Vec<usize>,
    spare: Vec<Histogram>,
    rng: SplitMix,
}

impl<'a> Trainer<'a> {
    fn new(data: &'a Binned, labels: &'a [f64], params: &'a GbdtParams, threads: usize) -> Self {
        let n = data.n;
        Self {
            data,
            labels,
            params,
            threads,
            raw: vec![0.0; n],
            grad: vec![0.0; n],
            hess: vec![0.0; n],
            order: Vec::with_capacity(n),
            rest: Vec::new(),
            scratch: Vec::with_capacity(n),
            ordered: Vec::with_capacity(n),
            features: Vec::new(),
            spare: Vec::new(),
            rng: SplitMix(params.seed),
        }
    }

    fn run(mut self, inputs: &[String]) -> GbdtModel {
        let n = self.data.n;
        let mean = self.labels.iter().sum::<f64>() / n as f64;
        let p = mean.clamp(1e-6, 1.0 - 1e-6);
        let base_score = (p / (1.0 - p)).ln();
        self.raw.fill(base_score);
        let mut roots = Vec::with_capacity(self.params.rounds);
        let mut nodes = Vec::new();
        for _ in 0..self.params.rounds {
            self.gradients();
            self.sample();
            let (tree, leaves) = self.grow();
            for (node, rows, rest) in leaves {
                let value = tree[node].value;
                for &r in self.order[rows].iter().chain(&self.rest[rest]) {
                    self.raw[r as usize] += value;
                }
            }
            roots.push(nodes.len() as u32);
            self.flatten(&tree, 0, &mut nodes);
        }
        GbdtModel {
            inputs: inputs.to_vec(),
            threshold: 0.5,
            base_score,
            roots,
            nodes,
            params: *self.params,
        }
    }

    /// The log loss's gradient and hessian at every row's raw score.
    fn gradients(&mut self) {
        let chunk = self.data.n.div_ceil(self.threads).max(4096);
        let labels = self.labels;
        std::thread::scope(|s| {
            for (((raw, grad), hess), y) in self
                .raw
                .chunks(chunk)
                .zip(self.grad.chunks_mut(chunk))
                .zip(self.hess.chunks_mut(chunk))
                .zip(labels.chunks(chunk))
            {
                s.spawn(move || {
                    for (((&f, g), h), &y) in raw.iter().zip(grad).zip(hess).zip(y) {
                        let p = sigmoid(f);
                        *g = p - y;
                        *h = (p * (1.0 - p)).max(1e-16);
                    }
                });
            }
        });
    }

    /// Draws the rows and inputs of the next tree.
    fn sample(&mut self) {
        let n = self.data.n;
        self.order.clear();
        self.rest.clear();
        if self.params.row_subsample < 1.0 {
            let keep = self.params.row_subsample;
            for r in 0..n as u32 {
                if self.rng.unit() < keep {
                    self.order.push(r);
                } else {
                    self.rest.push(r);
                }
            }
            if self.order.is_empty() {
                self.order.push(self.rest.remove(self.rng.below(n)));
            }
        } else {
            self.order.extend(0..n as u32);
        }
        let width = self.data.bins.len();
        self.features.clear();
        self.features.extend(0..width);
        if self.params.feature_subsample < 1.0 {
            let k = ((width as f64 * self.params.feature_subsample).ceil() as usize).max(1);
            // A partial Fisher-Yates shuffle, then back in input order.
            for i in 0..k {
                let j = i + self.rng.below(width - i);
                self.features.swap(i, j);
            }
            self.features.truncate(k);
            self.features.sort_unstable();
        }
    }

    /// Grows one tree; returns its nodes and its leaves.
    fn grow(&mut self) -> (Vec<TrainNode>, Vec<LeafRows>) {
        let params = self.params;
        let mut tree = vec![TrainNode::default()];
        let hist = self.histogram(0, self.order.len());
        let sum = self.order.iter().fold(Bin::default(), |mut s, &r| {
            s.g += self.grad[r as usize];
            s.h += self.hess[r as usize];
            s.n += 1;
            s
        });
        let mut leaves = vec![Grow {
            node: 0,
            start: 0,
            end: self.order.len(),
            rest: (0, self.rest.len()),
            depth: 0,
            sum,
            hist: Some(hist),
            best: None,
        }];
        leaves[0].best = self.best_split(&leaves[0]);
        let mut heap = BinaryHeap::new();
        if let Some(b) = leaves[0].best {
            heap.push(Candidate {
                gain: b.gain,
                leaf: 0,
            });
        }
        let mut count = 1;
        while count < params.max_leaves {
            let Some(Candidate { leaf, .. }) = heap.pop() else {
                break;
            };
            let parent = &mut leaves[leaf];
            let Some(split) = parent.best.take() else {
                continue;
            };
            let parent_hist = parent.hist.take();
            let (start, end, rest, depth, sum, node) = (
                parent.start,
                parent.end,
                parent.rest,
                parent.depth,
                parent.sum,
                parent.node,
            );
            let column = &self.data.bins[split.feature];
            let mid = start
                + partition(
                    &mut self.order[start..end],
                    &mut self.scratch,
                    column,
                    &split,
                );
            let rest_mid = rest.0
                + partition(
                    &mut self.rest[rest.0..rest.1],
                    &mut self.scratch,
                    column,
                    &split,
                );
            let left_node = tree.len();
            tree.push(TrainNode::default());
            tree.push(TrainNode::default());
            tree[node].split = Some((split.feature, split.bin, split.missing_left));
            tree[node].left = left_node;
            tree[node].right = left_node + 1;
            let left_sum = split.left;
            let right_sum = sum.minus(&split.left);
            let child_depth = depth + 1;
            let may_split = |s: &Bin| {
                (params.max_depth == 0 || child_depth < params.max_depth)
                    && s.n as usize >= 2 * params.min_rows_in_leaf.max(1)
            };
            let (left_hist, right_hist) = if may_split(&left_sum) || may_split(&right_sum) {
                // Build the smaller child, subtract for the larger.
                let left_smaller = mid - start <= end - mid;
                let small = if left_smaller {
                    self.histogram(start, mid)
                } else {
                    self.histogram(mid, end)
                };
                let mut large = match parent_hist {
                    Some(h) => h,
                    None => self.histogram(start, end),
                };
                for (l, s) in large.iter_mut().zip(&small) {
                    *l = l.minus(s);
                }
                if left_smaller {
                    (Some(small), Some(large))
                } else {
                    (Some(large), Some(small))
                }
            } else {
                if let Some(h) = parent_hist {
                    self.spare.push(h);
                }
                (None, None)
            };
            for (child_node, range, rest, s, hist) in [
                (
                    left_node,
                    (start, mid),
                    (rest.0, rest_mid),
                    left_sum,
                    left_hist,
                ),
                (
                    left_node + 1,
                    (mid, end),
                    (rest_mid, rest.1),
                    right_sum,
                    right_hist,
                ),
            ] {
                let mut g = Grow {
                    node: child_node,
                    start: range.0,
                    end: range.1,
                    rest,
                    depth: child_depth,
                    sum: s,
                    hist,
                    best: None,
                };
                if may_split(&s) {
                    g.best = self.best_split(&g);
                }
                if let Some(b) = g.best {
                    heap.push(Candidate {
                        gain: b.gain,
                        leaf: leaves.len(),
                    });
                } else if let Some(h) = g.hist.take() {
                    self.spare.push(h);
                }
                leaves.push(g);
            }
            count += 1;
        }
        let mut out = Vec::with_capacity(count);
        for g in leaves {
            if let Some(h) = g.hist {
                self.spare.push(h);
            }
            if tree[g.node].split.is_none() {
                tree[g.node].value = -g.sum.g / (g.sum.h + params.l2) * params.learning_rate;
                out.push((g.node, g.start..g.end, g.rest.0..g.rest.1));
            }
        }
        (tree, out)
    }

    /// The histograms of rows `order[start..end]` over the tree's inputs.
    fn histogram(&mut self, start: usize, end: usize) -> Histogram {
        let mut hist = self.spare.pop().unwrap_or_default();
        hist.clear();
        hist.resize(self.data.bins.len() * SLOTS, Bin::default());
        let rows = &self.order[start..end];
        self.ordered.clear();
        self.ordered.extend(
            rows.iter()
                .map(|&r| (self.grad[r as usize], self.hess[r as usize])),
        );
        let (bins, ordered, features) = (&self.data.bins, &self.ordered, &self.features);
        let fill = |f: usize, out: &mut [Bin]| {
            let column = &bins[f];
            // Rows alternate between two histograms: consecutive rows often
            // share a bin (inputs with few values), and one histogram would
            // make every addition wait for the one before.
            let mut odd = [Bin::default(); SLOTS];
            let (even, _) = out.split_at_mut(SLOTS);
            let mut pairs = rows.chunks_exact(2).zip(ordered.chunks_exact(2));
            for (r, gh) in &mut pairs {
                let a = &mut even[usize::from(column[r[0] as usize])];
                a.g += gh[0].0;
                a.h += gh[0].1;
                a.n += 1;
                let b = &mut odd[usize::from(column[r[1] as usize])];
                b.g += gh[1].0;
                b.h += gh[1].1;
                b.n += 1;
            }
            if rows.len() % 2 == 1 {
                let k = rows.len() - 1;
                let a = &mut even[usize::from(column[rows[k] as usize])];
                a.g += ordered[k].0;
                a.h += ordered[k].1;
                a.n += 1;
            }
            for (e, o) in even.iter_mut().zip(&odd) {
                e.add(o);
            }
        };
        // Threads only pay off on large leaves.
        let threads = if rows.len() * features.len() >= 200_000 {
            self.threads.min(features.len()).max(1)
        } else {
            1
        };
        let mut slots: Vec<(usize, &mut [Bin])> = hist
            .chunks_mut(SLOTS)
            .enumerate()
            .filter(|(f, _)| features.binary_search(f).is_ok())
            .collect();
        if threads == 1 {
            for (f, out) in &mut slots {
                fill(*f, out);
            }
        } else {
            let per_thread = slots.len().div_ceil(threads);
            std::thread::scope(|s| {
                for part in slots.chunks_mut(per_thread) {
                    s.spawn(|| {
                        for (f, out) in part {
                            fill(*f, out);
                        }
                    });
                }
            });
        }
        hist
    }

    /// The split of `leaf` with the largest gain, if any gains.
    fn best_split(&self, leaf: &Grow) -> Option<Split> {
        let hist = leaf.hist.as_ref()?;
        let p = self.params;
        let min_rows = p.min_rows_in_leaf.max(1) as u32;
        let score = |b: &Bin| b.g * b.g / (b.h + p.l2);
        let total = leaf.sum;
        let parent = score(&total);
        let ok = |b: &Bin| b.n >= min_rows && b.h >= p.min_child_weight;
        let mut best: Option<Split> = None;
        let mut consider =
            |gain: f64, feature: usize, bin: usize, missing_left: bool, left: Bin| {
                if gain > p.min_split_gain.max(1e-12) && best.is_none_or(|b| gain > b.gain) {
                    best = Some(Split {
                        gain,
                        feature,
                        bin,
                        missing_left,
                        left,
                    });
                }
            };
        for &f in &self.features {
            let h = &hist[f * SLOTS..(f + 1) * SLOTS];
            let value_bins = self.data.upper[f].len() + 1;
            let missing = h[0];
            let mut left = Bin::default();
            // Value bins 1..=bin left; bin == value_bins leaves only missing
            // values on the right.
            for (bin, slot) in h.iter().enumerate().take(value_bins + 1).skip(1) {
                if slot.n == 0 && bin < value_bins {
                    // The same partition as the bin before.
                    continue;
                }
                left.add(slot);
                if bin == value_bins && missing.n == 0 {
                    break;
                }
                let right = total.minus(&left);
                if ok(&left) && ok(&right) {
                    let gain = score(&left) + score(&right) - parent;
                    // With no missing value here, send them to the heavier side.
                    let missing_left = missing.n == 0 && left.h >= right.h;
                    consider(gain, f, bin, missing_left, left);
                }
                if missing.n > 0 && bin < value_bins {
                    let mut with_missing = left;
                    with_missing.add(&missing);
                    let right = total.minus(&with_missing);
                    if ok(&with_missing) && ok(&right) {
                        let gain = score(&with_missing) + score(&right) - parent;
                        consider(gain, f, bin, true, with_missing);
                    }
                }
            }
        }
        best
    }

    /// Appends the subtree at `i` to `out` in preorder, thresholds as values.
    fn flatten(&self, tree: &[TrainNode], i: usize, out: &mut Vec<Node>) {
        let at = out.len();
        match tree[i].split {
            None => out.push(Node::leaf(tree[i].value)),
            Some((f, bin, missing_left)) => {
                let upper = &self.data.upper[f];
                // Bin `bin` ends at upper[bin - 1]; past the last edge every
                // value goes left (only missing values go right).
                let value = upper.get(bin - 1).copied().unwrap_or(f64::MAX);
                out.push(Node::split(f as u32, value, missing_left, 0));
                self.flatten(tree, tree[i].left, out);
                out[at].right = out.len() as u32;
                self.flatten(tree, tree[i].right, out);
            }
        }
    }
}

/// Reorders `rows` so the rows `split` sends left come first (each side keeps
/// its order); returns how many go left. Branch-free: which way a row goes is
/// as good as random to the processor.
fn partition(rows: &mut [u32], scratch: &mut Vec<u32>, column: &[u8], split: &Split) -> usize {
    if scratch.len() < rows.len() {
        scratch.resize(rows.len(), 0);
    }
    let (mut left, mut right) = (0, 0);
    for k in 0..rows.len() {
        let r = rows[k];
        let b = column[r as usize];
        // Value bins 1..=split.bin go left; bin 0 (missing) as learned.
        let goes_left =
            (usize::from(b).wrapping_sub(1) < split.bin) | ((b == 0) & split.missing_left);
        rows[left] = r;
        scratch[right] = r;
        left += usize::from(goes_left);
        right += usize::from(!goes_left);
    }
    rows[left..].copy_from_slice(&scratch[..right]);
    left
}

/// A small, fast generator (SplitMix64): reproducible subsampling without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{self, Algorithm, Dataset};
    use crate::evaluation::Holdout;
    use crate::scorer::{ModelArtifact, ModelMeta, ModelSpec};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("x{i}")).collect()
    }

    /// A fixed generator for test data.
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut g = SplitMix(seed);
        move || g.unit()
    }

    /// A checkerboard: y = 1 where x0 and x1 have the same sign (label noise
    /// 10%), plus a noise input. No linear model can do better than chance.
    fn checkerboard(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut u = uniform(seed);
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (a, b, noise) = (u() * 2.0 - 1.0, u() * 2.0 - 1.0, u());
            let same = (a > 0.0) == (b > 0.0);
            let flip = u() < 0.1;
            rows.extend([a, b, noise]);
            labels.push(f64::from(u8::from(same != flip)));
        }
        (rows, labels)
    }

    fn scores(m: &GbdtModel, rows: &[f64]) -> Vec<f64> {
        let mut out = Vec::new();
        m.score_rows(rows, &mut out);
        out
    }

    fn small() -> GbdtParams {
        GbdtParams {
            rounds: 60,
            learning_rate: 0.1,
            min_rows_in_leaf: 10,
            ..GbdtParams::default()
        }
    }

    #[test]
    fn learns_a_nonlinear_boundary_a_logistic_regression_cannot() {
        let (rows, labels) = checkerboard(4000, 1);
        let (test_rows, test_labels) = checkerboard(2000, 2);
        let m = fit(&names(3), &rows, &labels, &small()).unwrap();
        let gbdt = Holdout::of(&scores(&m, &test_rows), &test_labels);
        // The best possible AUC with 10% label noise is about 0.9.
        assert!(gbdt.roc_auc > 0.85, "gbdt AUC {}", gbdt.roc_auc);
        assert!(gbdt.log_loss < 0.45, "gbdt log loss {}", gbdt.log_loss);

        let data = Dataset {
            inputs: names(3),
            rows: [rows, test_rows].concat(),
            labels: [labels, test_labels].concat(),
            times: (0..6000).collect(),
        };
        let lr = batch::train(
            &data,
            Algorithm::Logistic { alpha: 0.0 },
            "m",
            "1",
            0.5,
            1.0 / 3.0,
        )
        .unwrap();
        assert!(
            lr.holdout.roc_auc < 0.6,
            "logistic AUC {}",
            lr.holdout.roc_auc
        );
        assert!(gbdt.roc_auc > lr.holdout.roc_auc + 0.25);
        assert!(gbdt.log_loss < lr.holdout.log_loss - 0.2);
    }

    #[test]
    fn the_same_data_and_seed_give_the_same_model_whatever_the_threads() {
        let (rows, labels) = checkerboard(3000, 3);
        let params = GbdtParams {
            row_subsample: 0.7,
            feature_subsample: 0.7,
            ..small()
        };
        let one = fit(
            &names(3),
            &rows,
            &labels,
            &GbdtParams {
                threads: 1,
                ..params
            },
        )
        .unwrap();
        let two = fit(
            &names(3),
            &rows,
            &labels,
            &GbdtParams {
                threads: 2,
                ..params
            },
        )
        .unwrap();
        let again = fit(
            &names(3),
            &rows,
            &labels,
            &GbdtParams {
                threads: 2,
                ..params
            },
        )
        .unwrap();
        // Only the recorded thread count differs.
        assert_eq!(one.nodes, two.nodes);
        assert_eq!(one.roots, two.roots);
        assert_eq!(one.base_score.to_bits(), two.base_score.to_bits());
        assert_eq!(two, again);
        let other_seed = fit(
            &names(3),
            &rows,
            &labels,
            &GbdtParams { seed: 99, ..params },
        )
        .unwrap();
        assert_ne!(other_seed.nodes, two.nodes, "the seed drives subsampling");
    }

    #[test]
    fn a_serde_round_trip_scores_bit_for_bit_the_same() {
        let (rows, labels) = checkerboard(2000, 4);
        let m = fit(&names(3), &rows, &labels, &small())
            .unwrap()
            .with_threshold(0.3);
        let json = serde_json::to_vec(&m).unwrap();
        let back: GbdtModel = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        let (probe, _) = checkerboard(200, 5);
        let probe: Vec<f64> = probe
            .chunks(3)
            .enumerate()
            .flat_map(|(i, r)| {
                // Some missing and infinite values as well.
                let mut r = r.to_vec();
                if i % 7 == 0 {
                    r[i % 3] = f64::NAN;
                }
                if i % 11 == 0 {
                    r[0] = f64::INFINITY;
                }
                r
            })
            .collect();
        let (a, b) = (scores(&m, &probe), scores(&back, &probe));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));

        // As a registry artifact too.
        let artifact = ModelArtifact {
            meta: ModelMeta {
                name: "m".into(),
                version: "1".into(),
                inputs: names(3),
                threshold: 0.3,
                ..Default::default()
            },
            spec: ModelSpec::Gbdt(m),
        };
        assert_eq!(artifact.kind(), "gbdt");
        let loaded = ModelArtifact::from_json(&artifact.to_json().unwrap())
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(loaded.kind(), "gbdt");
        let mut c = Vec::new();
        loaded.score_rows(&probe, &mut c);
        assert!(a.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn missing_values_learn_their_own_direction_and_constant_inputs_are_ignored() {
        // x0 is missing for a third of the rows, and those are mostly
        // positive; where present, y = x0 > 0.5. x1 is constant, x2 all missing.
        let mut u = uniform(6);
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for i in 0..3000 {
            let x = u();
            let missing = i % 3 == 0;
            let y = if missing { u() < 0.9 } else { x > 0.5 };
            rows.extend([if missing { f64::NAN } else { x }, 4.0, f64::NAN]);
            labels.push(f64::from(u8::from(y)));
        }
        let m = fit(&names(3), &rows, &labels, &small()).unwrap();
        let p = |row: [f64; 3]| m.score_row(&row);
        assert!(
            p([f64::NAN, 4.0, f64::NAN]) > 0.8,
            "{}",
            p([f64::NAN, 4.0, 0.0])
        );
        assert!(p([0.2, 4.0, f64::NAN]) < 0.2);
        assert!(p([0.8, 4.0, f64::NAN]) > 0.8);
        // Unseen values of the ignored inputs change nothing.
        assert_eq!(p([0.2, 4.0, 1.0]), p([0.2, -9.0, f64::NAN]));
        let counts = m.split_counts();
        assert!(counts[0].1 > 0);
        assert_eq!((counts[1].1, counts[2].1), (0, 0), "{counts:?}");
        // A column with nothing but missing values, and one with one value.
        let blank = vec![f64::NAN; 100];
        let labels: Vec<f64> = (0..100).map(|i| f64::from(i % 2)).collect();
        for column in [blank, vec![3.0; 100]] {
            let m = fit(&names(1), &column, &labels, &small()).unwrap();
            assert_eq!(m.split_counts()[0].1, 0);
            let p = m.score_row(&[3.0]);
            // Not exactly 0.5: each tree fits a subsample of the rows.
            assert!((p - 0.5).abs() < 0.1, "{p}");
            assert_eq!(p, m.score_row(&[f64::NAN]));
            assert_eq!(p, m.score_row(&[-7.0]));
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let p = GbdtParams::default();
        let two = names(2);
        assert_eq!(fit(&two, &[], &[], &p), Err(GbdtError::NoRows));
        assert_eq!(fit(&[], &[], &[], &p), Err(GbdtError::NoInputs));
        assert_eq!(
            fit(&two, &[1.0, 2.0, 3.0], &[1.0], &p),
            Err(GbdtError::Ragged {
                values: 3,
                width: 2
            })
        );
        assert_eq!(
            fit(&two, &[1.0, 2.0, 3.0, 4.0], &[1.0], &p),
            Err(GbdtError::LabelCount { rows: 2, labels: 1 })
        );
        let err = fit(&two, &[1.0, 2.0], &[f64::NAN], &p).unwrap_err();
        assert!(matches!(err, GbdtError::Label { row: 0, .. }), "{err}");
        assert_eq!(
            fit(&two, &[1.0, 2.0], &[2.0], &p).unwrap_err().to_string(),
            "label 2 of row 0 is not in [0, 1]"
        );
        for bad in [
            GbdtParams {
                learning_rate: 0.0,
                ..p
            },
            GbdtParams { max_bins: 256, ..p },
            GbdtParams { max_leaves: 1, ..p },
            GbdtParams {
                row_subsample: 0.0,
                ..p
            },
            GbdtParams { l2: -1.0, ..p },
        ] {
            let err = fit(&two, &[1.0, 2.0], &[1.0], &bad).unwrap_err();
            assert!(matches!(err, GbdtError::Param { .. }), "{err}");
        }
        // Parameters: defaults fill in, a misspelt name is an error.
        let partial: GbdtParams = serde_json::from_str(r#"{"rounds": 5}"#).unwrap();
        assert_eq!(partial, GbdtParams { rounds: 5, ..p });
        let typo = serde_json::from_str::<GbdtParams>(r#"{"round": 5}"#).unwrap_err();
        assert!(typo.to_string().contains("unknown field"), "{typo}");
    }

    #[test]
    fn a_corrupt_artifact_is_refused_on_decode() {
        let (rows, labels) = checkerboard(500, 7);
        let m = fit(&names(3), &rows, &labels, &small()).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        let decode = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = json.clone();
            edit(&mut v);
            serde_json::from_value::<GbdtModel>(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(decode(&|_| {}), Ok(()));
        let first_split = m.nodes.iter().position(|n| !n.is_leaf()).unwrap();
        let e = decode(&|v| v["right"][first_split] = 100_000.into()).unwrap_err();
        assert!(e.contains("outside its tree"), "{e}");
        let e = decode(&|v| v["right"][first_split] = (first_split as u64).into()).unwrap_err();
        assert!(e.contains("outside its tree"), "{e}");
        let e = decode(&|v| v["feature"][first_split] = 3.into()).unwrap_err();
        assert!(e.contains("splits on input 3 of 3"), "{e}");
        let e = decode(&|v| {
            v["value"].as_array_mut().unwrap().pop();
        })
        .unwrap_err();
        assert!(e.contains("differ in length"), "{e}");
        let e = decode(&|v| v["roots"][1] = 0.into()).unwrap_err();
        assert!(e.contains("spans nodes"), "{e}");
    }

    #[test]
    fn zero_rounds_answer_the_base_rate() {
        let labels = [1.0, 0.0, 0.0, 0.0];
        let m = fit(
            &names(1),
            &[1.0, 2.0, 3.0, 4.0],
            &labels,
            &GbdtParams {
                rounds: 0,
                ..GbdtParams::default()
            },
        )
        .unwrap();
        assert_eq!(m.trees(), 0);
        assert!((m.score_row(&[9.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn bin_edges_fall_between_distinct_values_and_respect_the_limit() {
        let few = edges(
            [3.0, 1.0, 2.0, 2.0, f64::NAN, -0.0, 0.0].into_iter(),
            7,
            255,
        );
        assert_eq!(few, [0.5, 1.5, 2.5]);
        assert_eq!(bin_of(&few, 0.0), 1);
        assert_eq!(bin_of(&few, 0.5), 1);
        assert_eq!(bin_of(&few, 0.6), 2);
        assert_eq!(bin_of(&few, 99.0), 4);
        assert_eq!(bin_of(&few, f64::NAN), 0);
        let many: Vec<f64> = (0..10_000).map(f64::from).collect();
        let e = edges(many.iter().copied(), many.len(), 255);
        assert_eq!(e.len(), 254);
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        // Roughly equal counts: about 39 values a bin.
        assert!((35.0..45.0).contains(&e[0]), "{}", e[0]);
        // A heavy value gets a bin of its own, and the rest still spread out.
        let skewed: Vec<f64> = (0..10_000)
            .map(|i| if i < 5000 { 0.0 } else { f64::from(i) })
            .collect();
        let e = edges(skewed.iter().copied(), skewed.len(), 16);
        assert_eq!(e.len(), 15);
        assert!(e[0] > 0.0 && e[0] < 5000.0, "{e:?}");
    }
}
