//! The loop every consuming service runs, so no service writes its own:
//!
//! 1. open one durable consumer per stream the stage reads, each right after
//!    the sequence the snapshot covers for it;
//! 2. take whatever messages are ready (up to a batch, from any of them, in
//!    the order JetStream stored them: [`StoredOrder`]; while the server has
//!    a backlog for the stage, a moment longer to fill the chunk: [`Gather`]),
//!    decode them, open one
//!    span per event as a child of the producer's, and hand them to the actor
//!    in that order;
//! 3. publish what the actor returns: the records for the stage's output
//!    stream packed one batch per subject ([`crate::batch`]), after the
//!    previous chunk's are stored, all of them (DLQ and alerts too) grouped
//!    by stream, an atomic batch where a stream has enough ([`crate::atomic`]);
//! 4. every `snapshot_every` records or `snapshot_interval`, but never sooner
//!    than [`SNAPSHOT_SPACING`] times the last snapshot's cost (so a large
//!    state spends at most about a tenth of the stage's time in snapshots),
//!    and on shutdown:
//!    wait until the outputs are stored, ask the actor for its state, and store
//!    it with the last applied sequence of every stream. The write and its
//!    fsyncs run on a blocking thread while the stage goes on, one at a time:
//!    nothing waits for them but the next snapshot, since whatever it covers
//!    is already applied and its outputs are stored.
//!
//! The consumers take no acks (`AckPolicy::None`): the snapshot, not the
//! broker, records how far a stage has got, and a restart repositions the
//! consumer there ([`Bus::resume_consumer`]). Tracking every delivered message
//! until an ack covers it took the broker about a third of its CPU per event
//! in the enrich → feature-state bench.
//!
//! A crash anywhere replays from the last snapshot: state is rebuilt from the
//! same messages; outputs the output stream holds already are not published
//! again ([`Covered`]), and the others carry deterministic ids, which JetStream
//! deduplicates. That is the exactly-once contract of DESIGN.md. A stage
//! that reads several streams (monitor: predictions and labels) keeps one
//! snapshot with one sequence per stream, so no stream is applied twice even
//! though the interleaving of streams may differ on replay.

use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, Message};
use futures::StreamExt;
use opentelemetry::trace::SpanKind;
use opentelemetry::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::{self, Covered};
use crate::bus::{subject, Bus, Outgoing, StreamKind};
use crate::metrics::StageMetrics;
use crate::pull::{Pull, PullError};
use crate::shutdown::Shutdown;
pub use crate::snapshot::Part;
use crate::snapshot::{Encoded, SnapshotStore};
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

/// What a stage's actor takes in: one message type per stage, or an enum when
/// the stage reads several streams (`source` is the index in [`StageSpec::sources`]).
pub trait StageInput: Sized + Send + 'static {
    fn decode(source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError>;
    fn event_id(&self) -> &str;
}

impl<T: EventMessage> StageInput for T {
    fn decode(_source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        T::decode(payload)
    }
    fn event_id(&self) -> &str {
        EventMessage::event_id(self)
    }
}

/// Events read in place ([`millrace_proto::view`]): enrich's and feature-state's inputs.
impl StageInput for millrace_proto::view::EventView {
    fn decode(_source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(payload)
    }
    fn event_id(&self) -> &str {
        self.event().event_id()
    }
}

impl StageInput for millrace_proto::view::EnrichedView {
    fn decode(_source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(payload)
    }
    fn event_id(&self) -> &str {
        millrace_proto::view::EnrichedView::event_id(self)
    }
}

/// One decoded stream message, with the span opened for it.
pub struct Delivered<T> {
    /// Index of the stream it came from in [`StageSpec::sources`].
    pub source: usize,
    pub sequence: u64,
    /// Messages the server still had for the consumer after this one's:
    /// 0 when the stage has caught up with the stream ([`crate::event_order`]).
    pub pending: u64,
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
    type Result = Taken<S>;
}

/// A snapshot as the actor hands it over: its whole state, or what changed
/// since the snapshot before (which a restart applies over the chain it extends).
pub struct Taken<S> {
    pub part: Part,
    pub state: S,
}

impl<S> Taken<S> {
    pub fn whole(state: S) -> Self {
        Self {
            part: Part::Whole,
            state,
        }
    }

    pub fn changes(state: S) -> Self {
        Self {
            part: Part::Changes,
            state,
        }
    }
}

/// One stream a stage reads, through its own durable consumer.
#[derive(Debug, Clone)]
pub struct Source {
    pub stream: StreamKind,
    pub filter_subjects: Vec<String>,
    pub durable: String,
    /// Messages per pull request; [`StageSpec::batch_size`] when `None`.
    pub pull: Option<usize>,
}

impl Source {
    pub fn new(stream: StreamKind, durable: impl Into<String>) -> Self {
        Self {
            stream,
            filter_subjects: vec![],
            durable: durable.into(),
            pull: None,
        }
    }

    /// Pulls `messages` at a time: for a stream of one small record per message
    /// read beside streams of batches, whose pulls must stay small to bound memory.
    pub fn pulling(mut self, messages: usize) -> Self {
        self.pull = Some(messages.max(1));
        self
    }

    /// A stream of one record per message (LABELS) read beside streams of
    /// batches: pulled [`SINGLES_PER_PULL`] at a time, so that the client
    /// holds about as many of its records as of theirs. Pulled like the
    /// batches, such a stream was a catch-up's long pole.
    pub fn of_single_records(self) -> Self {
        self.pulling(SINGLES_PER_PULL)
    }
}

/// Messages per pull request of [`Source::of_single_records`].
pub const SINGLES_PER_PULL: usize = 1024;

/// Where a stage reads and how often it snapshots.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Stage name: DLQ subject suffix and span prefix.
    pub stage: &'static str,
    /// The streams read; a message's `Delivered::source` indexes this list.
    pub sources: Vec<Source>,
    /// The stream the stage writes its records to, in batches; the stage must be its only writer.
    pub output: Option<StreamKind>,
    /// Key of the stage's snapshot in the store.
    pub snapshot_key: String,
    pub batch_size: usize,
    pub snapshot_interval: Duration,
    pub snapshot_every: u64,
    /// Name of this stage's per-event span.
    pub span_name: &'static str,
    /// When set, an actor that holds records back ([`crate::event_order`])
    /// is handed an empty batch this often (it counts silences by the records
    /// that come between), so that what waited on a silence can go.
    pub heartbeat: Option<Duration>,
}

impl StageSpec {
    /// Hands the actor an empty batch every `every`.
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    fn pull_size(&self, source: &Source) -> usize {
        source.pull.unwrap_or(self.batch_size)
    }
}

/// Where each source resumes: after these sequences (0 = from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume(pub Vec<u64>);

/// Loads the stage's snapshot: the state to start the actor with and where
/// each source resumes. A snapshot taken with other sources is refused, and so
/// are changes, which only [`load_chain`] takes.
pub fn load_state<S: DeserializeOwned + Default>(
    store: &SnapshotStore,
    spec: &StageSpec,
) -> Result<(S, Resume), ChassisError> {
    let (mut chain, resume) = load_chain::<S>(store, spec)?;
    if chain.len() > 1 {
        return Err(ChassisError::SnapshotCorrupt {
            key: spec.snapshot_key.clone(),
            message: format!(
                "{} records of changes, which this stage never writes",
                chain.len() - 1
            ),
        });
    }
    Ok((chain.pop().unwrap_or_default(), resume))
}

/// Loads the stage's snapshot as the chain it was stored as: the whole state
/// first, then each record of changes (none at all for a fresh start), and
/// where each source resumes.
pub fn load_chain<S: DeserializeOwned>(
    store: &SnapshotStore,
    spec: &StageSpec,
) -> Result<(Vec<S>, Resume), ChassisError> {
    Ok(match store.load::<S>(&spec.snapshot_key)? {
        Some(snap) if snap.sequences.len() == spec.sources.len() => {
            tracing::info!(key = %spec.snapshot_key, sequences = ?snap.sequences, changes = snap.changes.len(), "resuming from snapshot");
            let mut chain = vec![snap.state];
            chain.extend(snap.changes);
            (chain, Resume(snap.sequences))
        }
        Some(snap) => {
            return Err(ChassisError::SnapshotCorrupt {
                key: spec.snapshot_key.clone(),
                message: format!(
                    "it covers {} streams, this stage reads {}",
                    snap.sequences.len(),
                    spec.sources.len()
                ),
            })
        }
        None => (Vec::new(), Resume(vec![0; spec.sources.len()])),
    })
}

/// Runs the stage until shutdown; returns after a final snapshot.
pub async fn run<A, T, S>(
    bus: Bus,
    store: SnapshotStore,
    spec: StageSpec,
    actor: Addr<A>,
    resume: Resume,
    metrics: StageMetrics,
    mut shutdown: Shutdown,
) -> Result<(), ChassisError>
where
    A: Actor + Handler<Apply<T>> + Handler<TakeSnapshot<S>>,
    A::Context: ToEnvelope<A, Apply<T>> + ToEnvelope<A, TakeSnapshot<S>>,
    T: StageInput,
    S: Serialize + Send + 'static,
{
    if resume.0.len() != spec.sources.len() {
        return Err(ChassisError::SnapshotCorrupt {
            key: spec.snapshot_key.clone(),
            message: format!(
                "{} resume points for {} sources",
                resume.0.len(),
                spec.sources.len()
            ),
        });
    }
    let mut streams = Vec::with_capacity(spec.sources.len());
    let mut pending = Vec::with_capacity(spec.sources.len());
    for (source, &after) in spec.sources.iter().zip(&resume.0) {
        let consumer = bus
            .resume_consumer(
                source.stream,
                &source.durable,
                source.filter_subjects.clone(),
                after,
            )
            .await?;
        pending.push(consumer.cached_info().num_pending);
        let messages = Pull::start(
            &bus,
            bus.stream_name(source.stream),
            &source.durable,
            spec.pull_size(source),
        )
        .await
        .map_err(|e| consume_error(&bus, source, e.to_string()))?;
        streams.push(messages.boxed());
    }
    // A chunk takes at most what one pull per source brings: those messages
    // are in memory already.
    let chunk: usize = spec.sources.iter().map(|s| spec.pull_size(s)).sum();
    let mut chunks = Gather::new(StoredOrder::new(streams, pending), chunk);
    let mut covered = match spec.output {
        Some(stream) => {
            let covered = Covered::load(&bus, stream, spec.stage, spec.sources.len()).await?;
            (!covered.is_empty()).then_some(covered)
        }
        None => None,
    };
    let mut checkpoint = Checkpoint {
        traced: telemetry::spans_exported(),
        bus: &bus,
        store: &store,
        spec: &spec,
        metrics: &metrics,
        publisher: bus.publisher().counting_into(metrics.published.clone()),
        applied: resume.0,
        unsnapshotted: 0,
        last_snapshot: Instant::now(),
        last_cost: Duration::ZERO,
        saving: None,
    };
    checkpoint.report_sequence(&checkpoint.applied);
    let mut tick = tokio::time::interval(spec.snapshot_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(spec.heartbeat.unwrap_or(Duration::from_secs(3600)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = shutdown.recv() => break,
            _ = tick.tick() => {
                checkpoint.reap_save().await?;
                if checkpoint.unsnapshotted > 0 && checkpoint.due(spec.snapshot_interval) {
                    checkpoint.snapshot(&actor).await?;
                }
            }
            _ = heartbeat.tick(), if spec.heartbeat.is_some() => {
                // The actor tells silence from traffic by the records it gets.
                let outputs = checkpoint.apply(&actor, Vec::new()).await?;
                let position = checkpoint.applied.clone();
                checkpoint.send(outputs, &position, &position).await?;
            }
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    let first = &spec.sources[0];
                    return Err(consume_error(&bus, first, "the consumers' message streams ended".into()));
                };
                for piece in checkpoint.decode::<T>(chunk, covered.as_ref()).await? {
                    let n = piece.items.len() as u64;
                    let mut outputs = checkpoint.apply(&actor, piece.items).await?;
                    if let (Some(c), Some((source, sequence))) = (&covered, piece.replayed) {
                        checkpoint.drop_covered(&mut outputs, c, source, sequence);
                    }
                    checkpoint.send(outputs, &piece.from, &piece.upto).await?;
                    metrics.consumed.inc_by(n);
                }
                if covered.as_ref().is_some_and(|c| c.passed(&checkpoint.applied)) {
                    tracing::info!(stage = spec.stage, "replay past what the output stream held");
                    covered = None;
                }
                if checkpoint.unsnapshotted >= spec.snapshot_every && checkpoint.due(Duration::ZERO) {
                    checkpoint.snapshot(&actor).await?;
                }
            }
        }
    }
    // Drain: what was taken from the streams is applied; store it before leaving.
    checkpoint.snapshot(&actor).await?;
    checkpoint.settle_save().await?;
    tracing::info!(stage = spec.stage, sequences = ?checkpoint.applied, "stage stopped after its final snapshot");
    Ok(())
}

fn consume_error(bus: &Bus, source: &Source, message: String) -> ChassisError {
    ChassisError::Consume {
        stream: bus.stream_name(source.stream).to_string(),
        consumer: source.durable.clone(),
        message,
    }
}

/// The stream sequence a JetStream message's `$JS.ACK.` reply subject names
/// (both forms of ADR-15, as async-nats reads them). `Message::info` parses
/// every token, the publish time included, which cost a tenth of enrich's
/// instructions per event; the stage needs only this one.
fn stream_sequence(reply: &str) -> Option<u64> {
    ack_tokens(reply)?.0.parse().ok()
}

/// When JetStream stored the message, in nanoseconds since the epoch, from the same subject.
fn stored_at(reply: &str) -> Option<i64> {
    ack_tokens(reply)?.1.parse().ok()
}

/// How many messages the consumer had left to deliver after this one, from the same subject.
fn pending_after(reply: &str) -> Option<u64> {
    ack_tokens(reply)?.2.parse().ok()
}

/// The stream sequence, timestamp and pending tokens of an ack subject. One
/// pass over the bytes: splitting by `str::split` was a twentieth of enrich's
/// CPU per event.
fn ack_tokens(reply: &str) -> Option<(&str, &str, &str)> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // Where each token ends (its dot, or the end), for the first ten.
    let mut ends = [rest.len(); 10];
    let mut count = 1;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'.' {
            if count == ends.len() {
                count += 1;
                break;
            }
            ends[count - 1] = i;
            count += 1;
        }
    }
    let index = match count {
        // domain, account hash, stream, consumer, delivered, stream sequence,
        // consumer sequence, timestamp, pending, …
        9.. => 5,
        // stream, consumer, delivered, stream sequence, consumer sequence, timestamp, pending
        7 => 3,
        _ => return None,
    };
    let token = |k: usize| &rest[ends[k - 1] + 1..ends[k]];
    Some((token(index), token(index + 2), token(index + 3)))
}

type Consumed = Result<async_nats::Message, PullError>;

/// The sources' messages merged in the order JetStream stored them: a
/// catch-up then reads its streams as they were written and reaches the actor
/// as live traffic did. Taken one message of each in turn, a stream of single
/// labels fell behind a stream of batches by the batch size, and the bounded
/// joins that wait for both evicted what ran ahead.
///
/// A stream with no message ready is waited for only while the server says it
/// has more for this consumer, and for at most [`ORDER_WAIT`] at a time.
struct StoredOrder {
    sources: Vec<futures::stream::BoxStream<'static, Consumed>>,
    heads: Vec<Option<Consumed>>,
    ended: Vec<bool>,
    /// Per source: messages the server still had for the consumer after the last one.
    pending: Vec<u64>,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The longest a stage waits for a stream's next message to keep the order.
const ORDER_WAIT: Duration = Duration::from_millis(50);

impl StoredOrder {
    fn new(sources: Vec<futures::stream::BoxStream<'static, Consumed>>, pending: Vec<u64>) -> Self {
        let n = sources.len();
        Self {
            sources,
            heads: (0..n).map(|_| None).collect(),
            ended: vec![false; n],
            pending,
            waiting: None,
        }
    }
}

impl futures::Stream for StoredOrder {
    type Item = Pulled;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Pulled>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        if let [only] = this.sources.as_mut_slice() {
            return only.poll_next_unpin(cx).map(|m| m.map(|m| (0, m)));
        }
        for (i, source) in this.sources.iter_mut().enumerate() {
            if this.heads[i].is_some() || this.ended[i] {
                continue;
            }
            match source.poll_next_unpin(cx) {
                // Errors go on at once, to be logged.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some((i, Err(e)))),
                Poll::Ready(Some(ok)) => this.heads[i] = Some(ok),
                Poll::Ready(None) => this.ended[i] = true,
                Poll::Pending => {}
            }
        }
        // Streams with nothing ready that the server still has messages for.
        let coming = |this: &Self, i: usize| {
            this.heads[i].is_none() && !this.ended[i] && this.pending[i] > 0
        };
        if !(0..this.sources.len()).any(|i| coming(this, i)) {
            this.waiting = None;
        } else {
            let waiting = this
                .waiting
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(ORDER_WAIT)));
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Waited long enough: those streams are not counted on until they deliver.
            this.waiting = None;
            for i in 0..this.sources.len() {
                if coming(this, i) {
                    this.pending[i] = 0;
                }
            }
        }
        let stored = |head: &Option<Consumed>| match head {
            Some(Ok(m)) => Some(m.reply.as_deref().and_then(stored_at).unwrap_or(i64::MIN)),
            _ => None,
        };
        let earliest = (0..this.heads.len())
            .filter_map(|i| stored(&this.heads[i]).map(|at| (at, i)))
            .min();
        match earliest.and_then(|(_, i)| this.heads[i].take().map(|m| (i, m))) {
            Some((i, message)) => {
                if let Ok(m) = &message {
                    this.pending[i] = m.reply.as_deref().and_then(pending_after).unwrap_or(0);
                }
                Poll::Ready(Some((i, message)))
            }
            None if this.ended.iter().all(|&e| e) => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// The longest a stage waits for a chunk to fill while its consumers have a backlog.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// Chunks of what the consumers delivered, like `ready_chunks`, except that
/// while the server says more is pending for the consumer, a chunk of fewer
/// than [`PIECE_RECORDS`] records waits up to [`GATHER_WAIT`] for the rest.
/// Otherwise a stage that keeps up with a backlog takes whatever trickled in
/// since its last piece: enrich applied about 110 events at a time and wrote
/// batches of 28, each stored, acknowledged and delivered on by the broker.
/// Live traffic (nothing pending) never waits.
struct Gather<S: futures::Stream> {
    inner: S,
    /// Messages per chunk at most.
    max: usize,
    chunk: Vec<S::Item>,
    records: usize,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

/// What [`Gather`] reads off a message.
trait Gathered: Unpin {
    /// Records it holds.
    fn records(&self) -> usize;
    /// Whether the server has more for its consumer after it.
    fn more_pending(&self) -> bool;
}

impl Gathered for Pulled {
    fn records(&self) -> usize {
        match &self.1 {
            Ok(m) => batch::record_count(m.headers.as_ref()),
            Err(_) => 0,
        }
    }

    fn more_pending(&self) -> bool {
        match &self.1 {
            Ok(m) => m.reply.as_deref().and_then(pending_after).unwrap_or(0) > 0,
            Err(_) => false,
        }
    }
}

impl<S: futures::Stream + Unpin> Gather<S>
where
    S::Item: Gathered,
{
    fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            max: max.max(1),
            chunk: Vec::new(),
            records: 0,
            waiting: None,
            ended: false,
        }
    }

    fn full(&self) -> bool {
        self.chunk.len() >= self.max || self.records >= PIECE_RECORDS
    }
}

impl<S: futures::Stream + Unpin> futures::Stream for Gather<S>
where
    S::Item: Gathered,
{
    type Item = Vec<S::Item>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        while !this.ended && !this.full() {
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    this.records += item.records();
                    this.chunk.push(item);
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => break,
            }
        }
        let Some(last) = this.chunk.last() else {
            return match this.ended {
                true => Poll::Ready(None),
                false => Poll::Pending,
            };
        };
        if !this.full() && !this.ended && last.more_pending() {
            let waiting = this
                .waiting
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(GATHER_WAIT)));
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        this.records = 0;
        this.waiting = None;
        // The next chunk is sized like this one: growing a vector of messages
        // (a few hundred bytes each) by doubling showed in enrich's profile.
        let size = this.chunk.len();
        Poll::Ready(Some(std::mem::replace(
            &mut this.chunk,
            Vec::with_capacity(size),
        )))
    }
}

/// A snapshot waits at least this many times the last one's cost after it.
pub const SNAPSHOT_SPACING: u32 = 9;

/// Records per piece. Each piece waits for the previous one's batches to be
/// stored, so small pieces leave a stage waiting on round trips to the broker
/// and fill its output with many small messages (1024 rather than 128 took
/// the enrich → feature-state bench from about 54k to 57–75k events/s with
/// less broker CPU per event; 4096 rather than 1024, with enrich pulling 2048,
/// cut the broker's CPU per event by about a sixth more). Only a backlog fills
/// a piece: live traffic goes as it comes ([`Gather`]). A batch too large for
/// one message goes in parts ([`batch::pack`]), so large records (flights
/// vectors, about 4.6 kB) still fit NATS's 1 MiB limit.
const PIECE_RECORDS: usize = 4096;
const PIECE_BYTES: usize = 1024 * 1024;

/// Input applied in one go; its outputs are published together, stamped `upto`.
struct Piece<T> {
    items: Vec<Delivered<T>>,
    /// The position before the piece and after it.
    from: Vec<u64>,
    upto: Vec<u64>,
    /// The one input message of a piece replayed over outputs the stream may hold.
    replayed: Option<(usize, u64)>,
}

impl<T> Piece<T> {
    fn starting_at(position: &[u64], capacity: usize) -> Self {
        Self {
            items: Vec::with_capacity(capacity),
            from: position.to_vec(),
            upto: position.to_vec(),
            replayed: None,
        }
    }
}

/// A stored snapshot: its size, the sequences it covers, and what it cost
/// (taking the state, then storing it).
struct Saved {
    part: Part,
    bytes: usize,
    sequences: Vec<u64>,
    cost: Duration,
}

/// A message and the index of the source it came from.
type Pulled = (usize, Consumed);

struct Checkpoint<'a> {
    bus: &'a Bus,
    store: &'a SnapshotStore,
    spec: &'a StageSpec,
    metrics: &'a StageMetrics,
    publisher: crate::bus::Publisher,
    /// Per source: the last sequence applied to the actor's state.
    applied: Vec<u64>,
    unsnapshotted: u64,
    last_snapshot: Instant,
    /// How long the last snapshot took, its store included.
    last_cost: Duration,
    /// The snapshot being stored in the background, if any.
    saving: Option<tokio::task::JoinHandle<Result<Saved, ChassisError>>>,
    /// Spans are exported: open one per record and carry its context on.
    traced: bool,
}

impl Checkpoint<'_> {
    /// Decodes a chunk into pieces to apply, skipping what the snapshot
    /// already covers and sending undecodable records to the DLQ.
    ///
    /// A piece holds whole input messages, at most [`PIECE_RECORDS`] records
    /// and [`PIECE_BYTES`] bytes, so its outputs fit in a message. While
    /// replaying what the output stream may already hold, a piece is one message.
    async fn decode<T: StageInput>(
        &mut self,
        chunk: Vec<Pulled>,
        covered: Option<&Covered>,
    ) -> Result<Vec<Piece<T>>, ChassisError> {
        let mut pieces = Vec::new();
        // At least a record per message; a batch message holds more.
        let capacity = chunk.len().min(PIECE_RECORDS);
        let mut piece = Piece::starting_at(&self.applied, capacity);
        let mut piece_bytes = 0;
        for (source, item) in chunk {
            let msg = match item {
                Ok(msg) => msg,
                Err(e) => {
                    // A request that could not be sent, JetStream not answering: the
                    // consumer asks again by itself ([`Pull`]). A deleted consumer ends its stream.
                    tracing::warn!(stage = self.spec.stage, "consumer: {e}");
                    continue;
                }
            };
            let sequence = match msg.reply.as_deref().and_then(stream_sequence) {
                Some(sequence) => sequence,
                None => {
                    tracing::warn!(
                        stage = self.spec.stage,
                        subject = %msg.subject,
                        reply = ?msg.reply,
                        "message without a stream sequence in its reply subject: skipped"
                    );
                    continue;
                }
            };
            let pending = msg.reply.as_deref().and_then(pending_after).unwrap_or(0);
            if sequence <= self.applied[source] {
                self.metrics.replays_skipped.inc();
                continue;
            }
            let stream = self.bus.stream_name(self.spec.sources[source].stream);
            let records =
                match batch::unbatch(msg.headers.as_ref(), msg.payload.clone(), self.traced) {
                    Ok(records) => records,
                    Err(e) => {
                        let parent = telemetry::context_from_headers(msg.headers.as_ref());
                        let what = format!(
                            "{stream} sequence {sequence} on {}: the batch does not decode: {e}",
                            msg.subject
                        );
                        let id = format!("{}:malformed:{stream}:{sequence}", self.spec.stage);
                        self.dead_letter(what, id, msg.payload.to_vec(), parent)
                            .await?;
                        Vec::new()
                    }
                };
            let many = records.len() > 1;
            let replayed = covered.is_some_and(|c| c.in_replay(source, sequence));
            let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
            let full = piece.items.len() + records.len() > PIECE_RECORDS
                || piece_bytes + bytes > PIECE_BYTES;
            if !piece.items.is_empty() && (replayed || piece.replayed.is_some() || full) {
                pieces.push(std::mem::replace(
                    &mut piece,
                    Piece::starting_at(&self.applied, capacity),
                ));
                piece_bytes = 0;
            }
            piece.replayed = replayed.then_some((source, sequence));
            piece_bytes += bytes;
            for (index, record) in records.into_iter().enumerate() {
                match T::decode(source, record.payload.clone()) {
                    Ok(message) => {
                        let trace = if self.traced {
                            telemetry::event_span(
                                self.spec.span_name,
                                SpanKind::Consumer,
                                &record.trace,
                                message.event_id(),
                            )
                        } else {
                            Context::new()
                        };
                        piece.items.push(Delivered {
                            source,
                            sequence,
                            pending,
                            message,
                            trace,
                        });
                    }
                    Err(e) => {
                        let (what, id) = if many {
                            (
                                format!("{stream} sequence {sequence} on {}, record {index}: does not decode: {e}", msg.subject),
                                format!("{}:malformed:{stream}:{sequence}:{index}", self.spec.stage),
                            )
                        } else {
                            (
                                format!(
                                    "{stream} sequence {sequence} on {}: does not decode: {e}",
                                    msg.subject
                                ),
                                format!("{}:malformed:{stream}:{sequence}", self.spec.stage),
                            )
                        };
                        self.dead_letter(what, id, record.payload.to_vec(), record.trace)
                            .await?;
                    }
                }
                self.unsnapshotted += 1;
            }
            self.applied[source] = sequence;
            piece.upto.clone_from(&self.applied);
        }
        if !piece.items.is_empty() {
            pieces.push(piece);
        }
        Ok(pieces)
    }

    /// Drops the outputs of a replayed input that the output stream holds already.
    fn drop_covered(
        &self,
        outputs: &mut Vec<Outgoing>,
        covered: &Covered,
        source: usize,
        sequence: u64,
    ) {
        let Some(prefix) = self.spec.output.map(StreamKind::subject_prefix) else {
            return;
        };
        let before = outputs.len();
        outputs.retain(|out| {
            !batch::in_stream(out.subject.as_str(), prefix)
                || covered.keep(out.subject.as_str(), source, sequence)
        });
        self.metrics
            .replays_skipped
            .inc_by((before - outputs.len()) as u64);
    }

    async fn dead_letter(
        &mut self,
        message: String,
        id: String,
        payload: Vec<u8>,
        trace: Context,
    ) -> Result<(), ChassisError> {
        let letter = millrace_proto::DeadLetter {
            stage: self.spec.stage.into(),
            reason: "malformed".into(),
            message,
            payload,
            time_us: crate::time::now_us(),
            ..Default::default()
        };
        self.metrics
            .dead_letters
            .with_label_values(&["malformed"])
            .inc();
        self.publisher
            .publish(Outgoing::new(
                subject::dlq(self.spec.stage),
                id,
                &letter,
                trace,
            ))
            .await
    }

    async fn apply<A, T>(
        &self,
        actor: &Addr<A>,
        batch: Vec<Delivered<T>>,
    ) -> Result<Vec<Outgoing>, ChassisError>
    where
        A: Actor + Handler<Apply<T>>,
        A::Context: ToEnvelope<A, Apply<T>>,
        T: StageInput,
    {
        actor
            .send(Apply(batch))
            .await
            .map_err(|e| ChassisError::ActorGone {
                actor: self.spec.stage,
                message: e.to_string(),
            })
    }

    /// Publishes a piece's outputs once the previous piece's are stored, the
    /// output stream's records packed into batches stamped with the position.
    async fn send(
        &mut self,
        outputs: Vec<Outgoing>,
        from: &[u64],
        upto: &[u64],
    ) -> Result<(), ChassisError> {
        if outputs.is_empty() {
            return Ok(());
        }
        self.publisher.flush().await?;
        let outputs = match self.spec.output {
            Some(stream) => batch::pack(self.spec.stage, stream, from, upto, outputs),
            None => outputs,
        };
        self.publisher.publish_all(outputs).await
    }

    /// Whether `at_least` has passed since the last snapshot, and enough time
    /// for the last one's cost to be a small share.
    fn due(&self, at_least: Duration) -> bool {
        self.last_snapshot.elapsed() >= at_least.max(self.last_cost * SNAPSHOT_SPACING)
    }

    /// Takes the actor's state once every output so far is stored, and starts
    /// storing it (after the previous snapshot's store has finished).
    async fn snapshot<A, S>(&mut self, actor: &Addr<A>) -> Result<(), ChassisError>
    where
        A: Actor + Handler<TakeSnapshot<S>>,
        A::Context: ToEnvelope<A, TakeSnapshot<S>>,
        S: Serialize + Send + 'static,
    {
        // The previous store first, so that this snapshot's cost is its own.
        self.settle_save().await?;
        let started = Instant::now();
        self.publisher.flush().await?;
        let taken = actor
            .send(TakeSnapshot::<S>::default())
            .await
            .map_err(|e| ChassisError::ActorGone {
                actor: self.spec.stage,
                message: e.to_string(),
            })?;
        // The state taken is the actor's own copy: encoding it (a copy and a
        // checksum of what may be hundreds of MB) and writing it happen off
        // this thread, which goes on feeding the actor.
        let sequences = self.applied.clone();
        let store = self.store.clone();
        let key = self.spec.snapshot_key.clone();
        let took = started.elapsed();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let encoded = Encoded::new(&key, &sequences, &taken.state, taken.part)?;
            drop(taken);
            let bytes = store.write(&encoded)?;
            Ok(Saved {
                part: encoded.part(),
                bytes,
                sequences,
                cost: took + started.elapsed(),
            })
        });
        self.saving = Some(task);
        self.unsnapshotted = 0;
        self.last_snapshot = Instant::now();
        Ok(())
    }

    /// Finishes the snapshot being stored, if its store is done.
    async fn reap_save(&mut self) -> Result<(), ChassisError> {
        if self.saving.as_ref().is_some_and(|task| task.is_finished()) {
            self.settle_save().await?;
        }
        Ok(())
    }

    /// Waits for the snapshot being stored, if any, and reports it.
    async fn settle_save(&mut self) -> Result<(), ChassisError> {
        let Some(task) = self.saving.take() else {
            return Ok(());
        };
        let saved = task.await.map_err(|e| ChassisError::ActorGone {
            actor: "snapshot store",
            message: e.to_string(),
        })??;
        self.last_cost = saved.cost;
        self.metrics
            .snapshot_seconds
            .observe(saved.cost.as_secs_f64());
        self.metrics
            .snapshot_bytes
            .set(i64::try_from(saved.bytes).unwrap_or(i64::MAX));
        let part = match saved.part {
            Part::Whole => "whole",
            Part::Changes => "changes",
        };
        self.metrics.snapshots.with_label_values(&[part]).inc();
        self.report_sequence(&saved.sequences);
        Ok(())
    }

    /// Where the stored snapshot stands in each stream: what a restart resumes after.
    fn report_sequence(&self, sequences: &[u64]) {
        for (source, &sequence) in self.spec.sources.iter().zip(sequences) {
            self.metrics
                .last_applied_sequence
                .with_label_values(&[self.bus.stream_name(source.stream), &source.durable])
                .set(i64::try_from(sequence).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{pending_after, stored_at, stream_sequence, Gather, Gathered, PIECE_RECORDS};
    use futures::{FutureExt, StreamExt};
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Item {
        records: usize,
        pending: bool,
    }

    impl Gathered for Item {
        fn records(&self) -> usize {
            self.records
        }
        fn more_pending(&self) -> bool {
            self.pending
        }
    }

    fn item(pending: bool) -> Item {
        Item {
            records: 1,
            pending,
        }
    }

    #[tokio::test]
    async fn a_chunk_waits_to_fill_only_while_the_server_has_more() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut chunks = Gather::new(rx, 4);
        // Live traffic: the last message leaves nothing pending, so it goes at once.
        tx.unbounded_send(item(false)).expect("send");
        assert_eq!(chunks.next().now_or_never(), Some(Some(vec![item(false)])));
        // A backlog: three of four messages wait for the fourth.
        for _ in 0..3 {
            tx.unbounded_send(item(true)).expect("send");
        }
        assert_eq!(chunks.next().now_or_never(), None);
        tx.unbounded_send(item(true)).expect("send");
        let full = chunks
            .next()
            .now_or_never()
            .flatten()
            .expect("a full chunk");
        assert_eq!(full.len(), 4);
        // A message that ends the backlog ends the wait.
        tx.unbounded_send(item(true)).expect("send");
        assert_eq!(chunks.next().now_or_never(), None);
        tx.unbounded_send(item(false)).expect("send");
        assert_eq!(
            chunks.next().now_or_never(),
            Some(Some(vec![item(true), item(false)]))
        );
    }

    #[tokio::test]
    async fn a_chunk_waiting_for_more_goes_when_its_wait_is_over_or_the_stream_ends() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut chunks = Gather::new(rx, 512);
        tx.unbounded_send(item(true)).expect("send");
        tx.unbounded_send(item(true)).expect("send");
        assert_eq!(chunks.next().now_or_never(), None);
        let waited = tokio::time::timeout(Duration::from_secs(30), chunks.next())
            .await
            .expect("the wait is bounded");
        assert_eq!(waited, Some(vec![item(true), item(true)]));
        tx.unbounded_send(item(true)).expect("send");
        drop(tx);
        assert_eq!(chunks.next().await, Some(vec![item(true)]));
        assert_eq!(chunks.next().await, None);
    }

    #[tokio::test]
    async fn a_chunk_of_batches_goes_once_it_holds_a_piece_of_records() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut chunks = Gather::new(rx, 512);
        let batch = || Item {
            records: PIECE_RECORDS / 2,
            pending: true,
        };
        tx.unbounded_send(batch()).expect("send");
        assert_eq!(chunks.next().now_or_never(), None);
        tx.unbounded_send(batch()).expect("send");
        tx.unbounded_send(batch()).expect("send");
        // Two batches make a piece; the third starts the next chunk.
        assert_eq!(
            chunks.next().now_or_never(),
            Some(Some(vec![batch(), batch()]))
        );
        assert_eq!(chunks.next().now_or_never(), None);
    }

    #[test]
    fn the_stream_sequence_is_read_from_either_form_of_the_ack_subject() {
        let cases = [
            (
                "nine_tokens",
                "$JS.ACK.EVENTS.enrich.1.4207.4199.1764260000000000000.12",
                Some(4207),
            ),
            (
                "with_domain_and_hash",
                "$JS.ACK._.ACCHASH.EVENTS.enrich.1.4207.4199.1764260000000000000.12",
                Some(4207),
            ),
            (
                "with_trailing_token",
                "$JS.ACK.hub.ACCHASH.EVENTS.enrich.2.99.98.1764260000000000000.0.rnd",
                Some(99),
            ),
            (
                "eight_tokens",
                "$JS.ACK.EVENTS.enrich.1.4207.4199.1764260000000000000",
                None,
            ),
            ("not_an_ack", "_INBOX.abc.def", None),
            (
                "not_a_number",
                "$JS.ACK.EVENTS.enrich.1.x.4199.1764260000000000000.12",
                None,
            ),
        ];
        for (name, reply, expected) in cases {
            assert_eq!(stream_sequence(reply), expected, "{name}");
        }
        assert_eq!(
            stored_at("$JS.ACK.EVENTS.enrich.1.4207.4199.1764260000000000000.12"),
            Some(1_764_260_000_000_000_000)
        );
        assert_eq!(
            stored_at("$JS.ACK._.ACCHASH.EVENTS.enrich.1.4207.4199.1764260000000000001.12"),
            Some(1_764_260_000_000_000_001)
        );
        assert_eq!(stored_at("_INBOX.abc.def"), None);
        assert_eq!(
            pending_after("$JS.ACK.EVENTS.enrich.1.4207.4199.1764260000000000000.12"),
            Some(12)
        );
        assert_eq!(
            pending_after("$JS.ACK.hub.ACCHASH.EVENTS.enrich.2.99.98.1764260000000000000.7.rnd"),
            Some(7)
        );
        // Tokens past the tenth are ignored, as future versions may append some.
        let longer = "$JS.ACK.hub.ACCHASH.EVENTS.enrich.2.99.98.17.5.rnd.extra.more";
        assert_eq!(stream_sequence(longer), Some(99));
        assert_eq!(pending_after(longer), Some(5));
    }
}
