//! The `HealthBoard` actor: the one owner of everything monitor has learned,
//! fed by the stage loop with records from PREDICTIONS, LABELS and FEATURES
//! (each stream in its order, the three interleaved as they arrive),
//! snapshotted by it, and read by the APIs.
//!
//! Each concern keeps its own ledger inside [`MonitorState`] (prediction
//! stats, the label join, quality windows, drift, latency, alert series); the
//! board routes records to them, turns evaluations into alerts, and mirrors
//! the ledgers into Prometheus. Nothing here touches NATS or sled; how the
//! three streams stay exactly-once is in `input`.
//!
//! Monitor reads every record the pipeline scores, so the per-record path does
//! no work it can do once: a model version or a feature is looked up the first
//! time this process sees it, and from then on its ledger entries (positions in
//! [`Keyed`](crate::keyed::Keyed) maps) and its Prometheus series are reached
//! directly ([`VersionSlot`], [`FeatureSlot`]); feature vectors with the names
//! of an earlier one reuse its slots after one comparison of bytes. None of it
//! is snapshotted: it is rebuilt from the state as records come.
//!
//! Replays are deterministic where it matters: every clock here is event time
//! or a count of messages, never the wall clock. Drift, score drift and latency
//! each depend on one stream's order only, so a replay re-derives their alerts
//! with the same ids, which JetStream then drops. Quality depends on how labels
//! and predictions interleave, so the two are applied in event-time order
//! ([`EventOrder`], held records in the state), whatever the replay's speed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::config::{
    DriftReference, FeatureKind, MonitorMetric, MonitorSettings, QualityWindow,
};
use millrace_chassis::event_order::EventOrder;
use millrace_chassis::stage::{Apply, TakeSnapshot, Taken};
use millrace_proto::{FeatureVector, Label, Prediction};
use opentelemetry::Context as TraceContext;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertBook, Family, Reading, Rule, Scope};
use crate::drift::{DriftBook, DriftFigures, DriftSpec, DriftTracker, ReferenceSource};
use crate::input::{self, LabelRecord, MonitorInput, PredictionRecord, VectorRecord, Waiting};
use crate::join::{JoinLimits, Joined, LabelJoin};
use crate::latency::{lag_seconds, quantile_of_sorted, LatencyBook, VersionLatency};
use crate::metrics::{MonitorMetrics, RecordMetrics, VersionMetrics, LATENCY_QUANTILES};
use crate::quality::{QualityBook, QualityFigures, QualityWindows, VersionQuality};
use crate::report::HealthReport;
use crate::stats::{ModelVersion, PredictionLedger};
use crate::training::{self, TrainingMetadata};

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
    /// Predictions and labels delivered but not yet applied, in event-time order.
    pub order: EventOrder<Waiting>,
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

/// Feature layouts (lists of names) remembered at once: one per producer, usually one.
const LAYOUTS_KEPT: usize = 8;

/// The stages whose throughput monitor measures, by the timestamps they stamp.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Ingest,
    FeatureState,
    Inference,
    Labels,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::FeatureState => "feature-state",
            Self::Inference => "inference",
            Self::Labels => "labels",
        }
    }
}

/// A model version as this process has looked it up.
struct VersionSlot {
    version: ModelVersion,
    metrics: VersionMetrics,
    /// Positions of its entries in the state's ledgers.
    stats: usize,
    latency: usize,
    score: Option<usize>,
    quality: Option<usize>,
    /// Its number in the label join.
    join: Option<u32>,
    /// Its quality gauges are behind its windows.
    stale_quality: bool,
    /// Where each rule's alert series for it lies (see [`AlertBook::evaluate_at`]).
    series: Vec<Option<usize>>,
}

/// A watched feature as this process has looked it up.
struct FeatureSlot {
    name: String,
    /// Position of its tracker in `state.drift.features`.
    tracker: usize,
    spec: DriftSpec,
    /// PSI moderate and significant levels, KS threshold.
    levels: (f64, f64, f64),
    /// Where each rule's alert series for it lies (see [`AlertBook::evaluate_at`]).
    series: Vec<Option<usize>>,
}

/// The names of a feature vector as they were on the wire, and the feature
/// slot of each (`None`: ignored).
struct Layout {
    names: Vec<u8>,
    slots: Vec<Option<usize>>,
}

/// What the board works out once; never snapshotted.
#[derive(Default)]
struct Hot {
    versions: Vec<VersionSlot>,
    /// Label join version number → index in `versions`.
    by_join: Vec<Option<usize>>,
    features: Vec<FeatureSlot>,
    /// Feature name → index in `features` (`None`: ignored).
    by_name: HashMap<String, Option<usize>>,
    layouts: Vec<Layout>,
    stages: [Option<usize>; 4],
    /// Which families some rule watches, in [`family_index`] order.
    families: [bool; 4],
    join_limits: Option<JoinLimits>,
    quality_windows: Option<QualityWindows>,
    /// Whether some rule reads the label-count window, the event-time window:
    /// those keep their tallies up to date.
    tracked_windows: (bool, bool),
    /// Whether some quality rule reads log loss, Brier or calibration error.
    quality_curve: bool,
    score_spec: Option<DriftSpec>,
    score_levels: (f64, f64, f64),
    /// How drift alerts describe their window: against the first values, against training data.
    drift_window: (String, String),
    /// Sorted copies of the latency windows, kept between evaluations.
    sorted_event: Vec<f64>,
    sorted_ingest: Vec<f64>,
    /// The pairs a label formed, kept between labels.
    joined: Vec<Joined>,
    /// The unlabelled per-record series, counted locally and flushed after each batch.
    records: Option<RecordMetrics>,
    /// Where to ask for a model version's training metadata (see [`training`]).
    training_requests: Option<tokio::sync::mpsc::UnboundedSender<ModelVersion>>,
}

fn family_index(family: Family) -> usize {
    match family {
        Family::FeatureDrift => 0,
        Family::ScoreDrift => 1,
        Family::Quality => 2,
        Family::Latency => 3,
    }
}

pub struct HealthBoard {
    /// Shared with the stage while it serializes a snapshot; every change goes
    /// through `Arc::make_mut`, once per batch, which copies only if a snapshot
    /// is still held (the stage loop encodes it before it sends the next batch,
    /// so it never is).
    state: Arc<MonitorState>,
    settings: MonitorSettings,
    rules: Vec<Rule>,
    metrics: MonitorMetrics,
    hot: Hot,
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
        state.order = std::mem::take(&mut state.order).with_arrivals(input::ARRIVALS.to_vec());
        let mut hot = Hot::default();
        for rule in &rules {
            hot.families[family_index(rule.family)] = true;
        }
        let reads = |w: QualityWindow| {
            rules
                .iter()
                .any(|r| r.family == Family::Quality && r.window == w)
        };
        hot.tracked_windows = (reads(QualityWindow::Labels), reads(QualityWindow::Time));
        hot.quality_curve = rules.iter().any(|r| {
            matches!(
                r.metric,
                MonitorMetric::LogLoss | MonitorMetric::Brier | MonitorMetric::CalibrationError
            )
        });
        let j = &settings.join;
        hot.join_limits = Some(JoinLimits {
            ttl_us: secs_to_us(j.ttl_secs),
            max_predictions: j.max_pending_predictions,
            max_labels: j.max_pending_labels,
        });
        let q = &settings.quality;
        hot.quality_windows = Some(QualityWindows {
            labels: q.window_labels,
            span_us: secs_to_us(q.window_secs),
            max_time_samples: q.max_window_samples,
        });
        hot.score_spec = Some(drift_spec(&settings, None));
        hot.score_levels = drift_levels(&settings, None);
        hot.records = Some(metrics.records());
        hot.drift_window = (
            format!(
                "over the last {} values against the first {}",
                settings.drift.window_events, settings.drift.reference_events
            ),
            format!(
                "over the last {} values against the training data",
                settings.drift.window_events
            ),
        );
        let board = Self {
            state: Arc::new(state),
            settings,
            rules,
            metrics,
            hot,
        };
        board.restore_metrics();
        board
    }

    /// Installs a version's training distributions as the references of its
    /// score and of the features it read (those without a training reference
    /// yet); where there are none, says so and keeps the first values.
    pub fn install_training(&mut self, m: TrainingMetadata) {
        let TrainingMetadata { version, answer } = m;
        let keeps = self.settings.drift.reference_events;
        let meta = match answer {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                tracing::warn!(model = %version.model, version = %version.version,
                    "not in the model registry: its drift reference stays the first {keeps} values");
                return;
            }
            Err(e) => {
                tracing::warn!(model = %version.model, version = %version.version, error = %e,
                    "no training metadata: its drift reference stays the first {keeps} values");
                return;
            }
        };
        let source = ReferenceSource::Training {
            model: version.model.clone(),
            version: version.version.clone(),
        };
        let mut board = self.board();
        let i = board.version_slot_of(&version);
        let at = board.score_tracker(i);
        let installed = match (&meta.training_scores, board.hot.score_spec) {
            (Some(d), Some(spec)) => training::reference(d, &spec, source.clone()),
            (None, _) | (_, None) => Err("its metadata has no training distribution".into()),
        };
        match (installed, board.state.drift.scores.at_mut(at)) {
            (Ok(reference), Some(tracker)) => {
                tracing::info!(model = %version.model, version = %version.version,
                    values = reference.size, "score drift against the training scores");
                tracker.install(reference);
                board.metrics.publish_score_reference(&version, "training");
            }
            (Err(e), _) => {
                tracing::warn!(model = %version.model, version = %version.version, reason = %e,
                    "score drift stays against the first {keeps} values");
            }
            (Ok(_), None) => {}
        }
        let mut features = 0;
        for (name, d) in &meta.training_inputs {
            let Some(f) = board.feature_slot(name) else {
                continue;
            };
            let feature = &board.hot.features[f];
            let Some(tracker) = board.state.drift.features.at_mut(feature.tracker) else {
                continue;
            };
            if matches!(tracker.source(), ReferenceSource::Training { .. }) {
                continue;
            }
            match training::reference(d, &feature.spec, source.clone()) {
                Ok(reference) => {
                    tracker.install(reference);
                    features += 1;
                }
                Err(e) => tracing::warn!(feature = %name, model = %version.model,
                    version = %version.version, reason = %e,
                    "training distribution refused: drift stays against the first {keeps} values"),
            }
        }
        tracing::info!(model = %version.model, version = %version.version, features,
            "features now drifting against this version's training data");
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
        for (version, q) in self.state.quality.versions.iter() {
            self.metrics.restore_joins(version, q.labelled);
            self.publish_quality(version);
        }
        self.metrics
            .sync_feature_vectors(self.state.feature_vectors);
        for (name, tracker) in self.state.drift.features.iter() {
            if let Some(f) = &tracker.last {
                self.metrics
                    .publish_feature_drift(name, f, self.severity(name, f));
            }
        }
        for (version, tracker) in self.state.drift.scores.iter() {
            if let Some(f) = &tracker.last {
                self.metrics.publish_score_drift(version, f);
            }
            self.metrics
                .publish_score_reference(version, tracker.source().name());
        }
        self.publish_join();
        publish_alerts(&self.state, &self.rules, &self.metrics);
    }

    /// 0 none, 1 moderate, 2 significant, by PSI; `None` without a PSI.
    fn severity(&self, feature: &str, f: &DriftFigures) -> Option<i64> {
        severity(drift_levels(&self.settings, Some(feature)), f)
    }

    fn quality_figures(&self, version: &ModelVersion) -> (QualityFigures, QualityFigures) {
        quality_figures(
            self.state.quality.versions.get(version),
            self.settings.quality.calibration_bins,
        )
    }

    fn publish_quality(&self, version: &ModelVersion) {
        let (by_labels, by_time) = self.quality_figures(version);
        self.metrics.publish_quality(version, "labels", &by_labels);
        self.metrics.publish_quality(version, "time", &by_time);
    }

    fn publish_join(&self) {
        let j = &self.state.join;
        self.metrics
            .publish_join(&j.counts, j.waiting_predictions(), j.waiting_labels());
    }

    /// Gauges that are not tied to an event.
    fn refresh(&mut self) {
        for slot in &mut self.hot.versions {
            if std::mem::take(&mut slot.stale_quality) {
                let (by_labels, by_time) = quality_figures(
                    slot.quality
                        .and_then(|at| self.state.quality.versions.at(at)),
                    self.settings.quality.calibration_bins,
                );
                self.metrics
                    .publish_quality(&slot.version, "labels", &by_labels);
                self.metrics
                    .publish_quality(&slot.version, "time", &by_time);
            }
        }
        for (stage, meter) in self.state.latency.stages.iter() {
            self.metrics.publish_stage_rate(stage, meter.per_second());
        }
    }

    /// The state and everything the per-record path reads, borrowed for a batch.
    fn board(&mut self) -> Board<'_> {
        Board {
            state: Arc::make_mut(&mut self.state),
            settings: &self.settings,
            rules: &self.rules,
            metrics: &self.metrics,
            hot: &mut self.hot,
        }
    }

    /// Applies one record from any of the three streams; answers the alerts it caused.
    pub fn apply(&mut self, input: &MonitorInput, trace: &TraceContext) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.board().apply(input, trace, &mut out);
        self.flush_metrics();
        out
    }

    /// Adds what the per-record series counted locally to the registry.
    fn flush_metrics(&self) {
        for slot in &self.hot.versions {
            slot.metrics.flush();
        }
        if let Some(records) = &self.hot.records {
            records.flush();
        }
    }

    /// Applies records in order, then refreshes the join's gauges; answers the alerts.
    pub fn apply_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a MonitorInput, &'a TraceContext)>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut board = self.board();
        for (input, trace) in records {
            board.apply(input, trace, &mut out);
        }
        self.flush_metrics();
        self.publish_join();
        out
    }

    /// Applies one prediction (tests and tools; the stage hands over records).
    pub fn observe(&mut self, p: &Prediction, trace: &TraceContext) -> Vec<Outgoing> {
        self.apply(&MonitorInput::Prediction(p.clone().into()), trace)
    }

    /// Applies one label (tests and tools).
    pub fn observe_label(&mut self, l: &Label, trace: &TraceContext) -> Vec<Outgoing> {
        self.apply(&MonitorInput::Label(l.clone().into()), trace)
    }

    /// Applies one feature vector (tests and tools).
    pub fn observe_features(&mut self, v: &FeatureVector, trace: &TraceContext) -> Vec<Outgoing> {
        self.apply(&MonitorInput::Features(v.clone().into()), trace)
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

/// The board's fields, split so the per-record path borrows them side by side.
struct Board<'a> {
    state: &'a mut MonitorState,
    settings: &'a MonitorSettings,
    rules: &'a [Rule],
    metrics: &'a MonitorMetrics,
    hot: &'a mut Hot,
}

impl Board<'_> {
    fn apply(&mut self, input: &MonitorInput, trace: &TraceContext, out: &mut Vec<Outgoing>) {
        match input {
            MonitorInput::Prediction(p) => self.prediction(p, trace, out),
            MonitorInput::Label(l) => self.label(l, trace, out),
            MonitorInput::Features(v) => self.features(v, trace, out),
        }
    }

    fn join_limits(&self) -> JoinLimits {
        self.hot.join_limits.unwrap_or(JoinLimits {
            ttl_us: i64::MAX,
            max_predictions: usize::MAX,
            max_labels: usize::MAX,
        })
    }

    fn record_stage(&mut self, stage: Stage, time_us: i64) {
        let i = stage as usize;
        let at = match self.hot.stages[i] {
            Some(at) => at,
            None => {
                let at = self.state.latency.stage_position(stage.name());
                self.hot.stages[i] = Some(at);
                at
            }
        };
        self.state.latency.record_stage_at(at, time_us);
    }

    /// The slot of a prediction's model version, made on first sight.
    fn version_slot(&mut self, p: &PredictionRecord) -> usize {
        let found = self
            .hot
            .versions
            .iter()
            .position(|s| p.is_of(&s.version.model, &s.version.version));
        match found {
            Some(i) => i,
            None => self.new_version_slot(ModelVersion::of(p)),
        }
    }

    fn version_slot_of(&mut self, version: &ModelVersion) -> usize {
        match self.hot.versions.iter().position(|s| s.version == *version) {
            Some(i) => i,
            None => self.new_version_slot(version.clone()),
        }
    }

    fn new_version_slot(&mut self, version: ModelVersion) -> usize {
        let state = &mut *self.state;
        let trained = state
            .drift
            .scores
            .get(&version)
            .is_some_and(|t| matches!(t.source(), ReferenceSource::Training { .. }));
        self.metrics
            .publish_score_reference(&version, if trained { "training" } else { "first_events" });
        if !trained && self.settings.drift.reference_of(&version.model) == DriftReference::Training
        {
            if let Some(requests) = &self.hot.training_requests {
                tracing::info!(model = %version.model, version = %version.version,
                    "asking the model registry for its training distribution");
                let _ = requests.send(version.clone());
            }
        }
        let slot = VersionSlot {
            metrics: self.metrics.version(&version),
            stats: state.predictions.position_or_insert(&version),
            latency: state.latency.versions.position_or_insert(
                &version,
                ModelVersion::clone,
                VersionLatency::default,
            ),
            score: state.drift.scores.position(&version),
            quality: state.quality.versions.position(&version),
            join: None,
            stale_quality: false,
            series: Vec::new(),
            version,
        };
        if let Some(at) = slot.quality {
            self.track_quality(at);
        }
        self.hot.versions.push(slot);
        self.hot.versions.len() - 1
    }

    /// Makes the windows the rules read keep their tallies.
    fn track_quality(&mut self, at: usize) {
        let (labels, time) = self.hot.tracked_windows;
        if let Some(q) = self.state.quality.versions.at_mut(at) {
            if labels {
                q.by_labels.track();
            }
            if time {
                q.by_time.track();
            }
        }
    }

    /// The slot of the model version the label join numbered `id`.
    fn join_slot(&mut self, id: u32) -> Option<usize> {
        if let Some(Some(i)) = self.hot.by_join.get(id as usize) {
            return Some(*i);
        }
        let version = self.state.join.version(id)?.clone();
        let i = self.version_slot_of(&version);
        self.hot.versions[i].join = Some(id);
        let at = id as usize;
        if self.hot.by_join.len() <= at {
            self.hot.by_join.resize(at + 1, None);
        }
        self.hot.by_join[at] = Some(i);
        Some(i)
    }

    fn prediction(&mut self, p: &PredictionRecord, trace: &TraceContext, out: &mut Vec<Outgoing>) {
        let i = self.version_slot(p);
        let lags = (
            lag_seconds(p.event_time_us, p.predict_time_us),
            lag_seconds(p.ingest_time_us, p.predict_time_us),
        );
        {
            let slot = &self.hot.versions[i];
            if let Some(stats) = self.state.predictions.record_at(slot.stats, p) {
                slot.metrics
                    .observe_prediction(p.predicted_positive, stats, lags);
            }
        }
        self.record_stage(Stage::Inference, p.predict_time_us);
        self.observe_latency(i, lags, p, trace, out);
        if p.score.is_finite() {
            self.observe_score(i, p, trace, out);
        }
        let limits = self.join_limits();
        // A prediction without a label key only moves the join's clock: it needs no number.
        let id = match (p.label_key().is_empty(), self.hot.versions[i].join) {
            (true, _) => u32::MAX,
            (false, Some(id)) => id,
            (false, None) => {
                let id = self.state.join.intern(&self.hot.versions[i].version);
                self.join_slot(id);
                id
            }
        };
        if let Some(joined) = self.state.join.on_prediction_of(id, p, limits) {
            self.record_joined(joined, p.event_id(), p.event_time_us, trace, out);
        }
        self.state.join.expire(limits);
    }

    fn observe_latency(
        &mut self,
        i: usize,
        lags: (Option<f64>, Option<f64>),
        p: &PredictionRecord,
        trace: &TraceContext,
        out: &mut Vec<Outgoing>,
    ) {
        let window = self.settings.latency.window_predictions;
        let every = self.settings.latency.evaluate_every.max(1);
        let slot = &self.hot.versions[i];
        let Some(latency) = self.state.latency.versions.at_mut(slot.latency) else {
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
        // One sort per window and evaluation, for the gauges and the rules alike.
        latency
            .event_to_prediction
            .sort_into(&mut self.hot.sorted_event);
        latency
            .ingest_to_prediction
            .sort_into(&mut self.hot.sorted_ingest);
        let (sorted_event, sorted_ingest) = (&self.hot.sorted_event, &self.hot.sorted_ingest);
        let quantiles = |sorted: &[f64]| -> Vec<Option<f64>> {
            LATENCY_QUANTILES
                .iter()
                .map(|(q, _)| quantile_of_sorted(sorted, *q))
                .collect()
        };
        let slot = &mut self.hot.versions[i];
        self.metrics.publish_latency(
            &slot.version,
            "event_to_prediction",
            &quantiles(sorted_event),
        );
        self.metrics.publish_latency(
            &slot.version,
            "ingest_to_prediction",
            &quantiles(sorted_ingest),
        );
        if !self.hot.families[family_index(Family::Latency)] {
            return;
        }
        let scope = Scope {
            family: Family::Latency,
            model: &slot.version.model,
            version: &slot.version.version,
            feature: "",
            position,
            time_us: p.event_time_us,
            event_id: p.event_id(),
        };
        raise(
            self.state,
            self.rules,
            self.metrics,
            &scope,
            &mut slot.series,
            |rule| {
                let sorted = match rule.metric {
                    MonitorMetric::IngestToPredictionSeconds => sorted_ingest,
                    _ => sorted_event,
                };
                Reading {
                    value: quantile_of_sorted(sorted, rule.quantile),
                    default_threshold: None,
                    window: format!(
                        "at quantile {} over the last {} predictions",
                        rule.quantile,
                        sorted.len()
                    )
                    .into(),
                }
            },
            (trace, out),
        );
    }

    fn observe_score(
        &mut self,
        i: usize,
        p: &PredictionRecord,
        trace: &TraceContext,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(spec) = self.hot.score_spec else {
            return;
        };
        let at = self.score_tracker(i);
        let slot = &mut self.hot.versions[i];
        let Some(tracker) = self.state.drift.scores.at_mut(at) else {
            return;
        };
        let Some(figures) = tracker.observe(p.score, &spec) else {
            return;
        };
        let position = tracker.observed;
        let trained = matches!(tracker.source(), ReferenceSource::Training { .. });
        self.metrics.publish_score_drift(&slot.version, &figures);
        if !self.hot.families[family_index(Family::ScoreDrift)] {
            return;
        }
        let (_, psi_level, ks_level) = self.hot.score_levels;
        let window = if trained {
            &self.hot.drift_window.1
        } else {
            &self.hot.drift_window.0
        };
        let scope = Scope {
            family: Family::ScoreDrift,
            model: &slot.version.model,
            version: &slot.version.version,
            feature: "",
            position,
            time_us: p.event_time_us,
            event_id: p.event_id(),
        };
        raise(
            self.state,
            self.rules,
            self.metrics,
            &scope,
            &mut slot.series,
            |rule| drift_reading(rule.metric, &figures, psi_level, ks_level, window),
            (trace, out),
        );
    }

    /// Position of version slot `i`'s score tracker, made on first need.
    fn score_tracker(&mut self, i: usize) -> usize {
        let slot = &mut self.hot.versions[i];
        match slot.score {
            Some(at) => at,
            None => {
                let at = self.state.drift.scores.position_or_insert(
                    &slot.version,
                    ModelVersion::clone,
                    DriftTracker::default,
                );
                slot.score = Some(at);
                at
            }
        }
    }

    fn label(&mut self, l: &LabelRecord, trace: &TraceContext, out: &mut Vec<Outgoing>) {
        self.record_stage(Stage::Labels, l.ingest_time_us);
        let limits = self.join_limits();
        let mut joined = std::mem::take(&mut self.hot.joined);
        self.state.join.on_label_into(l, limits, &mut joined);
        for pair in joined.drain(..) {
            self.record_joined(pair, l.event_id(), l.event_time_us, trace, out);
        }
        self.hot.joined = joined;
        self.state.join.expire(limits);
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
        let (Some(i), Some(windows)) = (self.join_slot(joined.version), self.hot.quality_windows)
        else {
            return;
        };
        let at = match self.hot.versions[i].quality {
            Some(at) => at,
            None => {
                let slot = &mut self.hot.versions[i];
                let at = self.state.quality.position_or_insert(&slot.version);
                slot.quality = Some(at);
                self.track_quality(at);
                at
            }
        };
        let labelled = self.state.quality.record_at(at, joined.sample, windows);
        let slot = &mut self.hot.versions[i];
        slot.metrics.observe_join();
        if let Some(records) = &self.hot.records {
            records.observe_label_delay(joined.label_delay_us as f64 / 1e6);
        }
        slot.stale_quality = true;
        // Without rules on quality the gauges are refreshed by the timer alone:
        // no figure is computed per label.
        if !self.hot.families[family_index(Family::Quality)]
            || !labelled.is_multiple_of(self.settings.quality.evaluate_every.max(1))
        {
            return;
        }
        // Only the windows some rule reads: the event-time one can be ten times larger.
        let bins = self.settings.quality.calibration_bins;
        let rules = self.rules;
        let (labels, time) = self.hot.tracked_windows;
        let curve = self.hot.quality_curve;
        let (by_labels, by_time) = match self.state.quality.versions.at(at) {
            Some(q) => (
                labels.then(|| q.by_labels.tally().figures_with(bins, curve)),
                time.then(|| q.by_time.tally().figures_with(bins, curve)),
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
        let slot = &mut self.hot.versions[i];
        let scope = Scope {
            family: Family::Quality,
            model: &slot.version.model,
            version: &slot.version.version,
            feature: "",
            position: labelled,
            time_us,
            event_id,
        };
        raise(
            self.state,
            rules,
            self.metrics,
            &scope,
            &mut slot.series,
            |rule| {
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
                    )
                    .into(),
                }
            },
            (trace, out),
        );
    }

    /// The index in `hot.layouts` of the vector's names, worked out on first sight.
    fn layout(&mut self, v: &VectorRecord) -> usize {
        let names = v.names_wire();
        if let Some(i) = self.hot.layouts.iter().position(|l| l.names == names) {
            return i;
        }
        let slots: Vec<Option<usize>> = v.names().map(|name| self.feature_slot(name)).collect();
        if self.hot.layouts.len() >= LAYOUTS_KEPT {
            self.hot.layouts.remove(0);
        }
        self.hot.layouts.push(Layout {
            names: names.to_vec(),
            slots,
        });
        self.hot.layouts.len() - 1
    }

    /// The slot of a feature by name (`None`: ignored), made on first sight.
    fn feature_slot(&mut self, name: &str) -> Option<usize> {
        if let Some(slot) = self.hot.by_name.get(name) {
            return *slot;
        }
        let ignored = self
            .settings
            .drift
            .features
            .get(name)
            .is_some_and(|f| f.ignore);
        let slot = (!ignored).then(|| {
            let tracker = self.state.drift.features.position_or_insert(
                name,
                str::to_string,
                DriftTracker::default,
            );
            self.hot.features.push(FeatureSlot {
                name: name.to_string(),
                tracker,
                spec: drift_spec(self.settings, Some(name)),
                levels: drift_levels(self.settings, Some(name)),
                series: Vec::new(),
            });
            self.hot.features.len() - 1
        });
        self.hot.by_name.insert(name.to_string(), slot);
        slot
    }

    fn features(&mut self, v: &VectorRecord, trace: &TraceContext, out: &mut Vec<Outgoing>) {
        self.state.feature_vectors += 1;
        if let Some(records) = &self.hot.records {
            records.observe_feature_vector((
                lag_seconds(v.event_time_us, v.ingest_time_us),
                lag_seconds(v.ingest_time_us, v.feature_time_us),
            ));
        }
        self.record_stage(Stage::Ingest, v.ingest_time_us);
        self.record_stage(Stage::FeatureState, v.feature_time_us);
        let layout = self.layout(v);
        let watch_rules = self.hot.families[family_index(Family::FeatureDrift)];
        let Some(slots) = self.hot.layouts.get(layout).map(|l| &l.slots) else {
            return;
        };
        for (slot, value) in slots.iter().zip(v.values()) {
            let Some(feature) = slot.and_then(|f| self.hot.features.get_mut(f)) else {
                continue;
            };
            let Some(tracker) = self.state.drift.features.at_mut(feature.tracker) else {
                continue;
            };
            let Some(figures) = tracker.observe(value, &feature.spec) else {
                continue;
            };
            let position = tracker.observed;
            let trained = matches!(tracker.source(), ReferenceSource::Training { .. });
            self.metrics.publish_feature_drift(
                &feature.name,
                &figures,
                severity(feature.levels, &figures),
            );
            if !watch_rules {
                continue;
            }
            let (_, psi_level, ks_level) = feature.levels;
            let window = if trained {
                &self.hot.drift_window.1
            } else {
                &self.hot.drift_window.0
            };
            let scope = Scope {
                family: Family::FeatureDrift,
                model: "",
                version: "",
                feature: &feature.name,
                position,
                time_us: v.event_time_us,
                event_id: v.event_id(),
            };
            raise(
                self.state,
                self.rules,
                self.metrics,
                &scope,
                &mut feature.series,
                |rule| drift_reading(rule.metric, &figures, psi_level, ks_level, window),
                (trace, out),
            );
        }
    }
}

fn drift_spec(settings: &MonitorSettings, feature: Option<&str>) -> DriftSpec {
    let d = &settings.drift;
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
fn drift_levels(settings: &MonitorSettings, feature: Option<&str>) -> (f64, f64, f64) {
    let d = &settings.drift;
    let f = feature.and_then(|name| d.features.get(name));
    (
        f.and_then(|f| f.psi_moderate).unwrap_or(d.psi_moderate),
        f.and_then(|f| f.psi_significant)
            .unwrap_or(d.psi_significant),
        f.and_then(|f| f.ks_significant).unwrap_or(d.ks_significant),
    )
}

/// 0 none, 1 moderate, 2 significant, by PSI; `None` without a PSI.
fn severity((moderate, significant, _): (f64, f64, f64), f: &DriftFigures) -> Option<i64> {
    let psi = f.psi?;
    Some(if psi >= significant {
        2
    } else if psi >= moderate {
        1
    } else {
        0
    })
}

fn quality_figures(q: Option<&VersionQuality>, bins: usize) -> (QualityFigures, QualityFigures) {
    match q {
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

/// Evaluates the rules on one series' reading; queues the transitions for
/// ALERTS and refreshes the alert gauges.
fn raise<'a>(
    state: &mut MonitorState,
    rules: &[Rule],
    metrics: &MonitorMetrics,
    scope: &Scope,
    series: &mut Vec<Option<usize>>,
    read: impl FnMut(&Rule) -> Reading<'a>,
    (trace, out): (&TraceContext, &mut Vec<Outgoing>),
) {
    let transitions = state.alerts.evaluate_at(rules, scope, series, read);
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
    publish_alerts(state, rules, metrics);
}

fn publish_alerts(state: &MonitorState, rules: &[Rule], metrics: &MonitorMetrics) {
    let totals = state.alerts.totals();
    for rule in rules {
        let t = totals.get(rule.name.as_str()).copied().unwrap_or_default();
        metrics.publish_alerts(&rule.name, rule.kind(), t);
    }
}

fn secs_to_us(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn drift_reading<'a>(
    metric: MonitorMetric,
    f: &DriftFigures,
    psi_level: f64,
    ks_level: f64,
    window: &'a str,
) -> Reading<'a> {
    let (value, default_threshold) = match metric {
        MonitorMetric::Psi | MonitorMetric::ScorePsi => (f.psi, psi_level),
        _ => (f.ks, ks_level),
    };
    Reading {
        value,
        default_threshold: Some(default_threshold),
        window: window.into(),
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
        // The fetcher lives and dies with the board that asks it.
        if self.settings.drift.wants_training() {
            let url = training::inference_url();
            tracing::info!(%url, "drift references from training metadata in the model registry");
            let (requests, asked) = tokio::sync::mpsc::unbounded_channel();
            self.hot.training_requests = Some(requests);
            actix::spawn(training::fetch_training(url, asked, ctx.address()));
        }
    }
}

impl Handler<Apply<MonitorInput>> for HealthBoard {
    type Result = Vec<Outgoing>;

    fn handle(&mut self, Apply(batch): Apply<MonitorInput>, _: &mut Self::Context) -> Self::Result {
        if batch.is_empty() && self.state.order.held() == 0 {
            // A heartbeat with nothing held: the state need not be touched (or copied).
            return Vec::new();
        }
        let order = &mut Arc::make_mut(&mut self.state).order;
        let mut ready = Vec::with_capacity(batch.len());
        if batch.is_empty() {
            // The stage's heartbeat: nothing came for a while.
            order.tick();
            ready.extend(std::iter::from_fn(|| order.pop()));
        }
        for d in batch {
            let time = d.message.event_time_us();
            let waiting = Waiting {
                input: d.message,
                trace: d.trace,
            };
            // PREDICTIONS is in inference's event-time order: one lane.
            ready.extend(order.push(d.source, 0, time, d.pending, waiting));
            ready.extend(std::iter::from_fn(|| order.pop()));
        }
        self.metrics.publish_held(order.held());
        self.apply_all(ready.iter().map(|w| (&w.input, &w.trace)))
    }
}

impl Handler<TrainingMetadata> for HealthBoard {
    type Result = ();

    fn handle(&mut self, m: TrainingMetadata, _: &mut Self::Context) {
        self.install_training(m);
    }
}

impl Handler<TakeSnapshot<SharedState>> for HealthBoard {
    type Result = MessageResult<TakeSnapshot<SharedState>>;

    fn handle(&mut self, _: TakeSnapshot<SharedState>, _: &mut Self::Context) -> Self::Result {
        MessageResult(Taken::whole(SharedState(Arc::clone(&self.state))))
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
    async fn a_batch_from_three_streams_is_applied_in_event_time_order() {
        let (_, b) = board();
        let addr = b.start();
        let delivered = |source: usize, sequence: u64, message: MonitorInput| Delivered {
            source,
            sequence,
            pending: 0,
            message,
            trace: no_trace(),
        };
        let vector = FeatureVector {
            names: vec!["x".into()],
            values: vec![1.0],
            ..Default::default()
        };
        // The label comes first and waits for the predictions to pass its
        // event time; the vector goes at once (drift reads it in its own order).
        let mut later = prediction("b", "1", 0.2, false);
        later.event_time_us = 4_000_000;
        let batch = vec![
            delivered(1, 1, MonitorInput::Label(label("a", 1.0).into())),
            delivered(2, 1, MonitorInput::Features(vector.into())),
            delivered(
                0,
                1,
                MonitorInput::Prediction(prediction("a", "1", 0.9, true).into()),
            ),
            delivered(0, 2, MonitorInput::Prediction(later.into())),
        ];
        let out = addr.send(Apply(batch)).await.unwrap();
        assert!(out.is_empty(), "no rules, no alerts");
        let state = addr
            .send(TakeSnapshot::<SharedState>::default())
            .await
            .unwrap()
            .state;
        assert_eq!(state.0.join.counts.matched, 1);
        assert_eq!(state.0.order.held(), 0);
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
            .unwrap()
            .state;
        let stats = state.0.predictions.stats(&ModelVersion::new("fraud", "1"));
        assert_eq!(stats.map(|s| s.predictions), Some(1));
        // The snapshot is the board's own state, not a copy; it serializes as one.
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: MonitorState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, *state.0);
    }
}
