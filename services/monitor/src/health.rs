//! The `HealthBoard` actor: the one owner of everything monitor has learned,
//! fed by the stage loop with messages from PREDICTIONS, LABELS and FEATURES
//! (each stream in its order, the three interleaved as they arrive),
//! snapshotted by it, and read by the APIs.
//!
//! Each concern keeps its own ledger inside [`MonitorState`] (prediction
//! stats, the label join, quality windows, drift, latency, alert series); the
//! board routes messages to them, turns evaluations into alerts, and mirrors
//! the ledgers into Prometheus. Nothing here touches NATS or sled; how the
//! three streams stay exactly-once is in `input`.
//!
//! Replays are deterministic where it matters: every clock here is event time
//! or a count of messages, never the wall clock. Drift, score drift and latency
//! each depend on one stream's order only, so a replay re-derives their alerts
//! with the same ids, which JetStream then drops. Quality depends on how labels
//! and predictions interleaved; the pairs joined are the same, but a window's
//! content at a given moment, and so an alert on it, can differ on a replay.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::config::{FeatureKind, MonitorMetric, MonitorSettings, QualityWindow};
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::{FeatureVector, Label, Prediction};
use opentelemetry::Context as TraceContext;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertBook, Family, Reading, Rule, Scope, Transition};
use crate::drift::{DriftBook, DriftFigures, DriftSpec, DriftTracker};
use crate::input::MonitorInput;
use crate::join::{JoinLimits, Joined, LabelJoin};
use crate::latency::{lag_seconds, LatencyBook, VersionLatency};
use crate::metrics::{MonitorMetrics, LATENCY_QUANTILES};
use crate::quality::{QualityBook, QualityFigures, QualityWindows};
use crate::report::HealthReport;
use crate::stats::{ModelVersion, PredictionLedger};

/// What monitor snapshots: every ledger, reflecting exactly the messages applied.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorState {
    pub predictions: PredictionLedger,
    pub join: LabelJoin,
    pub quality: QualityBook,
    pub drift: DriftBook,
    pub latency: LatencyBook,
    pub alerts: AlertBook,
    pub feature_vectors: u64,
}

/// The state as the stage stores it: the board's own, not a copy. It
/// serializes exactly as [`MonitorState`], which is what a restart loads.
pub struct SharedState(pub Arc<MonitorState>);

impl Serialize for SharedState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// How often the board refreshes the gauges that are not tied to an event
/// (quality between evaluations, throughput, waiting counts).
const REFRESH: Duration = Duration::from_secs(1);

pub struct HealthBoard {
    /// Shared with the stage while it serializes a snapshot; every change goes
    /// through `Arc::make_mut`, which copies only if a snapshot is still held
    /// (the stage loop stores it before it sends the next batch, so it never is).
    state: Arc<MonitorState>,
    settings: MonitorSettings,
    rules: Vec<Rule>,
    metrics: MonitorMetrics,
    /// Versions whose quality gauges are behind their windows.
    stale_quality: BTreeSet<ModelVersion>,
    /// How each feature name seen is watched (`None`: ignored), worked out once.
    feature_specs: HashMap<String, Option<DriftSpec>>,
}

impl HealthBoard {
    /// A board resuming from `state` (the default when there is no snapshot).
    pub fn new(
        mut state: MonitorState,
        settings: MonitorSettings,
        rules: Vec<Rule>,
        metrics: MonitorMetrics,
    ) -> Self {
        state.alerts.retain_rules(&rules);
        let board = Self {
            state: Arc::new(state),
            settings,
            rules,
            metrics,
            stale_quality: BTreeSet::new(),
            feature_specs: HashMap::new(),
        };
        board.restore_metrics();
        board
    }

    /// A board with the default settings and no rules (tests, tools).
    #[cfg(test)]
    pub fn with_defaults(state: MonitorState, metrics: MonitorMetrics) -> Self {
        Self::new(state, MonitorSettings::default(), Vec::new(), metrics)
    }

    pub fn state(&self) -> &MonitorState {
        &self.state
    }

    fn restore_metrics(&self) {
        for (m, v, stats) in self.state.predictions.versions(None) {
            self.metrics
                .restore_version(&ModelVersion::new(m, v), stats);
        }
        for (version, q) in &self.state.quality.versions {
            self.metrics.restore_joins(version, q.labelled);
            self.publish_quality(version);
        }
        self.metrics
            .sync_feature_vectors(self.state.feature_vectors);
        for (name, tracker) in &self.state.drift.features {
            if let Some(f) = &tracker.last {
                self.metrics
                    .publish_feature_drift(name, f, self.severity(name, f));
            }
        }
        for (version, tracker) in &self.state.drift.scores {
            if let Some(f) = &tracker.last {
                self.metrics.publish_score_drift(version, f);
            }
        }
        self.publish_join();
        self.publish_alerts();
    }

    fn join_limits(&self) -> JoinLimits {
        let j = &self.settings.join;
        JoinLimits {
            ttl_us: secs_to_us(j.ttl_secs),
            max_predictions: j.max_pending_predictions,
            max_labels: j.max_pending_labels,
        }
    }

    fn quality_windows(&self) -> QualityWindows {
        let q = &self.settings.quality;
        QualityWindows {
            labels: q.window_labels,
            span_us: secs_to_us(q.window_secs),
            max_time_samples: q.max_window_samples,
        }
    }

    fn drift_spec(&self, feature: Option<&str>) -> DriftSpec {
        let d = &self.settings.drift;
        let f = feature.and_then(|name| d.features.get(name));
        DriftSpec {
            kind: f.map_or(FeatureKind::Numeric, |f| f.kind),
            bins: f.and_then(|f| f.bins).unwrap_or(d.bins),
            max_categories: d.max_categories,
            reference_events: d.reference_events,
            window_events: d.window_events,
            evaluate_every: d.evaluate_every,
        }
    }

    /// The PSI levels and KS threshold of a feature (`None`: the score's).
    fn drift_levels(&self, feature: Option<&str>) -> (f64, f64, f64) {
        let d = &self.settings.drift;
        let f = feature.and_then(|name| d.features.get(name));
        (
            f.and_then(|f| f.psi_moderate).unwrap_or(d.psi_moderate),
            f.and_then(|f| f.psi_significant)
                .unwrap_or(d.psi_significant),
            f.and_then(|f| f.ks_significant).unwrap_or(d.ks_significant),
        )
    }

    /// 0 none, 1 moderate, 2 significant, by PSI; `None` without a PSI.
    fn severity(&self, feature: &str, f: &DriftFigures) -> Option<i64> {
        let (moderate, significant, _) = self.drift_levels(Some(feature));
        let psi = f.psi?;
        Some(if psi >= significant {
            2
        } else if psi >= moderate {
            1
        } else {
            0
        })
    }

    fn drift_window(&self) -> String {
        let d = &self.settings.drift;
        format!(
            "over the last {} values against the first {}",
            d.window_events, d.reference_events
        )
    }

    /// Applies one prediction; answers the alerts it caused.
    pub fn observe(&mut self, p: &Prediction, trace: &TraceContext) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let version = ModelVersion::of(p);
        let stats = Arc::make_mut(&mut self.state).predictions.record(p);
        let lags = (
            lag_seconds(p.event_time_us, p.predict_time_us),
            lag_seconds(p.ingest_time_us, p.predict_time_us),
        );
        self.metrics
            .observe_prediction(&version, p.predicted_positive, stats, lags);
        Arc::make_mut(&mut self.state)
            .latency
            .record_stage("inference", p.predict_time_us);
        self.observe_latency(&version, lags, p, trace, &mut out);
        if p.score.is_finite() {
            self.observe_score(&version, p, trace, &mut out);
        }
        let limits = self.join_limits();
        if let Some(joined) = Arc::make_mut(&mut self.state).join.on_prediction(p, limits) {
            self.record_joined(joined, &p.event_id, p.event_time_us, trace, &mut out);
        }
        Arc::make_mut(&mut self.state).join.expire(limits);
        out
    }

    fn observe_latency(
        &mut self,
        version: &ModelVersion,
        lags: (Option<f64>, Option<f64>),
        p: &Prediction,
        trace: &TraceContext,
        out: &mut Vec<Outgoing>,
    ) {
        let window = self.settings.latency.window_predictions;
        let every = self.settings.latency.evaluate_every.max(1);
        let versions = &mut Arc::make_mut(&mut self.state).latency.versions;
        if !versions.contains_key(version) {
            versions.insert(version.clone(), VersionLatency::default());
        }
        let Some(latency) = versions.get_mut(version) else {
            return;
        };
        latency.predictions += 1;
        if let Some(s) = lags.0 {
            latency.event_to_prediction.push(s, window);
        }
        if let Some(s) = lags.1 {
            latency.ingest_to_prediction.push(s, window);
        }
        if !latency.predictions.is_multiple_of(every) {
            return;
        }
        let position = latency.predictions;
        let qs: Vec<f64> = LATENCY_QUANTILES.iter().map(|(q, _)| *q).collect();
        let event = latency.event_to_prediction.quantiles(&qs);
        let ingest = latency.ingest_to_prediction.quantiles(&qs);
        self.metrics
            .publish_latency(version, "event_to_prediction", &event);
        self.metrics
            .publish_latency(version, "ingest_to_prediction", &ingest);
        if !self.has_rules(Family::Latency) {
            return;
        }
        let state = Arc::make_mut(&mut self.state);
        let latency: &VersionLatency = &state.latency.versions[version];
        let scope = Scope {
            family: Family::Latency,
            model: &version.model,
            version: &version.version,
            feature: "",
            position,
            time_us: p.event_time_us,
            event_id: &p.event_id,
        };
        let transitions = state.alerts.evaluate(&self.rules, &scope, |rule| {
            let w = match rule.metric {
                MonitorMetric::IngestToPredictionSeconds => &latency.ingest_to_prediction,
                _ => &latency.event_to_prediction,
            };
            Reading {
                value: w.quantiles(&[rule.quantile])[0],
                default_threshold: None,
                window: format!(
                    "at quantile {} over the last {} predictions",
                    rule.quantile,
                    w.len()
                ),
            }
        });
        self.emit(transitions, trace, out);
    }

    fn observe_score(
        &mut self,
        version: &ModelVersion,
        p: &Prediction,
        trace: &TraceContext,
        out: &mut Vec<Outgoing>,
    ) {
        let spec = self.drift_spec(None);
        let scores = &mut Arc::make_mut(&mut self.state).drift.scores;
        if !scores.contains_key(version) {
            scores.insert(version.clone(), DriftTracker::default());
        }
        let Some(tracker) = scores.get_mut(version) else {
            return;
        };
        let Some(figures) = tracker.observe(p.score, &spec) else {
            return;
        };
        let position = tracker.observed;
        self.metrics.publish_score_drift(version, &figures);
        if !self.has_rules(Family::ScoreDrift) {
            return;
        }
        let (_, psi_level, ks_level) = self.drift_levels(None);
        let window = self.drift_window();
        let scope = Scope {
            family: Family::ScoreDrift,
            model: &version.model,
            version: &version.version,
            feature: "",
            position,
            time_us: p.event_time_us,
            event_id: &p.event_id,
        };
        let transitions =
            Arc::make_mut(&mut self.state)
                .alerts
                .evaluate(&self.rules, &scope, |rule| {
                    drift_reading(rule.metric, &figures, psi_level, ks_level, &window)
                });
        self.emit(transitions, trace, out);
    }

    /// Applies one label; answers the alerts it caused.
    pub fn observe_label(&mut self, l: &Label, trace: &TraceContext) -> Vec<Outgoing> {
        let mut out = Vec::new();
        Arc::make_mut(&mut self.state)
            .latency
            .record_stage("labels", l.ingest_time_us);
        let limits = self.join_limits();
        for joined in Arc::make_mut(&mut self.state).join.on_label(l, limits) {
            self.record_joined(joined, &l.event_id, l.event_time_us, trace, &mut out);
        }
        Arc::make_mut(&mut self.state).join.expire(limits);
        out
    }

    fn record_joined(
        &mut self,
        joined: Joined,
        event_id: &str,
        time_us: i64,
        trace: &TraceContext,
        out: &mut Vec<Outgoing>,
    ) {
        if !joined.sample.score.is_finite() {
            return;
        }
        let windows = self.quality_windows();
        let version = joined.version;
        let labelled =
            Arc::make_mut(&mut self.state)
                .quality
                .record(&version, joined.sample, windows);
        self.metrics
            .observe_join(&version, joined.label_delay_us as f64 / 1e6);
        if !self.stale_quality.contains(&version) {
            self.stale_quality.insert(version.clone());
        }
        // Without rules on quality the gauges are refreshed by the timer alone:
        // no figure is computed per label.
        if !self.has_rules(Family::Quality)
            || !labelled.is_multiple_of(self.settings.quality.evaluate_every.max(1))
        {
            return;
        }
        // Only the windows some rule reads: the event-time one can be ten times larger.
        let bins = self.settings.quality.calibration_bins;
        let uses = |w: QualityWindow| {
            self.rules
                .iter()
                .any(|r| r.family == Family::Quality && r.window == w)
        };
        let (by_labels, by_time) = match self.state.quality.versions.get(&version) {
            Some(q) => (
                uses(QualityWindow::Labels).then(|| q.by_labels.tally().figures(bins)),
                uses(QualityWindow::Time).then(|| q.by_time.tally().figures(bins)),
            ),
            None => (None, None),
        };
        let q = &self.settings.quality;
        let describe = |w: QualityWindow| match w {
            QualityWindow::Labels => {
                format!("over the last {} labelled predictions", q.window_labels)
            }
            QualityWindow::Time => format!("over the last {} s of event time", q.window_secs),
        };
        let scope = Scope {
            family: Family::Quality,
            model: &version.model,
            version: &version.version,
            feature: "",
            position: labelled,
            time_us,
            event_id,
        };
        let transitions =
            Arc::make_mut(&mut self.state)
                .alerts
                .evaluate(&self.rules, &scope, |rule| {
                    let f = match rule.window {
                        QualityWindow::Labels => by_labels.as_ref(),
                        QualityWindow::Time => by_time.as_ref(),
                    };
                    Reading {
                        value: f.and_then(|f| quality_value(rule.metric, f)),
                        default_threshold: None,
                        window: format!(
                            "{} ({} labelled)",
                            describe(rule.window),
                            f.map_or(0, |f| f.labelled)
                        ),
                    }
                });
        self.emit(transitions, trace, out);
    }

    fn quality_figures(&self, version: &ModelVersion) -> (QualityFigures, QualityFigures) {
        let bins = self.settings.quality.calibration_bins;
        match self.state.quality.versions.get(version) {
            Some(q) => (
                q.by_labels.tally().figures(bins),
                q.by_time.tally().figures(bins),
            ),
            None => {
                let empty = crate::quality::ScoreTally::default().figures(bins);
                (empty.clone(), empty)
            }
        }
    }

    fn publish_quality(&self, version: &ModelVersion) {
        let (by_labels, by_time) = self.quality_figures(version);
        self.metrics.publish_quality(version, "labels", &by_labels);
        self.metrics.publish_quality(version, "time", &by_time);
    }

    /// Applies one feature vector; answers the alerts it caused.
    pub fn observe_features(&mut self, v: &FeatureVector, trace: &TraceContext) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let state = Arc::make_mut(&mut self.state);
        state.feature_vectors += 1;
        self.metrics.observe_feature_vector((
            lag_seconds(v.event_time_us, v.ingest_time_us),
            lag_seconds(v.ingest_time_us, v.feature_time_us),
        ));
        state.latency.record_stage("ingest", v.ingest_time_us);
        state
            .latency
            .record_stage("feature-state", v.feature_time_us);
        let watch_rules = self.has_rules(Family::FeatureDrift);
        for (name, value) in v.names.iter().zip(&v.values) {
            let spec = match self.feature_specs.get(name) {
                Some(spec) => *spec,
                None => {
                    let ignored = self
                        .settings
                        .drift
                        .features
                        .get(name)
                        .is_some_and(|f| f.ignore);
                    let spec = (!ignored).then(|| self.drift_spec(Some(name)));
                    self.feature_specs.insert(name.clone(), spec);
                    spec
                }
            };
            let Some(spec) = spec else {
                continue;
            };
            let state = Arc::make_mut(&mut self.state);
            if !state.drift.features.contains_key(name) {
                // Cloned once per feature name, not once per vector.
                state
                    .drift
                    .features
                    .insert(name.clone(), DriftTracker::default());
            }
            let Some(tracker) = state.drift.features.get_mut(name) else {
                continue;
            };
            let Some(figures) = tracker.observe(*value, &spec) else {
                continue;
            };
            let position = tracker.observed;
            self.metrics
                .publish_feature_drift(name, &figures, self.severity(name, &figures));
            if !watch_rules {
                continue;
            }
            let (_, psi_level, ks_level) = self.drift_levels(Some(name));
            let window = self.drift_window();
            let scope = Scope {
                family: Family::FeatureDrift,
                model: "",
                version: "",
                feature: name,
                position,
                time_us: v.event_time_us,
                event_id: &v.event_id,
            };
            let transitions =
                Arc::make_mut(&mut self.state)
                    .alerts
                    .evaluate(&self.rules, &scope, |rule| {
                        drift_reading(rule.metric, &figures, psi_level, ks_level, &window)
                    });
            self.emit(transitions, trace, &mut out);
        }
        out
    }

    fn has_rules(&self, family: Family) -> bool {
        self.rules.iter().any(|r| r.family == family)
    }

    fn emit(&self, transitions: Vec<Transition>, trace: &TraceContext, out: &mut Vec<Outgoing>) {
        if transitions.is_empty() {
            return;
        }
        for t in transitions {
            tracing::info!(alert = %t.alert.alert_id, state = ?t.alert.state(), "{}", t.alert.message);
            out.push(Outgoing::new(
                subject::alerts(&t.alert.kind),
                t.msg_id,
                &t.alert,
                trace.clone(),
            ));
        }
        self.publish_alerts();
    }

    fn publish_alerts(&self) {
        let totals = self.state.alerts.totals();
        for rule in &self.rules {
            let t = totals.get(rule.name.as_str()).copied().unwrap_or_default();
            self.metrics.publish_alerts(&rule.name, rule.kind(), t);
        }
    }

    fn publish_join(&self) {
        let j = &self.state.join;
        self.metrics
            .publish_join(&j.counts, j.waiting_predictions(), j.waiting_labels());
    }

    /// Gauges that are not tied to an event.
    fn refresh(&mut self) {
        for version in std::mem::take(&mut self.stale_quality) {
            self.publish_quality(&version);
        }
        for (stage, meter) in &self.state.latency.stages {
            self.metrics.publish_stage_rate(stage, meter.per_second());
        }
    }

    /// Applies one message from any of the three streams.
    pub fn apply(&mut self, input: &MonitorInput, trace: &TraceContext) -> Vec<Outgoing> {
        match input {
            MonitorInput::Prediction(p) => self.observe(p, trace),
            MonitorInput::Label(l) => self.observe_label(l, trace),
            MonitorInput::Features(v) => self.observe_features(v, trace),
        }
    }

    pub fn report(&self, model: Option<&str>) -> HealthReport {
        HealthReport::build(self, model)
    }

    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn figures_of(&self, version: &ModelVersion) -> (QualityFigures, QualityFigures) {
        self.quality_figures(version)
    }

    pub fn severity_of(&self, feature: &str, f: &DriftFigures) -> Option<i64> {
        self.severity(feature, f)
    }
}

fn secs_to_us(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn drift_reading(
    metric: MonitorMetric,
    f: &DriftFigures,
    psi_level: f64,
    ks_level: f64,
    window: &str,
) -> Reading {
    let (value, default_threshold) = match metric {
        MonitorMetric::Psi | MonitorMetric::ScorePsi => (f.psi, psi_level),
        _ => (f.ks, ks_level),
    };
    Reading {
        value,
        default_threshold: Some(default_threshold),
        window: window.to_string(),
    }
}

fn quality_value(metric: MonitorMetric, f: &QualityFigures) -> Option<f64> {
    use MonitorMetric::*;
    match metric {
        Accuracy => f.accuracy,
        Precision => f.precision,
        Recall => f.recall,
        RocAuc => f.roc_auc,
        LogLoss => f.log_loss,
        Brier => f.brier,
        CalibrationError => f.calibration_error,
        PredictedPositiveRate => f.predicted_positive_rate,
        LabelPositiveRate => f.label_positive_rate,
        _ => None,
    }
}

impl Actor for HealthBoard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(REFRESH, |board, _| board.refresh());
    }
}

impl Handler<Apply<MonitorInput>> for HealthBoard {
    type Result = Vec<Outgoing>;

    fn handle(&mut self, Apply(batch): Apply<MonitorInput>, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for delivered in &batch {
            out.extend(self.apply(&delivered.message, &delivered.trace));
        }
        self.publish_join();
        out
    }
}

impl Handler<TakeSnapshot<SharedState>> for HealthBoard {
    type Result = MessageResult<TakeSnapshot<SharedState>>;

    fn handle(&mut self, _: TakeSnapshot<SharedState>, _: &mut Self::Context) -> Self::Result {
        MessageResult(SharedState(Arc::clone(&self.state)))
    }
}

/// The APIs' read: health of one model's versions, or of all models when `model` is `None`.
pub struct ModelHealthQuery {
    pub model: Option<String>,
}

impl Message for ModelHealthQuery {
    type Result = HealthReport;
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
    use millrace_chassis::metrics::Metrics;
    use millrace_chassis::stage::Delivered;

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
            label_key: format!("key-{id}"),
            ..Default::default()
        }
    }

    fn label(id: &str, value: f64) -> Label {
        Label {
            event_id: format!("label-{id}"),
            label_key: format!("key-{id}"),
            value,
            event_time_us: 3_000_000,
            ingest_time_us: 3_000_000,
            ..Default::default()
        }
    }

    fn board() -> (Metrics, HealthBoard) {
        let metrics = Metrics::new();
        let board =
            HealthBoard::with_defaults(MonitorState::default(), MonitorMetrics::new(&metrics));
        (metrics, board)
    }

    fn exported(metrics: &Metrics, line_start: &str) -> Option<f64> {
        metrics.render().lines().find_map(|l| {
            l.strip_prefix(line_start)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    fn no_trace() -> TraceContext {
        TraceContext::new()
    }

    #[test]
    fn snapshot_state_round_trips_through_postcard() {
        let (_, mut b) = board();
        b.observe(&prediction("a", "1", 0.25, false), &no_trace());
        b.observe(&prediction("b", "2", 0.75, true), &no_trace());
        b.observe_label(&label("a", 1.0), &no_trace());
        b.observe_features(
            &FeatureVector {
                names: vec!["x".into()],
                values: vec![1.5],
                ..Default::default()
            },
            &no_trace(),
        );
        let bytes = postcard::to_stdvec(&*b.state).unwrap();
        let back: MonitorState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, *b.state);
    }

    #[test]
    fn restored_counters_continue_from_the_snapshot() {
        let (_, mut before) = board();
        for i in 0..5 {
            before.observe(
                &prediction(&format!("e{i}"), "1", 0.9, i % 2 == 0),
                &no_trace(),
            );
        }
        before.observe_label(&label("e0", 1.0), &no_trace());
        let snapshot = postcard::to_stdvec(&*before.state).unwrap();

        // A new process: fresh registry, state from the snapshot.
        let metrics = Metrics::new();
        let mut after = HealthBoard::with_defaults(
            postcard::from_bytes(&snapshot).unwrap(),
            MonitorMetrics::new(&metrics),
        );
        let total = r#"millrace_monitor_predictions_total{model="fraud",model_version="1"}"#;
        let positive =
            r#"millrace_monitor_predicted_positive_total{model="fraud",model_version="1"}"#;
        let joins = r#"millrace_monitor_label_joins_total{model="fraud",model_version="1"}"#;
        assert_eq!(exported(&metrics, total), Some(5.0));
        assert_eq!(exported(&metrics, positive), Some(3.0));
        assert_eq!(exported(&metrics, joins), Some(1.0));
        assert_eq!(
            exported(&metrics, "millrace_monitor_labels_total"),
            Some(1.0)
        );
        after.observe(&prediction("e5", "1", 0.1, false), &no_trace());
        after.observe(&prediction("e6", "1", 0.1, true), &no_trace());
        assert_eq!(exported(&metrics, total), Some(7.0));
        assert_eq!(exported(&metrics, positive), Some(4.0));
        assert_eq!(after.report(Some("fraud")).models[0].health.predictions, 7);
    }

    #[test]
    fn latencies_and_last_prediction_time_are_exported() {
        let (metrics, mut b) = board();
        b.observe(&prediction("a", "1", 0.5, true), &no_trace());
        let v = r#"{model="fraud",model_version="1"}"#;
        assert_eq!(
            exported(
                &metrics,
                &format!("millrace_monitor_event_to_prediction_seconds_sum{v}")
            ),
            Some(1.0)
        );
        assert_eq!(
            exported(
                &metrics,
                &format!("millrace_monitor_ingest_to_prediction_seconds_sum{v}")
            ),
            Some(0.5)
        );
        let last = format!("millrace_monitor_last_prediction_timestamp_seconds{v}");
        assert_eq!(exported(&metrics, &last), Some(2.0));
    }

    #[test]
    fn labels_join_predictions_into_quality_figures() {
        let (_, mut b) = board();
        // 0.9 → 1 (TP), 0.8 → 0 (FP), 0.3 → 1 (FN), 0.2 → 0 (TN); one label arrives first.
        b.observe_label(&label("d", 0.0), &no_trace());
        for (id, score) in [("a", 0.9), ("b", 0.8), ("c", 0.3), ("d", 0.2)] {
            b.observe(&prediction(id, "1", score, score >= 0.5), &no_trace());
        }
        for (id, value) in [("a", 1.0), ("b", 0.0), ("c", 1.0)] {
            b.observe_label(&label(id, value), &no_trace());
        }
        let report = b.report(None);
        let m = &report.models[0];
        assert_eq!(m.labelled, 4);
        let q = &m.quality.labels;
        assert_eq!(
            (q.labelled, q.accuracy, q.precision, q.recall),
            (4, Some(0.5), Some(0.5), Some(0.5))
        );
        // pos {0.9, 0.3} vs neg {0.8, 0.2}: 0.9 → 2, 0.3 → 1: 3 of 4
        assert_eq!(q.roc_auc, Some(0.75));
        assert_eq!(report.join.matched, 4);
        assert_eq!(
            (report.join.waiting_predictions, report.join.waiting_labels),
            (0, 0)
        );
    }

    #[test]
    fn a_model_without_labels_reports_no_quality_figures() {
        let (_, mut b) = board();
        b.observe(&prediction("a", "1", 0.9, true), &no_trace());
        let report = b.report(None);
        let m = &report.models[0];
        assert_eq!(m.labelled, 0);
        assert_eq!(
            (m.quality.labels.accuracy, m.quality.time.roc_auc),
            (None, None)
        );
        assert_eq!(report.join.waiting_predictions, 1);
    }

    #[actix_rt::test]
    async fn a_batch_from_three_streams_is_applied_in_order() {
        let (_, b) = board();
        let addr = b.start();
        let delivered = |source: usize, sequence: u64, message: MonitorInput| Delivered {
            source,
            sequence,
            subject: String::new(),
            message,
            trace: no_trace(),
        };
        let vector = FeatureVector {
            names: vec!["x".into()],
            values: vec![1.0],
            ..Default::default()
        };
        // The label comes first and waits; the prediction after it joins it.
        let batch = vec![
            delivered(1, 1, MonitorInput::Label(label("a", 1.0))),
            delivered(2, 1, MonitorInput::Features(vector)),
            delivered(
                0,
                1,
                MonitorInput::Prediction(prediction("a", "1", 0.9, true)),
            ),
        ];
        let out = addr.send(Apply(batch)).await.unwrap();
        assert!(out.is_empty(), "no rules, no alerts");
        let state = addr
            .send(TakeSnapshot::<SharedState>::default())
            .await
            .unwrap();
        assert_eq!(state.0.join.counts.matched, 1);
        assert_eq!(state.0.feature_vectors, 1);
        assert_eq!(
            state.0.quality.versions[&ModelVersion::new("fraud", "1")].labelled,
            1
        );
    }

    #[actix_rt::test]
    async fn the_actor_answers_queries_and_snapshots_with_what_it_applied() {
        let (_, mut b) = board();
        b.observe(&prediction("a", "1", 0.5, true), &no_trace());
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
            .send(TakeSnapshot::<SharedState>::default())
            .await
            .unwrap();
        assert_eq!(state.0.predictions.models["fraud"]["1"].predictions, 1);
        // The snapshot is the board's own state, not a copy; it serializes as one.
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: MonitorState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, *state.0);
    }
}
