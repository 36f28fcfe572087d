//! The actor the stage loop feeds: applies batches in stream order, turns what
//! they produce into messages (vectors to FEATURES, late events to the DLQ),
//! hands its state over for snapshots and answers the gRPC API's lookups.

use actix::{Actor, Context, Handler, Message, MessageResult};
use bytes::Bytes;
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::view::EnrichedView;
use millrace_proto::{DeadLetter, EntityFeatures};
use prost::Message as _;

use crate::snapshot::EncodedState;
use crate::store::{Applied, FeatureStore};

/// Stage name: the DLQ subject suffix (`dlq.feature-state`).
pub const STAGE: &str = "feature-state";

/// Vectors are encoded into buffers of at most this size: the allocator
/// serves blocks over 512 KiB fresh from the OS, so one buffer per batch
/// (1.2 MB for 4096 vectors) cost page faults on every batch.
const BUFFER_BYTES: usize = 256 * 1024;

pub struct FeatureStoreActor {
    store: FeatureStore,
    /// Size of the last vector encoded: room a buffer must have for the next.
    vector_bytes: usize,
    subjects: subject::ByPartition,
}

impl FeatureStoreActor {
    pub fn new(store: FeatureStore) -> Self {
        let subjects = subject::ByPartition::new(store.spec.partitions, subject::features);
        Self {
            store,
            vector_bytes: 0,
            subjects,
        }
    }
}

impl Actor for FeatureStoreActor {
    type Context = Context<Self>;
}

impl Handler<Apply<EnrichedView>> for FeatureStoreActor {
    type Result = Vec<Outgoing>;

    fn handle(&mut self, Apply(batch): Apply<EnrichedView>, _: &mut Self::Context) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        self.store.metrics.batches.inc();
        // Vectors go into buffers of at most BUFFER_BYTES, each record a slice of one.
        let mut buffers = Vec::new();
        let mut encoded = Vec::new();
        let mut vectors = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        // By reference: a delivered record is a few hundred bytes, too many to move twice per event.
        for (i, d) in batch.iter().enumerate() {
            self.store.prefetch_ahead(&batch, i, |d| &d.message);
            if encoded.len() + self.vector_bytes > encoded.capacity() {
                let full = std::mem::replace(&mut encoded, Vec::with_capacity(BUFFER_BYTES));
                if !full.is_empty() {
                    buffers.push(Bytes::from(full));
                }
            }
            let start = encoded.len();
            match self.store.apply_encoded(&d.message, now, &mut encoded) {
                Applied::OnTime(Some(())) => {
                    self.vector_bytes = encoded.len() - start;
                    vectors.push((buffers.len(), start..encoded.len(), d));
                }
                Applied::OnTime(None) | Applied::Empty => {}
                Applied::Late { watermark_us } => {
                    out.push(late_letter(&d.message, watermark_us, now, d.trace.clone()));
                }
            }
        }
        buffers.push(Bytes::from(encoded));
        out.extend(vectors.into_iter().map(|(buffer, range, d)| {
            let partition = d.message.event().map_or(0, |e| e.partition());
            let trace = d.trace.clone();
            Outgoing::record(
                self.subjects.get(partition),
                buffers[buffer].slice(range),
                trace,
            )
        }));
        self.store.report_watermarks();
        out
    }
}

/// The DLQ record of a late event: the whole enriched event, re-drivable.
fn late_letter(
    enriched: &EnrichedView,
    watermark_us: i64,
    now_us: i64,
    trace: opentelemetry::Context,
) -> Outgoing {
    let (event_type, partition, time_us) = enriched
        .event()
        .map(|e| (e.r#type().to_string(), e.partition(), e.event_time_us()))
        .unwrap_or_default();
    let event_id = enriched.event_id();
    let letter = DeadLetter {
        stage: STAGE.into(),
        reason: "late".into(),
        message: format!(
            "event {} ({event_type}, partition {partition}) at event time {time_us} µs is {} µs older than the partition's watermark {watermark_us} µs (newest event time minus allowed lateness): not applied, not scored",
            event_id,
            watermark_us.saturating_sub(time_us)
        ),
        event_id: event_id.to_string(),
        event_type,
        payload: enriched.to_message().encode_to_vec(),
        time_us: now_us,
    };
    Outgoing::new(
        subject::dlq(STAGE),
        format!("{STAGE}:late:{event_id}"),
        &letter,
        trace,
    )
}

impl Handler<TakeSnapshot<EncodedState>> for FeatureStoreActor {
    type Result = MessageResult<TakeSnapshot<EncodedState>>;

    fn handle(&mut self, _: TakeSnapshot<EncodedState>, _: &mut Self::Context) -> Self::Result {
        match self.store.snapshot() {
            Ok(taken) => MessageResult(taken),
            Err(e) => {
                // Encoding plain state into a Vec fails only on a bug; stopping
                // beats storing a snapshot that does not hold the state.
                tracing::error!("{e}");
                panic!("{e}");
            }
        }
    }
}

/// The gRPC API's read of the latest values.
pub struct Lookup {
    pub entity_keys: Vec<String>,
    pub features: Vec<String>,
}

impl Message for Lookup {
    type Result = Vec<EntityFeatures>;
}

impl Handler<Lookup> for FeatureStoreActor {
    type Result = MessageResult<Lookup>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.store.lookup(&msg.entity_keys, &msg.features))
    }
}
