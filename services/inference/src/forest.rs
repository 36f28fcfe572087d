//! A tree ensemble that answers probabilities: smartcore's random-forest
//! *regressor* fit to 0/1 labels. Each leaf holds the mean label of the
//! training rows that reached it, so the forest's mean over trees estimates
//! P(positive) (smartcore 0.7's forest classifier has no `predict_proba`).
//! Calibration is checked at training time with the Brier score and
//! reliability bins (see [`crate::batch`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

use crate::scorer::Scorer;

type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestModel {
    inputs: Vec<String>,
    threshold: f64,
    forest: Arc<Forest>,
}

/// Forest shape: few, shallow trees keep scoring fast and artifacts small.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForestShape {
    pub trees: usize,
    pub max_depth: u16,
    pub min_samples_leaf: usize,
    pub seed: u64,
}

impl Default for ForestShape {
    fn default() -> Self {
        Self {
            trees: 50,
            max_depth: 8,
            min_samples_leaf: 20,
            seed: 7,
        }
    }
}

impl ForestModel {
    /// Fits the forest to `rows` (row-major, `inputs.len()` wide) and 0/1 `labels`.
    pub fn fit(
        inputs: Vec<String>,
        threshold: f64,
        rows: &[f64],
        labels: &[f64],
        shape: ForestShape,
    ) -> Result<Self, String> {
        let width = inputs.len();
        let x = DenseMatrix::new(labels.len(), width, rows.to_vec(), false)
            .map_err(|e| format!("training matrix: {e}"))?;
        let params = RandomForestRegressorParameters::default()
            .with_n_trees(shape.trees)
            .with_max_depth(shape.max_depth)
            .with_min_samples_leaf(shape.min_samples_leaf)
            .with_seed(shape.seed);
        let forest = Forest::fit(&x, &labels.to_vec(), params)
            .map_err(|e| format!("fitting the random forest: {e}"))?;
        Ok(Self {
            inputs,
            threshold,
            forest: Arc::new(forest),
        })
    }

    fn predict(&self, rows: usize, values: Vec<f64>) -> Vec<f64> {
        let width = self.inputs.len();
        let Ok(x) = DenseMatrix::new(rows, width, values, false) else {
            return vec![f64::NAN; rows];
        };
        match self.forest.predict(&x) {
            Ok(y) => y.into_iter().map(|p| p.clamp(0.0, 1.0)).collect(),
            Err(e) => {
                tracing::error!("random forest prediction: {e}");
                vec![f64::NAN; rows]
            }
        }
    }
}

impl Scorer for ForestModel {
    fn kind(&self) -> &'static str {
        "random_forest"
    }

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score_row(&self, row: &[f64]) -> f64 {
        self.predict(1, row.to_vec())
            .first()
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn score_rows(&self, values: &[f64], out: &mut Vec<f64>) {
        let width = self.inputs.len().max(1);
        let rows = values.len() / width;
        if rows > 0 {
            out.extend(self.predict(rows, values[..rows * width].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forest_on_a_step_answers_probabilities_and_round_trips() {
        // y = 1 when x0 > 0.5; x1 is irrelevant.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            let x0 = f64::from(i % 100) / 100.0;
            let x1 = f64::from((i * 37) % 100) / 100.0;
            rows.extend([x0, x1]);
            labels.push(f64::from(u8::from(x0 > 0.5)));
        }
        let shape = ForestShape {
            trees: 10,
            max_depth: 4,
            min_samples_leaf: 5,
            seed: 1,
        };
        let m =
            ForestModel::fit(vec!["x0".into(), "x1".into()], 0.5, &rows, &labels, shape).unwrap();
        let low = m.score_row(&[0.1, 0.5]);
        let high = m.score_row(&[0.9, 0.5]);
        assert!((0.0..=0.2).contains(&low), "low {low}");
        assert!((0.8..=1.0).contains(&high), "high {high}");
        let mut batch = Vec::new();
        m.score_rows(&[0.1, 0.5, 0.9, 0.5], &mut batch);
        assert_eq!(batch, vec![low, high]);

        let json = serde_json::to_vec(&m).unwrap();
        let back: ForestModel = serde_json::from_slice(&json).unwrap();
        for row in [[0.1, 0.5], [0.49, 0.2], [0.51, 0.9], [0.9, 0.5]] {
            assert_eq!(back.score_row(&row).to_bits(), m.score_row(&row).to_bits());
        }
    }
}
