//! The logistic model both serving paths share, so a feature vector from the
//! stream and a row sent over gRPC get exactly the same score.
//!
//! It is built from the pipeline's `[model]` table and checked once, at
//! start-up: every weight finite, no input named twice, a threshold that is a
//! probability.

use std::collections::HashMap;

use millrace_chassis::config::ModelDef;
use millrace_proto::FeatureVector;

/// A configuration the model cannot be built from.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model {model}: input `{input}` is listed twice")]
    DuplicateInput { model: String, input: String },
    #[error("model {model}: {what} is {value}, it must be a finite number")]
    NotFinite {
        model: String,
        what: String,
        value: f64,
    },
    #[error("model {model}: threshold is {value}, it must lie between 0 and 1")]
    Threshold { model: String, value: f64 },
    #[error("model {model}: needs at least one input")]
    NoInputs { model: String },
}

/// `sigmoid(intercept + w·x)` over named inputs in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    name: String,
    version: String,
    threshold: f64,
    intercept: f64,
    inputs: Vec<String>,
    weights: Vec<f64>,
    /// Input name → column, for picking inputs out of a feature vector.
    column: HashMap<String, usize>,
}

/// The score of one feature vector and the inputs it lacked.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorScore<'m> {
    pub score: f64,
    /// Inputs absent from the vector (or not finite there), scored as 0.0.
    pub missing: Vec<&'m str>,
}

impl LogisticModel {
    pub fn from_def(def: &ModelDef) -> Result<Self, ModelError> {
        let model = || def.name.clone();
        let finite = |what: String, value: f64| {
            if value.is_finite() {
                Ok(())
            } else {
                Err(ModelError::NotFinite {
                    model: model(),
                    what,
                    value,
                })
            }
        };
        if def.inputs.is_empty() {
            return Err(ModelError::NoInputs { model: model() });
        }
        finite("the intercept".into(), def.intercept)?;
        if !(0.0..=1.0).contains(&def.threshold) {
            return Err(ModelError::Threshold {
                model: model(),
                value: def.threshold,
            });
        }
        let mut column = HashMap::with_capacity(def.inputs.len());
        for (i, input) in def.inputs.iter().enumerate() {
            finite(format!("the weight of `{}`", input.name), input.weight)?;
            if column.insert(input.name.clone(), i).is_some() {
                return Err(ModelError::DuplicateInput {
                    model: model(),
                    input: input.name.clone(),
                });
            }
        }
        Ok(Self {
            name: def.name.clone(),
            version: def.version.clone(),
            threshold: def.threshold,
            intercept: def.intercept,
            inputs: def.inputs.iter().map(|i| i.name.clone()).collect(),
            weights: def.inputs.iter().map(|i| i.weight).collect(),
            column,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Input names in column order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Whether `name`/`version` address this model; an empty version means "any".
    pub fn answers_to(&self, name: &str, version: &str) -> bool {
        name == self.name && (version.is_empty() || version == self.version)
    }

    pub fn is_positive(&self, score: f64) -> bool {
        score >= self.threshold
    }

    /// The probability for one row in column order. Callers pass exactly one
    /// value per input; a short row scores its missing columns as 0.0.
    pub fn score_row(&self, row: &[f64]) -> f64 {
        debug_assert_eq!(
            row.len(),
            self.weights.len(),
            "row width must match the model's inputs"
        );
        let z = self.intercept
            + self
                .weights
                .iter()
                .zip(row)
                .map(|(w, x)| w * x)
                .sum::<f64>();
        sigmoid(z)
    }

    /// Scores a feature vector, picking the model's inputs out of its parallel
    /// `names`/`values` by name. An input the vector lacks, or carries as NaN
    /// or infinity, is scored as 0.0 and reported, so one bad feature cannot
    /// turn the score into NaN. When a name repeats, its first value counts.
    pub fn score_vector(&self, vector: &FeatureVector) -> VectorScore<'_> {
        let mut row = vec![0.0; self.inputs.len()];
        let mut present = vec![false; self.inputs.len()];
        for (name, &value) in vector.names.iter().zip(&vector.values) {
            if let Some(&i) = self.column.get(name) {
                if !present[i] && value.is_finite() {
                    row[i] = value;
                    present[i] = true;
                }
            }
        }
        let missing = self
            .inputs
            .iter()
            .zip(&present)
            .filter(|(_, &p)| !p)
            .map(|(name, _)| name.as_str())
            .collect();
        VectorScore {
            score: self.score_row(&row),
            missing,
        }
    }
}

impl crate::scorer::Scorer for LogisticModel {
    fn kind(&self) -> &'static str {
        "logistic"
    }

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score_row(&self, row: &[f64]) -> f64 {
        LogisticModel::score_row(self, row)
    }
}

/// The logistic function, computed so neither branch overflows: for very
/// negative `z`, `1 / (1 + e^-z)` would compute `e^-z = inf`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::ModelInput;

    fn def(intercept: f64, inputs: &[(&str, f64)]) -> ModelDef {
        ModelDef {
            name: "orders".into(),
            version: "v1".into(),
            threshold: 0.5,
            intercept,
            inputs: inputs
                .iter()
                .map(|&(name, weight)| ModelInput {
                    name: name.into(),
                    weight,
                })
                .collect(),
            online: Default::default(),
            retrain: Default::default(),
        }
    }

    fn model() -> LogisticModel {
        LogisticModel::from_def(&def(-1.0, &[("count", 0.5), ("amount", 0.02)])).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sigmoid_is_stable_and_symmetric() {
        // (z, sigmoid(z)) computed by hand: 1 / (1 + e^-z).
        let cases = [
            (0.0, 0.5),
            (1.0, 0.731_058_578_630_004_9),
            (-1.0, 0.268_941_421_369_995_1),
            (2.0, 0.880_797_077_977_882_3),
            (800.0, 1.0),
            (-800.0, 0.0),
            (f64::INFINITY, 1.0),
            (f64::NEG_INFINITY, 0.0),
        ];
        for (z, want) in cases {
            let got = sigmoid(z);
            assert!(close(got, want), "sigmoid({z}) = {got}, want {want}");
            assert!(got.is_finite(), "sigmoid({z}) is not finite");
        }
        for z in [0.25, 1.0, 3.0, 10.0] {
            assert!(
                close(sigmoid(-z), 1.0 - sigmoid(z)),
                "sigmoid(-{z}) = 1 - sigmoid({z})"
            );
        }
        assert!(
            sigmoid(-40.0) > 0.0,
            "tiny probabilities do not underflow to zero"
        );
    }

    #[test]
    fn score_row_is_sigmoid_of_intercept_plus_weighted_sum() {
        let m = model();
        // z = -1 + 0.5·count + 0.02·amount
        let cases: [(&str, [f64; 2], f64); 4] = [
            ("all zero leaves the intercept", [0.0, 0.0], sigmoid(-1.0)),
            ("z = 0 is a coin flip", [2.0, 0.0], 0.5),
            ("z = 1", [2.0, 50.0], 0.731_058_578_630_004_9),
            ("z = -2", [-2.0, 0.0], 0.119_202_922_022_117_7),
        ];
        for (rule, row, want) in cases {
            let got = m.score_row(&row);
            assert!(close(got, want), "{rule}: got {got}, want {want}");
        }
    }

    #[test]
    fn score_vector_picks_inputs_by_name_and_reports_the_missing() {
        let m = model();
        let vector = |names: &[&str], values: &[f64]| FeatureVector {
            names: names.iter().map(|n| n.to_string()).collect(),
            values: values.to_vec(),
            ..Default::default()
        };
        let cases: [(&str, FeatureVector, f64, &[&str]); 6] = [
            (
                "names in model order",
                vector(&["count", "amount"], &[2.0, 50.0]),
                0.731_058_578_630_004_9,
                &[],
            ),
            (
                "names in any order, extras ignored",
                vector(&["x", "amount", "count"], &[9.0, 50.0, 2.0]),
                0.731_058_578_630_004_9,
                &[],
            ),
            (
                "a missing input counts as zero",
                vector(&["count"], &[2.0]),
                0.5,
                &["amount"],
            ),
            (
                "an empty vector leaves the intercept",
                vector(&[], &[]),
                sigmoid(-1.0),
                &["count", "amount"],
            ),
            (
                "a NaN value is treated as missing",
                vector(&["count", "amount"], &[f64::NAN, 50.0]),
                0.5,
                &["count"],
            ),
            (
                "the first of repeated names wins",
                vector(&["count", "count", "amount"], &[2.0, 100.0, 0.0]),
                0.5,
                &[],
            ),
        ];
        for (rule, v, want, missing) in cases {
            let got = m.score_vector(&v);
            assert!(
                close(got.score, want),
                "{rule}: got {}, want {want}",
                got.score
            );
            assert_eq!(got.missing, missing, "{rule}");
        }
    }

    #[test]
    fn answers_to_its_name_with_any_or_its_own_version() {
        let m = model();
        let cases = [
            ("orders", "", true),
            ("orders", "v1", true),
            ("orders", "v2", false),
            ("other", "", false),
            ("other", "v1", false),
        ];
        for (name, version, want) in cases {
            assert_eq!(m.answers_to(name, version), want, "{name}/{version}");
        }
    }

    #[test]
    fn threshold_is_inclusive() {
        let m = model();
        assert!(m.is_positive(0.5));
        assert!(!m.is_positive(0.499_999));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_cause() {
        let with_threshold = |t: f64| ModelDef {
            threshold: t,
            ..def(0.0, &[("a", 1.0)])
        };
        let cases = [
            (
                def(0.0, &[("a", 1.0), ("a", 2.0)]),
                ModelError::DuplicateInput {
                    model: "orders".into(),
                    input: "a".into(),
                },
            ),
            (
                def(0.0, &[("a", f64::INFINITY)]),
                ModelError::NotFinite {
                    model: "orders".into(),
                    what: "the weight of `a`".into(),
                    value: f64::INFINITY,
                },
            ),
            (
                def(f64::NEG_INFINITY, &[("a", 1.0)]),
                ModelError::NotFinite {
                    model: "orders".into(),
                    what: "the intercept".into(),
                    value: f64::NEG_INFINITY,
                },
            ),
            (
                with_threshold(1.5),
                ModelError::Threshold {
                    model: "orders".into(),
                    value: 1.5,
                },
            ),
            (
                def(0.0, &[]),
                ModelError::NoInputs {
                    model: "orders".into(),
                },
            ),
        ];
        for (d, want) in cases {
            assert_eq!(LogisticModel::from_def(&d), Err(want));
        }
    }
}
