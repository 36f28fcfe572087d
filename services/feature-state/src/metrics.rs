//! What feature-state reports beyond the stage loop's own metrics.

use millrace_chassis::metrics::Metrics;
use prometheus::{Gauge, GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts};

#[derive(Clone)]
pub struct StoreMetrics {
    pub vectors: IntCounter,
    pub batches: IntCounter,
    pub updates: IntCounter,
    pub late: IntCounter,
    pub expired: IntCounter,
    pub saturated: IntCounter,
    pub entities: IntGaugeVec,
    pub state_bytes: IntGauge,
    pub bytes_per_entity: Gauge,
    pub watermark: GaugeVec,
}

impl StoreMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            vectors: metrics.counter(
                "feature_state_vectors_total",
                "Feature vectors assembled for scoring events.",
            ),
            batches: metrics.counter(
                "feature_state_batches_total",
                "Batches the stage loop handed the store (events per batch: stage_messages_consumed_total over this).",
            ),
            updates: metrics.counter(
                "feature_state_updates_total",
                "Feature updates applied: one per event and feature it feeds.",
            ),
            late: metrics.counter(
                "feature_state_late_events_total",
                "Events older than their partition's watermark: sent to dlq.feature-state (reason late), not applied.",
            ),
            expired: metrics.counter(
                "feature_state_expired_entities_total",
                "Entities forgotten after feature_state.entity_ttl of event time without events.",
            ),
            saturated: metrics.counter(
                "feature_state_distinct_saturated_total",
                "distinct_count states that reached max_distinct and stopped keeping new values.",
            ),
            entities: metrics.register(
                IntGaugeVec::new(
                    Opts::new(
                        "feature_state_entities",
                        "Entities held (per entity kind, summed), by partition; measured at each snapshot.",
                    ),
                    &["partition"],
                )
                .unwrap_or_else(|e| panic!("metric feature_state_entities: {e}")),
            ),
            state_bytes: metrics.gauge(
                "feature_state_state_bytes",
                "Approximate memory of all feature state (keys, rows, window buckets); measured at each snapshot.",
            ),
            bytes_per_entity: metrics.register(
                Gauge::new(
                    "feature_state_bytes_per_entity",
                    "feature_state_state_bytes divided by the entities held.",
                )
                .unwrap_or_else(|e| panic!("metric feature_state_bytes_per_entity: {e}")),
            ),
            watermark: metrics.register(
                GaugeVec::new(
                    Opts::new(
                        "feature_state_watermark_timestamp_seconds",
                        "Per input partition: newest event time applied minus the allowed lateness.",
                    ),
                    &["partition"],
                )
                .unwrap_or_else(|e| panic!("metric feature_state_watermark_timestamp_seconds: {e}")),
            ),
        }
    }
}
