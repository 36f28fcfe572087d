//! What every model kind answers, and the artifact a model version is stored as.
//!
//! A model kind implements [`Scorer`] in its own file: [`crate::model`] (a
//! logistic regression with fixed weights: the pipeline's `[model]`, or one
//! trained by smartcore), [`crate::online`] (the SGD learner) and
//! [`crate::forest`] (a smartcore random forest). A [`ModelArtifact`] is a
//! kind's parameters plus the metadata the registry keeps; [`LoadedModel`] is
//! an artifact ready to score.

use std::collections::BTreeMap;

use millrace_chassis::config::{ModelDef, ModelInput};
use millrace_proto::FeatureVector;
use serde::{Deserialize, Serialize};

use crate::forest::ForestModel;
use crate::model::{LogisticModel, ModelError};
use crate::online::OnlineLogistic;

/// A model that answers the probability of the positive class.
pub trait Scorer: Send + Sync {
    /// Short name of the kind, as `ModelMetadata` and the registry report it.
    fn kind(&self) -> &'static str;
    /// Input names in column order.
    fn inputs(&self) -> &[String];
    fn threshold(&self) -> f64;
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
                };
                Box::new(LogisticModel::from_def(&def)?)
            }
            ModelSpec::Online(m) => Box::new(m.clone()),
            ModelSpec::Forest(f) => Box::new(f.clone()),
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
    /// input the vector lacks (or carries as NaN/inf) is 0.0 and reported.
    /// When a name repeats, its first value counts.
    pub fn row_of<'m>(&'m self, names: &[String], values: &[f64]) -> (Vec<f64>, Vec<&'m str>) {
        let mut row = vec![0.0; self.meta.inputs.len()];
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
