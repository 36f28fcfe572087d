//! The path of one record from the producer to JetStream: read, validate,
//! stamp (ingest time, key, partition), publish with `Nats-Msg-Id = event_id`,
//! and answer only once JetStream has stored it. Refused records go to the DLQ
//! with their original bytes before they are answered.
//!
//! A protobuf record is read in place ([`EventView`]) and stored as the
//! producer's bytes with ingest's fields appended ([`Stamps`]): no decoding
//! into an `Event`, no encoding again. JSON records, label events (stored as
//! `Label`s) and encodings the view leaves to prost take the decoded path.
//!
//! A label event whose type a feature reads is stored twice, under the same
//! `Nats-Msg-Id` (deduplication is per stream): its `Label` in LABELS and the
//! event itself in EVENTS, where enrich and feature-state read it as any
//! event. Its one answer weighs both copies ([`Ingestor::settle`]). A label
//! type no feature reads costs one message, as any event.
//!
//! The accepted records of a call go to JetStream as atomic batches
//! ([`millrace_chassis::atomic`]), one message per event, each still under its
//! own `Nats-Msg-Id`: with the shipped `sync_interval: always` the server
//! fsyncs once per batch instead of once per event. A batch the server refuses
//! because it holds an id already stored is stored again event by event, so a
//! producer's retry gets DUPLICATE for what was stored and ACCEPTED for the
//! rest. Batches are sent without waiting for the one before (a connection's
//! messages are stored in the order sent) and records are answered in order.
//! Every record is answered within [`ACK_TIMEOUT`] of being taken in: sending
//! and waiting for its batch are both bounded by that deadline, so a broker
//! that dies with batches in flight costs a call at most that long.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt as _;
use millrace_chassis::bus::{self, subject, Bus, Outgoing};
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
use tokio::time::Instant;

use crate::registry::SchemaHandle;
use crate::schema::{Rejection, SchemaRegistry};
use crate::wire::{EventView, Stamps};

/// Most records of a stream or of `ingest.*` submitted together: about a full
/// atomic batch for each of EVENTS and LABELS.
pub const GATHER: usize = 2 * millrace_chassis::atomic::MAX_MESSAGES;

/// How long JetStream has to confirm a record after ingest took it in (the
/// chassis `Bus` gives its JetStream context the same publish-ack timeout).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// One record as the producer sent it.
pub enum Record {
    /// Protobuf `Event` bytes (gRPC).
    Encoded(Bytes),
    /// Protobuf `Event` bytes published on `ingest.<type>`: the event is of that
    /// type, or names none.
    EncodedAs(Bytes, String),
    /// Read elsewhere (e.g. from JSON); the bytes go to the DLQ if refused.
    Parsed(Event, Bytes),
    /// Could not be read at all.
    Unreadable(Bytes, Rejection),
}

/// A record as [`Ingestor::submit`] takes it: where it stands in its call,
/// the trace it came in, and when it was taken in (its answer is due
/// [`ACK_TIMEOUT`] later).
pub struct Submission {
    pub index: u32,
    pub record: Record,
    pub parent: Context,
    pub taken_in: Instant,
}

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

/// A record on its way: its answer so far, and where its message (or, for a
/// refused record, its dead letter) went; a label event that features read
/// has a second message, its `Label`.
pub struct Pending {
    ack: EventAck,
    event_type: Arc<str>,
    share: Share,
    /// The `Label` of a label event stored in EVENTS too.
    label: Option<Share>,
    /// When the record is answered `unavailable` if JetStream has not confirmed it.
    deadline: Instant,
    _span: Context,
}

/// One message of an atomic batch: what became of it is entry `position` of
/// `outcome`; the batch went to JetStream at `sent`.
#[derive(Clone)]
struct Share {
    outcome: BatchOutcome,
    position: usize,
    sent: Instant,
}

/// What became of each message of one atomic batch, shared by its records.
type BatchOutcome = Shared<BoxFuture<'static, Arc<bus::BatchOutcome>>>;

/// A record to store: accepted, stamped and encoded for its stream, or
/// refused and put in a dead letter; it goes out in a batch.
struct ToStore {
    slot: Slot,
    ack: EventAck,
    event_type: Arc<str>,
    out: Outgoing,
    /// The `Label` of a label event whose type a feature reads, `out` being
    /// the event itself (for EVENTS); it goes out in a LABELS batch.
    label: Option<Outgoing>,
}

/// A record's part in [`Ingestor::submit`] while its messages are batched.
struct Waiting {
    slot: Slot,
    ack: EventAck,
    event_type: Arc<str>,
    span: Context,
    share: Option<Share>,
    label: Option<Share>,
}

/// Where a record stands in its call: its index and when it must be answered.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: u32,
    deadline: Instant,
}

/// Answers counted by (event type, outcome, reason), added to the metrics in
/// one go by [`Ingestor::count`]: a batch of one type costs one counter lookup.
#[derive(Default)]
pub struct Tally {
    /// (event type, `AckStatus` as sent, code, how many).
    counts: Vec<(Arc<str>, i32, String, u64)>,
}

impl Tally {
    fn add(&mut self, event_type: &Arc<str>, ack: &EventAck) {
        let same = |(t, status, code, _): &&mut (Arc<str>, i32, String, u64)| {
            *status == ack.status
                && (Arc::ptr_eq(t, event_type) || **t == **event_type)
                && *code == ack.code
        };
        match self.counts.iter_mut().find(same) {
            Some(entry) => entry.3 += 1,
            None => self
                .counts
                .push((event_type.clone(), ack.status, ack.code.clone(), 1)),
        }
    }
}

/// The subjects of each event type, built once: `events.<type>.<partition>`
/// and `labels.<type>`.
struct Subjects {
    partitions: u32,
    by_type: RwLock<BTreeMap<String, Arc<TypeSubjects>>>,
}

struct TypeSubjects {
    name: Arc<str>,
    events: Vec<Subject>,
    labels: Subject,
}

impl Subjects {
    fn new(partitions: u32) -> Self {
        Self {
            partitions: partitions.max(1),
            by_type: RwLock::default(),
        }
    }

    /// The subjects of `event_type`, which must be registered (so the map stays bounded).
    fn of(&self, event_type: &str) -> Arc<TypeSubjects> {
        let known = self
            .by_type
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(event_type)
            .cloned();
        if let Some(known) = known {
            return known;
        }
        let made = Arc::new(TypeSubjects {
            name: event_type.into(),
            events: (0..self.partitions)
                .map(|p| Subject::from(subject::events(event_type, p)))
                .collect(),
            labels: Subject::from(subject::labels(event_type)),
        });
        self.by_type
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(event_type.to_string())
            .or_insert(made)
            .clone()
    }
}

impl TypeSubjects {
    fn events(&self, partition: u32) -> Subject {
        // `partition_of` stays below the partition count the list was built for.
        let last = self.events.len().saturating_sub(1);
        self.events[(partition as usize).min(last)].clone()
    }
}

#[derive(Clone)]
pub struct Ingestor {
    bus: Bus,
    schemas: SchemaHandle,
    label_rule: Option<Arc<LabelRule>>,
    /// Label types a feature reads: their events are stored in EVENTS too.
    label_sources: Arc<BTreeSet<String>>,
    limits: IngestLimits,
    partitions: u32,
    metrics: IngestMetrics,
    capacity: Arc<Semaphore>,
    subjects: Arc<Subjects>,
    /// Whether spans are exported; when not, a record works in its caller's
    /// trace context (which still travels on in the headers) without a span.
    spans: bool,
}

/// What [`Ingestor::new`] needs besides the bus and the schemas.
pub struct Settings {
    pub label_rule: Option<LabelRule>,
    /// Label types some feature reads (see [`Ingestor::settle`] for their answers).
    pub label_sources: BTreeSet<String>,
    pub partitions: u32,
    pub limits: IngestLimits,
    pub metrics: IngestMetrics,
    pub spans: bool,
}

impl Ingestor {
    pub fn new(bus: Bus, schemas: SchemaHandle, settings: Settings) -> Self {
        let Settings {
            label_rule,
            label_sources,
            partitions,
            limits,
            metrics,
            spans,
        } = settings;
        Self {
            bus,
            schemas,
            label_rule: label_rule.map(Arc::new),
            label_sources: Arc::new(label_sources),
            partitions,
            metrics,
            capacity: Arc::new(Semaphore::new(limits.max_pending_records)),
            limits,
            subjects: Arc::new(Subjects::new(partitions)),
            spans,
        }
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// Why a record found ingest full, for the producer.
    pub fn full_message(&self) -> String {
        format!(
            "ingest holds its limit of {} records waiting for JetStream; retry with backoff",
            self.limits.max_pending_records
        )
    }

    /// Reserves room for `n` records, or says the pipeline is full.
    pub fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n).ok()?;
        self.capacity.clone().try_acquire_many_owned(n).ok()
    }

    /// Validates and sends the records of one call (or of what a stream had
    /// ready, at most [`GATHER`]): the accepted ones (with the `Label`s of
    /// label events stored in EVENTS too) and the refused ones' dead letters
    /// go to JetStream grouped by stream, in the order given
    /// ([`bus::batches_by_stream`], [`Bus::send_batch`]). One answer per
    /// record, in order, comes from [`Ingestor::settle`], at the latest
    /// [`ACK_TIMEOUT`] after the record was taken in.
    pub async fn submit(&self, records: Vec<Submission>) -> Vec<Pending> {
        let mut waiting: Vec<Waiting> = Vec::with_capacity(records.len());
        // (record, whether it is the record's `Label`, the message).
        let mut messages: Vec<(usize, bool, Outgoing)> = Vec::with_capacity(records.len());
        for (at, record) in records.into_iter().enumerate() {
            let store = self.stage(record);
            waiting.push(Waiting {
                slot: store.slot,
                ack: store.ack,
                event_type: store.event_type,
                span: store.out.trace.clone(),
                share: None,
                label: None,
            });
            messages.push((at, false, store.out));
            if let Some(label) = store.label {
                messages.push((at, true, label));
            }
        }
        for batch in bus::batches_by_stream(messages, |(_, _, out)| out.subject.as_str()) {
            let Some(deadline) = batch
                .iter()
                .map(|(at, _, _)| waiting[*at].slot.deadline)
                .min()
            else {
                continue;
            };
            let mut places = Vec::with_capacity(batch.len());
            let mut outs = Vec::with_capacity(batch.len());
            for (at, is_label, out) in batch {
                places.push((at, is_label));
                outs.push(out);
            }
            let outcome: BatchOutcome = self
                .bus
                .send_batch(outs, deadline)
                .await
                .map(Arc::new)
                .boxed()
                .shared();
            let sent = Instant::now();
            for (position, (at, is_label)) in places.into_iter().enumerate() {
                let share = Some(Share {
                    outcome: outcome.clone(),
                    position,
                    sent,
                });
                let record = &mut waiting[at];
                match is_label {
                    false => record.share = share,
                    true => record.label = share,
                }
            }
        }
        waiting
            .into_iter()
            .filter_map(|w| {
                // Every record's message went into a batch above.
                let share = w.share?;
                Some(Pending {
                    ack: w.ack,
                    event_type: w.event_type,
                    share,
                    label: w.label,
                    deadline: w.slot.deadline,
                    _span: w.span,
                })
            })
            .collect()
    }

    /// Validates and stamps one record: refused (and dead-lettered), or ready to store.
    fn stage(&self, submission: Submission) -> ToStore {
        let Submission {
            index,
            record,
            parent,
            taken_in,
        } = submission;
        let slot = Slot {
            index,
            deadline: taken_in + ACK_TIMEOUT,
        };
        let parent = &parent;
        self.metrics.pending.inc();
        match record {
            Record::Encoded(bytes) => self.submit_encoded(slot, bytes, None, parent),
            Record::EncodedAs(bytes, event_type) => {
                self.submit_encoded(slot, bytes, Some(&event_type), parent)
            }
            Record::Parsed(event, bytes) => self.submit_event(slot, event, bytes, parent),
            Record::Unreadable(bytes, rejection) => {
                self.reject_unreadable(slot, bytes, rejection, parent)
            }
        }
    }

    /// A protobuf record: read in place and stored as sent, plus ingest's fields.
    fn submit_encoded(
        &self,
        slot: Slot,
        bytes: Bytes,
        subject_type: Option<&str>,
        parent: &Context,
    ) -> ToStore {
        let max = self.limits.max_record_bytes;
        let view = EventView::parse(&bytes);
        if bytes.len() > max {
            let message = match view.as_ref().filter(|v| !v.event_id.is_empty()) {
                Some(v) => format!("event {}: {} bytes, at most {max}", v.event_id, bytes.len()),
                None => format!(
                    "record {}: {} bytes, at most {max}",
                    slot.index,
                    bytes.len()
                ),
            };
            let rejection = Rejection {
                code: "too_large",
                message,
            };
            return match view.map(|v| (v.event_id.to_string(), v.r#type.to_string())) {
                Some((id, ty)) if !id.is_empty() => {
                    let span = self.span(parent, &id);
                    self.reject(slot, &id, &ty, rejection, bytes.to_vec(), span)
                }
                _ => self.reject_unreadable(slot, bytes, rejection, parent),
            };
        }
        let Some(mut view) = view else {
            // Not plainly valid: prost decides, and names what is wrong.
            return match Event::decode(bytes.clone()) {
                Ok(mut event) => {
                    if let Some(expected) = subject_type {
                        if event.r#type.is_empty() {
                            event.r#type = expected.to_string();
                        } else if event.r#type != expected {
                            let rejection = type_mismatch(&event.event_id, &event.r#type, expected);
                            let span = self.span(parent, &event.event_id);
                            let (id, ty) = (event.event_id, event.r#type);
                            return self.reject(slot, &id, &ty, rejection, bytes.to_vec(), span);
                        }
                    }
                    self.submit_event(slot, event, bytes, parent)
                }
                Err(e) => {
                    let rejection = Rejection {
                        code: "malformed",
                        message: format!(
                            "record {}: not a protobuf millrace.v1.Event: {e}",
                            slot.index
                        ),
                    };
                    self.reject_unreadable(slot, bytes, rejection, parent)
                }
            };
        };
        let mut type_stamp = None;
        if let Some(expected) = subject_type {
            if view.r#type.is_empty() {
                view.r#type = expected;
                type_stamp = Some(expected);
            } else if view.r#type != expected {
                let rejection = type_mismatch(view.event_id, view.r#type, expected);
                let (id, ty) = (view.event_id.to_string(), view.r#type.to_string());
                let span = self.span(parent, &id);
                return self.reject(slot, &id, &ty, rejection, bytes.to_vec(), span);
            }
        }
        let registry = self.schemas.current();
        let checked = match registry.check(&view) {
            Ok(checked) => checked,
            Err(rejection) => {
                let (id, ty) = (view.event_id.to_string(), view.r#type.to_string());
                let span = self.span(parent, &id);
                return self.reject(slot, &id, &ty, rejection, bytes.to_vec(), span);
            }
        };
        if checked.is_label {
            // Stored as a `Label`: decoded (the view said prost can) and checked again.
            let decoded = Event::decode(bytes.clone());
            drop(view);
            return match decoded {
                Ok(mut event) => {
                    if let Some(t) = type_stamp {
                        event.r#type = t.to_string();
                    }
                    self.submit_event(slot, event, bytes, parent)
                }
                Err(e) => {
                    let rejection = Rejection {
                        code: "malformed",
                        message: format!(
                            "record {}: not a protobuf millrace.v1.Event: {e}",
                            slot.index
                        ),
                    };
                    self.reject_unreadable(slot, bytes, rejection, parent)
                }
            };
        }
        let span = self.span(parent, view.event_id);
        let now = millrace_chassis::time::now_us();
        let key = checked.key.as_deref().unwrap_or(view.key);
        let partition = partition_of(key, self.partitions);
        let stamps = Stamps {
            r#type: type_stamp,
            schema_version: (checked.schema_version != view.schema_version)
                .then_some(checked.schema_version),
            key: checked.key.as_deref(),
            event_time_us: (view.event_time_us == 0).then_some(now),
            ingest_time_us: Some(now),
            partition: (partition != view.partition).then_some(partition),
        };
        let payload = stamps.append_to(&bytes);
        let subjects = self.subjects.of(view.r#type);
        let ack = EventAck {
            index: slot.index,
            event_id: view.event_id.to_string(),
            ..Default::default()
        };
        drop(view);
        Self::to_store(
            slot,
            ack,
            subjects.name.clone(),
            subjects.events(partition),
            payload,
            span,
        )
    }

    /// A decoded record: validated, stamped and encoded.
    fn submit_event(
        &self,
        slot: Slot,
        mut event: Event,
        original: Bytes,
        parent: &Context,
    ) -> ToStore {
        let span = self.span(parent, &event.event_id);
        let too_big = original.len() > self.limits.max_record_bytes;
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
                let (id, ty) = (event.event_id, event.r#type);
                return self.reject(slot, &id, &ty, rejection, original.to_vec(), span);
            }
        };
        event.ingest_time_us = millrace_chassis::time::now_us();
        if event.event_time_us == 0 {
            event.event_time_us = event.ingest_time_us;
        }
        event.partition = partition_of(&event.key, self.partitions);
        let subjects = self.subjects.of(&event.r#type);
        let label = accepted
            .is_label
            .then(|| self.label_rule.as_ref().and_then(|r| r.label_of(&event)));
        let (subject, payload, label) = match label {
            None => (
                subjects.events(event.partition),
                Bytes::from(event.encode_to_vec()),
                None,
            ),
            Some(Some(label)) if self.label_sources.contains(&event.r#type) => (
                subjects.events(event.partition),
                Bytes::from(event.encode_to_vec()),
                Some((subjects.labels.clone(), Bytes::from(label.encode_to_vec()))),
            ),
            Some(Some(label)) => (
                subjects.labels.clone(),
                Bytes::from(label.encode_to_vec()),
                None,
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
                let payload = event.encode_to_vec();
                let (id, ty) = (event.event_id, event.r#type);
                return self.reject(slot, &id, &ty, rejection, payload, span);
            }
        };
        let ack = EventAck {
            index: slot.index,
            event_id: event.event_id,
            ..Default::default()
        };
        let label = label.map(|(subject, payload)| Outgoing {
            subject,
            msg_id: ack.event_id.clone(),
            payload,
            trace: span.clone(),
            headers: Vec::new(),
        });
        let mut store = Self::to_store(slot, ack, subjects.name.clone(), subject, payload, span);
        store.label = label;
        store
    }

    /// An accepted record, to be stored under `Nats-Msg-Id` = its event id.
    fn to_store(
        slot: Slot,
        ack: EventAck,
        event_type: Arc<str>,
        subject: Subject,
        payload: Bytes,
        span: Context,
    ) -> ToStore {
        let out = Outgoing {
            subject,
            msg_id: ack.event_id.clone(),
            payload,
            trace: span,
            headers: Vec::new(),
        };
        ToStore {
            slot,
            ack,
            event_type,
            out,
            label: None,
        }
    }

    /// The record's span, when spans are exported; its caller's context otherwise.
    fn span(&self, parent: &Context, event_id: &str) -> Context {
        if self.spans {
            telemetry::event_span("ingest", SpanKind::Producer, parent, event_id)
        } else {
            parent.clone()
        }
    }

    /// A record with no event id to name it by: the content's hash stands in.
    fn reject_unreadable(
        &self,
        slot: Slot,
        bytes: Bytes,
        rejection: Rejection,
        parent: &Context,
    ) -> ToStore {
        let id = format!("malformed-{:016x}", fnv1a64(&bytes));
        self.reject(slot, &id, "", rejection, bytes.to_vec(), parent.clone())
    }

    /// Answers the record REJECTED, after sending it to the DLQ.
    fn reject(
        &self,
        slot: Slot,
        event_id: &str,
        event_type: &str,
        rejection: Rejection,
        payload: Vec<u8>,
        span: Context,
    ) -> ToStore {
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
        let out = Outgoing::new(subject::dlq("ingest"), id, &letter, span);
        let ack = EventAck {
            index: slot.index,
            event_id: event_id.into(),
            status: AckStatus::Rejected as i32,
            code: rejection.code.into(),
            message: rejection.message,
            stream_sequence: 0,
        };
        ToStore {
            slot,
            ack,
            event_type: event_type.into(),
            out,
            label: None,
        }
    }

    /// Waits for JetStream (until the record's deadline) and gives the
    /// producer its answer, counted into `tally`.
    ///
    /// A label event stored twice (in EVENTS, and its `Label` in LABELS) is
    /// ACCEPTED when either copy was newly stored (a retry after a partial
    /// failure completes the record), with the stream sequence of its EVENTS
    /// copy; DUPLICATE when both were stored before; `unavailable` when
    /// either was not confirmed, so the producer retries until both are in.
    pub async fn settle(&self, pending: Pending, tally: &mut Tally) -> EventAck {
        let Pending {
            mut ack,
            event_type,
            share,
            label,
            deadline,
            _span,
        } = pending;
        let sent = share.sent;
        let stored = Self::stored(share, deadline).await;
        if ack.status == AckStatus::Rejected as i32 {
            // A dead letter: the record's answer stands, whatever became of the letter.
            if let Err(why) = &stored {
                tracing::error!(event_id = %ack.event_id, "the DLQ did not confirm a rejected record within {ACK_TIMEOUT:?}: {why}");
            }
        } else {
            let stored = match (stored, label) {
                (Ok(stored), None) => Ok(stored),
                (Ok(stored), Some(label)) => match Self::stored(label, deadline).await {
                    Ok(label) => Ok(bus::Stored {
                        duplicate: stored.duplicate && label.duplicate,
                        ..stored
                    }),
                    Err(why) => Err(format!("its label in LABELS: {why}")),
                },
                (Err(why), Some(_)) => Err(format!("its copy in EVENTS: {why}")),
                (Err(why), None) => Err(why),
            };
            match stored {
                Err(why) => ack = unavailable(ack, &why),
                Ok(stored) => {
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
        tally.add(&event_type, &ack);
        self.metrics.pending.dec();
        ack
    }

    /// What JetStream said of one message by `deadline`, or why it said nothing.
    async fn stored(share: Share, deadline: Instant) -> Result<bus::Stored, String> {
        let Share {
            outcome, position, ..
        } = share;
        match tokio::time::timeout_at(deadline, outcome).await {
            Err(_) => Err(format!("no acknowledgement within {ACK_TIMEOUT:?}")),
            Ok(all) => match all.get(position) {
                None => Err("its batch has no answer for it".into()),
                Some(answer) => answer.clone(),
            },
        }
    }

    /// Adds what `tally` counted to the metrics.
    pub fn count(&self, tally: Tally) {
        if tally.counts.is_empty() {
            return;
        }
        let registry: Arc<SchemaRegistry> = self.schemas.current();
        for (event_type, status, code, n) in tally.counts {
            let outcome = match AckStatus::try_from(status) {
                Ok(AckStatus::Accepted) => "accepted",
                Ok(AckStatus::Duplicate) => "duplicate",
                _ => "rejected",
            };
            // Label values stay bounded: types outside the registry count as `unknown`.
            let event_type = if registry.contains(&event_type) {
                &*event_type
            } else {
                "unknown"
            };
            self.metrics
                .events
                .with_label_values(&[event_type, outcome, code.as_str()])
                .inc_by(n);
        }
    }
}

fn type_mismatch(event_id: &str, event_type: &str, expected: &str) -> Rejection {
    Rejection {
        code: "type_mismatch",
        message: format!("event {event_id}: type `{event_type}` sent on subject ingest.{expected}"),
    }
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
