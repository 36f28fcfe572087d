//! What the running suite holds, read once: inference's model registry over
//! gRPC, then ALERTS, FEATURES, PREDICTIONS and the DLQ from NATS, each with
//! an ephemeral consumer that takes no acks (nothing is left behind on the
//! streams). Records are folded into counts as they arrive, so memory does not
//! grow with the streams.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy},
};
use futures::StreamExt as _;
use millrace_chassis::batch;
use millrace_chassis::bus::{Bus, StreamKind};
use millrace_chassis::config::{Service, ServiceEnv, StreamSettings};
use millrace_chassis::shutdown::Shutdown;
use millrace_proto::model_registry_client::ModelRegistryClient;
use millrace_proto::{
    Alert, DeadLetter, FeatureVector, ListModelsRequest, ListModelsResponse, Prediction,
};

use super::stats::{FeatureMonths, Month, Throughput};

/// How long a stream may stay silent while messages are still pending.
const STALL: Duration = Duration::from_secs(30);
/// Messages and bytes one pull asks for: well under the server's 64 MiB a
/// client may have pending, with room for a message of `max_payload` (8 MB).
const PULL_MESSAGES: usize = 256;
const PULL_BYTES: usize = 16 * 1024 * 1024;
/// Alerts kept whole for the page; past this they are only counted.
const MAX_ALERTS: usize = 10_000;

/// Dead letters of one stage and reason.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub records: u64,
    pub oldest_us: i64,
    pub newest_us: i64,
}

/// Everything the report is made of.
#[derive(Debug, Default)]
pub struct Gathered {
    pub models: ListModelsResponse,
    /// Oldest first, at most [`MAX_ALERTS`].
    pub alerts: Vec<Alert>,
    pub alerts_total: u64,
    pub features: FeatureMonths,
    pub vectors: u64,
    /// Earliest and latest event time of the feature vectors.
    pub event_time_us: Option<(i64, i64)>,
    pub throughput: Throughput,
    /// By (stage, reason).
    pub dead_letters: BTreeMap<(String, String), Tally>,
    pub events_stored: Option<u64>,
    pub labels_stored: Option<u64>,
    /// Streams that do not exist on this server (read as empty).
    pub missing_streams: Vec<String>,
    /// Messages left out because they did not decode, per stream, said for people.
    pub skipped: Vec<String>,
}

/// Reads the registry of the inference service at `url` (`model` empty: the one it serves).
pub async fn models(url: &str, model: &str) -> anyhow::Result<ListModelsResponse> {
    let mut client = ModelRegistryClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to inference at {url}"))?
        // Versions carry their training distributions: more than tonic's 4 MiB default.
        .max_decoding_message_size(64 * 1024 * 1024);
    Ok(client
        .list_models(ListModelsRequest {
            model: model.to_string(),
        })
        .await
        .with_context(|| format!("ListModels at inference {url}"))?
        .into_inner())
}

/// Connects to NATS the way the services and `millrace dlq` do (their reading
/// of the `NATS_*` variables: token, credentials, TLS), failing at once
/// instead of retrying when the server does not answer.
pub async fn connect(url: &str, streams: StreamSettings) -> anyhow::Result<Bus> {
    let mut settings = ServiceEnv::from_lookup(Service::Ingest, |name| {
        name.starts_with("NATS_")
            .then(|| std::env::var(name).ok())
            .flatten()
    })?
    .nats;
    settings.url = url.to_string();
    let (shutdown, fire) = Shutdown::manual();
    fire.trigger();
    Ok(Bus::connect(&settings, "millrace-report", streams, &shutdown).await?)
}

/// Reads the four streams into `into` (whose `models` the caller set).
pub async fn streams(bus: &Bus, into: &mut Gathered) -> anyhow::Result<()> {
    let js = bus.jetstream();
    let name = |kind| bus.stream_name(kind).to_string();

    into.events_stored = stored(js, &name(StreamKind::Events)).await?;
    into.labels_stored = stored(js, &name(StreamKind::Labels)).await?;

    let g = &mut *into;
    let alerts = name(StreamKind::Alerts);
    let found = each_record::<Alert>(js, &alerts, &mut g.skipped, |alert| {
        g.alerts_total += 1;
        if g.alerts.len() < MAX_ALERTS {
            g.alerts.push(alert);
        }
    })
    .await?;
    note_missing(&mut g.missing_streams, &alerts, found);
    g.alerts.sort_by_key(|a| a.time_us);

    let features = name(StreamKind::Features);
    let found = each_record::<FeatureVector>(js, &features, &mut g.skipped, |v| {
        g.vectors += 1;
        let t = v.event_time_us;
        g.event_time_us = Some(
            g.event_time_us
                .map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))),
        );
        let month = Month::of_us(t);
        for (name, &value) in v.names.iter().zip(&v.values) {
            g.features.add(month, name, value);
        }
    })
    .await?;
    note_missing(&mut g.missing_streams, &features, found);

    let predictions = name(StreamKind::Predictions);
    let found = each_record::<Prediction>(js, &predictions, &mut g.skipped, |p| {
        g.throughput.record(p.predict_time_us, p.ingest_time_us);
    })
    .await?;
    note_missing(&mut g.missing_streams, &predictions, found);

    let dlq = name(StreamKind::Dlq);
    let found = each_message(js, &dlq, |subject, headers, payload| {
        let stage = subject.strip_prefix("dlq.").unwrap_or(subject);
        let letters = batch::decode_records::<DeadLetter>(headers, payload).unwrap_or_else(|_| {
            // Counted, not hidden: `millrace dlq list` shows such a record as unreadable.
            vec![DeadLetter {
                reason: "unreadable".into(),
                ..Default::default()
            }]
        });
        for letter in letters {
            let stage = if letter.stage.is_empty() {
                stage.to_string()
            } else {
                letter.stage
            };
            let tally = g.dead_letters.entry((stage, letter.reason)).or_default();
            if tally.records == 0 || letter.time_us < tally.oldest_us {
                tally.oldest_us = letter.time_us;
            }
            tally.newest_us = tally.newest_us.max(letter.time_us);
            tally.records += 1;
        }
    })
    .await?;
    note_missing(&mut g.missing_streams, &dlq, found);
    Ok(())
}

fn note_missing(missing: &mut Vec<String>, stream: &str, found: Option<u64>) {
    if found.is_none() {
        missing.push(stream.to_string());
    }
}

/// Messages `stream` holds now; `None` when there is no such stream.
async fn stored(js: &jetstream::Context, stream: &str) -> anyhow::Result<Option<u64>> {
    let Some(mut handle) = open(js, stream).await? else {
        return Ok(None);
    };
    let info = handle
        .info()
        .await
        .with_context(|| format!("reading the state of stream {stream}"))?;
    Ok(Some(info.state.messages))
}

async fn open(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Option<jetstream::stream::Stream>> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    match js.get_stream(stream).await {
        Ok(handle) => Ok(Some(handle)),
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("opening stream {stream}")),
    }
}

/// Every record of `stream`, decoded as `M` (batches unpacked by the chassis'
/// decoder): the number of messages read, or `None` when there is no such stream.
///
/// A message that does not decode is skipped and noted in `skipped` (the
/// report says so), rather than costing the whole report.
async fn each_record<M: prost::Message + Default>(
    js: &jetstream::Context,
    stream: &str,
    skipped: &mut Vec<String>,
    mut apply: impl FnMut(M),
) -> anyhow::Result<Option<u64>> {
    let (mut bad, mut first) = (0u64, None);
    let found = each_message(
        js,
        stream,
        |subject, headers, payload| match batch::decode_records::<M>(headers, payload) {
            Ok(records) => records.into_iter().for_each(&mut apply),
            Err(e) => {
                bad += 1;
                first.get_or_insert_with(|| format!("on {subject}: {e}"));
            }
        },
    )
    .await?;
    if let Some(first) = first {
        skipped.push(format!(
            "{stream}: {bad} messages did not decode and were skipped (the first {first})"
        ));
    }
    Ok(found)
}

/// Every message `stream` holds when the read starts, oldest first; the
/// number read, or `None` when there is no such stream.
///
/// Read with an ephemeral pull consumer that takes no acks, deleted at the
/// end (and by the server after a minute idle, should this process die).
/// Each pull asks for at most [`PULL_BYTES`]: FEATURES holds batches of
/// hundreds of kilobytes, and an ordered consumer's 500-message pulls
/// outran the server's 64 MiB allowance for a client, which then dropped
/// messages and stalled the read (a slow consumer).
async fn each_message(
    js: &jetstream::Context,
    stream: &str,
    mut apply: impl FnMut(&str, Option<&async_nats::HeaderMap>, bytes::Bytes),
) -> anyhow::Result<Option<u64>> {
    let Some(handle) = open(js, stream).await? else {
        return Ok(None);
    };
    let consumer: jetstream::consumer::PullConsumer = handle
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            description: Some("millrace report".into()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating a consumer on stream {stream}"))?;
    let name = consumer.cached_info().name.clone();
    let read = read_all(&consumer, stream, &mut apply).await;
    // Best effort: the inactivity threshold removes it anyway.
    let _ = handle.delete_consumer(&name).await;
    read.map(Some)
}

async fn read_all(
    consumer: &jetstream::consumer::PullConsumer,
    stream: &str,
    apply: &mut impl FnMut(&str, Option<&async_nats::HeaderMap>, bytes::Bytes),
) -> anyhow::Result<u64> {
    if consumer.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_MESSAGES)
        .max_bytes_per_batch(PULL_BYTES)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .with_context(|| format!("reading stream {stream}"))?;
    let mut read = 0;
    loop {
        let next = tokio::time::timeout(STALL, messages.next())
            .await
            .with_context(|| format!("stream {stream} stopped delivering for {STALL:?}"))?;
        let Some(message) = next else { break };
        let message = message.with_context(|| format!("reading stream {stream}"))?;
        let pending = message
            .info()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("a message of stream {stream} without its metadata"))?
            .pending;
        apply(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        );
        read += 1;
        if pending == 0 {
            break;
        }
    }
    Ok(read)
}
