//! The `HealthBoard` actor: the one owner of everything monitor has learned
//! about the models, fed predictions in stream order by the stage loop,
//! snapshotted by it, and read by the APIs.
//!
//! Each concern keeps its own ledger inside [`MonitorState`] (today the
//! prediction stats; accuracy from labels, drift and alerts join later), so
//! the board only routes messages and mirrors the ledgers into Prometheus.
//! Nothing here touches NATS or sled.

use actix::{Actor, Context, Handler, Message, MessageResult};
use millrace_chassis::bus::Outgoing;
use millrace_chassis::metrics::{latency_buckets, Metrics};
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::{GetModelHealthResponse, Prediction};
use prometheus::{GaugeVec, Histogram, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};

use crate::stats::{ModelStats, PredictionLedger};

/// What monitor snapshots. It always reflects exactly the predictions applied,
/// so the counters rebuilt from it on start continue where they were.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorState {
    pub predictions: PredictionLedger,
}

/// The Prometheus view of the board. Counters are restored from the snapshot
/// on start: a restart must not make the exported totals drop or double.
#[derive(Clone)]
pub struct HealthMetrics {
    predictions: IntCounterVec,
    predicted_positive: IntCounterVec,
    last_prediction: GaugeVec,
    event_to_prediction: Histogram,
    ingest_to_prediction: Histogram,
}

const MODEL_LABELS: &[&str] = &["model", "model_version"];

impl HealthMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        // Past the chassis' 10 s up to a minute: a backlog drained after a restart
        // should still show its shape, not land in +Inf as a year-old replay does.
        let mut buckets = latency_buckets();
        buckets.extend([30.0, 60.0]);
        Self {
            predictions: metrics.counter_vec(
                "monitor_predictions_total",
                "Predictions monitor has applied, by model version.",
                MODEL_LABELS,
            ),
            predicted_positive: metrics.counter_vec(
                "monitor_predicted_positive_total",
                "Predictions of the positive class, by model version.",
                MODEL_LABELS,
            ),
            last_prediction: metrics.register(
                GaugeVec::new(
                    Opts::new(
                        "monitor_last_prediction_timestamp_seconds",
                        "Prediction time of the latest prediction, by model version (Unix seconds).",
                    ),
                    MODEL_LABELS,
                )
                .unwrap_or_else(|e| panic!("metric monitor_last_prediction_timestamp_seconds: {e}")),
            ),
            event_to_prediction: metrics.histogram(
                "monitor_event_to_prediction_seconds",
                "Time from an event (producer clock) to its prediction.",
                buckets.clone(),
            ),
            ingest_to_prediction: metrics.histogram(
                "monitor_ingest_to_prediction_seconds",
                "Time from ingest accepting an event to its prediction.",
                buckets,
            ),
        }
    }

    /// Brings the counters and gauges up to a restored ledger.
    fn restore(&self, ledger: &PredictionLedger) {
        for (model, version, stats) in ledger.versions(None) {
            let labels = [model, version];
            self.predictions
                .with_label_values(&labels)
                .inc_by(stats.predictions);
            self.predicted_positive
                .with_label_values(&labels)
                .inc_by(stats.predicted_positive);
            self.set_last_prediction(model, version, stats);
        }
    }

    fn observe(&self, prediction: &Prediction, stats: &ModelStats) {
        let labels = [prediction.model.as_str(), prediction.model_version.as_str()];
        self.predictions.with_label_values(&labels).inc();
        if prediction.predicted_positive {
            self.predicted_positive.with_label_values(&labels).inc();
        }
        self.set_last_prediction(&prediction.model, &prediction.model_version, stats);
        if let Some(s) = lag_seconds(prediction.event_time_us, prediction.predict_time_us) {
            self.event_to_prediction.observe(s);
        }
        if let Some(s) = lag_seconds(prediction.ingest_time_us, prediction.predict_time_us) {
            self.ingest_to_prediction.observe(s);
        }
    }

    fn set_last_prediction(&self, model: &str, version: &str, stats: &ModelStats) {
        self.last_prediction
            .with_label_values(&[model, version])
            .set(stats.last_prediction_time_us as f64 / 1e6);
    }
}

/// Seconds from `from_us` to `to_us`, clamped at 0 (clocks of different
/// machines disagree); `None` when either time was never set.
fn lag_seconds(from_us: i64, to_us: i64) -> Option<f64> {
    (from_us > 0 && to_us > 0).then(|| to_us.saturating_sub(from_us).max(0) as f64 / 1e6)
}

pub struct HealthBoard {
    state: MonitorState,
    metrics: HealthMetrics,
}

impl HealthBoard {
    /// A board resuming from `state` (the default when there is no snapshot).
    pub fn new(state: MonitorState, metrics: HealthMetrics) -> Self {
        metrics.restore(&state.predictions);
        Self { state, metrics }
    }

    pub fn observe(&mut self, prediction: &Prediction) {
        let stats = self.state.predictions.record(prediction);
        self.metrics.observe(prediction, stats);
    }

    pub fn report(&self, model: Option<&str>) -> GetModelHealthResponse {
        GetModelHealthResponse {
            models: self.state.predictions.health(model),
            firing: Vec::new(),
        }
    }
}

impl Actor for HealthBoard {
    type Context = Context<Self>;
}

impl Handler<Apply<Prediction>> for HealthBoard {
    type Result = Vec<Outgoing>;

    /// Monitor is the end of the line: predictions publish nothing (alerts will).
    fn handle(&mut self, Apply(batch): Apply<Prediction>, _: &mut Self::Context) -> Self::Result {
        for delivered in &batch {
            self.observe(&delivered.message);
        }
        Vec::new()
    }
}

impl Handler<TakeSnapshot<MonitorState>> for HealthBoard {
    type Result = MessageResult<TakeSnapshot<MonitorState>>;

    fn handle(&mut self, _: TakeSnapshot<MonitorState>, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}

/// The APIs' read: health of one model's versions, or of all models when `model` is `None`.
pub struct ModelHealthQuery {
    pub model: Option<String>,
}

impl Message for ModelHealthQuery {
    type Result = GetModelHealthResponse;
}

impl Handler<ModelHealthQuery> for HealthBoard {
    type Result = MessageResult<ModelHealthQuery>;

    fn handle(&mut self, query: ModelHealthQuery, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.report(query.model.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(id: &str, version: &str, score: f64, positive: bool) -> Prediction {
        Prediction {
            event_id: id.into(),
            model: "fraud".into(),
            model_version: version.into(),
            score,
            predicted_positive: positive,
            event_time_us: 1_000_000,
            ingest_time_us: 1_500_000,
            predict_time_us: 2_000_000,
            ..Default::default()
        }
    }

    fn board() -> (Metrics, HealthBoard) {
        let metrics = Metrics::new();
        let board = HealthBoard::new(MonitorState::default(), HealthMetrics::new(&metrics));
        (metrics, board)
    }

    fn exported(metrics: &Metrics, line_start: &str) -> Option<f64> {
        metrics.render().lines().find_map(|l| {
            l.strip_prefix(line_start)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    #[test]
    fn snapshot_state_round_trips_through_postcard() {
        let (_, mut b) = board();
        b.observe(&prediction("a", "1", 0.25, false));
        b.observe(&prediction("b", "2", 0.75, true));
        let bytes = postcard::to_stdvec(&b.state).unwrap();
        let back: MonitorState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, b.state);
    }

    #[test]
    fn restored_counters_continue_from_the_snapshot() {
        let (_, mut before) = board();
        for i in 0..5 {
            before.observe(&prediction(&format!("e{i}"), "1", 0.9, i % 2 == 0));
        }
        let snapshot = postcard::to_stdvec(&before.state).unwrap();

        // A new process: fresh registry, state from the snapshot.
        let metrics = Metrics::new();
        let mut after = HealthBoard::new(
            postcard::from_bytes(&snapshot).unwrap(),
            HealthMetrics::new(&metrics),
        );
        let total = r#"millrace_monitor_predictions_total{model="fraud",model_version="1"}"#;
        let positive =
            r#"millrace_monitor_predicted_positive_total{model="fraud",model_version="1"}"#;
        assert_eq!(exported(&metrics, total), Some(5.0));
        assert_eq!(exported(&metrics, positive), Some(3.0));
        after.observe(&prediction("e5", "1", 0.1, false));
        after.observe(&prediction("e6", "1", 0.1, true));
        assert_eq!(exported(&metrics, total), Some(7.0));
        assert_eq!(exported(&metrics, positive), Some(4.0));
        assert_eq!(after.report(Some("fraud")).models[0].predictions, 7);
    }

    #[test]
    fn latencies_and_last_prediction_time_are_exported() {
        let (metrics, mut b) = board();
        b.observe(&prediction("a", "1", 0.5, true));
        assert_eq!(
            exported(&metrics, "millrace_monitor_event_to_prediction_seconds_sum"),
            Some(1.0)
        );
        assert_eq!(
            exported(
                &metrics,
                "millrace_monitor_ingest_to_prediction_seconds_sum"
            ),
            Some(0.5)
        );
        let last = r#"millrace_monitor_last_prediction_timestamp_seconds{model="fraud",model_version="1"}"#;
        assert_eq!(exported(&metrics, last), Some(2.0));
    }

    #[test]
    fn lag_is_clamped_at_zero_and_skipped_when_a_time_is_missing() {
        let cases = [
            ("forward", 1_000_000, 3_500_000, Some(2.5)),
            ("clock_skew_clamps_to_zero", 5_000_000, 3_000_000, Some(0.0)),
            ("unset_source_time", 0, 3_000_000, None),
            ("unset_prediction_time", 1_000_000, 0, None),
        ];
        for (name, from, to, expected) in cases {
            assert_eq!(lag_seconds(from, to), expected, "{name}");
        }
    }

    #[actix_rt::test]
    async fn the_actor_answers_queries_and_snapshots_with_what_it_applied() {
        let (_, mut b) = board();
        b.observe(&prediction("a", "1", 0.5, true));
        let addr = b.start();
        let all = addr.send(ModelHealthQuery { model: None }).await.unwrap();
        assert_eq!(all.models.len(), 1);
        assert!(all.firing.is_empty());
        let unknown = addr
            .send(ModelHealthQuery {
                model: Some("nope".into()),
            })
            .await
            .unwrap();
        assert!(unknown.models.is_empty());
        let state = addr
            .send(TakeSnapshot::<MonitorState>::default())
            .await
            .unwrap();
        assert_eq!(state.predictions.models["fraud"]["1"].predictions, 1);
    }
}
