//! The stream side of inference: the `ModelServer` actor reads FEATURES and
//! LABELS (one chassis stage, two sources, one snapshot holding both stream
//! sequences) and
//!
//! - scores every feature vector with the active model and returns the
//!   `Prediction` for `predictions.<model>`; a shadow version, if any, scores
//!   it too, recorded here and never published;
//! - when the pipeline has a `[label]` rule, keeps the vector in the label
//!   join until its label arrives (or takes the label that came first), then
//!   lets the online learner predict (progressive validation) and learn.
//!
//! Vectors and labels are applied in event-time order ([`EventOrder`]), not
//! as they arrive: on a fast replay labels run hours ahead of the vectors of
//! their flights, and a learner fed in arrival order would have learned from
//! flights that departed after the one it predicts. So a vector is scored by
//! the models as they stood at its event time (the online learner included,
//! and its progressive score is taken then), and a label is learned once every
//! vector before it has been scored; a replay at any speed gives the figures a
//! live run would.
//!
//! Everything it must not lose or count twice is in [`ServingState`] (the
//! records held for the order too), which the stage loop snapshots with both
//! sequences; nothing here touches NATS or sled.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{Actor, Context, Handler, MessageResult};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::config::{OnlineSettings, RetrainSettings};
use millrace_chassis::event_order::{Arrival, EventOrder};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, StageInput, TakeSnapshot, Taken};
use millrace_proto::{FeatureVector, Label, Prediction};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Served};
use crate::evaluation::Progressive;
use crate::join::{JoinCounts, LabelJoin};
use crate::online::{OnlineLogistic, Schedule};
use crate::registry::ONLINE_VERSION;
use crate::retrain::{self, Job, Retraining, Step};
use crate::scorer::{LoadedModel, Scorer as _};

/// What the stage reads: source 0 is FEATURES, source 1 LABELS.
#[derive(Debug, Clone, PartialEq)]
pub enum InferenceInput {
    Vector(FeatureVector),
    Label(Label),
}

impl StageInput for InferenceInput {
    fn decode(source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        use prost::Message;
        Ok(match source {
            0 => Self::Vector(<FeatureVector as Message>::decode(payload)?),
            _ => Self::Label(<Label as Message>::decode(payload)?),
        })
    }

    fn event_id(&self) -> &str {
        match self {
            Self::Vector(v) => &v.event_id,
            Self::Label(l) => &l.event_id,
        }
    }
}

impl InferenceInput {
    /// The source it came from, as [`StageInput::decode`] numbers them.
    fn source(&self) -> usize {
        match self {
            Self::Vector(_) => 0,
            Self::Label(_) => 1,
        }
    }

    /// The scoring event's time for a vector, the label event's for a label.
    fn event_time_us(&self) -> i64 {
        match self {
            Self::Vector(v) => v.event_time_us,
            Self::Label(l) => l.event_time_us,
        }
    }
}

/// A record held for the event-time order, with the span it was delivered
/// under. Snapshotted as its source and wire bytes; the span does not survive
/// a restart.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub input: InferenceInput,
    pub trace: opentelemetry::Context,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input
    }
}

impl Serialize for Waiting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost::Message as _;
        let bytes = match &self.input {
            InferenceInput::Vector(v) => v.encode_to_vec(),
            InferenceInput::Label(l) => l.encode_to_vec(),
        };
        (self.input.source() as u8, bytes).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Waiting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (source, bytes) = <(u8, Vec<u8>)>::deserialize(d)?;
        let input = InferenceInput::decode(usize::from(source), bytes.into())
            .map_err(serde::de::Error::custom)?;
        Ok(Self {
            input,
            trace: opentelemetry::Context::new(),
        })
    }
}

/// How FEATURES and LABELS arrive (see [`Arrival`]): vectors come through
/// enrich and feature-state, labels straight from ingest.
pub const ARRIVALS: [Arrival; 2] = [Arrival::Derived, Arrival::Direct];

/// Predictions made by one model version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTally {
    pub predictions: u64,
    pub positive: u64,
}

/// A shadow version's record: how often it scored, and agreed with the active decision.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowTally {
    pub scored: u64,
    pub agreed: u64,
    pub abs_diff_sum: f64,
}

/// A scored vector waiting for its label: the learner's row and the scores
/// the active (and shadow) versions gave it when it was served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub row: Vec<f64>,
    /// The online learner's score at the vector's event time: what its
    /// progressive validation records once the label comes.
    pub online: f64,
    pub served: (String, f64),
    pub shadow: Option<(String, f64)>,
    /// The retrain inputs of the vector, when the pipeline retrains.
    #[serde(default)]
    pub features: Vec<f32>,
}

/// The online learner and everything around it that must survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineState {
    pub learner: OnlineLogistic,
    pub join: LabelJoin<Scored>,
    /// Progressive validation by version; `online` is the learner scored
    /// before each update, the others are the scores they served.
    pub progressive: BTreeMap<String, Progressive>,
    /// Continuous training on the joined examples (`[model.retrain]`).
    #[serde(default)]
    pub retrain: Option<Retraining>,
    /// Progressive validation by version and month (`YYYY-MM`) of the label's
    /// event time: how each version did as the data moved.
    #[serde(default)]
    pub monthly: BTreeMap<String, BTreeMap<String, Progressive>>,
}

/// What inference snapshots.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingState {
    /// Model → version → predictions served.
    pub tallies: BTreeMap<String, BTreeMap<String, VersionTally>>,
    /// Version → its shadow record.
    pub shadow: BTreeMap<String, ShadowTally>,
    pub online: Option<OnlineState>,
    /// Vectors and labels delivered but not yet applied, in event-time order.
    pub order: EventOrder<Waiting>,
}

impl ServingState {
    /// Adds the online learner when the pipeline asks for one and the state
    /// has none yet; applies the configured bounds to a restored join. With a
    /// learner, vectors and labels are applied in event-time order.
    pub fn with_online(
        mut self,
        settings: &OnlineSettings,
        inputs: Vec<String>,
        threshold: f64,
    ) -> Self {
        let ttl_us =
            i64::try_from(settings.label_ttl_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        match &mut self.online {
            Some(o) => o.join.set_bounds(settings.join_capacity, ttl_us),
            None => {
                self.online = Some(OnlineState {
                    learner: OnlineLogistic::new(
                        inputs,
                        threshold,
                        Schedule::from_settings(settings),
                    ),
                    join: LabelJoin::new(settings.join_capacity, ttl_us),
                    progressive: BTreeMap::new(),
                    retrain: None,
                    monthly: BTreeMap::new(),
                })
            }
        }
        self.order = std::mem::take(&mut self.order).with_arrivals(ARRIVALS.to_vec());
        self
    }

    /// Keeps the joined examples and retrains on them (needs the learner's
    /// label join); a restored state keeps its examples if the inputs are the same.
    pub fn with_retraining(mut self, settings: &RetrainSettings, inputs: Vec<String>) -> Self {
        if let Some(o) = &mut self.online {
            match &o.retrain {
                Some(r) if settings.enabled && r.inputs == inputs => {}
                _ if settings.enabled => o.retrain = Some(Retraining::new(inputs)),
                _ => o.retrain = None,
            }
        }
        self
    }

    /// Without a learner nothing depends on the order of the two streams.
    pub fn without_online(mut self) -> Self {
        self.online = None;
        self.order = std::mem::take(&mut self.order)
            .with_arrivals(vec![Arrival::Unordered, Arrival::Unordered]);
        self
    }
}

/// Buckets for probabilities: 0.05, 0.10, …, 1.0.
fn score_buckets() -> Vec<f64> {
    (1..=20).map(|i| f64::from(i) / 20.0).collect()
}

struct ServingMetrics {
    predictions: IntCounterVec,
    positive: IntCounterVec,
    score: HistogramVec,
    missing_inputs: IntCounterVec,
    shadow_scored: IntCounterVec,
    shadow_agreed: IntCounterVec,
    online_updates: IntCounter,
    join: IntCounterVec,
    join_waiting: IntGauge,
    labels_waiting: IntGauge,
    held: IntGauge,
    progressive_auc: GaugeVec,
    progressive_log_loss: GaugeVec,
    progressive_brier: GaugeVec,
    progressive_examples: GaugeVec,
}

impl ServingMetrics {
    fn new(metrics: &Metrics) -> Self {
        let gauge = |name: &str, help: &str| {
            metrics.register(
                GaugeVec::new(Opts::new(name, help), &["model", "model_version"])
                    .unwrap_or_else(|e| panic!("metric {name}: {e}")),
            )
        };
        Self {
            predictions: metrics.counter_vec(
                "inference_predictions_total",
                "Predictions published for feature vectors, by model and version.",
                &["model", "model_version"],
            ),
            positive: metrics.counter_vec(
                "inference_positive_predictions_total",
                "Predictions at or above the model's threshold, by model and version.",
                &["model", "model_version"],
            ),
            score: metrics.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "inference_score",
                        "Scores given to feature vectors, by model and version.",
                    )
                    .buckets(score_buckets()),
                    &["model", "model_version"],
                )
                .unwrap_or_else(|e| panic!("metric inference_score: {e}")),
            ),
            missing_inputs: metrics.counter_vec(
                "inference_missing_inputs_total",
                "Model inputs a feature vector lacked (or carried as NaN/inf), scored as 0.0, by input.",
                &["input"],
            ),
            shadow_scored: metrics.counter_vec(
                "inference_shadow_predictions_total",
                "Feature vectors a shadow version scored (recorded, not served), by model and version.",
                &["model", "model_version"],
            ),
            shadow_agreed: metrics.counter_vec(
                "inference_shadow_agreements_total",
                "Shadow predictions whose decision matched the served one, by model and version.",
                &["model", "model_version"],
            ),
            online_updates: metrics.counter(
                "inference_online_updates_total",
                "Labelled examples the online learner updated on.",
            ),
            join: metrics.counter_vec(
                "inference_label_join_total",
                "Label join outcomes: joined, label_first (joined, label came first), \
                 expired_vector (no label in time), expired_label (unmatched label), evicted, replaced.",
                &["outcome"],
            ),
            join_waiting: metrics.gauge(
                "inference_label_join_waiting",
                "Vectors and labels waiting in the label join.",
            ),
            labels_waiting: metrics.gauge(
                "inference_label_join_waiting_labels",
                "Labels waiting in the label join for their feature vector.",
            ),
            held: metrics.gauge(
                "inference_event_order_held",
                "Vectors and labels delivered but held until the other stream passes their event time.",
            ),
            progressive_auc: gauge(
                "inference_progressive_roc_auc",
                "Progressive-validation ROC AUC on joined labels (scored before learning), by version.",
            ),
            progressive_log_loss: gauge(
                "inference_progressive_log_loss",
                "Progressive-validation mean log loss on joined labels, by version.",
            ),
            progressive_brier: gauge(
                "inference_progressive_brier",
                "Progressive-validation Brier score on joined labels, by version.",
            ),
            progressive_examples: gauge(
                "inference_progressive_examples",
                "Labelled examples in the progressive-validation metrics, by version.",
            ),
        }
    }

    fn report_join(&self, was: &JoinCounts, now: &JoinCounts) {
        let pairs = [
            ("joined", was.joined, now.joined),
            ("label_first", was.label_first, now.label_first),
            ("expired_vector", was.expired_vectors, now.expired_vectors),
            ("expired_label", was.expired_labels, now.expired_labels),
            ("evicted", was.evicted, now.evicted),
            ("replaced", was.replaced, now.replaced),
        ];
        for (outcome, before, after) in pairs {
            if after > before {
                self.join
                    .with_label_values(&[outcome])
                    .inc_by(after - before);
            }
        }
    }
}

fn summary_of(p: &Progressive) -> ProgressSummary {
    ProgressSummary {
        examples: p.examples,
        positives: p.positives,
        roc_auc: p.roc_auc(),
        log_loss: p.log_loss(),
        brier: p.brier(),
    }
}

/// The key of [`OnlineState::monthly`] that follows whatever version served.
pub const SERVED: &str = "(served)";

/// Progressive metrics of one version as the registry API shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProgressSummary {
    pub examples: u64,
    pub positives: u64,
    pub roc_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
}

pub struct ModelServer {
    catalog: Arc<Catalog>,
    state: ServingState,
    metrics: ServingMetrics,
    /// Online input name → column.
    online_columns: HashMap<String, usize>,
    /// Join counts already reported to Prometheus.
    reported: JoinCounts,
    retrain: RetrainSettings,
    /// Retrain input name → column.
    retrain_columns: HashMap<String, usize>,
    /// The fit running now, if any.
    job: Option<Job>,
    /// Per version, the examples its monthly figures had when last published.
    monthly_published: HashMap<String, u64>,
}

impl ModelServer {
    pub fn new(catalog: Arc<Catalog>, state: ServingState, metrics: &Metrics) -> Self {
        let metrics = ServingMetrics::new(metrics);
        // Counters continue from the snapshot, so they never go backwards across restarts.
        for (model, versions) in &state.tallies {
            for (version, t) in versions {
                metrics
                    .predictions
                    .with_label_values(&[model, version])
                    .inc_by(t.predictions);
                metrics
                    .positive
                    .with_label_values(&[model, version])
                    .inc_by(t.positive);
            }
        }
        let mut server = Self {
            online_columns: HashMap::new(),
            reported: JoinCounts::default(),
            retrain: RetrainSettings::default(),
            retrain_columns: HashMap::new(),
            job: None,
            monthly_published: HashMap::new(),
            catalog,
            state,
            metrics,
        };
        if let Some(o) = &server.state.online {
            server.online_columns = o
                .learner
                .inputs()
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, n)| (n, i))
                .collect();
            server.metrics.online_updates.inc_by(o.learner.updates());
            let counts = o.join.counts;
            server.metrics.report_join(&JoinCounts::default(), &counts);
            server.reported = counts;
            server.catalog.publish_online(&o.learner);
            for (version, months) in &o.monthly {
                for (month, p) in months {
                    server.catalog.set_monthly(version, month, summary_of(p));
                }
            }
        }
        if let Some(r) = server
            .state
            .online
            .as_ref()
            .and_then(|o| o.retrain.as_ref())
        {
            server.retrain_columns = r
                .inputs
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, n)| (n, i))
                .collect();
        }
        server.report_progress();
        server
    }

    /// How it retrains, when the state keeps examples ([`ServingState::with_retraining`]).
    pub fn retraining(mut self, settings: RetrainSettings) -> Self {
        self.retrain = settings;
        self
    }

    /// Before a record of event time `t`: starts a fit at a boundary, and
    /// puts a finished one in shadow once its serving time has come (waiting
    /// for it if the replay outran the fit).
    fn retrain_before(&mut self, t: i64) {
        let Some(r) = self.state.online.as_mut().and_then(|o| o.retrain.as_mut()) else {
            return;
        };
        if !r.due(t, &self.retrain, &mut self.job) {
            return;
        }
        let served = self.catalog.load();
        let active = served.active.version().to_string();
        match r.install(
            &mut self.job,
            &self.retrain,
            self.catalog.model(),
            served.active.meta.threshold,
            &active,
        ) {
            Ok(Some(step)) => self.take(step),
            Ok(None) => {}
            Err(e) => tracing::error!("{e}; the active version serves on"),
        }
    }

    /// Applies a retraining step to the catalog.
    fn take(&mut self, step: Step) {
        let result = match step {
            Step::Shadow(artifact) => {
                let version = artifact.meta.version.clone();
                self.catalog
                    .register(*artifact, false)
                    .and_then(|_| self.catalog.set_shadow(Some(&version)))
                    .map(|_| ())
            }
            Step::Decide {
                version,
                promote,
                reason,
            } => {
                tracing::info!(%version, promote, %reason, "retrained version's trial ended");
                let noted = self.catalog.note(&version, &reason);
                let changed = if promote {
                    self.catalog.promote(&version).map(|_| ())
                } else {
                    self.catalog.set_shadow(None).map(|_| ())
                };
                noted.and(changed)
            }
        };
        if let Err(e) = result {
            tracing::error!("retraining: {e}");
        }
    }

    pub fn state(&self) -> &ServingState {
        &self.state
    }

    /// The prediction the active model makes for one vector; updates the
    /// tallies, scores the shadow and parks the vector for its label.
    pub fn predict(&mut self, served: &Served, vector: &FeatureVector, now_us: i64) -> Prediction {
        let model = &served.active;
        let scored = model.score_vector(vector);
        for input in &scored.missing {
            self.metrics
                .missing_inputs
                .with_label_values(&[*input])
                .inc();
        }
        let predicted_positive = model.is_positive(scored.score);
        let labels = [model.name(), model.version()];
        let tally = self
            .state
            .tallies
            .entry(model.name().to_string())
            .or_default()
            .entry(model.version().to_string())
            .or_default();
        tally.predictions += 1;
        self.metrics.predictions.with_label_values(&labels).inc();
        if predicted_positive {
            tally.positive += 1;
            self.metrics.positive.with_label_values(&labels).inc();
        }
        self.metrics
            .score
            .with_label_values(&labels)
            .observe(scored.score);
        let shadow = served
            .shadow
            .as_ref()
            .map(|s| self.shadow(s, vector, scored.score, predicted_positive));
        self.park(vector, (model.version().to_string(), scored.score), shadow);
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

    fn shadow(
        &mut self,
        shadow: &LoadedModel,
        vector: &FeatureVector,
        served: f64,
        served_positive: bool,
    ) -> (String, f64) {
        let score = shadow.score_vector(vector).score;
        let agreed = shadow.is_positive(score) == served_positive;
        let tally = self
            .state
            .shadow
            .entry(shadow.version().to_string())
            .or_default();
        tally.scored += 1;
        tally.abs_diff_sum += (score - served).abs();
        let labels = [shadow.name(), shadow.version()];
        self.metrics.shadow_scored.with_label_values(&labels).inc();
        if agreed {
            tally.agreed += 1;
            self.metrics.shadow_agreed.with_label_values(&labels).inc();
        }
        (shadow.version().to_string(), score)
    }

    /// Keeps the vector until its label comes (or learns at once if it came first).
    fn park(
        &mut self,
        vector: &FeatureVector,
        served: (String, f64),
        shadow: Option<(String, f64)>,
    ) {
        let Some(online) = &mut self.state.online else {
            return;
        };
        let mut row = vec![f64::NAN; self.online_columns.len()];
        for (name, &value) in vector.names.iter().zip(&vector.values) {
            if let Some(&i) = self.online_columns.get(name) {
                if row[i].is_nan() {
                    row[i] = value;
                }
            }
        }
        let features = match &online.retrain {
            Some(r) => {
                let mut f = vec![f32::NAN; r.inputs.len()];
                for (name, &value) in vector.names.iter().zip(&vector.values) {
                    if let Some(&i) = self.retrain_columns.get(name) {
                        if f[i].is_nan() {
                            f[i] = value as f32;
                        }
                    }
                }
                f
            }
            None => Vec::new(),
        };
        let scored = Scored {
            online: online.learner.predict(&row),
            row,
            served,
            shadow,
            features,
        };
        if let Some((scored, label)) =
            online
                .join
                .offer_vector(&vector.label_key, scored, vector.event_time_us)
        {
            self.metrics.online_updates.inc();
            let step = Self::learn(online, &scored, label, vector.event_time_us, &self.retrain);
            if let Some(step) = step {
                self.take(step);
            }
        }
    }

    fn label(&mut self, label: &Label) {
        let Some(online) = &mut self.state.online else {
            return;
        };
        if let Some(scored) =
            online
                .join
                .offer_label(&label.label_key, label.value, label.event_time_us)
        {
            self.metrics.online_updates.inc();
            let step = Self::learn(
                online,
                &scored,
                label.value,
                label.event_time_us,
                &self.retrain,
            );
            if let Some(step) = step {
                self.take(step);
            }
        }
    }

    /// Progressive validation first (what the learner and the served versions
    /// said at the vector's event time), then the SGD step; the example is
    /// kept for retraining and judges a retrained version on trial.
    fn learn(
        online: &mut OnlineState,
        scored: &Scored,
        label: f64,
        time_us: i64,
        retrain: &RetrainSettings,
    ) -> Option<Step> {
        online.learner.learn(&scored.row, label);
        let month = &retrain::utc_date(time_us)[..7];
        let mut record = |version: &str, score: f64| {
            let by_month = match online.monthly.get_mut(version) {
                Some(m) => m,
                None => online.monthly.entry(version.to_string()).or_default(),
            };
            match by_month.get_mut(month) {
                Some(p) => p.record(score, label),
                None => by_month
                    .entry(month.to_string())
                    .or_default()
                    .record(score, label),
            }
        };
        record(ONLINE_VERSION, scored.online);
        record(SERVED, scored.served.1);
        if scored.served.0 != ONLINE_VERSION {
            record(&scored.served.0, scored.served.1);
        }
        if let Some((version, score)) = &scored.shadow {
            if version != ONLINE_VERSION {
                record(version, *score);
            }
        }
        online
            .progressive
            .entry(ONLINE_VERSION.into())
            .or_default()
            .record(scored.online, label);
        let (version, score) = &scored.served;
        if version != ONLINE_VERSION {
            online
                .progressive
                .entry(version.clone())
                .or_default()
                .record(*score, label);
        }
        if let Some((version, score)) = &scored.shadow {
            if version != ONLINE_VERSION {
                online
                    .progressive
                    .entry(version.clone())
                    .or_default()
                    .record(*score, label);
            }
        }
        let r = online.retrain.as_mut()?;
        r.keep(&scored.features, label, time_us);
        r.judge(&scored.served, scored.shadow.as_ref(), label, retrain)
    }

    /// Brings the join and progressive metrics up to date and shares them with the registry API.
    fn report_progress(&mut self) {
        let Some(online) = &self.state.online else {
            return;
        };
        self.metrics
            .report_join(&self.reported, &online.join.counts);
        self.reported = online.join.counts;
        self.metrics
            .join_waiting
            .set(i64::try_from(online.join.len()).unwrap_or(i64::MAX));
        self.metrics
            .labels_waiting
            .set(i64::try_from(online.join.waiting_labels()).unwrap_or(i64::MAX));
        let model = self.catalog.model().to_string();
        let mut summaries = BTreeMap::new();
        for (version, p) in &online.progressive {
            let labels = [model.as_str(), version.as_str()];
            let summary = ProgressSummary {
                examples: p.examples,
                positives: p.positives,
                roc_auc: p.roc_auc(),
                log_loss: p.log_loss(),
                brier: p.brier(),
            };
            self.metrics
                .progressive_auc
                .with_label_values(&labels)
                .set(summary.roc_auc);
            self.metrics
                .progressive_log_loss
                .with_label_values(&labels)
                .set(summary.log_loss);
            self.metrics
                .progressive_brier
                .with_label_values(&labels)
                .set(summary.brier);
            self.metrics
                .progressive_examples
                .with_label_values(&labels)
                .set(summary.examples as f64);
            summaries.insert(version.clone(), summary);
        }
        self.catalog.set_progress(summaries);
        // Months before the last two no longer change (labels come in
        // event-time order); a version whose examples did not move is as published.
        for (version, months) in &online.monthly {
            let examples: u64 = months.values().map(|p| p.examples).sum();
            if self.monthly_published.get(version) == Some(&examples) {
                continue;
            }
            self.monthly_published.insert(version.clone(), examples);
            for (month, p) in months.iter().rev().take(2) {
                self.catalog.set_monthly(version, month, summary_of(p));
            }
        }
    }

    /// Where a prediction goes and the id JetStream deduplicates it by: the
    /// same event scored for the same model always gets the same id, whichever
    /// version served it, so a replay after a promote is still dropped.
    pub fn outgoing(prediction: &Prediction, trace: opentelemetry::Context) -> Outgoing {
        let id = format!("predict:{}:{}", prediction.model, prediction.event_id);
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

impl Handler<Apply<InferenceInput>> for ModelServer {
    type Result = Vec<Outgoing>;

    fn handle(
        &mut self,
        Apply(batch): Apply<InferenceInput>,
        _: &mut Self::Context,
    ) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        let mut served = self.catalog.load();
        let serves_online = |s: &Served| {
            s.active.version() == ONLINE_VERSION
                || s.shadow
                    .as_ref()
                    .is_some_and(|m| m.version() == ONLINE_VERSION)
        };
        let updates = |s: &ServingState| s.online.as_ref().map(|o| o.learner.updates());
        // The learner's updates when the catalog last had it.
        let mut published = updates(&self.state);
        let mut out = Vec::with_capacity(batch.len());
        let mut ready = Vec::with_capacity(batch.len());
        if batch.is_empty() {
            // The stage's heartbeat: nothing came for a while.
            let order = &mut self.state.order;
            order.tick();
            ready.extend(std::iter::from_fn(|| order.pop()));
        }
        for d in batch {
            let time = d.message.event_time_us();
            // Vectors are in event-time order within their partition only.
            let lane = match &d.message {
                InferenceInput::Vector(v) => v.partition,
                InferenceInput::Label(_) => 0,
            };
            let waiting = Waiting {
                input: d.message,
                trace: d.trace,
            };
            let order = &mut self.state.order;
            ready.extend(order.push(d.source, lane, time, d.pending, waiting));
            ready.extend(std::iter::from_fn(|| order.pop()));
        }
        for Waiting { input, trace } in ready {
            self.retrain_before(input.event_time_us());
            // A retrained version may have gone into shadow or been promoted.
            let now_served = self.catalog.load();
            if !Arc::ptr_eq(&now_served, &served) {
                served = now_served;
            }
            match input {
                InferenceInput::Vector(v) => {
                    // A served learner scores as it stands at this vector's time.
                    if updates(&self.state) != published && serves_online(&served) {
                        if let Some(online) = &self.state.online {
                            self.catalog.publish_online(&online.learner);
                            served = self.catalog.load();
                        }
                        published = updates(&self.state);
                    }
                    let prediction = self.predict(&served, &v, now);
                    out.push(Self::outgoing(&prediction, trace));
                }
                InferenceInput::Label(l) => self.label(&l),
            }
        }
        if updates(&self.state) != published {
            if let Some(online) = &self.state.online {
                self.catalog.publish_online(&online.learner);
            }
        }
        self.metrics
            .held
            .set(i64::try_from(self.state.order.held()).unwrap_or(i64::MAX));
        self.report_progress();
        out
    }
}

impl Handler<TakeSnapshot<ServingState>> for ModelServer {
    type Result = MessageResult<TakeSnapshot<ServingState>>;

    fn handle(&mut self, _: TakeSnapshot<ServingState>, _: &mut Self::Context) -> Self::Result {
        MessageResult(Taken::whole(self.state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::scorer::ModelArtifact;
    use millrace_chassis::config::{ModelDef, ModelInput};
    use millrace_chassis::stage::Delivered;
    use prost::Message as _;

    fn def() -> ModelDef {
        ModelDef {
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
            online: OnlineSettings::default(),
            retrain: Default::default(),
        }
    }

    fn catalog(dir: &std::path::Path, online: Option<&OnlineLogistic>) -> Arc<Catalog> {
        Arc::new(
            Catalog::open(
                Registry::open(dir).unwrap(),
                &ModelArtifact::from_def(&def()),
                online,
            )
            .unwrap(),
        )
    }

    fn server(dir: &std::path::Path, metrics: &Metrics) -> ModelServer {
        ModelServer::new(catalog(dir, None), ServingState::default(), metrics)
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
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut server = server(dir.path(), &metrics);
        let served = server.catalog.load();
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
            let p = server.predict(&served, &v, 99);
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
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut server = server(dir.path(), &metrics);
        let served = server.catalog.load();
        server.predict(&served, &vector("e1", 2.0, None), 0);
        server.predict(&served, &vector("e2", 2.0, None), 0);
        let text = metrics.render();
        assert!(
            text.contains(r#"millrace_inference_missing_inputs_total{input="amount"} 2"#),
            "{text}"
        );
    }

    fn delivered(source: usize, seq: u64, message: InferenceInput) -> Delivered<InferenceInput> {
        Delivered {
            source,
            sequence: seq,
            pending: 0,
            message,
            trace: opentelemetry::Context::new(),
        }
    }

    #[actix::test]
    async fn the_actor_publishes_to_predictions_of_the_model_under_a_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let server = server(dir.path(), &Metrics::new()).start();
        let out = server
            .send(Apply(vec![
                delivered(0, 1, InferenceInput::Vector(vector("e1", 2.0, Some(50.0)))),
                delivered(0, 2, InferenceInput::Vector(vector("e2", 2.0, Some(50.0)))),
            ]))
            .await
            .unwrap();
        let ids: Vec<(&str, &str)> = out
            .iter()
            .map(|o| (o.subject.as_str(), o.msg_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("predictions.orders", "predict:orders:e1"),
                ("predictions.orders", "predict:orders:e2")
            ]
        );
        let decoded = <Prediction as prost::Message>::decode(out[1].payload.clone()).unwrap();
        assert_eq!(decoded.event_id, "e2");
        let state = server
            .send(TakeSnapshot::<ServingState>::default())
            .await
            .unwrap()
            .state;
        assert_eq!(
            state.tallies["orders"]["v1"],
            VersionTally {
                predictions: 2,
                positive: 2
            }
        );
    }

    #[test]
    fn decoding_follows_the_source() {
        let v = vector("e1", 1.0, None);
        let l = Label {
            event_id: "l1".into(),
            label_key: "k-e1".into(),
            value: 1.0,
            ..Default::default()
        };
        assert_eq!(
            InferenceInput::decode(0, v.encode_to_vec().into()).unwrap(),
            InferenceInput::Vector(v)
        );
        let decoded = InferenceInput::decode(1, l.encode_to_vec().into()).unwrap();
        assert_eq!(decoded.event_id(), "l1");
        assert_eq!(decoded, InferenceInput::Label(l));
    }

    /// Flights as a replay sees them: (vector, label) with the label's time
    /// 40 minutes of event time after its vector's; a vector every 10.
    fn flights(n: u32) -> Vec<(FeatureVector, Label)> {
        (0..n)
            .map(|i| {
                let amount = f64::from((i * 37) % 100);
                let mut v = vector(&format!("e{i}"), f64::from(i % 5), Some(amount));
                v.event_time_us = i64::from(i) * 600_000_000;
                let y = f64::from(u8::from(amount < 50.0 || i % 7 == 0));
                let l = label(&v.label_key, y, v.event_time_us + 2_400_000_000);
                (v, l)
            })
            .collect()
    }

    /// Runs `deliveries` (source, input), `chunk` at a time, through a fresh
    /// server with the learner; answers its progressive metrics by version.
    async fn progressive_after(
        deliveries: Vec<InferenceInput>,
        chunk: usize,
    ) -> BTreeMap<String, (u64, u64, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let state = ServingState::default().with_online(
            &OnlineSettings::default(),
            vec!["count".into(), "amount".into()],
            0.5,
        );
        let learner = state.online.as_ref().map(|o| o.learner.clone());
        let server = ModelServer::new(
            catalog(dir.path(), learner.as_ref()),
            state,
            &Metrics::new(),
        )
        .start();
        let mut seq = [0u64; 2];
        let mut all = deliveries.into_iter().peekable();
        while all.peek().is_some() {
            let batch = all
                .by_ref()
                .take(chunk)
                .map(|input| {
                    let source = input.source();
                    seq[source] += 1;
                    // Nothing more pending only once the stream's last record is in.
                    delivered(source, seq[source], input)
                })
                .collect();
            server.send(Apply(batch)).await.unwrap();
        }
        let state = server
            .send(TakeSnapshot::<ServingState>::default())
            .await
            .unwrap()
            .state;
        state
            .online
            .unwrap()
            .progressive
            .iter()
            .map(|(v, p)| {
                let (auc, loss) = (p.roc_auc().to_bits(), p.log_loss().to_bits());
                (v.clone(), (p.examples, auc, loss))
            })
            .collect()
    }

    #[actix::test]
    async fn labels_far_ahead_or_in_step_give_the_same_progressive_metrics() {
        let flights = flights(3000);
        // In step, as a live run delivers them: every record at its event time.
        let mut live: Vec<(i64, usize, InferenceInput)> = flights
            .iter()
            .flat_map(|(v, l)| {
                [
                    (v.event_time_us, 0, InferenceInput::Vector(v.clone())),
                    (l.event_time_us, 1, InferenceInput::Label(l.clone())),
                ]
            })
            .collect();
        live.sort_by_key(|(t, source, _)| (*t, *source));
        let live: Vec<InferenceInput> = live.into_iter().map(|(_, _, i)| i).collect();
        // A fast replay: every label delivered before any vector.
        let ahead: Vec<InferenceInput> = flights
            .iter()
            .map(|(_, l)| InferenceInput::Label(l.clone()))
            .chain(
                flights
                    .iter()
                    .map(|(v, _)| InferenceInput::Vector(v.clone())),
            )
            .collect();
        let in_step = progressive_after(live, 7).await;
        let far_ahead = progressive_after(ahead.clone(), 512).await;
        let other_chunks = progressive_after(ahead, 33).await;
        assert!(in_step[ONLINE_VERSION].0 > 2900, "{in_step:?}");
        assert_eq!(in_step, far_ahead);
        assert_eq!(in_step, other_chunks);
    }

    fn label(key: &str, value: f64, time: i64) -> Label {
        Label {
            event_id: format!("label-{key}"),
            label_key: key.into(),
            value,
            event_time_us: time,
            ..Default::default()
        }
    }

    /// The true rule is "amount below 50 is fraud", which the fixed model (a
    /// positive weight on amount) gets backwards; the learner must beat it.
    /// Labels delivered before their vectors wait for them (event-time order).
    #[actix::test]
    async fn labels_join_in_either_order_and_the_learner_beats_a_wrong_fixed_model() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let state = ServingState::default().with_online(
            &OnlineSettings::default(),
            vec!["count".into(), "amount".into()],
            0.5,
        );
        let learner = state.online.as_ref().map(|o| o.learner.clone());
        let catalog = catalog(dir.path(), learner.as_ref());
        let server = ModelServer::new(catalog.clone(), state, &metrics).start();
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        for i in 0..2000u32 {
            let amount = f64::from((i * 37) % 100);
            let mut v = vector(&format!("e{i}"), f64::from(i % 5), Some(amount));
            v.event_time_us = i64::from(i);
            let y = f64::from(u8::from(amount < 50.0));
            let key = v.label_key.clone();
            let batch = if i % 3 == 0 {
                // The label first, then its vector.
                vec![
                    delivered(
                        1,
                        next(),
                        InferenceInput::Label(label(&key, y, v.event_time_us)),
                    ),
                    delivered(0, next(), InferenceInput::Vector(v)),
                ]
            } else {
                vec![
                    delivered(0, next(), InferenceInput::Vector(v.clone())),
                    delivered(
                        1,
                        next(),
                        InferenceInput::Label(label(&key, y, v.event_time_us)),
                    ),
                ]
            };
            server.send(Apply(batch)).await.unwrap();
        }
        // A label nobody scored waits (and would expire after the TTL); a
        // later vector lets every label up to its time go.
        let mut later = vector("later", 1.0, Some(1.0));
        later.event_time_us = 3000;
        server
            .send(Apply(vec![
                delivered(1, next(), InferenceInput::Label(label("nobody", 1.0, 2000))),
                delivered(0, next(), InferenceInput::Vector(later)),
            ]))
            .await
            .unwrap();
        let state = server
            .send(TakeSnapshot::<ServingState>::default())
            .await
            .unwrap()
            .state;
        let online = state.online.as_ref().unwrap();
        assert_eq!(online.join.counts.joined, 2000);
        assert_eq!(
            online.join.counts.label_first, 0,
            "a label delivered first is applied after its vector"
        );
        assert_eq!(online.join.waiting_labels(), 1);
        assert_eq!(state.order.held(), 0);
        let learned = online.progressive[ONLINE_VERSION].roc_auc();
        let fixed = online.progressive["v1"].roc_auc();
        assert!(fixed < 0.5, "the fixed model is wrong-way round: {fixed}");
        assert!(learned > 0.9, "the learner's progressive AUC {learned}");
        let text = metrics.render();
        assert!(
            text.contains(r#"millrace_inference_label_join_total{outcome="joined"} 2000"#),
            "{text}"
        );
        assert!(
            text.contains("millrace_inference_online_updates_total 2000"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"millrace_inference_progressive_roc_auc{model="orders",model_version="online"}"#
            ),
            "{text}"
        );
        // The snapshot round-trips, and a server restored from it keeps counting.
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: ServingState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);
        let restored_metrics = Metrics::new();
        let _restored = ModelServer::new(catalog, back, &restored_metrics);
        assert!(restored_metrics
            .render()
            .contains(r#"millrace_inference_label_join_total{outcome="joined"} 2000"#));
    }

    #[actix::test]
    async fn a_shadow_scores_every_vector_without_being_published() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let catalog = catalog(dir.path(), None);
        let mut challenger = ModelArtifact::from_def(&def());
        challenger.meta.version = "v2".into();
        catalog.register(challenger, false).unwrap();
        catalog.set_shadow(Some("v2")).unwrap();
        let server = ModelServer::new(catalog, ServingState::default(), &metrics).start();
        let out = server
            .send(Apply(vec![delivered(
                0,
                1,
                InferenceInput::Vector(vector("e1", 2.0, Some(50.0))),
            )]))
            .await
            .unwrap();
        assert_eq!(out.len(), 1, "only the active prediction is published");
        let state = server
            .send(TakeSnapshot::<ServingState>::default())
            .await
            .unwrap()
            .state;
        assert_eq!(state.shadow["v2"].scored, 1);
        assert_eq!(state.shadow["v2"].agreed, 1);
    }
}
