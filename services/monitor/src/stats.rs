//! What monitor knows about each model version from its predictions alone:
//! how many, how many positive, their mean score and when the last one came.
//!
//! Kept apart from the actor so the arithmetic is plain data, tested in place,
//! and so the later concerns (accuracy from labels, drift, alerts) sit beside
//! it as their own ledgers instead of growing one struct.

use std::collections::BTreeMap;

use millrace_proto::ModelHealth;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::input::PredictionRecord;
use crate::keyed::Keyed;

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

    pub fn of(prediction: &PredictionRecord) -> Self {
        Self::new(prediction.model(), prediction.model_version())
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
    pub fn record(&mut self, prediction: &PredictionRecord) {
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
            ..Default::default()
        }
    }
}

/// Stats for every model version seen, in (model, version) order, so every
/// answer lists models and versions the same way. Snapshotted as
/// `models: model → version → stats`, the form it has always had.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PredictionLedger {
    versions: Keyed<ModelVersion, ModelStats>,
}

#[derive(Serialize)]
struct LedgerRef<'a> {
    models: BTreeMap<&'a str, BTreeMap<&'a str, &'a ModelStats>>,
}

#[derive(Deserialize)]
struct LedgerData {
    models: BTreeMap<String, BTreeMap<String, ModelStats>>,
}

impl Serialize for PredictionLedger {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut models: BTreeMap<&str, BTreeMap<&str, &ModelStats>> = BTreeMap::new();
        for (v, stats) in self.versions.iter() {
            models
                .entry(v.model.as_str())
                .or_default()
                .insert(v.version.as_str(), stats);
        }
        LedgerRef { models }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PredictionLedger {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let data = LedgerData::deserialize(deserializer)?;
        Ok(Self {
            versions: data
                .models
                .into_iter()
                .flat_map(|(model, versions)| {
                    versions.into_iter().map(move |(version, stats)| {
                        (ModelVersion::new(model.clone(), version), stats)
                    })
                })
                .collect(),
        })
    }
}

impl PredictionLedger {
    /// The position of a version's stats (see [`Keyed`]), adding them on first sight.
    pub fn position_or_insert(&mut self, version: &ModelVersion) -> usize {
        self.versions
            .position_or_insert(version, ModelVersion::clone, ModelStats::default)
    }

    /// Records one prediction at a version's position; answers its stats after the update.
    pub fn record_at(
        &mut self,
        position: usize,
        prediction: &PredictionRecord,
    ) -> Option<&ModelStats> {
        let stats = self.versions.at_mut(position)?;
        stats.record(prediction);
        Some(stats)
    }

    /// Records one prediction; returns its version's stats after the update.
    pub fn record(&mut self, prediction: &PredictionRecord) -> Option<&ModelStats> {
        let at = self.position_or_insert(&ModelVersion::of(prediction));
        self.record_at(at, prediction)
    }

    pub fn stats(&self, version: &ModelVersion) -> Option<&ModelStats> {
        self.versions.get(version)
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
        self.versions
            .iter()
            .filter(move |(v, _)| model.is_none_or(|wanted| wanted == v.model.as_str()))
            .map(|(v, stats)| (v.model.as_str(), v.version.as_str(), stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use millrace_proto::Prediction;

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
            ..Default::default()
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
                ledger.record(&p.clone().into());
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
    fn the_ledger_snapshots_as_nested_maps_of_model_and_version() {
        let mut ledger = PredictionLedger::default();
        for (m, v) in [("fraud", "2"), ("delay", "1"), ("fraud", "1")] {
            ledger.record(&prediction(m, v, 0.5, true, 1).into());
        }
        let nested = postcard::to_stdvec(&ledger).expect("encode");
        let mut models: BTreeMap<String, BTreeMap<String, ModelStats>> = BTreeMap::new();
        for (m, v, stats) in ledger.versions(None) {
            models
                .entry(m.to_string())
                .or_default()
                .insert(v.to_string(), stats.clone());
        }
        assert_eq!(nested, postcard::to_stdvec(&models).expect("encode"));
        let back: PredictionLedger = postcard::from_bytes(&nested).expect("decode");
        assert_eq!(back, ledger);
        let order: Vec<(&str, &str)> = back.versions(None).map(|(m, v, _)| (m, v)).collect();
        assert_eq!(order, [("delay", "1"), ("fraud", "1"), ("fraud", "2")]);
    }

    #[test]
    fn mean_score_is_zero_before_any_prediction() {
        assert_eq!(ModelStats::default().mean_score(), 0.0);
        assert_eq!(ModelStats::default().health("m", "v").mean_score, 0.0);
    }
}
