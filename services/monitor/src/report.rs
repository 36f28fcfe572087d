//! The answer to "how are the models doing": per model version its prediction
//! stats, quality over both windows, score drift and latency; per feature its
//! drift; the label join; throughput per stage; and the alerts firing. JSON
//! serves all of it; the gRPC `GetModelHealth` carries what its message has
//! fields for (the prediction stats and the firing alerts).

use std::collections::BTreeMap;

use millrace_chassis::config::FeatureKind;
use millrace_proto::{Alert, GetModelHealthResponse, ModelHealth};
use serde::Serialize;

use crate::health::HealthBoard;
use crate::metrics::LATENCY_QUANTILES;
use crate::quality::QualityFigures;
use crate::stats::ModelVersion;

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub models: Vec<ModelReport>,
    pub features: Vec<FeatureReport>,
    pub join: JoinReport,
    /// Events per second per stage, on each stage's own clock.
    pub throughput: BTreeMap<String, Option<f64>>,
    /// Serialized by the API as JSON alerts (the proto type is not serde).
    #[serde(skip)]
    pub firing: Vec<Alert>,
}

/// What `GetModelHealth` has always answered for a model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthFigures {
    pub model: String,
    pub model_version: String,
    pub predictions: u64,
    pub predicted_positive: u64,
    pub mean_score: f64,
    pub last_prediction_time_us: i64,
}

impl From<ModelHealth> for HealthFigures {
    fn from(h: ModelHealth) -> Self {
        Self {
            model: h.model,
            model_version: h.model_version,
            predictions: h.predictions,
            predicted_positive: h.predicted_positive,
            mean_score: h.mean_score,
            last_prediction_time_us: h.last_prediction_time_us,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    #[serde(flatten)]
    pub health: HealthFigures,
    /// Predictions joined with a label, ever.
    pub labelled: u64,
    pub quality: WindowFigures,
    pub score_drift: DriftReport,
    pub latency: LatencyReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowFigures {
    /// The last `quality.window_labels` labelled predictions.
    pub labels: QualityFigures,
    /// Labelled predictions within `quality.window_secs` of event time of the newest.
    pub time: QualityFigures,
    /// Labelled predictions the event-time window left out: too old on arrival,
    /// or pushed out by `quality.max_window_samples`.
    pub time_dropped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// Values observed (finite ones).
    pub observed: u64,
    /// Values in the reference so far (complete at `drift.reference_events`).
    pub reference: usize,
    /// Where the reference comes from: "first_events" or "training".
    pub reference_from: &'static str,
    /// The model version whose training data it is, as "model/version".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_version: Option<String>,
    pub window: usize,
    pub psi: Option<f64>,
    pub ks: Option<f64>,
    /// The value count at which psi and ks were measured.
    pub measured_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Predictions the quantiles cover.
    pub window: usize,
    /// Percentile ("50", "95", "99") → seconds.
    pub event_to_prediction_seconds: BTreeMap<&'static str, Option<f64>>,
    pub ingest_to_prediction_seconds: BTreeMap<&'static str, Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    pub feature: String,
    /// "numeric" or "categorical".
    pub kind: &'static str,
    #[serde(flatten)]
    pub drift: DriftReport,
    /// "none", "moderate" or "significant" by PSI; absent before the first measure.
    pub severity: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    pub labels: u64,
    pub matched: u64,
    pub waiting_predictions: usize,
    pub waiting_labels: usize,
    /// Labels kept in all, including joined ones waiting for other model versions.
    pub kept_labels: usize,
    pub predictions_expired: u64,
    pub predictions_evicted: u64,
    pub labels_expired: u64,
    pub labels_evicted: u64,
    pub labels_superseded: u64,
}

impl HealthReport {
    pub fn build(board: &HealthBoard, model: Option<&str>) -> Self {
        let state = board.state();
        let qs: Vec<f64> = LATENCY_QUANTILES.iter().map(|(q, _)| *q).collect();
        let named = |values: Vec<Option<f64>>| -> BTreeMap<&'static str, Option<f64>> {
            LATENCY_QUANTILES
                .iter()
                .map(|(_, n)| *n)
                .zip(values)
                .collect()
        };
        let models = state
            .predictions
            .health(model)
            .into_iter()
            .map(|h| {
                let version = ModelVersion::new(&h.model, &h.model_version);
                let (labels, time) = board.figures_of(&version);
                let latency = state.latency.versions.get(&version);
                let quality = state.quality.versions.get(&version);
                ModelReport {
                    health: HealthFigures::from(h),
                    labelled: quality.map_or(0, |q| q.labelled),
                    quality: WindowFigures {
                        labels,
                        time,
                        time_dropped: quality.map_or(0, |q| q.by_time.dropped()),
                    },
                    score_drift: drift_report(state.drift.scores.get(&version)),
                    latency: LatencyReport {
                        window: latency.map_or(0, |l| l.event_to_prediction.len()),
                        event_to_prediction_seconds: named(latency.map_or_else(
                            || vec![None; qs.len()],
                            |l| l.event_to_prediction.quantiles(&qs),
                        )),
                        ingest_to_prediction_seconds: named(latency.map_or_else(
                            || vec![None; qs.len()],
                            |l| l.ingest_to_prediction.quantiles(&qs),
                        )),
                    },
                }
            })
            .collect();
        let features = state
            .drift
            .features
            .iter()
            .map(|(name, tracker)| {
                let kind = board
                    .settings()
                    .drift
                    .features
                    .get(name)
                    .map_or(FeatureKind::Numeric, |f| f.kind);
                FeatureReport {
                    feature: name.clone(),
                    kind: match kind {
                        FeatureKind::Numeric => "numeric",
                        FeatureKind::Categorical => "categorical",
                    },
                    drift: drift_report(Some(tracker)),
                    severity: tracker.last.as_ref().and_then(|f| {
                        board.severity_of(name, f).map(|level| match level {
                            0 => "none",
                            1 => "moderate",
                            _ => "significant",
                        })
                    }),
                }
            })
            .collect();
        let j = &state.join;
        let firing = board
            .state()
            .alerts
            .firing(board.rules())
            .into_iter()
            .filter(|a| model.is_none_or(|m| a.model.is_empty() || a.model == m))
            .collect();
        Self {
            models,
            features,
            join: JoinReport {
                labels: j.counts.labels,
                matched: j.counts.matched,
                waiting_predictions: j.waiting_predictions(),
                waiting_labels: j.waiting_labels(),
                kept_labels: j.kept_labels(),
                predictions_expired: j.counts.predictions_expired,
                predictions_evicted: j.counts.predictions_evicted,
                labels_expired: j.counts.labels_expired,
                labels_evicted: j.counts.labels_evicted,
                labels_superseded: j.counts.labels_superseded,
            },
            throughput: state
                .latency
                .stages
                .iter()
                .map(|(stage, meter)| (stage.clone(), meter.per_second()))
                .collect(),
            firing,
        }
    }

    /// The gRPC answer.
    pub fn to_proto(&self) -> GetModelHealthResponse {
        GetModelHealthResponse {
            models: self
                .models
                .iter()
                .map(|m| {
                    let q = &m.quality.labels;
                    ModelHealth {
                        model: m.health.model.clone(),
                        model_version: m.health.model_version.clone(),
                        predictions: m.health.predictions,
                        predicted_positive: m.health.predicted_positive,
                        mean_score: m.health.mean_score,
                        last_prediction_time_us: m.health.last_prediction_time_us,
                        labelled: m.labelled,
                        accuracy: q.accuracy,
                        roc_auc: q.roc_auc,
                        log_loss: q.log_loss,
                        brier: q.brier,
                        label_positive_rate: q.label_positive_rate,
                        score_psi: m.score_drift.psi,
                        score_reference: m.score_drift.reference_from.into(),
                        event_to_prediction_p99_seconds: m
                            .latency
                            .event_to_prediction_seconds
                            .get("99")
                            .copied()
                            .flatten(),
                        ingest_to_prediction_p99_seconds: m
                            .latency
                            .ingest_to_prediction_seconds
                            .get("99")
                            .copied()
                            .flatten(),
                    }
                })
                .collect(),
            firing: self.firing.clone(),
        }
    }
}

fn drift_report(tracker: Option<&crate::drift::DriftTracker>) -> DriftReport {
    DriftReport {
        observed: tracker.map_or(0, |t| t.observed),
        reference: tracker.map_or(0, |t| t.reference_size()),
        reference_from: tracker.map_or("first_events", |t| t.source().name()),
        reference_version: tracker.and_then(|t| match t.source() {
            crate::drift::ReferenceSource::Training { model, version } => {
                Some(format!("{model}/{version}"))
            }
            crate::drift::ReferenceSource::FirstEvents => None,
        }),
        window: tracker.map_or(0, |t| t.window_size()),
        psi: tracker.and_then(|t| t.last).and_then(|f| f.psi),
        ks: tracker.and_then(|t| t.last).and_then(|f| f.ks),
        measured_at: tracker.and_then(|t| t.last).map(|f| f.at_value),
    }
}
