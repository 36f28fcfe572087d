//! What every model kind answers, and the artifact a model version is stored as.
//!
//! A model kind implements [`Scorer`] in its own file: [`crate::model`] (a
//! logistic regression with fixed weights: the pipeline's `[model]`, or one
//! trained by smartcore), [`crate::online`] (the SGD learner) and
//! [`crate::forest`] (a smartcore random forest) and [`crate::gbdt`]
//! (gradient-boosted trees). A [`ModelArtifact`] is a
//! kind's parameters plus the metadata the registry keeps; [`LoadedModel`] is
//! an artifact ready to score.

use std::collections::BTreeMap;

use millrace_chassis::config::{ModelDef, ModelInput};
use millrace_proto::FeatureVector;
use serde::{Deserialize, Serialize};

use crate::forest::ForestModel;
use crate::gbdt::GbdtModel;
use crate::model::{LogisticModel, ModelError};
use crate::online::OnlineLogistic;

/// A model that answers the probability of the positive class.
pub trait Scorer: Send + Sync {
    /// Short name of the kind, as `ModelMetadata` and the registry report it.
    fn kind(&self) -> &'static str;
    /// Input names in column order.
    fn inputs(&self) -> &[String];
    fn threshold(&self) -> f64;
    /// Whether the kind reads a missing input as such (NaN) rather than as
    /// 0.0: trees learn a direction for missing values in training.
    fn reads_missing(&self) -> bool {
        false
    }
    /// The probability for one row in column order; the row has exactly one
    /// value per input (a non-finite value means "missing" where the kind
    /// supports it).
    fn score_row(&self, row: &[f64]) -> f64;
    /// Scores `values` (row-major, `inputs().len()` wide) into `out`.
    fn score_rows(&self, values: &[f64], out: &mut Vec<f64>) {
        let width = self.inputs().len().max(1);
        out.extend(values.chunks_exact(width).map(|row| self.score_row(row)));
    }
}

/// A model's parameters, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// `sigmoid(intercept + w·x)`, weights in input order.
    Logistic {
        intercept: f64,
        weights: Vec<f64>,
    },
    Online(OnlineLogistic),
    Forest(ForestModel),
    Gbdt(GbdtModel),
}

/// What the registry keeps about a version besides its parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub name: String,
    pub version: String,
    /// Feature names in the order the model reads them.
    pub inputs: Vec<String>,
    pub threshold: f64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub created_us: i64,
    /// Event-time range of the training data (0 when unknown).
    #[serde(default)]
    pub trained_from_us: i64,
    #[serde(default)]
    pub trained_to_us: i64,
    #[serde(default)]
    pub training_rows: u64,
    /// Training and holdout metrics, e.g. `holdout_roc_auc`, `holdout_log_loss`.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// What the training data looked like, for monitor's drift reference
    /// (absent for models not trained by `millrace train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingDistribution>,
}

/// The training data's distribution of each input and of the model's scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingDistribution {
    /// By input name.
    pub inputs: BTreeMap<String, ValueDistribution>,
    pub scores: Option<ValueDistribution>,
}

/// An empirical distribution function at a bounded number of points:
/// `at_or_below[i]` of the `count` values are at or below `values[i]`. With at
/// most [`Self::MAX_POINTS`] distinct values it is exact; beyond, the points are
/// every `count / MAX_POINTS`-th value in order, exact there, each value lumped
/// with the point at or above it. Monitor builds its drift reference from it
/// as from a window of raw values (quantile bins, KS at every point).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueDistribution {
    pub count: u64,
    pub values: Vec<f64>,
    pub at_or_below: Vec<u64>,
}

impl ValueDistribution {
    /// Enough for 10–20 PSI bins to fall within 0.1% of where the raw values put them.
    pub const MAX_POINTS: usize = 1000;

    /// The distribution of the finite `values` (NaN and ±∞ are left out, as monitor does).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        // -0.0 and 0.0 are one value.
        for v in &mut sorted {
            if *v == 0.0 {
                *v = 0.0;
            }
        }
        let n = sorted.len();
        let mut d = Self {
            count: n as u64,
            ..Default::default()
        };
        for (i, v) in sorted.iter().enumerate() {
            let last_of_run = sorted.get(i + 1) != Some(v);
            if last_of_run {
                d.values.push(*v);
                d.at_or_below.push(i as u64 + 1);
            }
        }
        if d.values.len() > Self::MAX_POINTS {
            d.thin(Self::MAX_POINTS);
        }
        d
    }

    /// Keeps at most `points` points: for each k in 1..=points, the first one
    /// with at least ⌈k·count/points⌉ values at or below it (the last among them).
    fn thin(&mut self, points: usize) {
        let (n, p) = (u128::from(self.count), points.max(1) as u128);
        // The smallest rank ⌈k·n/p⌉ above `c`.
        let target = |c: u64| {
            let k = u128::from(c) * p / n + 1;
            u64::try_from((k * n).div_ceil(p)).unwrap_or(u64::MAX)
        };
        let (mut values, mut below) = (Vec::with_capacity(points), Vec::with_capacity(points));
        let mut next = target(0);
        for (v, c) in self.values.iter().zip(&self.at_or_below) {
            if *c >= next {
                values.push(*v);
                below.push(*c);
                next = target(*c);
            }
        }
        self.values = values;
        self.at_or_below = below;
    }

    pub fn to_proto(&self) -> millrace_proto::ValueDistribution {
        millrace_proto::ValueDistribution {
            count: self.count,
            values: self.values.clone(),
            at_or_below: self.at_or_below.clone(),
        }
    }
}

/// One model version as stored and shipped: metadata plus parameters. Its
/// JSON form is what `millrace train --out` writes and `RegisterModel` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    pub meta: ModelMeta,
    pub spec: ModelSpec,
}

/// Why an artifact cannot be served.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArtifactError {
    #[error(transparent)]
    Logistic(#[from] ModelError),
    #[error("model {model} v{version}: {message}")]
    Invalid {
        model: String,
        version: String,
        message: String,
    },
    #[error("model artifact: {0}")]
    Decode(String),
}

impl ModelArtifact {
    /// The artifact of the pipeline's `[model]`.
    pub fn from_def(def: &ModelDef) -> Self {
        Self {
            meta: ModelMeta {
                name: def.name.clone(),
                version: def.version.clone(),
                inputs: def.inputs.iter().map(|i| i.name.clone()).collect(),
                threshold: def.threshold,
                description: "declared in the pipeline file".into(),
                ..Default::default()
            },
            spec: ModelSpec::Logistic {
                intercept: def.intercept,
                weights: def.inputs.iter().map(|i| i.weight).collect(),
            },
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.spec {
            ModelSpec::Logistic { .. } => "logistic",
            ModelSpec::Online(_) => "online_logistic",
            ModelSpec::Forest(_) => "random_forest",
            ModelSpec::Gbdt(_) => "gbdt",
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ArtifactError> {
        serde_json::to_vec(self).map_err(|e| ArtifactError::Decode(e.to_string()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ArtifactError> {
        serde_json::from_slice(bytes).map_err(|e| ArtifactError::Decode(e.to_string()))
    }

    /// Checks the artifact and builds the model it describes.
    pub fn load(&self) -> Result<LoadedModel, ArtifactError> {
        let meta = &self.meta;
        let invalid = |message: String| ArtifactError::Invalid {
            model: meta.name.clone(),
            version: meta.version.clone(),
            message,
        };
        if meta.version.is_empty() {
            return Err(invalid("the version is empty".into()));
        }
        let scorer: Box<dyn Scorer> = match &self.spec {
            ModelSpec::Logistic { intercept, weights } => {
                if weights.len() != meta.inputs.len() {
                    return Err(invalid(format!(
                        "{} weights for {} inputs",
                        weights.len(),
                        meta.inputs.len()
                    )));
                }
                let def = ModelDef {
                    name: meta.name.clone(),
                    version: meta.version.clone(),
                    threshold: meta.threshold,
                    intercept: *intercept,
                    inputs: meta
                        .inputs
                        .iter()
                        .zip(weights)
                        .map(|(name, &weight)| ModelInput {
                            name: name.clone(),
                            weight,
                        })
                        .collect(),
                    online: Default::default(),
                    retrain: Default::default(),
                };
                Box::new(LogisticModel::from_def(&def)?)
            }
            ModelSpec::Online(m) => Box::new(m.clone()),
            ModelSpec::Forest(f) => Box::new(f.clone()),
            ModelSpec::Gbdt(g) => Box::new(g.clone()),
        };
        if scorer.inputs() != meta.inputs.as_slice() {
            return Err(invalid(format!(
                "the parameters read inputs {:?}, the metadata says {:?}",
                scorer.inputs(),
                meta.inputs
            )));
        }
        Ok(LoadedModel::new(meta.clone(), scorer))
    }
}

/// A version ready to score, with the column of each input by name.
pub struct LoadedModel {
    pub meta: ModelMeta,
    kind: &'static str,
    scorer: Box<dyn Scorer>,
    column: std::collections::HashMap<String, usize>,
    /// The learner's parameters, when this is the live online learner.
    online: Option<OnlineLogistic>,
}

/// The score of one feature vector and the inputs it lacked.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorScore<'m> {
    pub score: f64,
    /// Inputs absent from the vector (or not finite there).
    pub missing: Vec<&'m str>,
}

impl LoadedModel {
    pub fn new(meta: ModelMeta, scorer: Box<dyn Scorer>) -> Self {
        let column = meta
            .inputs
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Self {
            kind: scorer.kind(),
            meta,
            scorer,
            column,
            online: None,
        }
    }

    /// The live online learner as a version.
    pub fn with_online(meta: ModelMeta, learner: OnlineLogistic) -> Self {
        let mut model = Self::new(meta, Box::new(learner.clone()));
        model.online = Some(learner);
        model
    }

    pub fn online(&self) -> Option<&OnlineLogistic> {
        self.online.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn version(&self) -> &str {
        &self.meta.version
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn inputs(&self) -> &[String] {
        &self.meta.inputs
    }

    pub fn is_positive(&self, score: f64) -> bool {
        score >= self.meta.threshold
    }

    pub fn score_row(&self, row: &[f64]) -> f64 {
        self.scorer.score_row(row)
    }

    pub fn score_rows(&self, values: &[f64], out: &mut Vec<f64>) {
        self.scorer.score_rows(values, out)
    }

    /// The model's row picked out of a vector's parallel names/values: an
    /// input the vector lacks (or carries as NaN/inf) is reported, and is 0.0
    /// (NaN for a kind that [`Scorer::reads_missing`]). When a name repeats,
    /// its first value counts.
    pub fn row_of<'m>(&'m self, names: &[String], values: &[f64]) -> (Vec<f64>, Vec<&'m str>) {
        let fill = if self.scorer.reads_missing() {
            f64::NAN
        } else {
            0.0
        };
        let mut row = vec![fill; self.meta.inputs.len()];
        let mut present = vec![false; row.len()];
        for (name, &value) in names.iter().zip(values) {
            if let Some(&i) = self.column.get(name) {
                if !present[i] && value.is_finite() {
                    row[i] = value;
                    present[i] = true;
                }
            }
        }
        let missing = self
            .meta
            .inputs
            .iter()
            .zip(&present)
            .filter(|(_, &p)| !p)
            .map(|(name, _)| name.as_str())
            .collect();
        (row, missing)
    }

    pub fn score_vector(&self, vector: &FeatureVector) -> VectorScore<'_> {
        let (row, missing) = self.row_of(&vector.names, &vector.values);
        VectorScore {
            score: self.score_row(&row),
            missing,
        }
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.meta.name)
            .field("version", &self.meta.version)
            .field("kind", &self.kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thinned(values: &[f64], points: usize) -> (Vec<f64>, Vec<u64>) {
        let mut d = ValueDistribution::of(values.iter().copied());
        d.thin(points);
        (d.values, d.at_or_below)
    }

    #[test]
    fn a_distribution_counts_each_distinct_value_and_skips_non_finite_ones() {
        let d = ValueDistribution::of([3.0, 1.0, 2.0, f64::NAN, 2.0, -0.0, 0.0, f64::INFINITY]);
        assert_eq!(d.count, 6);
        assert_eq!(d.values, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(d.at_or_below, [2, 3, 5, 6]);
        assert_eq!(ValueDistribution::of([]), ValueDistribution::default());
    }

    #[test]
    fn thinning_keeps_the_points_at_even_ranks() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        // ranks ⌈k·10/4⌉ = 3, 5, 8, 10
        assert_eq!(
            thinned(&ten, 4),
            (vec![3.0, 5.0, 8.0, 10.0], vec![3, 5, 8, 10])
        );
        // One value holds ranks 2..=9: it stands for k = 1..3, then 3.0 for k = 4.
        let heavy = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0];
        assert_eq!(thinned(&heavy, 4), (vec![2.0, 3.0], vec![9, 10]));
        let many: Vec<f64> = (0..100_000).map(|i| f64::from(i % 5000)).collect();
        let d = ValueDistribution::of(many);
        assert_eq!(d.values.len(), ValueDistribution::MAX_POINTS);
        assert_eq!((d.values[0], d.at_or_below[0]), (4.0, 100));
        assert_eq!(d.at_or_below.last(), Some(&100_000));
    }

    #[test]
    fn metadata_without_a_training_distribution_reads_as_before() {
        let json = br#"{"name":"m","version":"1","inputs":["x"],"threshold":0.5}"#;
        let meta: ModelMeta = serde_json::from_slice(json).expect("old metadata");
        assert_eq!(meta.training, None);
        let text = serde_json::to_string(&meta).expect("encode");
        assert!(!text.contains("training\""), "{text}");
    }
}
