//! Scoring the FEATURES stream: the `ModelServer` actor turns each feature
//! vector into a `Prediction` for `predictions.<model>`.
//!
//! The actor holds the active model (shared with the gRPC side through an
//! `Arc`, so both score with the same code and weights) and the tallies it
//! snapshots. The stage loop feeds it vectors in stream order, publishes what
//! it returns and snapshots it; nothing here touches NATS or sled.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, MessageResult};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::{FeatureVector, Prediction};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};

use crate::model::LogisticModel;

/// Predictions made by one model version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTally {
    pub predictions: u64,
    pub positive: u64,
}

/// What inference snapshots: model name → version → tally, so the counts
/// survive restarts and a replay does not count an event twice.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingState {
    pub tallies: BTreeMap<String, BTreeMap<String, VersionTally>>,
}

impl ServingState {
    fn tally(&mut self, model: &LogisticModel) -> &mut VersionTally {
        self.tallies
            .entry(model.name().to_string())
            .or_default()
            .entry(model.version().to_string())
            .or_default()
    }
}

/// Buckets for probabilities: 0.05, 0.10, …, 1.0.
fn score_buckets() -> Vec<f64> {
    (1..=20).map(|i| f64::from(i) / 20.0).collect()
}

/// The metrics of the active model, resolved once instead of per prediction.
struct ModelMetrics {
    predictions: IntCounter,
    positive: IntCounter,
    score: Histogram,
}

pub struct ModelServer {
    model: Arc<LogisticModel>,
    state: ServingState,
    active: ModelMetrics,
    missing_inputs: IntCounterVec,
}

impl ModelServer {
    pub fn new(model: Arc<LogisticModel>, state: ServingState, metrics: &Metrics) -> Self {
        let labels = [model.name(), model.version()];
        let predictions = metrics.counter_vec(
            "inference_predictions_total",
            "Predictions published for feature vectors, by model and version.",
            &["model", "model_version"],
        );
        let positive = metrics.counter_vec(
            "inference_positive_predictions_total",
            "Predictions at or above the model's threshold, by model and version.",
            &["model", "model_version"],
        );
        let score = metrics.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "inference_score",
                    "Scores given to feature vectors, by model and version.",
                )
                .buckets(score_buckets()),
                &["model", "model_version"],
            )
            .unwrap_or_else(|e| panic!("metric inference_score: {e}")),
        );
        let missing_inputs = metrics.counter_vec(
            "inference_missing_inputs_total",
            "Model inputs a feature vector lacked (or carried as NaN/inf), scored as 0.0, by input.",
            &["input"],
        );
        let active = ModelMetrics {
            predictions: predictions.with_label_values(&labels),
            positive: positive.with_label_values(&labels),
            score: score.with_label_values(&labels),
        };
        Self {
            model,
            state,
            active,
            missing_inputs,
        }
    }

    /// The prediction for one vector; updates the tallies and metrics.
    pub fn predict(&mut self, vector: &FeatureVector, now_us: i64) -> Prediction {
        let model = &*self.model;
        let scored = model.score_vector(vector);
        for input in &scored.missing {
            self.missing_inputs.with_label_values(&[*input]).inc();
        }
        let predicted_positive = model.is_positive(scored.score);
        let tally = self.state.tally(model);
        tally.predictions += 1;
        self.active.predictions.inc();
        if predicted_positive {
            tally.positive += 1;
            self.active.positive.inc();
        }
        self.active.score.observe(scored.score);
        Prediction {
            event_id: vector.event_id.clone(),
            model: model.name().to_string(),
            model_version: model.version().to_string(),
            score: scored.score,
            predicted_positive,
            entity_key: vector.entity_key.clone(),
            label_key: vector.label_key.clone(),
            event_time_us: vector.event_time_us,
            ingest_time_us: vector.ingest_time_us,
            predict_time_us: now_us,
        }
    }

    /// Where a prediction goes and the id JetStream deduplicates it by: the
    /// same event scored by the same model version always gets the same id.
    fn outgoing(prediction: &Prediction, trace: opentelemetry::Context) -> Outgoing {
        let id = format!(
            "predict:{}:{}:{}",
            prediction.model, prediction.model_version, prediction.event_id
        );
        Outgoing::new(
            subject::predictions(&prediction.model),
            id,
            prediction,
            trace,
        )
    }
}

impl Actor for ModelServer {
    type Context = Context<Self>;
}

impl Handler<Apply<FeatureVector>> for ModelServer {
    type Result = Vec<Outgoing>;

    fn handle(
        &mut self,
        Apply(batch): Apply<FeatureVector>,
        _: &mut Self::Context,
    ) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        batch
            .into_iter()
            .map(|d| {
                let prediction = self.predict(&d.message, now);
                Self::outgoing(&prediction, d.trace)
            })
            .collect()
    }
}

impl Handler<TakeSnapshot<ServingState>> for ModelServer {
    type Result = MessageResult<TakeSnapshot<ServingState>>;

    fn handle(&mut self, _: TakeSnapshot<ServingState>, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::{ModelDef, ModelInput};
    use millrace_chassis::stage::Delivered;
    use prost::Message as _;

    fn model() -> Arc<LogisticModel> {
        let def = ModelDef {
            name: "orders".into(),
            version: "v1".into(),
            threshold: 0.5,
            intercept: -1.0,
            inputs: vec![
                ModelInput {
                    name: "count".into(),
                    weight: 0.5,
                },
                ModelInput {
                    name: "amount".into(),
                    weight: 0.02,
                },
            ],
        };
        Arc::new(LogisticModel::from_def(&def).unwrap())
    }

    fn vector(id: &str, count: f64, amount: Option<f64>) -> FeatureVector {
        let mut names = vec!["count".to_string()];
        let mut values = vec![count];
        if let Some(a) = amount {
            names.push("amount".into());
            values.push(a);
        }
        FeatureVector {
            event_id: id.into(),
            event_type: "order_placed".into(),
            entity_key: "c1".into(),
            partition: 3,
            event_time_us: 10,
            ingest_time_us: 20,
            feature_time_us: 30,
            names,
            values,
            label_key: format!("k-{id}"),
        }
    }

    #[test]
    fn a_prediction_carries_the_event_the_model_and_the_decision() {
        let metrics = Metrics::new();
        let mut server = ModelServer::new(model(), ServingState::default(), &metrics);
        let cases = [
            (
                "z = 1 is positive",
                vector("e1", 2.0, Some(50.0)),
                0.731_058_578_630_004_9,
                true,
            ),
            (
                "z = 0 sits on the threshold: positive",
                vector("e2", 2.0, Some(0.0)),
                0.5,
                true,
            ),
            (
                "z = -1 is negative",
                vector("e3", 0.0, Some(0.0)),
                0.268_941_421_369_995_1,
                false,
            ),
        ];
        for (rule, v, score, positive) in cases {
            let p = server.predict(&v, 99);
            assert!((p.score - score).abs() < 1e-12, "{rule}: score {}", p.score);
            assert_eq!(p.predicted_positive, positive, "{rule}");
            assert_eq!(
                (
                    p.event_id.as_str(),
                    p.model.as_str(),
                    p.model_version.as_str()
                ),
                (v.event_id.as_str(), "orders", "v1"),
                "{rule}"
            );
            assert_eq!(
                (
                    p.entity_key.as_str(),
                    p.event_time_us,
                    p.ingest_time_us,
                    p.predict_time_us
                ),
                ("c1", 10, 20, 99)
            );
            assert_eq!(
                p.label_key,
                format!("k-{}", v.event_id),
                "{rule}: the label key travels on"
            );
        }
        assert_eq!(
            server.state.tallies["orders"]["v1"],
            VersionTally {
                predictions: 3,
                positive: 2
            }
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"millrace_inference_predictions_total{model="orders",model_version="v1"} 3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn missing_inputs_are_counted_by_name() {
        let metrics = Metrics::new();
        let mut server = ModelServer::new(model(), ServingState::default(), &metrics);
        server.predict(&vector("e1", 2.0, None), 0);
        server.predict(&vector("e2", 2.0, None), 0);
        let text = metrics.render();
        assert!(
            text.contains(r#"millrace_inference_missing_inputs_total{input="amount"} 2"#),
            "{text}"
        );
    }

    #[actix::test]
    async fn the_actor_publishes_to_predictions_of_the_model_under_a_stable_id() {
        let server = ModelServer::new(model(), ServingState::default(), &Metrics::new()).start();
        let delivered = |seq: u64, id: &str| Delivered {
            source: 0,
            sequence: seq,
            subject: "features.3".into(),
            message: vector(id, 2.0, Some(50.0)),
            trace: opentelemetry::Context::new(),
        };
        let out = server
            .send(Apply(vec![delivered(1, "e1"), delivered(2, "e2")]))
            .await
            .unwrap();
        let ids: Vec<(&str, &str)> = out
            .iter()
            .map(|o| (o.subject.as_str(), o.msg_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("predictions.orders", "predict:orders:v1:e1"),
                ("predictions.orders", "predict:orders:v1:e2")
            ]
        );
        let decoded = Prediction::decode(out[1].payload.clone()).unwrap();
        assert_eq!(decoded.event_id, "e2");

        let state = server
            .send(TakeSnapshot::<ServingState>::default())
            .await
            .unwrap();
        assert_eq!(
            state.tallies["orders"]["v1"],
            VersionTally {
                predictions: 2,
                positive: 2
            }
        );
    }

    #[test]
    fn snapshot_state_round_trips_through_postcard() {
        let mut state = ServingState::default();
        state.tallies.entry("orders".into()).or_default().insert(
            "v1".into(),
            VersionTally {
                predictions: 7,
                positive: 3,
            },
        );
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: ServingState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn restored_tallies_keep_counting() {
        let mut state = ServingState::default();
        state.tallies.entry("orders".into()).or_default().insert(
            "v1".into(),
            VersionTally {
                predictions: 7,
                positive: 3,
            },
        );
        let mut server = ModelServer::new(model(), state, &Metrics::new());
        server.predict(&vector("e8", 2.0, Some(50.0)), 0);
        assert_eq!(
            server.state.tallies["orders"]["v1"],
            VersionTally {
                predictions: 8,
                positive: 4
            }
        );
    }
}
