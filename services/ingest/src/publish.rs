//! The path of one record from the producer to JetStream: decode, validate,
//! stamp (ingest time, key, partition), publish with `Nats-Msg-Id = event_id`,
//! and answer only once JetStream has stored it. Refused records go to the DLQ
//! with their original bytes before they are answered.
//!
//! Records are sent without waiting for each ack (JetStream acks are
//! pipelined, bounded by the client's in-flight limit) and answered in order.
//! Every record is answered within [`ACK_TIMEOUT`] of being taken in: sending
//! and waiting for its ack are both bounded by that deadline, so a broker that
//! dies with acks in flight costs a call at most that long, not one timeout
//! per record awaited one after another.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use millrace_chassis::bus::{subject, Bus, Outgoing};
use millrace_chassis::config::{IngestLimits, LabelRule};
use millrace_chassis::metrics::{latency_buckets, Metrics};
use millrace_chassis::partition::{fnv1a64, partition_of};
use millrace_chassis::telemetry;
use millrace_proto::{AckStatus, DeadLetter, Event, EventAck};
use opentelemetry::trace::SpanKind;
use opentelemetry::Context;
use prometheus::{Histogram, IntCounterVec, IntGauge};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::registry::SchemaHandle;
use crate::schema::Rejection;

/// One record as the producer sent it.
pub enum Record {
    /// Typed by the gRPC layer.
    Decoded(Event),
    /// Protobuf bytes, decoded here so a malformed one is answered alone.
    Encoded(Bytes),
    /// Read elsewhere (e.g. from JSON); the bytes go to the DLQ if refused.
    Parsed(Event, Bytes),
    /// Could not be read at all.
    Unreadable(Bytes, Rejection),
}

/// How long JetStream has to confirm a record after ingest took it in (the
/// chassis `Bus` gives its JetStream context the same publish-ack timeout).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct IngestMetrics {
    events: IntCounterVec,
    ack_seconds: Histogram,
    pending: IntGauge,
}

impl IngestMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            events: metrics.counter_vec(
                "ingest_events_total",
                "Records answered, by event type, outcome (accepted, duplicate, rejected) and reason.",
                &["event_type", "outcome", "reason"],
            ),
            ack_seconds: metrics.histogram(
                "ingest_publish_ack_seconds",
                "Time from publishing a record to JetStream's acknowledgement.",
                latency_buckets(),
            ),
            pending: metrics.gauge("ingest_pending_records", "Records taken in and not yet answered."),
        }
    }
}

/// A record on its way: already answered, or waiting for JetStream.
pub struct Pending {
    ack: EventAck,
    event_type: String,
    wait: Wait,
    /// When the record is answered `unavailable` if JetStream has not confirmed it.
    deadline: Instant,
    _span: Context,
}

enum Wait {
    Nothing,
    Stored {
        ack: PublishAckFuture,
        sent: Instant,
    },
    DeadLettered(PublishAckFuture),
}

#[derive(Clone)]
pub struct Ingestor {
    bus: Bus,
    schemas: SchemaHandle,
    label_rule: Option<Arc<LabelRule>>,
    limits: IngestLimits,
    partitions: u32,
    metrics: IngestMetrics,
    capacity: Arc<Semaphore>,
}

impl Ingestor {
    pub fn new(
        bus: Bus,
        schemas: SchemaHandle,
        label_rule: Option<LabelRule>,
        partitions: u32,
        limits: IngestLimits,
        metrics: IngestMetrics,
    ) -> Self {
        Self {
            bus,
            schemas,
            label_rule: label_rule.map(Arc::new),
            partitions,
            metrics,
            capacity: Arc::new(Semaphore::new(limits.max_pending_records)),
            limits,
        }
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// Reserves room for `n` records, or says the pipeline is full.
    pub fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.capacity.clone().try_acquire_many_owned(n).ok()
    }

    /// Validates and sends one record taken in at `taken_in`; the answer comes
    /// from [`Ingestor::settle`], at the latest [`ACK_TIMEOUT`] after `taken_in`.
    pub async fn submit(
        &self,
        index: u32,
        record: Record,
        parent: &Context,
        taken_in: Instant,
    ) -> Pending {
        let deadline = taken_in + ACK_TIMEOUT;
        self.metrics.pending.inc();
        let unreadable = match record {
            Record::Encoded(bytes) => match decode(&bytes, index, self.limits.max_record_bytes) {
                Ok(event) => Ok((event, Some(bytes))),
                Err(rejection) => Err((bytes, rejection)),
            },
            Record::Decoded(event) => Ok((event, None)),
            Record::Parsed(event, bytes) => Ok((event, Some(bytes))),
            Record::Unreadable(bytes, rejection) => Err((bytes, rejection)),
        };
        let (mut event, raw) = match unreadable {
            Ok(read) => read,
            Err((bytes, rejection)) => {
                // No event id to name it by: the content's hash stands in.
                let id = format!("malformed-{:016x}", fnv1a64(&bytes));
                return self
                    .reject(
                        (index, deadline),
                        &id,
                        "",
                        rejection,
                        bytes.to_vec(),
                        parent.clone(),
                    )
                    .await;
            }
        };
        let span = telemetry::event_span("ingest", SpanKind::Producer, parent, &event.event_id);
        let too_big = raw.as_ref().map_or_else(|| event.encoded_len(), Bytes::len)
            > self.limits.max_record_bytes;
        let checked = if too_big {
            Err(Rejection {
                code: "too_large",
                message: format!(
                    "event {}: record exceeds {} bytes",
                    event.event_id, self.limits.max_record_bytes
                ),
            })
        } else {
            self.schemas.current().validate(&mut event)
        };
        let accepted = match checked {
            Ok(accepted) => accepted,
            Err(rejection) => {
                let payload = raw.map_or_else(|| event.encode_to_vec(), |b| b.to_vec());
                let (id, ty) = (event.event_id.clone(), event.r#type.clone());
                return self
                    .reject((index, deadline), &id, &ty, rejection, payload, span)
                    .await;
            }
        };
        event.ingest_time_us = millrace_chassis::time::now_us();
        if event.event_time_us == 0 {
            event.event_time_us = event.ingest_time_us;
        }
        event.partition = partition_of(&event.key, self.partitions);
        let label = accepted
            .is_label
            .then(|| self.label_rule.as_ref().and_then(|r| r.label_of(&event)));
        let out = match label {
            None => Outgoing::new(
                subject::events(&event.r#type, event.partition),
                event.event_id.clone(),
                &event,
                span.clone(),
            ),
            Some(Some(label)) => Outgoing::new(
                subject::labels(&event.r#type),
                event.event_id.clone(),
                &label,
                span.clone(),
            ),
            Some(None) => {
                // Validation requires the rule's fields, so only a pipeline
                // whose rule disagrees with its schema gets here.
                let rejection = Rejection {
                    code: "no_label",
                    message: format!(
                        "event {}: the label rule finds no key or value in it",
                        event.event_id
                    ),
                };
                let (id, ty) = (event.event_id.clone(), event.r#type.clone());
                return self
                    .reject(
                        (index, deadline),
                        &id,
                        &ty,
                        rejection,
                        event.encode_to_vec(),
                        span,
                    )
                    .await;
            }
        };
        let ack = EventAck {
            index,
            event_id: event.event_id.clone(),
            ..Default::default()
        };
        // Bounded: with the broker gone the client's queue and ack permits run out.
        let wait = match tokio::time::timeout_at(deadline, self.bus.send(&out)).await {
            Ok(Ok(ack)) => Wait::Stored {
                ack,
                sent: Instant::now(),
            },
            Ok(Err(e)) => {
                let ack = unavailable(ack, &e.to_string());
                return Pending {
                    ack,
                    event_type: event.r#type,
                    wait: Wait::Nothing,
                    deadline,
                    _span: span,
                };
            }
            Err(_) => {
                let ack = unavailable(ack, &not_sent_in_time());
                return Pending {
                    ack,
                    event_type: event.r#type,
                    wait: Wait::Nothing,
                    deadline,
                    _span: span,
                };
            }
        };
        Pending {
            ack,
            event_type: event.r#type,
            wait,
            deadline,
            _span: span,
        }
    }

    /// Answers record `index` (due by `deadline`) REJECTED, after sending it to the DLQ.
    async fn reject(
        &self,
        (index, deadline): (u32, Instant),
        event_id: &str,
        event_type: &str,
        rejection: Rejection,
        payload: Vec<u8>,
        span: Context,
    ) -> Pending {
        tracing::debug!(
            event_id,
            code = rejection.code,
            "rejected: {}",
            rejection.message
        );
        let letter = DeadLetter {
            stage: "ingest".into(),
            reason: rejection.code.into(),
            message: rejection.message.clone(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            payload,
            time_us: millrace_chassis::time::now_us(),
        };
        let id = format!("dlq:ingest:{}:{event_id}", rejection.code);
        let out = Outgoing::new(subject::dlq("ingest"), id, &letter, span.clone());
        let wait = match tokio::time::timeout_at(deadline, self.bus.send(&out)).await {
            Ok(Ok(ack)) => Wait::DeadLettered(ack),
            Ok(Err(e)) => {
                tracing::error!(event_id, "could not send a rejected record to the DLQ: {e}");
                Wait::Nothing
            }
            Err(_) => {
                tracing::error!(
                    event_id,
                    "could not send a rejected record to the DLQ: {}",
                    not_sent_in_time()
                );
                Wait::Nothing
            }
        };
        let ack = EventAck {
            index,
            event_id: event_id.into(),
            status: AckStatus::Rejected as i32,
            code: rejection.code.into(),
            message: rejection.message,
            stream_sequence: 0,
        };
        Pending {
            ack,
            event_type: event_type.into(),
            wait,
            deadline,
            _span: span,
        }
    }

    /// Waits for JetStream (until the record's deadline) and gives the producer its answer.
    pub async fn settle(&self, pending: Pending) -> EventAck {
        let Pending {
            mut ack,
            event_type,
            wait,
            deadline,
            _span,
        } = pending;
        match wait {
            Wait::Nothing => {}
            Wait::DeadLettered(fut) => {
                match tokio::time::timeout_at(deadline, fut.into_future()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(event_id = %ack.event_id, "DLQ did not store a rejected record: {e}");
                    }
                    Err(_) => {
                        tracing::error!(event_id = %ack.event_id, "DLQ did not confirm a rejected record within {ACK_TIMEOUT:?}");
                    }
                }
            }
            Wait::Stored { ack: fut, sent } => {
                match tokio::time::timeout_at(deadline, fut.into_future()).await {
                    Err(_) => {
                        ack =
                            unavailable(ack, &format!("no acknowledgement within {ACK_TIMEOUT:?}"))
                    }
                    Ok(Err(e)) => ack = unavailable(ack, &e.to_string()),
                    Ok(Ok(stored)) => {
                        self.metrics
                            .ack_seconds
                            .observe(sent.elapsed().as_secs_f64());
                        ack.stream_sequence = stored.sequence;
                        ack.status = if stored.duplicate {
                            AckStatus::Duplicate
                        } else {
                            AckStatus::Accepted
                        } as i32;
                    }
                }
            }
        }
        let outcome = match AckStatus::try_from(ack.status) {
            Ok(AckStatus::Accepted) => "accepted",
            Ok(AckStatus::Duplicate) => "duplicate",
            _ => "rejected",
        };
        // Label values stay bounded: types outside the registry count as `unknown`.
        let event_type = if self.schemas.current().contains(&event_type) {
            event_type.as_str()
        } else {
            "unknown"
        };
        self.metrics
            .events
            .with_label_values(&[event_type, outcome, ack.code.as_str()])
            .inc();
        self.metrics.pending.dec();
        ack
    }
}

fn decode(bytes: &[u8], index: u32, max_bytes: usize) -> Result<Event, Rejection> {
    if bytes.len() > max_bytes {
        return Err(Rejection {
            code: "too_large",
            message: format!("record {index}: {} bytes, at most {max_bytes}", bytes.len()),
        });
    }
    Event::decode(bytes).map_err(|e| Rejection {
        code: "malformed",
        message: format!("record {index}: not a protobuf millrace.v1.Event: {e}"),
    })
}

/// The answer for a record JetStream did not confirm. It may have been stored
/// all the same (its ack was lost, or came too late): a retry with the same
/// `event_id` is then answered DUPLICATE, and the event is stored once either way.
fn unavailable(mut ack: EventAck, why: &str) -> EventAck {
    ack.status = AckStatus::Rejected as i32;
    ack.code = "unavailable".into();
    ack.message = format!(
        "event {}: not confirmed by JetStream ({why}); it may or may not be stored: \
         retry with the same event_id (a stored one is then answered DUPLICATE)",
        ack.event_id
    );
    ack
}

fn not_sent_in_time() -> String {
    format!("could not be sent to JetStream within {ACK_TIMEOUT:?}")
}
