//! The loop every consuming service runs, so no service writes its own:
//!
//! 1. open the durable consumer right after the sequence the snapshot covers;
//! 2. take whatever messages are ready (up to a batch), decode them, open one
//!    span per event as a child of the producer's, and hand them to the actor;
//! 3. publish what the actor returns (pipelined, deduplicated by id);
//! 4. every `snapshot_every` messages or `snapshot_interval`, and on shutdown:
//!    wait until the outputs are stored, ask the actor for its state, store it
//!    with the last applied sequence, then ack that sequence (ack-all).
//!
//! A crash anywhere replays from the last snapshot: state is rebuilt from the
//! same messages, and the republished outputs carry the same ids, which
//! JetStream drops. That is the exactly-once contract of DESIGN.md.

use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use futures::StreamExt;
use opentelemetry::trace::SpanKind;
use opentelemetry::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bus::{subject, Bus, Outgoing, StreamKind};
use crate::metrics::StageMetrics;
use crate::shutdown::Shutdown;
use crate::snapshot::SnapshotStore;
use crate::telemetry;
use crate::ChassisError;

/// Messages that descend from an event and name it.
pub trait EventMessage: prost::Message + Default + Send + 'static {
    fn event_id(&self) -> &str;
}

impl EventMessage for millrace_proto::Event {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}
impl EventMessage for millrace_proto::EnrichedEvent {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}
impl EventMessage for millrace_proto::FeatureVector {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}
impl EventMessage for millrace_proto::Prediction {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}
impl EventMessage for millrace_proto::Label {
    fn event_id(&self) -> &str {
        &self.event_id
    }
}

/// One decoded stream message, with the span opened for it.
pub struct Delivered<T> {
    pub sequence: u64,
    pub subject: String,
    pub message: T,
    /// Context of this stage's span; attach it to every output derived from the message.
    pub trace: Context,
}

/// Apply a batch of messages in order; answer what to publish.
pub struct Apply<T>(pub Vec<Delivered<T>>);

impl<T: 'static> Message for Apply<T> {
    type Result = Vec<Outgoing>;
}

/// Hand over the state to snapshot. It must reflect every batch applied so far.
pub struct TakeSnapshot<S>(std::marker::PhantomData<S>);

impl<S> Default for TakeSnapshot<S> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<S: 'static> Message for TakeSnapshot<S> {
    type Result = S;
}

/// Where a stage reads and how often it snapshots.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Stage name: DLQ subject suffix and span prefix.
    pub stage: &'static str,
    pub source: StreamKind,
    pub filter_subjects: Vec<String>,
    /// Durable consumer name, also the snapshot key.
    pub durable: String,
    pub batch_size: usize,
    pub snapshot_interval: Duration,
    pub snapshot_every: u64,
    /// Name of this stage's per-event span.
    pub span_name: &'static str,
}

/// Loads the stage's snapshot: the state to start the actor with and the
/// sequence to resume after (0 when there is none).
pub fn load_state<S: DeserializeOwned + Default>(
    store: &SnapshotStore,
    spec: &StageSpec,
) -> Result<(S, u64), ChassisError> {
    Ok(match store.load::<S>(&spec.durable)? {
        Some(snap) => {
            tracing::info!(durable = %spec.durable, sequence = snap.sequence, "resuming from snapshot");
            (snap.state, snap.sequence)
        }
        None => (S::default(), 0),
    })
}

/// Runs the stage until shutdown; returns after a final snapshot.
pub async fn run<A, T, S>(
    bus: Bus,
    store: SnapshotStore,
    spec: StageSpec,
    actor: Addr<A>,
    resume_after: u64,
    metrics: StageMetrics,
    mut shutdown: Shutdown,
) -> Result<(), ChassisError>
where
    A: Actor + Handler<Apply<T>> + Handler<TakeSnapshot<S>>,
    A::Context: ToEnvelope<A, Apply<T>> + ToEnvelope<A, TakeSnapshot<S>>,
    T: EventMessage,
    S: Serialize + Send + 'static,
{
    let consumer = bus
        .resume_consumer(
            spec.source,
            &spec.durable,
            spec.filter_subjects.clone(),
            resume_after,
        )
        .await?;
    let consume_err = |message: String| ChassisError::Consume {
        stream: bus.stream_name(spec.source).to_string(),
        consumer: spec.durable.clone(),
        message,
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(spec.batch_size)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| consume_err(e.to_string()))?;
    let mut chunks = messages.ready_chunks(spec.batch_size);
    let mut checkpoint = Checkpoint {
        bus: &bus,
        store: &store,
        spec: &spec,
        metrics: &metrics,
        publisher: bus.publisher().counting_into(metrics.published.clone()),
        applied: resume_after,
        unsnapshotted: 0,
        last_message: None,
        last_snapshot: Instant::now(),
    };
    metrics
        .last_applied_sequence
        .set(i64::try_from(resume_after).unwrap_or(i64::MAX));
    let mut tick = tokio::time::interval(spec.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            _ = tick.tick() => {
                if checkpoint.unsnapshotted > 0 && checkpoint.last_snapshot.elapsed() >= spec.snapshot_interval {
                    checkpoint.snapshot(&actor).await?;
                }
            }
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    return Err(consume_err("the consumer's message stream ended".into()));
                };
                let batch = checkpoint.decode(chunk).await?;
                if !batch.is_empty() {
                    let n = batch.len() as u64;
                    let outputs = actor
                        .send(Apply(batch))
                        .await
                        .map_err(|e| ChassisError::ActorGone { actor: spec.stage, message: e.to_string() })?;
                    for out in outputs {
                        checkpoint.publisher.publish(out).await?;
                    }
                    metrics.consumed.inc_by(n);
                }
                if checkpoint.unsnapshotted >= spec.snapshot_every {
                    checkpoint.snapshot(&actor).await?;
                }
            }
        }
    }
    // Drain: what was taken from the stream is applied; store it before leaving.
    checkpoint.snapshot(&actor).await?;
    tracing::info!(
        stage = spec.stage,
        sequence = checkpoint.applied,
        "stage stopped after its final snapshot"
    );
    Ok(())
}

struct Checkpoint<'a> {
    bus: &'a Bus,
    store: &'a SnapshotStore,
    spec: &'a StageSpec,
    metrics: &'a StageMetrics,
    publisher: crate::bus::Publisher,
    applied: u64,
    unsnapshotted: u64,
    last_message: Option<async_nats::jetstream::Message>,
    last_snapshot: Instant,
}

impl Checkpoint<'_> {
    /// Decodes a chunk into deliveries, skipping what the snapshot already
    /// covers and sending undecodable records to the DLQ.
    async fn decode<T: EventMessage>(
        &mut self,
        chunk: Vec<
            Result<
                async_nats::jetstream::Message,
                async_nats::jetstream::consumer::pull::MessagesError,
            >,
        >,
    ) -> Result<Vec<Delivered<T>>, ChassisError> {
        let mut batch = Vec::with_capacity(chunk.len());
        for item in chunk {
            let msg = match item {
                Ok(msg) => msg,
                Err(e) => {
                    // Missed heartbeats and similar hiccups: the stream recovers by itself.
                    tracing::warn!(stage = self.spec.stage, "consumer: {e}");
                    continue;
                }
            };
            let sequence = match msg.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    tracing::warn!(
                        stage = self.spec.stage,
                        "message without JetStream metadata: {e}"
                    );
                    continue;
                }
            };
            if sequence <= self.applied {
                self.metrics.replays_skipped.inc();
                continue;
            }
            let parent = telemetry::context_from_headers(msg.headers.as_ref());
            match T::decode(msg.payload.clone()) {
                Ok(message) => {
                    let trace = telemetry::event_span(
                        self.spec.span_name,
                        SpanKind::Consumer,
                        &parent,
                        message.event_id(),
                    );
                    batch.push(Delivered {
                        sequence,
                        subject: msg.subject.to_string(),
                        message,
                        trace,
                    });
                }
                Err(e) => {
                    let letter = millrace_proto::DeadLetter {
                        stage: self.spec.stage.into(),
                        reason: "malformed".into(),
                        message: format!(
                            "{} sequence {sequence} on {}: not a valid {}: {e}",
                            self.bus.stream_name(self.spec.source),
                            msg.subject,
                            std::any::type_name::<T>()
                                .rsplit("::")
                                .next()
                                .unwrap_or("message"),
                        ),
                        payload: msg.payload.to_vec(),
                        time_us: crate::time::now_us(),
                        ..Default::default()
                    };
                    self.metrics
                        .dead_letters
                        .with_label_values(&["malformed"])
                        .inc();
                    let id = format!(
                        "{}:malformed:{}:{sequence}",
                        self.spec.stage,
                        self.bus.stream_name(self.spec.source)
                    );
                    self.publisher
                        .publish(Outgoing::new(
                            subject::dlq(self.spec.stage),
                            id,
                            &letter,
                            parent,
                        ))
                        .await?;
                }
            }
            self.applied = sequence;
            self.unsnapshotted += 1;
            self.last_message = Some(msg);
        }
        Ok(batch)
    }

    async fn snapshot<A, S>(&mut self, actor: &Addr<A>) -> Result<(), ChassisError>
    where
        A: Actor + Handler<TakeSnapshot<S>>,
        A::Context: ToEnvelope<A, TakeSnapshot<S>>,
        S: Serialize + Send + 'static,
    {
        let started = Instant::now();
        self.publisher.flush().await?;
        let state = actor
            .send(TakeSnapshot::<S>::default())
            .await
            .map_err(|e| ChassisError::ActorGone {
                actor: self.spec.stage,
                message: e.to_string(),
            })?;
        let bytes = self.store.save(&self.spec.durable, self.applied, &state)?;
        if let Some(msg) = self.last_message.take() {
            // Ack-all: everything up to this sequence is now safe in the snapshot.
            if let Err(e) = msg.ack().await {
                tracing::warn!(
                    stage = self.spec.stage,
                    "acking up to {}: {e}",
                    self.applied
                );
            }
        }
        self.metrics
            .snapshot_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .snapshot_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.metrics
            .last_applied_sequence
            .set(i64::try_from(self.applied).unwrap_or(i64::MAX));
        self.unsnapshotted = 0;
        self.last_snapshot = Instant::now();
        Ok(())
    }
}
