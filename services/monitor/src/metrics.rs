//! The Prometheus view of the board. Everything is named `millrace_monitor_*`
//! (the registry adds `millrace_`), in base units, labelled by `model`,
//! `model_version`, `window`, `feature`, `stage`, `rule` as it applies.
//!
//! Counters mirror totals kept in the snapshot: [`sync`] raises a counter to
//! the state's value, so a restarted monitor continues its totals instead of
//! dropping to zero or counting a replay twice. Histograms start empty in each
//! process, as Prometheus expects of a restart. Gauges of figures that are
//! undefined (no labels yet, one class only) are removed, not set to 0.

use millrace_chassis::metrics::{latency_buckets, Metrics};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

use crate::drift::DriftFigures;
use crate::join::JoinCounts;
use crate::quality::QualityFigures;
use crate::stats::{ModelStats, ModelVersion};

const VERSION: &[&str] = &["model", "model_version"];
const WINDOW: &[&str] = &["model", "model_version", "window"];
const BIN: &[&str] = &["model", "model_version", "window", "bin"];

/// The quantiles of the latency windows exported as gauges, with their `percentile`
/// label (`quantile` is reserved for summaries: promtool refuses it on a gauge).
pub const LATENCY_QUANTILES: [(f64, &str); 3] = [(0.5, "50"), (0.95, "95"), (0.99, "99")];

/// The series of one model version that move on every prediction or join,
/// looked up once (a lookup by label values hashes them and takes a lock) and
/// counted locally: [`VersionMetrics::flush`] adds what a batch counted to the
/// registry, which is what `/metrics` shows.
pub struct VersionMetrics {
    predictions: LocalIntCounter,
    predicted_positive: LocalIntCounter,
    last_prediction: Gauge,
    event_to_prediction: LocalHistogram,
    ingest_to_prediction: LocalHistogram,
    label_joins: LocalIntCounter,
}

impl VersionMetrics {
    /// One prediction applied: counters, last time and the two latency histograms.
    pub fn observe_prediction(
        &self,
        positive: bool,
        stats: &ModelStats,
        lags: (Option<f64>, Option<f64>),
    ) {
        self.predictions.inc();
        if positive {
            self.predicted_positive.inc();
        }
        self.last_prediction
            .set(stats.last_prediction_time_us as f64 / 1e6);
        if let Some(s) = lags.0 {
            self.event_to_prediction.observe(s);
        }
        if let Some(s) = lags.1 {
            self.ingest_to_prediction.observe(s);
        }
    }

    pub fn observe_join(&self) {
        self.label_joins.inc();
    }

    pub fn flush(&self) {
        self.predictions.flush();
        self.predicted_positive.flush();
        self.event_to_prediction.flush();
        self.ingest_to_prediction.flush();
        self.label_joins.flush();
    }
}

/// The unlabelled series that move on every feature vector or join, counted
/// locally like [`VersionMetrics`].
pub struct RecordMetrics {
    feature_vectors: LocalIntCounter,
    event_to_ingest: LocalHistogram,
    ingest_to_features: LocalHistogram,
    label_delay: LocalHistogram,
}

impl RecordMetrics {
    pub fn observe_feature_vector(&self, lags: (Option<f64>, Option<f64>)) {
        self.feature_vectors.inc();
        if let Some(s) = lags.0 {
            self.event_to_ingest.observe(s);
        }
        if let Some(s) = lags.1 {
            self.ingest_to_features.observe(s);
        }
    }

    pub fn observe_label_delay(&self, seconds: f64) {
        self.label_delay.observe(seconds);
    }

    pub fn flush(&self) {
        self.feature_vectors.flush();
        self.event_to_ingest.flush();
        self.ingest_to_features.flush();
        self.label_delay.flush();
    }
}

/// The join's series, updated after every batch.
#[derive(Clone)]
struct JoinSeries {
    predictions_expired: IntCounter,
    predictions_evicted: IntCounter,
    labels_expired: IntCounter,
    labels_evicted: IntCounter,
    labels_superseded: IntCounter,
    waiting_predictions: IntGauge,
    waiting_labels: IntGauge,
}

#[derive(Clone)]
pub struct MonitorMetrics {
    join_series: JoinSeries,
    predictions: IntCounterVec,
    predicted_positive: IntCounterVec,
    last_prediction: GaugeVec,
    event_to_prediction: HistogramVec,
    ingest_to_prediction: HistogramVec,
    feature_vectors: IntCounter,
    event_to_ingest: Histogram,
    ingest_to_features: Histogram,
    labels: IntCounter,
    label_joins: IntCounterVec,
    label_delay: Histogram,
    quality: [(QualityGauge, GaugeVec); 9],
    window_labelled: IntGaugeVec,
    calibration_positive: GaugeVec,
    calibration_score: GaugeVec,
    calibration_count: IntGaugeVec,
    feature_psi: GaugeVec,
    feature_ks: GaugeVec,
    feature_severity: IntGaugeVec,
    score_psi: GaugeVec,
    score_ks: GaugeVec,
    score_reference: IntGaugeVec,
    latency_window: GaugeVec,
    stage_rate: GaugeVec,
    alerts_firing: IntGaugeVec,
    alert_transitions: IntCounterVec,
    held: prometheus::IntGauge,
}

/// Which quality figure a gauge shows.
#[derive(Debug, Clone, Copy)]
enum QualityGauge {
    Accuracy,
    Precision,
    Recall,
    RocAuc,
    LogLoss,
    Brier,
    CalibrationError,
    PredictedPositiveRate,
    LabelPositiveRate,
}

impl QualityGauge {
    fn read(self, f: &QualityFigures) -> Option<f64> {
        match self {
            Self::Accuracy => f.accuracy,
            Self::Precision => f.precision,
            Self::Recall => f.recall,
            Self::RocAuc => f.roc_auc,
            Self::LogLoss => f.log_loss,
            Self::Brier => f.brier,
            Self::CalibrationError => f.calibration_error,
            Self::PredictedPositiveRate => f.predicted_positive_rate,
            Self::LabelPositiveRate => f.label_positive_rate,
        }
    }
}

fn gauge_vec(metrics: &Metrics, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    metrics.register(
        GaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn int_gauge_vec(metrics: &Metrics, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    metrics.register(
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn histogram_vec(
    metrics: &Metrics,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    metrics.register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

/// Raises `counter` to `total` (a counter never goes down).
pub fn sync(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn set_or_remove(vec: &GaugeVec, labels: &[&str], value: Option<f64>) {
    match value {
        Some(v) => vec.with_label_values(labels).set(v),
        None => {
            // Absent already is fine: there is nothing to remove.
            let _ = vec.remove_label_values(labels);
        }
    }
}

impl MonitorMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        // Past the chassis' 10 s up to a minute: a backlog drained after a restart
        // should still show its shape, not land in +Inf as a year-old replay does.
        let mut lag = latency_buckets();
        lag.extend([30.0, 60.0]);
        let label_delay = vec![
            1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21_600.0, 86_400.0, 604_800.0,
        ];
        let quality_gauge =
            |g: QualityGauge, name: &str, help: &str| (g, gauge_vec(metrics, name, help, WINDOW));
        let predictions_unmatched = metrics.counter_vec(
            "monitor_predictions_unmatched_total",
            "Predictions that never met their label: expired (TTL) or evicted (store full).",
            &["reason"],
        );
        let labels_unmatched = metrics.counter_vec(
            "monitor_labels_unmatched_total",
            "Labels that never met a prediction: expired, evicted or superseded by a newer label.",
            &["reason"],
        );
        let join_waiting = int_gauge_vec(
            metrics,
            "monitor_label_join_waiting",
            "Predictions waiting for their label and labels waiting for a prediction.",
            &["side"],
        );
        let join_series = JoinSeries {
            predictions_expired: predictions_unmatched.with_label_values(&["expired"]),
            predictions_evicted: predictions_unmatched.with_label_values(&["evicted"]),
            labels_expired: labels_unmatched.with_label_values(&["expired"]),
            labels_evicted: labels_unmatched.with_label_values(&["evicted"]),
            labels_superseded: labels_unmatched.with_label_values(&["superseded"]),
            waiting_predictions: join_waiting.with_label_values(&["predictions"]),
            waiting_labels: join_waiting.with_label_values(&["labels"]),
        };
        Self {
            join_series,
            held: metrics.gauge(
                "monitor_event_order_held",
                "Predictions and labels delivered but held until the other stream passes their event time.",
            ),
            predictions: metrics.counter_vec(
                "monitor_predictions_total",
                "Predictions monitor has applied, by model version.",
                VERSION,
            ),
            predicted_positive: metrics.counter_vec(
                "monitor_predicted_positive_total",
                "Predictions of the positive class, by model version.",
                VERSION,
            ),
            last_prediction: gauge_vec(
                metrics,
                "monitor_last_prediction_timestamp_seconds",
                "Prediction time of the latest prediction, by model version (Unix seconds).",
                VERSION,
            ),
            event_to_prediction: histogram_vec(
                metrics,
                "monitor_event_to_prediction_seconds",
                "Time from an event (producer clock) to its prediction, by model version.",
                VERSION,
                lag.clone(),
            ),
            ingest_to_prediction: histogram_vec(
                metrics,
                "monitor_ingest_to_prediction_seconds",
                "Time from ingest accepting an event to its prediction, by model version.",
                VERSION,
                lag.clone(),
            ),
            feature_vectors: metrics.counter(
                "monitor_feature_vectors_total",
                "Feature vectors monitor has applied.",
            ),
            event_to_ingest: metrics.histogram(
                "monitor_event_to_ingest_seconds",
                "Time from a scored event (producer clock) to ingest accepting it.",
                lag.clone(),
            ),
            ingest_to_features: metrics.histogram(
                "monitor_ingest_to_features_seconds",
                "Time from ingest accepting a scored event to its feature vector (enrich and feature-state).",
                lag,
            ),
            labels: metrics.counter("monitor_labels_total", "Labels monitor has applied."),
            label_joins: metrics.counter_vec(
                "monitor_label_joins_total",
                "Predictions joined with their label, by model version.",
                VERSION,
            ),
            label_delay: metrics.histogram(
                "monitor_label_delay_seconds",
                "Event time from a prediction's event to its label's event.",
                label_delay,
            ),

            quality: [
                quality_gauge(
                    QualityGauge::Accuracy,
                    "monitor_accuracy_ratio",
                    "Share of labelled predictions whose decision was right, by window.",
                ),
                quality_gauge(
                    QualityGauge::Precision,
                    "monitor_precision_ratio",
                    "Share of positive decisions that were positive, by window.",
                ),
                quality_gauge(
                    QualityGauge::Recall,
                    "monitor_recall_ratio",
                    "Share of positives decided positive, by window.",
                ),
                quality_gauge(
                    QualityGauge::RocAuc,
                    "monitor_roc_auc",
                    "Area under the ROC curve of the scores (ties count half), by window.",
                ),
                quality_gauge(
                    QualityGauge::LogLoss,
                    "monitor_log_loss",
                    "Mean negative log-likelihood of the labels under the scores, by window.",
                ),
                quality_gauge(
                    QualityGauge::Brier,
                    "monitor_brier_score",
                    "Mean squared error of the scores against the labels, by window.",
                ),
                quality_gauge(
                    QualityGauge::CalibrationError,
                    "monitor_calibration_error",
                    "Expected calibration error over the calibration bins, by window.",
                ),
                quality_gauge(
                    QualityGauge::PredictedPositiveRate,
                    "monitor_predicted_positive_ratio",
                    "Share of labelled predictions decided positive, by window.",
                ),
                quality_gauge(
                    QualityGauge::LabelPositiveRate,
                    "monitor_label_positive_ratio",
                    "Share of labelled predictions whose label is positive, by window.",
                ),
            ],
            window_labelled: int_gauge_vec(
                metrics,
                "monitor_window_labelled_predictions",
                "Labelled predictions in the window the quality figures cover.",
                WINDOW,
            ),
            calibration_positive: gauge_vec(
                metrics,
                "monitor_calibration_positive_ratio",
                "Share of positive labels among the predictions of a score bin (bin = its upper edge).",
                BIN,
            ),
            calibration_score: gauge_vec(
                metrics,
                "monitor_calibration_mean_score",
                "Mean score of the predictions of a score bin (bin = its upper edge).",
                BIN,
            ),
            calibration_count: int_gauge_vec(
                metrics,
                "monitor_calibration_predictions",
                "Labelled predictions in a score bin (bin = its upper edge).",
                BIN,
            ),
            feature_psi: gauge_vec(
                metrics,
                "monitor_feature_psi",
                "Population stability index of a feature's window against its reference.",
                &["feature"],
            ),
            feature_ks: gauge_vec(
                metrics,
                "monitor_feature_ks",
                "Kolmogorov-Smirnov statistic of a numeric feature's window against its reference.",
                &["feature"],
            ),
            feature_severity: int_gauge_vec(
                metrics,
                "monitor_feature_drift_severity",
                "Drift level of a feature by its PSI: 0 none, 1 moderate, 2 significant.",
                &["feature"],
            ),
            score_psi: gauge_vec(
                metrics,
                "monitor_score_psi",
                "Population stability index of a model version's scores against its reference.",
                VERSION,
            ),
            score_ks: gauge_vec(
                metrics,
                "monitor_score_ks",
                "Kolmogorov-Smirnov statistic of a model version's scores against its reference.",
                VERSION,
            ),
            score_reference: int_gauge_vec(
                metrics,
                "monitor_score_drift_reference",
                "1 for the reference a model version's score drift is measured against: first_events or training.",
                &["model", "model_version", "reference"],
            ),
            latency_window: gauge_vec(
                metrics,
                "monitor_latency_window_seconds",
                "Quantiles of the latency over the last predictions, by model version and hop.",
                &["model", "model_version", "hop", "percentile"],
            ),
            stage_rate: gauge_vec(
                metrics,
                "monitor_stage_throughput_events_per_second",
                "Events per second through a stage, from the timestamps it stamps on its messages.",
                &["stage"],
            ),
            alerts_firing: int_gauge_vec(
                metrics,
                "monitor_alerts_firing",
                "Series of an alert rule firing now.",
                &["rule", "kind"],
            ),
            alert_transitions: metrics.counter_vec(
                "monitor_alert_transitions_total",
                "Alerts published to ALERTS, by rule and state (firing, resolved).",
                &["rule", "kind", "state"],
            ),
        }
    }

    /// Brings the prediction counters and gauges up to restored stats.
    pub fn restore_version(&self, version: &ModelVersion, stats: &ModelStats) {
        let labels = [version.model.as_str(), version.version.as_str()];
        sync(
            &self.predictions.with_label_values(&labels),
            stats.predictions,
        );
        sync(
            &self.predicted_positive.with_label_values(&labels),
            stats.predicted_positive,
        );
        self.set_last_prediction(version, stats);
    }

    /// The per-event series of one model version.
    pub fn version(&self, version: &ModelVersion) -> VersionMetrics {
        let labels = [version.model.as_str(), version.version.as_str()];
        VersionMetrics {
            predictions: self.predictions.with_label_values(&labels).local(),
            predicted_positive: self.predicted_positive.with_label_values(&labels).local(),
            last_prediction: self.last_prediction.with_label_values(&labels),
            event_to_prediction: self.event_to_prediction.with_label_values(&labels).local(),
            ingest_to_prediction: self.ingest_to_prediction.with_label_values(&labels).local(),
            label_joins: self.label_joins.with_label_values(&labels).local(),
        }
    }

    /// The per-event unlabelled series.
    pub fn records(&self) -> RecordMetrics {
        RecordMetrics {
            feature_vectors: self.feature_vectors.local(),
            event_to_ingest: self.event_to_ingest.local(),
            ingest_to_features: self.ingest_to_features.local(),
            label_delay: self.label_delay.local(),
        }
    }

    fn set_last_prediction(&self, version: &ModelVersion, stats: &ModelStats) {
        self.last_prediction
            .with_label_values(&[version.model.as_str(), version.version.as_str()])
            .set(stats.last_prediction_time_us as f64 / 1e6);
    }

    pub fn sync_feature_vectors(&self, total: u64) {
        sync(&self.feature_vectors, total);
    }

    pub fn restore_joins(&self, version: &ModelVersion, labelled: u64) {
        sync(
            &self
                .label_joins
                .with_label_values(&[version.model.as_str(), version.version.as_str()]),
            labelled,
        );
    }

    /// The join's totals and what waits, after a batch.
    pub fn publish_join(
        &self,
        counts: &JoinCounts,
        waiting_predictions: usize,
        waiting_labels: usize,
    ) {
        let j = &self.join_series;
        sync(&self.labels, counts.labels);
        sync(&j.predictions_expired, counts.predictions_expired);
        sync(&j.predictions_evicted, counts.predictions_evicted);
        sync(&j.labels_expired, counts.labels_expired);
        sync(&j.labels_evicted, counts.labels_evicted);
        sync(&j.labels_superseded, counts.labels_superseded);
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        j.waiting_predictions.set(count(waiting_predictions));
        j.waiting_labels.set(count(waiting_labels));
    }

    pub fn publish_quality(&self, version: &ModelVersion, window: &str, f: &QualityFigures) {
        let labels = [version.model.as_str(), version.version.as_str(), window];
        for (which, gauge) in &self.quality {
            set_or_remove(gauge, &labels, which.read(f));
        }
        self.window_labelled
            .with_label_values(&labels)
            .set(i64::try_from(f.labelled).unwrap_or(i64::MAX));
        for bin in &f.calibration {
            let upper = bin.upper.to_string();
            let labels = [labels[0], labels[1], window, upper.as_str()];
            set_or_remove(&self.calibration_positive, &labels, bin.positive_rate);
            set_or_remove(&self.calibration_score, &labels, bin.mean_score);
            self.calibration_count
                .with_label_values(&labels)
                .set(i64::try_from(bin.count).unwrap_or(i64::MAX));
        }
    }

    pub fn publish_feature_drift(&self, feature: &str, f: &DriftFigures, severity: Option<i64>) {
        set_or_remove(&self.feature_psi, &[feature], f.psi);
        set_or_remove(&self.feature_ks, &[feature], f.ks);
        if let Some(level) = severity {
            self.feature_severity
                .with_label_values(&[feature])
                .set(level);
        }
    }

    pub fn publish_score_drift(&self, version: &ModelVersion, f: &DriftFigures) {
        let labels = [version.model.as_str(), version.version.as_str()];
        set_or_remove(&self.score_psi, &labels, f.psi);
        set_or_remove(&self.score_ks, &labels, f.ks);
    }

    /// Which reference a version's score drift uses (`first_events` or `training`).
    pub fn publish_score_reference(&self, version: &ModelVersion, reference: &str) {
        for r in ["first_events", "training"] {
            let labels = [version.model.as_str(), version.version.as_str(), r];
            self.score_reference
                .with_label_values(&labels)
                .set(i64::from(r == reference));
        }
    }

    /// `quantiles[hop][i]` for the hops `event_to_prediction` and `ingest_to_prediction`.
    pub fn publish_latency(&self, version: &ModelVersion, hop: &str, quantiles: &[Option<f64>]) {
        for ((_, q), value) in LATENCY_QUANTILES.iter().zip(quantiles) {
            let labels = [version.model.as_str(), version.version.as_str(), hop, q];
            set_or_remove(&self.latency_window, &labels, *value);
        }
    }

    pub fn publish_held(&self, held: usize) {
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    pub fn publish_stage_rate(&self, stage: &str, per_second: Option<f64>) {
        set_or_remove(&self.stage_rate, &[stage], per_second);
    }

    /// Per rule: firing and resolved transitions so far, and series firing now.
    pub fn publish_alerts(&self, rule: &str, kind: &str, totals: (u64, u64, u64)) {
        sync(
            &self
                .alert_transitions
                .with_label_values(&[rule, kind, "firing"]),
            totals.0,
        );
        sync(
            &self
                .alert_transitions
                .with_label_values(&[rule, kind, "resolved"]),
            totals.1,
        );
        self.alerts_firing
            .with_label_values(&[rule, kind])
            .set(i64::try_from(totals.2).unwrap_or(i64::MAX));
    }
}
