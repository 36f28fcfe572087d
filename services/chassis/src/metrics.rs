//! The Prometheus registry of a service. Every metric is prefixed `millrace_`
//! and follows Prometheus naming (`_total` counters, base units).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("millrace".into()), None)
            .unwrap_or_else(|e| panic!("a constant prefix is a valid registry: {e}"));
        Self { registry }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a metric; names are constants of ours, so a clash is a bug.
    pub fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        if let Err(e) = self.registry.register(Box::new(metric.clone())) {
            panic!("registering a metric: {e}");
        }
        metric
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}")),
        )
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}")),
        )
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .unwrap_or_else(|e| panic!("metric {name}: {e}")),
        )
    }

    /// The text exposition format, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Buckets for latencies from 100 µs to 10 s.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

/// What every consuming stage counts, labelled by nothing: one stage per process.
#[derive(Clone)]
pub struct StageMetrics {
    pub consumed: IntCounter,
    pub published: IntCounter,
    pub replays_skipped: IntCounter,
    pub dead_letters: IntCounterVec,
    pub publish_retries: IntCounter,
    /// Per stream read (`stream`, `consumer`): where the newest snapshot stands.
    pub last_applied_sequence: IntGaugeVec,
    pub snapshot_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    /// Snapshots stored, by `part`: `whole` or `changes`.
    pub snapshots: IntCounterVec,
}

impl StageMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            consumed: metrics.counter(
                "stage_messages_consumed_total",
                "Stream messages this stage applied.",
            ),
            published: metrics.counter(
                "stage_messages_published_total",
                "Messages this stage published and JetStream acknowledged.",
            ),
            replays_skipped: metrics.counter(
                "stage_replays_skipped_total",
                "Redelivered messages skipped because the snapshot already covers them.",
            ),
            dead_letters: metrics.counter_vec(
                "stage_dead_letters_total",
                "Records this stage refused and sent to the DLQ, by reason.",
                &["reason"],
            ),
            publish_retries: metrics.counter(
                "stage_publish_retries_total",
                "Publishes retried after JetStream did not acknowledge them.",
            ),
            last_applied_sequence: metrics.gauge_vec(
                "stage_last_applied_sequence",
                "Stream sequence of the last message the newest snapshot covers, per stream read.",
                &["stream", "consumer"],
            ),
            snapshot_seconds: metrics.histogram(
                "stage_snapshot_seconds",
                "Time to flush outputs, take and store a snapshot.",
                latency_buckets(),
            ),
            snapshot_bytes: metrics
                .gauge("stage_snapshot_bytes", "Size of the last stored snapshot."),
            snapshots: metrics.counter_vec(
                "stage_snapshots_total",
                "Snapshots stored, by part: the whole state, or the changes since the snapshot before.",
                &["part"],
            ),
        }
    }
}
