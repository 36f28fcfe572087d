//! Batch training for `millrace train`: a [`Dataset`] from a CSV export or
//! from replayed feature vectors joined to their labels, a time-ordered
//! holdout split, a fitted model (smartcore's logistic regression or random
//! forest, or our [`crate::gbdt`]), and its holdout ROC AUC, log loss, Brier
//! score and reliability — packed as a [`ModelArtifact`] ready to register.
//!
//! The logistic regression is fit on standardised inputs (L-BFGS converges
//! far better) and the scaling is folded back into the weights, so the
//! artifact scores raw inputs with the same code as the pipeline's model.

use std::collections::HashMap;

use millrace_proto::{FeatureVector, Label};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::evaluation::Holdout;
use crate::forest::{ForestModel, ForestShape};
use crate::gbdt::{self, GbdtParams};
use crate::scorer::{
    LoadedModel, ModelArtifact, ModelMeta, ModelSpec, TrainingDistribution, ValueDistribution,
};

/// Labelled rows: `rows` is row-major, `inputs.len()` wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    pub inputs: Vec<String>,
    pub rows: Vec<f64>,
    pub labels: Vec<f64>,
    /// Event time of each row (0 when unknown); the split is by it.
    pub times: Vec<i64>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        let w = self.inputs.len();
        &self.rows[i * w..(i + 1) * w]
    }

    fn push(&mut self, row: &[f64], label: f64, time: i64) {
        self.rows.extend_from_slice(row);
        self.labels.push(label);
        self.times.push(time);
    }

    /// A CSV with a header: `label` names the 0/1 column, `inputs` the feature
    /// columns (all other columns but `event_time_us` when empty). Rows with a
    /// missing or non-numeric value are skipped and counted.
    pub fn from_csv(text: &str, label: &str, inputs: &[String]) -> Result<(Self, usize), String> {
        Self::read_csv(text, label, inputs, false)
    }

    /// As [`Self::from_csv`], but an empty, `NA` or `NaN` input cell is kept as
    /// NaN (missing), for the kinds that learn what missing means
    /// ([`Algorithm::Gbdt`]). Other non-numeric cells still skip the row.
    pub fn from_csv_with_missing(
        text: &str,
        label: &str,
        inputs: &[String],
    ) -> Result<(Self, usize), String> {
        Self::read_csv(text, label, inputs, true)
    }

    fn read_csv(
        text: &str,
        label: &str,
        inputs: &[String],
        keep_missing: bool,
    ) -> Result<(Self, usize), String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or("the CSV is empty")?
            .split(',')
            .map(str::trim)
            .collect();
        let column = |name: &str| {
            header.iter().position(|h| *h == name).ok_or_else(|| {
                format!(
                    "the CSV has no column `{name}` (columns: {})",
                    header.join(", ")
                )
            })
        };
        let label_col = column(label)?;
        let time_col = header.iter().position(|h| *h == "event_time_us");
        let names: Vec<String> = if inputs.is_empty() {
            header
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != label_col && Some(*i) != time_col)
                .map(|(_, h)| h.to_string())
                .collect()
        } else {
            inputs.to_vec()
        };
        let cols = names
            .iter()
            .map(|n| column(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut data = Dataset {
            inputs: names,
            ..Default::default()
        };
        let mut skipped = 0;
        let mut row = Vec::with_capacity(cols.len());
        for line in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let number = |i: usize| {
                cells
                    .get(i)
                    .and_then(|c| c.parse::<f64>().ok())
                    .filter(|x| x.is_finite())
            };
            let input = |i: usize| match number(i) {
                Some(x) => Some(x),
                None if keep_missing
                    && matches!(cells.get(i), Some(&("" | "NA" | "NaN" | "nan")) | None) =>
                {
                    Some(f64::NAN)
                }
                None => None,
            };
            row.clear();
            row.extend(cols.iter().filter_map(|&c| input(c)));
            match number(label_col) {
                Some(y) if row.len() == cols.len() && (y == 0.0 || y == 1.0) => {
                    let time = time_col.and_then(number).map_or(0, |t| t as i64);
                    data.push(&row, y, time);
                }
                _ => skipped += 1,
            }
        }
        Ok((data, skipped))
    }

    /// Feature vectors joined to their labels by label key (the last label of
    /// a key wins); vectors without a label are left out. `inputs` empty means
    /// every name the first vector carries. A vector lacking an input is skipped.
    pub fn from_joined(
        vectors: &[FeatureVector],
        labels: &[Label],
        inputs: &[String],
    ) -> (Self, usize) {
        let by_key: HashMap<&str, f64> = labels
            .iter()
            .map(|l| (l.label_key.as_str(), l.value))
            .collect();
        let names: Vec<String> = if inputs.is_empty() {
            vectors.first().map(|v| v.names.clone()).unwrap_or_default()
        } else {
            inputs.to_vec()
        };
        let mut data = Dataset {
            inputs: names,
            ..Default::default()
        };
        let mut skipped = 0;
        for v in vectors {
            let Some(&y) = by_key.get(v.label_key.as_str()) else {
                continue;
            };
            let row: Option<Vec<f64>> = data
                .inputs
                .iter()
                .map(|n| {
                    v.names
                        .iter()
                        .position(|m| m == n)
                        .and_then(|i| v.values.get(i).copied())
                        .filter(|x| x.is_finite())
                })
                .collect();
            match row {
                Some(row) => data.push(&row, y, v.event_time_us),
                None => skipped += 1,
            }
        }
        (data, skipped)
    }

    /// The earliest `1 - holdout` of the rows (by event time, then order) to
    /// train on and the latest to test on, as a model would meet the future.
    pub fn split(&self, holdout: f64) -> (Dataset, Dataset) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (self.times[i], i));
        let test_n = ((self.len() as f64) * holdout.clamp(0.0, 0.9)).round() as usize;
        let cut = self.len() - test_n;
        let part = |idx: &[usize]| {
            let mut d = Dataset {
                inputs: self.inputs.clone(),
                ..Default::default()
            };
            for &i in idx {
                d.push(self.row(i), self.labels[i], self.times[i]);
            }
            d
        };
        (part(&order[..cut]), part(&order[cut..]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    /// smartcore logistic regression (L-BFGS) with L2 penalty `alpha`.
    Logistic { alpha: f64 },
    /// smartcore random-forest regressor fit to 0/1 labels.
    Forest(ForestShape),
    /// Gradient-boosted trees ([`crate::gbdt`]); NaN inputs are missing values.
    Gbdt(GbdtParams),
}

/// A trained model with its training and holdout results.
#[derive(Debug, Clone)]
pub struct Trained {
    pub artifact: ModelArtifact,
    pub train: Holdout,
    pub holdout: Holdout,
}

/// Fits `algorithm` on the earlier part of `data` and evaluates it on the later `holdout` fraction.
pub fn train(
    data: &Dataset,
    algorithm: Algorithm,
    name: &str,
    version: &str,
    threshold: f64,
    holdout: f64,
) -> Result<Trained, String> {
    if data.inputs.is_empty() {
        return Err("no inputs to train on".into());
    }
    let (train_set, test_set) = data.split(holdout);
    let positives = train_set.labels.iter().filter(|&&y| y == 1.0).count();
    if positives == 0 || positives == train_set.len() {
        return Err(format!(
            "the training part has {} rows and {positives} positives: both classes are needed",
            train_set.len()
        ));
    }
    let spec = match algorithm {
        Algorithm::Logistic { alpha } => fit_logistic(&train_set, alpha)?,
        Algorithm::Forest(shape) => ModelSpec::Forest(ForestModel::fit(
            train_set.inputs.clone(),
            threshold,
            &train_set.rows,
            &train_set.labels,
            shape,
        )?),
        Algorithm::Gbdt(params) => ModelSpec::Gbdt(
            gbdt::fit(
                &train_set.inputs,
                &train_set.rows,
                &train_set.labels,
                &params,
            )
            .map_err(|e| e.to_string())?
            .with_threshold(threshold),
        ),
    };
    let mut artifact = ModelArtifact {
        meta: ModelMeta {
            name: name.into(),
            version: version.into(),
            inputs: data.inputs.clone(),
            threshold,
            description: match algorithm {
                Algorithm::Logistic { alpha } => {
                    format!("smartcore logistic regression, alpha {alpha}")
                }
                Algorithm::Forest(s) => format!(
                    "smartcore random forest regressor on 0/1 labels: {} trees, depth {}, leaf {}",
                    s.trees, s.max_depth, s.min_samples_leaf
                ),
                Algorithm::Gbdt(p) => format!(
                    "gradient-boosted trees: {} rounds, learning rate {}, {} leaves, leaf {} rows, l2 {}",
                    p.rounds, p.learning_rate, p.max_leaves, p.min_rows_in_leaf, p.l2
                ),
            },
            created_us: 0,
            trained_from_us: train_set.times.iter().copied().min().unwrap_or(0),
            trained_to_us: train_set.times.iter().copied().max().unwrap_or(0),
            training_rows: train_set.len() as u64,
            metrics: Default::default(),
            training: None,
        },
        spec,
    };
    let model = artifact.load().map_err(|e| e.to_string())?;
    let mut train_scores = Vec::with_capacity(train_set.len());
    model.score_rows(&train_set.rows, &mut train_scores);
    let train_eval = Holdout::of(&train_scores, &train_set.labels);
    artifact.meta.training = Some(training_distribution(&train_set, &train_scores));
    let test_eval = evaluate(&model, &test_set);
    let m = &mut artifact.meta.metrics;
    m.insert("train_roc_auc".into(), train_eval.roc_auc);
    m.insert("train_log_loss".into(), train_eval.log_loss);
    m.insert("holdout_rows".into(), test_eval.rows as f64);
    m.insert("holdout_roc_auc".into(), test_eval.roc_auc);
    m.insert("holdout_log_loss".into(), test_eval.log_loss);
    m.insert("holdout_brier".into(), test_eval.brier);
    m.insert(
        "holdout_calibration_error".into(),
        test_eval.calibration_error(),
    );
    Ok(Trained {
        artifact,
        train: train_eval,
        holdout: test_eval,
    })
}

/// Each input's distribution over the rows the model was fit on, and its scores'.
pub fn training_distribution(data: &Dataset, scores: &[f64]) -> TrainingDistribution {
    let w = data.inputs.len().max(1);
    TrainingDistribution {
        inputs: data
            .inputs
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let column = data.rows.chunks_exact(w).map(|row| row[j]);
                (name.clone(), ValueDistribution::of(column))
            })
            .collect(),
        scores: Some(ValueDistribution::of(scores.iter().copied())),
    }
}

pub fn evaluate(model: &LoadedModel, data: &Dataset) -> Holdout {
    let mut scores = Vec::with_capacity(data.len());
    model.score_rows(&data.rows, &mut scores);
    Holdout::of(&scores, &data.labels)
}

fn fit_logistic(data: &Dataset, alpha: f64) -> Result<ModelSpec, String> {
    use smartcore::linalg::basic::arrays::Array as _;
    let w = data.inputs.len();
    let n = data.len() as f64;
    let mut mean = vec![0.0; w];
    let mut std = vec![0.0; w];
    for i in 0..data.len() {
        for (j, x) in data.row(i).iter().enumerate() {
            mean[j] += x / n;
        }
    }
    for i in 0..data.len() {
        for (j, x) in data.row(i).iter().enumerate() {
            std[j] += (x - mean[j]).powi(2) / n;
        }
    }
    for s in &mut std {
        *s = if s.sqrt() > 1e-12 { s.sqrt() } else { 1.0 };
    }
    let scaled: Vec<f64> = data
        .rows
        .chunks_exact(w)
        .flat_map(|row| {
            row.iter()
                .enumerate()
                .map(|(j, x)| (x - mean[j]) / std[j])
                .collect::<Vec<_>>()
        })
        .collect();
    let x = DenseMatrix::new(data.len(), w, scaled, false)
        .map_err(|e| format!("training matrix: {e}"))?;
    let y: Vec<u32> = data.labels.iter().map(|&l| u32::from(l >= 0.5)).collect();
    let fitted = LogisticRegression::fit(
        &x,
        &y,
        LogisticRegressionParameters::default().with_alpha(alpha),
    )
    .map_err(|e| format!("fitting the logistic regression: {e}"))?;
    if fitted.classes() != &vec![0, 1] {
        return Err(format!(
            "expected classes [0, 1], got {:?}",
            fitted.classes()
        ));
    }
    let coefficients: Vec<f64> = (0..w).map(|j| *fitted.coefficients().get((0, j))).collect();
    let intercept = *fitted.intercept().get((0, 0));
    // sigmoid(b + Σ c_j (x_j - m_j)/s_j) = sigmoid((b - Σ c_j m_j/s_j) + Σ (c_j/s_j) x_j)
    let weights: Vec<f64> = coefficients.iter().zip(&std).map(|(c, s)| c / s).collect();
    let intercept = intercept
        - coefficients
            .iter()
            .zip(&mean)
            .zip(&std)
            .map(|((c, m), s)| c * m / s)
            .sum::<f64>();
    if !intercept.is_finite() || weights.iter().any(|w| !w.is_finite()) {
        return Err("the logistic regression did not converge to finite weights".into());
    }
    Ok(ModelSpec::Logistic { intercept, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two informative inputs on very different scales, one noise column;
    /// P(y) = sigmoid(2·a - 0.01·b + 1) exactly, drawn with a fixed generator.
    fn synthetic(n: usize) -> Dataset {
        let mut s: u64 = 99;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut d = Dataset {
            inputs: vec!["a".into(), "b".into(), "noise".into()],
            ..Default::default()
        };
        for i in 0..n {
            let (a, b, noise) = (u() * 2.0 - 1.0, u() * 400.0, u());
            let p = crate::model::sigmoid(2.0 * a - 0.01 * b + 1.0);
            d.push(&[a, b, noise], f64::from(u8::from(u() < p)), i as i64);
        }
        d
    }

    #[test]
    fn logistic_recovers_the_generating_weights_and_scores_well() {
        let data = synthetic(4000);
        let t = train(
            &data,
            Algorithm::Logistic { alpha: 0.0 },
            "m",
            "lr-1",
            0.5,
            0.25,
        )
        .unwrap();
        let ModelSpec::Logistic { intercept, weights } = &t.artifact.spec else {
            panic!("a logistic spec")
        };
        assert!((weights[0] - 2.0).abs() < 0.4, "{weights:?}");
        assert!((weights[1] + 0.01).abs() < 0.003, "{weights:?}");
        assert!(weights[2].abs() < 0.5, "{weights:?}");
        assert!((intercept - 1.0).abs() < 0.4, "{intercept}");
        assert!(
            t.holdout.roc_auc > 0.75,
            "holdout AUC {}",
            t.holdout.roc_auc
        );
        assert!(
            t.holdout.calibration_error() < 0.06,
            "{:?}",
            t.holdout.reliability
        );
        assert_eq!(t.holdout.rows, 1000);
        assert_eq!(t.artifact.meta.training_rows, 3000);
        assert_eq!(
            (
                t.artifact.meta.trained_from_us,
                t.artifact.meta.trained_to_us
            ),
            (0, 2999)
        );
    }

    #[test]
    fn a_forest_answers_calibrated_probabilities() {
        let data = synthetic(3000);
        let shape = ForestShape {
            trees: 20,
            max_depth: 6,
            min_samples_leaf: 20,
            seed: 3,
        };
        let t = train(&data, Algorithm::Forest(shape), "m", "rf-1", 0.5, 0.25).unwrap();
        assert!(t.holdout.roc_auc > 0.7, "holdout AUC {}", t.holdout.roc_auc);
        assert!(t.holdout.brier < 0.22, "Brier {}", t.holdout.brier);
        assert!(
            t.holdout.calibration_error() < 0.1,
            "{:?}",
            t.holdout.reliability
        );
    }

    #[test]
    fn artifacts_saved_and_loaded_give_identical_predictions() {
        let data = synthetic(1500);
        let shape = ForestShape {
            trees: 5,
            max_depth: 4,
            min_samples_leaf: 10,
            seed: 1,
        };
        let boosted = Algorithm::Gbdt(GbdtParams {
            rounds: 20,
            ..GbdtParams::default()
        });
        for algorithm in [
            Algorithm::Logistic { alpha: 0.1 },
            Algorithm::Forest(shape),
            boosted,
        ] {
            let t = train(&data, algorithm, "m", "v", 0.5, 0.2).unwrap();
            let json = t.artifact.to_json().unwrap();
            let back = ModelArtifact::from_json(&json).unwrap();
            assert_eq!(back, t.artifact, "{algorithm:?}");
            let (a, b) = (t.artifact.load().unwrap(), back.load().unwrap());
            for i in 0..50 {
                assert_eq!(
                    a.score_row(data.row(i)).to_bits(),
                    b.score_row(data.row(i)).to_bits()
                );
            }
        }
    }

    #[test]
    fn the_artifact_records_the_training_rows_distribution() {
        let data = Dataset {
            inputs: vec!["a".into(), "b".into()],
            // (a, b) rows by time; the last (holdout) row is left out.
            rows: vec![1.0, 5.0, 2.0, 5.0, 1.0, 7.0, 3.0, 5.0, 9.0, 9.0],
            labels: vec![0.0, 1.0, 0.0, 1.0, 1.0],
            times: vec![0, 1, 2, 3, 4],
        };
        let t = train(
            &data,
            Algorithm::Logistic { alpha: 0.1 },
            "m",
            "v",
            0.5,
            0.2,
        )
        .unwrap();
        let training = t.artifact.meta.training.expect("a training distribution");
        let a = &training.inputs["a"];
        assert_eq!(
            (a.count, &a.values, &a.at_or_below),
            (4, &vec![1.0, 2.0, 3.0], &vec![2, 3, 4])
        );
        let b = &training.inputs["b"];
        assert_eq!(
            (b.count, &b.values, &b.at_or_below),
            (4, &vec![5.0, 7.0], &vec![3, 4])
        );
        let scores = training.scores.expect("score distribution");
        assert_eq!(scores.count, 4);
        assert!(scores.values.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn boosted_trees_train_on_rows_with_missing_values() {
        let mut data = synthetic(3000);
        // Every fifth row lacks `a`.
        for i in (0..data.len()).step_by(5) {
            data.rows[i * 3] = f64::NAN;
        }
        let t = train(
            &data,
            Algorithm::Gbdt(GbdtParams::default()),
            "m",
            "gbdt-1",
            0.4,
            0.25,
        )
        .unwrap();
        assert_eq!(t.artifact.kind(), "gbdt");
        assert!(
            t.artifact.meta.description.contains("200 rounds"),
            "{}",
            t.artifact.meta.description
        );
        assert!(t.holdout.roc_auc > 0.7, "holdout AUC {}", t.holdout.roc_auc);
        assert!(t.holdout.log_loss.is_finite());
        assert!((t.artifact.load().unwrap().meta.threshold - 0.4).abs() < 1e-12);
        let a = &t.artifact.meta.training.as_ref().unwrap().inputs["a"];
        assert_eq!(
            a.count, 1800,
            "missing values are left out of the distribution"
        );
    }

    #[test]
    fn a_csv_read_with_missing_keeps_empty_and_na_cells() {
        let csv = "a,b,late\n1,,1\nNA,2,0\nx,3,1\n4,5,0\n";
        let (d, skipped) = Dataset::from_csv_with_missing(csv, "late", &[]).unwrap();
        assert_eq!(d.labels, [1.0, 0.0, 0.0]);
        assert_eq!(skipped, 1, "a non-number that is not missing still skips");
        assert!(d.rows[1].is_nan() && d.rows[2].is_nan());
        assert_eq!((d.rows[0], d.rows[3], d.rows[4]), (1.0, 2.0, 4.0));
        let (strict, skipped) = Dataset::from_csv(csv, "late", &[]).unwrap();
        assert_eq!((strict.len(), skipped), (1, 3));
    }

    #[test]
    fn csv_rows_are_read_by_header_and_bad_rows_skipped() {
        let csv = "event_time_us,a,b,late\n3,1.0,2.0,1\n1,0.5,x,0\n2,0.25,4.0,0\n4,1,1,2\n";
        let (d, skipped) = Dataset::from_csv(csv, "late", &[]).unwrap();
        assert_eq!(d.inputs, ["a", "b"]);
        assert_eq!(d.rows, [1.0, 2.0, 0.25, 4.0]);
        assert_eq!(d.labels, [1.0, 0.0]);
        assert_eq!(d.times, [3, 2]);
        assert_eq!(skipped, 2, "a non-number and a label that is not 0/1");
        assert!(Dataset::from_csv(csv, "nope", &[])
            .unwrap_err()
            .contains("no column `nope`"));
        let (train, test) = d.split(0.5);
        assert_eq!(
            (train.times.as_slice(), test.times.as_slice()),
            (&[2][..], &[3][..])
        );
    }

    #[test]
    fn vectors_join_their_labels_by_key() {
        let v = |key: &str, t: i64, x: f64| FeatureVector {
            label_key: key.into(),
            event_time_us: t,
            names: vec!["x".into(), "y".into()],
            values: vec![x, 2.0 * x],
            ..Default::default()
        };
        let l = |key: &str, value: f64| Label {
            label_key: key.into(),
            value,
            ..Default::default()
        };
        let (d, skipped) = Dataset::from_joined(
            &[v("a", 1, 1.0), v("b", 2, 2.0), v("c", 3, 3.0)],
            &[l("a", 1.0), l("c", 0.0), l("z", 1.0)],
            &["y".to_string()],
        );
        assert_eq!(skipped, 0);
        assert_eq!(d.rows, [2.0, 6.0]);
        assert_eq!(d.labels, [1.0, 0.0]);
    }
}
