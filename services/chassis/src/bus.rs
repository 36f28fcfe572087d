//! The NATS side of every service: connect (retrying until the server
//! answers), provision the JetStream streams of DESIGN.md idempotently, publish
//! protobuf messages with a deterministic `Nats-Msg-Id` and the event's
//! `traceparent`, and open durable consumers positioned right after the last
//! sequence a snapshot covers.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
pub use async_nats::Subject;
use bytes::Bytes;
use futures::future::BoxFuture;
use opentelemetry::Context;

use crate::atomic;
use crate::config::{NatsSettings, StreamSettings};
use crate::shutdown::Shutdown;
use crate::telemetry;
use crate::ChassisError;

/// The streams of the pipeline; each owns the subjects under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Events,
    Enriched,
    Features,
    Predictions,
    Labels,
    Dlq,
    Alerts,
}

impl StreamKind {
    pub const ALL: [StreamKind; 7] = [
        Self::Events,
        Self::Enriched,
        Self::Features,
        Self::Predictions,
        Self::Labels,
        Self::Dlq,
        Self::Alerts,
    ];

    /// The first subject token of every message in the stream.
    pub fn subject_prefix(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Enriched => "enriched",
            Self::Features => "features",
            Self::Predictions => "predictions",
            Self::Labels => "labels",
            Self::Dlq => "dlq",
            Self::Alerts => "alerts",
        }
    }

    pub fn stream_name(self, names: &StreamSettings) -> &str {
        match self {
            Self::Events => &names.events,
            Self::Enriched => &names.enriched,
            Self::Features => &names.features,
            Self::Predictions => &names.predictions,
            Self::Labels => &names.labels,
            Self::Dlq => &names.dlq,
            Self::Alerts => &names.alerts,
        }
    }
}

/// Subjects, built in one place so every stage spells them the same way.
pub mod subject {
    pub fn events(event_type: &str, partition: u32) -> String {
        format!("events.{event_type}.{partition}")
    }
    pub fn enriched(partition: u32) -> String {
        format!("enriched.{partition}")
    }
    pub fn features(partition: u32) -> String {
        format!("features.{partition}")
    }
    pub fn predictions(model: &str) -> String {
        format!("predictions.{model}")
    }
    pub fn labels(event_type: &str) -> String {
        format!("labels.{event_type}")
    }
    pub fn dlq(stage: &str) -> String {
        format!("dlq.{stage}")
    }
    pub fn alerts(kind: &str) -> String {
        format!("alerts.{kind}")
    }

    /// One stream's subject for each partition, spelled once: a record then
    /// takes a reference count, where formatting its subject cost a string per event.
    pub struct ByPartition {
        subjects: Vec<super::Subject>,
        spell: fn(u32) -> String,
    }

    impl ByPartition {
        pub fn new(partitions: u32, spell: fn(u32) -> String) -> Self {
            Self {
                subjects: (0..partitions).map(|p| spell(p).into()).collect(),
                spell,
            }
        }

        /// The subject of `partition`; one beyond the pipeline's count (a
        /// record from another configuration) is spelled on the spot.
        pub fn get(&self, partition: u32) -> super::Subject {
            match self.subjects.get(partition as usize) {
                Some(subject) => subject.clone(),
                None => (self.spell)(partition).into(),
            }
        }
    }
}

/// The header JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// A message ready to publish: where, under which deduplication id, and in which trace.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: Subject,
    /// Deterministic: the same input always yields the same id, so a replay is dropped by the server.
    pub msg_id: String,
    pub payload: Bytes,
    pub trace: Context,
    /// Headers beyond the id and the trace context (batch marks, see [`crate::batch`]).
    pub headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    pub fn new(
        subject: impl Into<Subject>,
        msg_id: String,
        message: &impl prost::Message,
        trace: Context,
    ) -> Self {
        Self {
            subject: subject.into(),
            msg_id,
            payload: Bytes::from(message.encode_to_vec()),
            trace,
            headers: Vec::new(),
        }
    }

    /// A record for the stage's output stream. It travels in a batch whose id
    /// covers it ([`crate::batch::pack`]), so it needs no id of its own: one
    /// formatted per record was a string per event for nothing.
    pub fn record(subject: Subject, payload: Bytes, trace: Context) -> Self {
        Self {
            subject,
            msg_id: String::new(),
            payload,
            trace,
            headers: Vec::new(),
        }
    }

    /// Its headers on the wire: the id, the trace context and any others.
    pub fn headers(&self) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, self.msg_id.as_str());
        telemetry::inject_into_headers(&self.trace, &mut headers);
        for (name, value) in &self.headers {
            headers.insert(*name, value.as_str());
        }
        headers
    }
}

/// What JetStream said about a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// The server had this `Nats-Msg-Id` already and kept the first copy.
    pub duplicate: bool,
}

/// What became of each message of an atomic batch, in the batch's order: its
/// place in the stream, or why JetStream did not confirm it.
pub type BatchOutcome = Vec<Result<Stored, String>>;

/// A connected client with its JetStream context and the stream names in use.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    streams: StreamSettings,
    /// Connections made so far, the first included: a consumer that sees it
    /// move knows its open pull requests were lost with the old connection.
    connections: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Bus {
    /// Connects, retrying with backoff until the server answers or shutdown.
    pub async fn connect(
        settings: &NatsSettings,
        client_name: &str,
        streams: StreamSettings,
        shutdown: &Shutdown,
    ) -> Result<Self, ChassisError> {
        let mut delay = Duration::from_millis(100);
        let connections = Arc::new(tokio::sync::watch::Sender::new(0));
        loop {
            match try_connect(settings, client_name, connections.clone()).await {
                Ok(client) => {
                    tracing::info!(url = %settings.url, "connected to NATS");
                    let js = jetstream::ContextBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .max_ack_inflight(4096)
                        .backpressure_on_inflight(true)
                        .build(client.clone());
                    return Ok(Self {
                        client,
                        js,
                        streams,
                        connections,
                    });
                }
                Err(message) if !shutdown.is_shutdown() => {
                    tracing::warn!(url = %settings.url, "NATS not reachable yet, retrying in {delay:?}: {message}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(message) => {
                    return Err(ChassisError::Connect {
                        url: settings.url.clone(),
                        message,
                    })
                }
            }
        }
    }

    /// Connections made so far (see the field), and each new one as it is made.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.subscribe()
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn streams(&self) -> &StreamSettings {
        &self.streams
    }

    pub fn stream_name(&self, kind: StreamKind) -> &str {
        kind.stream_name(&self.streams)
    }

    /// Creates or updates the given streams: file storage, S2 compression where
    /// configured, the dedup window, and discard-new so a full stream refuses
    /// rather than silently drops.
    pub async fn provision(&self, kinds: &[StreamKind]) -> Result<(), ChassisError> {
        for &kind in kinds {
            let name = self.stream_name(kind).to_string();
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", kind.subject_prefix())],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::New,
                duplicate_window: Duration::from_secs(self.streams.duplicate_window_secs),
                num_replicas: self.streams.replicas,
                compression: Some(if self.streams.compresses(kind.subject_prefix()) {
                    stream::Compression::S2
                } else {
                    stream::Compression::None
                }),
                max_bytes: self.streams.max_bytes,
                max_messages: self.streams.max_messages,
                // Producers store many messages under one fsync (see [`crate::atomic`]).
                allow_atomic_publish: true,
                ..Default::default()
            };
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(|e| ChassisError::Provision {
                    what: format!("stream {name}"),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Publishes one message and waits until JetStream stored it (or recognised it as a duplicate).
    pub async fn publish_stored(&self, out: &Outgoing) -> Result<Stored, ChassisError> {
        let ack = self
            .send(out)
            .await?
            .await
            .map_err(|e| ChassisError::Publish {
                subject: out.subject.to_string(),
                message: e.to_string(),
            })?;
        Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Sends without waiting for the ack; await the returned future for it.
    pub async fn send(&self, out: &Outgoing) -> Result<PublishAckFuture, ChassisError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(out.payload.clone())
            .headers(out.headers());
        self.js
            .send_publish(out.subject.clone(), publish)
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                    ChassisError::TooLarge {
                        subject: out.subject.to_string(),
                        bytes: out.payload.len(),
                    }
                }
                _ => ChassisError::Publish {
                    subject: out.subject.to_string(),
                    message: e.to_string(),
                },
            })
    }

    /// Sends `outs` (all bound for one stream, at most [`atomic::MAX_MESSAGES`]),
    /// each under its own id, and returns what became of each by `deadline`
    /// ([`BatchOutcome`]), worked out on a task of its own meanwhile.
    ///
    /// From [`atomic::WORTH_IT`] messages on they go as one atomic batch (one
    /// fsync for all); fewer go one by one, pipelined, since a batch's setup
    /// on the server costs more than their fsyncs. A batch the server refuses
    /// whole (one of its ids is stored already, or it cannot take a batch now)
    /// is stored again message by message, so each gets its own answer:
    /// stored, or a duplicate of one stored before. That fallback may store
    /// them behind a later batch; only a retry after a failure comes to it.
    pub async fn send_batch(
        &self,
        outs: Vec<Outgoing>,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, BatchOutcome> {
        let n = outs.len();
        let settling = if n < atomic::WORTH_IT {
            let acks = self.send_one_by_one(&outs, deadline).await;
            tokio::spawn(settle_one_by_one(acks, deadline))
        } else {
            let messages = outs
                .iter()
                .map(|out| (out.subject.clone(), out.headers(), out.payload.clone()))
                .collect();
            let batch_id = atomic::new_batch_id();
            let sending = atomic::send(&self.js, &batch_id, messages);
            let commit = match tokio::time::timeout_at(deadline, sending).await {
                Ok(sent) => sent,
                Err(_) => Err(atomic::AtomicError::Unconfirmed {
                    batch_id,
                    message: "could not be sent in time".into(),
                }),
            };
            tokio::spawn(self.clone().settle_batch(commit, outs, deadline))
        };
        Box::pin(async move {
            settling
                .await
                .unwrap_or_else(|e| vec![Err(format!("the batch's task failed: {e}")); n])
        })
    }

    async fn settle_batch(
        self,
        commit: Result<atomic::Commit, atomic::AtomicError>,
        outs: Vec<Outgoing>,
        deadline: tokio::time::Instant,
    ) -> BatchOutcome {
        let answer = match commit {
            Ok(commit) => commit.wait_until(deadline).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(committed) => (0..outs.len())
                .map(|i| {
                    Ok(Stored {
                        sequence: committed.sequence_of(i),
                        duplicate: false,
                    })
                })
                .collect(),
            Err(
                e @ (atomic::AtomicError::Duplicate { .. } | atomic::AtomicError::Refused { .. }),
            ) => {
                tracing::debug!("{e}; storing its {} messages one by one", outs.len());
                let acks = self.send_one_by_one(&outs, deadline).await;
                settle_one_by_one(acks, deadline).await
            }
            Err(e) => vec![Err(e.to_string()); outs.len()],
        }
    }

    /// Sends each message on its own, without waiting for its ack.
    async fn send_one_by_one(
        &self,
        outs: &[Outgoing],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<PublishAckFuture, String>> {
        let mut acks = Vec::with_capacity(outs.len());
        for out in outs {
            acks.push(
                match tokio::time::timeout_at(deadline, self.send(out)).await {
                    Ok(Ok(ack)) => Ok(ack),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("could not be sent in time".to_string()),
                },
            );
        }
        acks
    }

    /// The durable consumer `durable` on `kind`, delivering (in order) every
    /// message after `after_sequence`.
    ///
    /// The consumer takes no acks: the stage's snapshot holds its position (see
    /// [`crate::stage`]). When the consumer has delivered past `after_sequence`
    /// (the previous process pulled messages its last snapshot does not cover,
    /// or the state was lost), or was made with acks by an older millrace, it is
    /// recreated at `after_sequence + 1`.
    pub async fn resume_consumer(
        &self,
        kind: StreamKind,
        durable: &str,
        filter_subjects: Vec<String>,
        after_sequence: u64,
    ) -> Result<consumer::PullConsumer, ChassisError> {
        let stream_name = self.stream_name(kind).to_string();
        let err = |message: String| ChassisError::Consume {
            stream: stream_name.clone(),
            consumer: durable.to_string(),
            message,
        };
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| err(e.to_string()))?;
        if let Ok(info) = stream.consumer_info(durable).await {
            let in_step = info.config.ack_policy == consumer::AckPolicy::None
                && info.delivered.stream_sequence <= after_sequence;
            if in_step {
                return stream
                    .get_consumer(durable)
                    .await
                    .map_err(|e| err(e.to_string()));
            }
            tracing::info!(
                durable,
                delivered = info.delivered.stream_sequence,
                ack_floor = info.ack_floor.stream_sequence,
                pending = info.num_ack_pending,
                after_sequence,
                "repositioning consumer at the snapshot"
            );
            stream
                .delete_consumer(durable)
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        let deliver_policy = if after_sequence == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after_sequence + 1,
            }
        };
        let config = consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            filter_subjects,
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .map_err(|e| err(e.to_string()))
    }

    pub fn publisher(&self) -> Publisher {
        Publisher {
            bus: self.clone(),
            in_flight: Vec::new(),
            messages_in_flight: 0,
            max_in_flight: 4096,
            stored: None,
        }
    }
}

async fn try_connect(
    settings: &NatsSettings,
    client_name: &str,
    connections: Arc<tokio::sync::watch::Sender<u64>>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // async-nats logs the events itself; counting connections is all this adds.
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Connected) {
                connections.send_modify(|n| *n += 1);
            }
            async {}
        });
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(creds) = &settings.creds_file {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| format!("reading credentials {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.tls_required {
        options = options.require_tls(true);
    }
    options
        .connect(&settings.url)
        .await
        .map_err(|e| e.to_string())
}

/// Pipelined publishing for a stage: what it publishes together goes out
/// grouped by stream through [`Bus::send_batch`] (an atomic batch where a
/// stream has enough: one fsync for many messages where the server syncs
/// every write), without waiting, and
/// [`Publisher::flush`] waits for all their answers at once. A message not
/// confirmed is sent again on its own with the same `Nats-Msg-Id` (so the
/// server stores it once) until it is stored. A stage flushes before each
/// chunk's batches: nothing of a chunk is stored before everything of the
/// chunks before it (see [`crate::batch`]).
pub struct Publisher {
    bus: Bus,
    /// Batches sent, with their messages (to send again if not confirmed).
    in_flight: Vec<(Vec<Outgoing>, BoxFuture<'static, BatchOutcome>)>,
    messages_in_flight: usize,
    max_in_flight: usize,
    stored: Option<prometheus::IntCounter>,
}

/// How long a batch has to be confirmed before its messages are sent again.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

impl Publisher {
    /// Counts every message once it is stored.
    pub fn counting_into(mut self, counter: prometheus::IntCounter) -> Self {
        self.stored = Some(counter);
        self
    }

    pub async fn publish(&mut self, out: Outgoing) -> Result<(), ChassisError> {
        self.publish_all(vec![out]).await
    }

    /// Sends `outs` grouped by the stream they go to ([`batches_by_stream`]).
    pub async fn publish_all(&mut self, outs: Vec<Outgoing>) -> Result<(), ChassisError> {
        let max_payload = self.bus.client.server_info().max_payload;
        if let Some(out) = outs.iter().find(|o| o.payload.len() > max_payload) {
            return Err(ChassisError::TooLarge {
                subject: out.subject.to_string(),
                bytes: out.payload.len(),
            });
        }
        for chunk in batches_by_stream(outs, |out| out.subject.as_str()) {
            if self.messages_in_flight + chunk.len() > self.max_in_flight {
                self.flush().await?;
            }
            let deadline = tokio::time::Instant::now() + BATCH_TIMEOUT;
            let outcome = self.bus.send_batch(chunk.clone(), deadline).await;
            self.messages_in_flight += chunk.len();
            self.in_flight.push((chunk, outcome));
        }
        Ok(())
    }

    /// Waits until every published message is stored.
    pub async fn flush(&mut self) -> Result<(), ChassisError> {
        self.messages_in_flight = 0;
        for (outs, outcome) in std::mem::take(&mut self.in_flight) {
            let outcome = outcome.await;
            for (out, result) in outs.iter().zip(outcome) {
                if let Err(e) = result {
                    tracing::warn!(subject = %out.subject, msg_id = %out.msg_id, "publish not acknowledged, resending: {e}");
                    self.resend_until_stored(out).await;
                }
                if let Some(counter) = &self.stored {
                    counter.inc();
                }
            }
        }
        Ok(())
    }

    /// Messages sent and not yet known to be stored.
    pub fn in_flight(&self) -> usize {
        self.messages_in_flight
    }

    async fn resend_until_stored(&self, out: &Outgoing) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.bus.publish_stored(out).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// The answers to messages sent one by one, each awaited until `deadline`.
async fn settle_one_by_one(
    acks: Vec<Result<PublishAckFuture, String>>,
    deadline: tokio::time::Instant,
) -> BatchOutcome {
    let mut stored = Vec::with_capacity(acks.len());
    for ack in acks {
        let ack = match ack {
            Ok(ack) => tokio::time::timeout_at(deadline, ack.into_future()).await,
            Err(why) => {
                stored.push(Err(why));
                continue;
            }
        };
        stored.push(match ack {
            Ok(Ok(ack)) => Ok(Stored {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no acknowledgement in time".to_string()),
        });
    }
    stored
}

/// `items` grouped by the stream their subject names (its first token; the
/// streams in order of first appearance, the items in their order within
/// each) and cut into batches of at most [`atomic::MAX_MESSAGES`]: what
/// [`Bus::send_batch`] takes.
pub fn batches_by_stream<T>(
    items: impl IntoIterator<Item = T>,
    subject: impl Fn(&T) -> &str,
) -> Vec<Vec<T>> {
    let mut by_stream: Vec<(String, Vec<T>)> = Vec::new();
    for item in items {
        let token = subject(&item).split('.').next().unwrap_or_default();
        match by_stream.iter_mut().find(|(t, _)| t == token) {
            Some((_, group)) => group.push(item),
            None => by_stream.push((token.to_string(), vec![item])),
        }
    }
    let mut batches = Vec::new();
    for (_, group) in by_stream {
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            batches.push(group.by_ref().take(atomic::MAX_MESSAGES).collect());
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn batches_group_by_stream_in_order_and_hold_at_most_the_servers_limit() {
        let subjects: Vec<String> = (0..2_500)
            .map(|i| match i % 3 {
                0 => format!("events.t.{i}"),
                1 => "labels.t".to_string(),
                _ => "dlq.ingest".to_string(),
            })
            .collect();
        let batches = super::batches_by_stream(subjects.iter().enumerate(), |(_, s)| s.as_str());
        let shape: Vec<(&str, usize)> = batches
            .iter()
            .map(|b| (b[0].1.split('.').next().unwrap_or_default(), b.len()))
            .collect();
        assert_eq!(
            shape,
            vec![("events", 834), ("labels", 833), ("dlq", 833)],
            "first appearance order, under 1,000 each"
        );
        let big = super::batches_by_stream(0..2_500, |_| "events.t.0");
        assert_eq!(
            big.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1_000, 1_000, 500]
        );
        assert_eq!(big.concat(), (0..2_500).collect::<Vec<_>>(), "order kept");
        for batch in &batches {
            assert!(
                batch.windows(2).all(|w| w[0].0 < w[1].0),
                "order within a stream"
            );
        }
    }

    #[test]
    fn partition_subjects_are_spelled_as_the_subject_functions_spell_them() {
        let enriched = subject::ByPartition::new(4, subject::enriched);
        for p in 0..4 {
            assert_eq!(enriched.get(p).as_str(), subject::enriched(p));
        }
        // A record from a pipeline with more partitions still gets its own subject.
        assert_eq!(enriched.get(9).as_str(), "enriched.9");
        assert_eq!(
            subject::ByPartition::new(0, subject::features)
                .get(0)
                .as_str(),
            "features.0"
        );
    }
}
