//! What monitor knows about each model version from its predictions alone:
//! how many, how many positive, their mean score and when the last one came.
//!
//! Kept apart from the actor so the arithmetic is plain data, tested in place,
//! and so the later concerns (accuracy from labels, drift, alerts) sit beside
//! it as their own ledgers instead of growing one struct.

use std::collections::BTreeMap;

use millrace_proto::{ModelHealth, Prediction};
use serde::{Deserialize, Serialize};

/// A model and one of its versions: the key of every per-version ledger.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: String,
}

impl ModelVersion {
    pub fn new(model: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            version: version.into(),
        }
    }

    pub fn of(prediction: &Prediction) -> Self {
        Self::new(&prediction.model, &prediction.model_version)
    }
}

/// Running totals for one model version.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub predictions: u64,
    pub predicted_positive: u64,
    pub score_sum: f64,
    /// Latest `predict_time_us` seen; predictions may arrive out of order.
    pub last_prediction_time_us: i64,
}

impl ModelStats {
    pub fn record(&mut self, prediction: &Prediction) {
        self.predictions += 1;
        if prediction.predicted_positive {
            self.predicted_positive += 1;
        }
        // A model that answers NaN must not poison the mean of every later score.
        if prediction.score.is_finite() {
            self.score_sum += prediction.score;
        }
        self.last_prediction_time_us = self.last_prediction_time_us.max(prediction.predict_time_us);
    }

    /// Mean score over the predictions seen; 0 before the first one.
    pub fn mean_score(&self) -> f64 {
        if self.predictions == 0 {
            0.0
        } else {
            self.score_sum / self.predictions as f64
        }
    }

    pub fn health(&self, model: &str, model_version: &str) -> ModelHealth {
        ModelHealth {
            model: model.to_string(),
            model_version: model_version.to_string(),
            predictions: self.predictions,
            predicted_positive: self.predicted_positive,
            mean_score: self.mean_score(),
            last_prediction_time_us: self.last_prediction_time_us,
        }
    }
}

/// Stats for every model version seen: model → version → stats. Ordered, so
/// every answer lists models and versions the same way.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionLedger {
    pub models: BTreeMap<String, BTreeMap<String, ModelStats>>,
}

impl PredictionLedger {
    /// Records one prediction; returns its version's stats after the update.
    pub fn record(&mut self, prediction: &Prediction) -> &ModelStats {
        // Looked up before inserting: the names are cloned once per version, not per prediction.
        if !self.models.contains_key(&prediction.model) {
            self.models
                .insert(prediction.model.clone(), BTreeMap::new());
        }
        let versions = self
            .models
            .get_mut(&prediction.model)
            .unwrap_or_else(|| unreachable!("inserted above"));
        if !versions.contains_key(&prediction.model_version) {
            versions.insert(prediction.model_version.clone(), ModelStats::default());
        }
        let stats = versions
            .get_mut(&prediction.model_version)
            .unwrap_or_else(|| unreachable!("inserted above"));
        stats.record(prediction);
        stats
    }

    /// Every version of `model` (every model when `None`); an unknown model has none.
    pub fn health(&self, model: Option<&str>) -> Vec<ModelHealth> {
        self.versions(model)
            .map(|(m, v, stats)| stats.health(m, v))
            .collect()
    }

    /// Each model version with its stats, in (model, version) order.
    pub fn versions<'a>(
        &'a self,
        model: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a ModelStats)> {
        self.models
            .iter()
            .filter(move |(m, _)| model.is_none_or(|wanted| wanted == m.as_str()))
            .flat_map(|(m, versions)| {
                versions
                    .iter()
                    .map(move |(v, stats)| (m.as_str(), v.as_str(), stats))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(model: &str, version: &str, score: f64, positive: bool, t: i64) -> Prediction {
        Prediction {
            event_id: format!("{model}-{version}-{t}"),
            model: model.into(),
            model_version: version.into(),
            score,
            predicted_positive: positive,
            predict_time_us: t,
            ..Default::default()
        }
    }

    fn health(model: &str, version: &str, n: u64, pos: u64, mean: f64, last: i64) -> ModelHealth {
        ModelHealth {
            model: model.into(),
            model_version: version.into(),
            predictions: n,
            predicted_positive: pos,
            mean_score: mean,
            last_prediction_time_us: last,
        }
    }

    /// Record `predictions`, ask for `filter`, expect `expected`.
    struct Case {
        name: &'static str,
        predictions: Vec<Prediction>,
        filter: Option<&'static str>,
        expected: Vec<ModelHealth>,
    }

    fn case(
        name: &'static str,
        predictions: Vec<Prediction>,
        filter: Option<&'static str>,
        expected: Vec<ModelHealth>,
    ) -> Case {
        Case {
            name,
            predictions,
            filter,
            expected,
        }
    }

    #[test]
    fn stats_follow_the_predictions_recorded() {
        let cases = [
            case("no_predictions_no_models", vec![], None, vec![]),
            case(
                "mean_is_the_average_score_and_positives_are_counted",
                vec![
                    prediction("fraud", "1", 0.2, false, 10),
                    prediction("fraud", "1", 0.9, true, 30),
                    prediction("fraud", "1", 0.7, true, 20),
                ],
                None,
                vec![health("fraud", "1", 3, 2, 0.6, 30)],
            ),
            case(
                "versions_of_one_model_are_kept_apart",
                vec![
                    prediction("fraud", "2", 1.0, true, 5),
                    prediction("fraud", "1", 0.0, false, 7),
                    prediction("fraud", "2", 0.5, false, 6),
                ],
                None,
                vec![
                    health("fraud", "1", 1, 0, 0.0, 7),
                    health("fraud", "2", 2, 1, 0.75, 6),
                ],
            ),
            case(
                "a_model_filter_answers_only_that_model",
                vec![
                    prediction("fraud", "1", 0.4, false, 1),
                    prediction("delay", "3", 0.8, true, 2),
                ],
                Some("delay"),
                vec![health("delay", "3", 1, 1, 0.8, 2)],
            ),
            case(
                "an_unknown_model_answers_nothing",
                vec![prediction("fraud", "1", 0.4, false, 1)],
                Some("nope"),
                vec![],
            ),
            case(
                "a_nan_score_is_counted_but_leaves_the_sum_alone",
                vec![
                    prediction("fraud", "1", f64::NAN, true, 1),
                    prediction("fraud", "1", 0.5, false, 2),
                ],
                None,
                vec![health("fraud", "1", 2, 1, 0.25, 2)],
            ),
        ];
        for Case {
            name,
            predictions,
            filter,
            expected,
        } in cases
        {
            let mut ledger = PredictionLedger::default();
            for p in &predictions {
                ledger.record(p);
            }
            let got = ledger.health(filter);
            assert_eq!(got.len(), expected.len(), "{name}: {got:?}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g.mean_score - e.mean_score).abs() < 1e-12,
                    "{name}: mean {g:?} vs {e:?}"
                );
                let without_mean = |h: &ModelHealth| ModelHealth {
                    mean_score: 0.0,
                    ..h.clone()
                };
                assert_eq!(without_mean(g), without_mean(e), "{name}");
            }
        }
    }

    #[test]
    fn mean_score_is_zero_before_any_prediction() {
        assert_eq!(ModelStats::default().mean_score(), 0.0);
        assert_eq!(ModelStats::default().health("m", "v").mean_score, 0.0);
    }
}
