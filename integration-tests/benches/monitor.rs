//! The monitor benchmark: how many scored events per second monitor sustains, next to
//! what JetStream itself does with the same messages on the same machine, and the
//! memory it takes to do it.
//!
//! One scored event is a feature vector of 20 features (18 numeric, 2 categorical),
//! predictions from 3 model versions and its label, written as the pipeline writes them:
//! feature-state and inference pack their records into `millrace.v1.Batch` messages of up
//! to `MONITOR_BENCH_BATCH` records (default 128; header `Millrace-Batch`, a deterministic
//! `Nats-Msg-Id` per batch, each item with its event's `traceparent`, or an empty one with
//! `MONITOR_BENCH_TRACES=0`), one batch per subject (`features.<partition>`,
//! `predictions.fraud`); ingest publishes one LABELS message per label. The run:
//! - (a) publishes N events (`MONITOR_BENCH_EVENTS`, default 50,000) with `Nats-Msg-Id`,
//!   512 acks in flight, one stream after the other: JetStream's publish rate, what the
//!   pipeline upstream can feed monitor at most;
//! - (b) consumes all three streams at once with pull consumers, no acks, no decoding:
//!   the raw consume rate, the ceiling for any consumer of these streams; (b2) the same,
//!   unpacking every batch and decoding every record;
//! - (c) starts the release monitor (alert rules on drift, quality and latency, default
//!   windows) and times it from ready to having applied every record: the backlog drain
//!   rate, the most it can sustain, and its ratio to (a);
//! - (d) prints monitor's CPU per event, peak RSS (VmHWM) and its snapshot size and time.
//!
//! The release binary comes from `MILLRACE_BIN_DIR` (default `target/release`): build it
//! with `cargo build --release -p millrace-monitor`, then `cargo bench -p
//! millrace-integration-tests --bench monitor`. Client, monitor and nats-server share the
//! machine's cores. Monitor snapshots at the production cadence (every second, and never
//! sooner than nine times the last snapshot's cost), not the tests' 200 ms.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use millrace_integration_tests::monitor::{
    create_stream, process_cpu_seconds, process_memory_mib, publish_raw, Gaussian, RawMessage,
};
use millrace_integration_tests::nats::records;
use millrace_integration_tests::service::{ServiceProcess, ServiceSettings};
use millrace_integration_tests::{metric_value, metrics, test_dir, NatsServer, Service};
use millrace_proto::v1::{FeatureVector, Label, Prediction};
use prost::Message as _;
use tokio::time::Instant;

const FEATURES: usize = 20;
const PARTITIONS: usize = 4;
const VERSIONS: [&str; 3] = ["1", "2", "3"];
const STREAMS: [(&str, &str); 3] = [
    ("FEATURES", "features"),
    ("PREDICTIONS", "predictions"),
    ("LABELS", "labels"),
];

fn main() -> Result<()> {
    millrace_integration_tests::bench::main(run)
}

fn pipeline_toml() -> String {
    let inputs: Vec<String> = (0..FEATURES)
        .map(|f| format!("{{ name = \"f{f:02}\", weight = 0.01 }}"))
        .collect();
    format!(
        r#"[pipeline]
name = "bench"
partitions = 4

[model]
name = "fraud"
version = "1"
inputs = [{}]

[monitor.drift.features.f18]
kind = "categorical"
[monitor.drift.features.f19]
kind = "categorical"

[[monitor.alerts]]
name = "feature_drift"
metric = "psi"
op = ">"
hysteresis = 0.1

[[monitor.alerts]]
name = "score_drift"
metric = "score_psi"
op = ">"

[[monitor.alerts]]
name = "low_auc"
metric = "roc_auc"
op = "<"
threshold = 0.6

[[monitor.alerts]]
name = "slow_predictions"
metric = "event_to_prediction_seconds"
op = ">"
threshold = 5.0
"#,
        inputs.join(", ")
    )
}

/// How the bench packs its records; from the environment.
struct Packing {
    /// Records per batch message.
    batch: usize,
    /// Whether items carry a traceparent.
    traces: bool,
}

/// The records of one subject waiting to be packed, and the batches packed so far.
struct Batcher<M> {
    stage: &'static str,
    subject: String,
    pending: Vec<(M, String)>,
    batches: usize,
}

impl<M: prost::Message> Batcher<M> {
    fn new(stage: &'static str, subject: String) -> Self {
        Self {
            stage,
            subject,
            pending: Vec::new(),
            batches: 0,
        }
    }

    fn push(
        &mut self,
        record: M,
        traceparent: String,
        packing: &Packing,
        out: &mut Vec<RawMessage>,
    ) {
        self.pending.push((record, traceparent));
        if self.pending.len() >= packing.batch {
            self.flush(out);
        }
    }

    /// Packs what waits into one batch with a deterministic id, as a stage does.
    fn flush(&mut self, out: &mut Vec<RawMessage>) {
        if self.pending.is_empty() {
            return;
        }
        let id = format!("{}:{}:{}", self.stage, self.subject, self.batches);
        out.push(RawMessage::batch(self.subject.clone(), id, &self.pending));
        self.pending.clear();
        self.batches += 1;
    }
}

/// What the bench publishes: per stream, its messages, and the batchers filling them.
struct Messages {
    /// FEATURES, PREDICTIONS, LABELS.
    streams: [Vec<RawMessage>; 3],
    features: Vec<Batcher<FeatureVector>>,
    predictions: Batcher<Prediction>,
}

impl Messages {
    fn new() -> Self {
        Self {
            streams: Default::default(),
            features: (0..PARTITIONS)
                .map(|p| Batcher::new("feature-state", format!("features.{p}")))
                .collect(),
            predictions: Batcher::new("inference", "predictions.fraud".into()),
        }
    }

    fn finish(mut self) -> [Vec<RawMessage>; 3] {
        for b in &mut self.features {
            b.flush(&mut self.streams[0]);
        }
        self.predictions.flush(&mut self.streams[1]);
        self.streams
    }
}

/// A W3C traceparent for event `i`, span `span` of its trace (deterministic, never all zero).
fn traceparent(i: usize, span: u64) -> String {
    let mix = |x: u64| {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) | 1
    };
    let trace = mix(i as u64);
    format!(
        "00-{trace:016x}{:016x}-{:016x}-01",
        mix(trace),
        mix(trace ^ span)
    )
}

/// The records of event `i`: its feature vector, 3 predictions and its label.
fn event(i: usize, g: &mut Gaussian, packing: &Packing, messages: &mut Messages) {
    let id = format!("bench-{i:07}");
    let now = millrace_integration_tests::now_us();
    let trace = |span: u64| {
        if packing.traces {
            traceparent(i, span)
        } else {
            String::new()
        }
    };
    let mut values: Vec<f64> = (0..FEATURES - 2)
        .map(|f| g.sample(f as f64 * 10.0, 1.0 + f as f64))
        .collect();
    values.push((g.uniform() * 24.0).floor());
    values.push((g.uniform() * 7.0).floor());
    let partition = i % PARTITIONS;
    let vector = FeatureVector {
        event_id: id.clone(),
        event_type: "order_placed".into(),
        entity_key: format!("customer-{:03}", i % 500),
        partition: partition as u32,
        event_time_us: now - 50_000,
        ingest_time_us: now - 40_000,
        feature_time_us: now - 20_000,
        names: (0..FEATURES).map(|f| format!("f{f:02}")).collect(),
        values,
        label_key: id.clone(),
    };
    let entity_key = vector.entity_key.clone();
    messages.features[partition].push(vector, trace(1), packing, &mut messages.streams[0]);
    let positive = g.uniform() < 0.2;
    for (k, v) in VERSIONS.iter().enumerate() {
        let score = (if positive { 0.6 } else { 0.35 } + g.sample(0.0, 0.15)).clamp(0.0001, 0.9999);
        let p = Prediction {
            event_id: id.clone(),
            model: "fraud".into(),
            model_version: (*v).into(),
            score,
            predicted_positive: score >= 0.5,
            entity_key: entity_key.clone(),
            event_time_us: now - 50_000,
            ingest_time_us: now - 40_000,
            predict_time_us: now,
            label_key: id.clone(),
        };
        messages
            .predictions
            .push(p, trace(2 + k as u64), packing, &mut messages.streams[1]);
    }
    let label = Label {
        event_id: format!("label-{id}"),
        label_key: id.clone(),
        value: if positive { 1.0 } else { 0.0 },
        event_time_us: now + 1_000_000,
        ingest_time_us: now + 1_000_000,
        event_type: "outcome".into(),
        observed: 0.0,
    };
    messages.streams[2].push(RawMessage::new(
        "labels.outcome",
        format!("ingest:label-{id}"),
        &label,
    ));
}

/// Consumes every stream to its end at once (no acks); with `decode`, unpacks every batch
/// and decodes every record as its type. Answers the seconds.
async fn raw_consume(js: &jetstream::Context, counts: [u64; 3], decode: bool) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, ((name, _), total)) in STREAMS.iter().zip(counts).enumerate() {
        let stream = js.get_stream(*name).await.context("stream")?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("consumer on {name}"))?;
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(512)
                .messages()
                .await?;
            let (mut seen, mut records) = (0u64, 0usize);
            while seen < total {
                match messages.next().await {
                    Some(Ok(m)) => {
                        seen += 1;
                        if decode {
                            records += decode_records(index, &m)?;
                        }
                    }
                    Some(Err(e)) => eprintln!("raw consumer: {e}"),
                    None => break,
                }
            }
            anyhow::Ok((seen, records))
        }));
    }
    for t in tasks {
        let (seen, _) = t.await??;
        ensure!(seen > 0, "a raw consumer saw nothing");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Unpacks one message and decodes each record as stream `index`'s type; answers how many.
fn decode_records(index: usize, m: &jetstream::Message) -> Result<usize> {
    let payloads = records(m.headers.as_ref(), m.payload.clone())?;
    let n = payloads.len();
    for payload in payloads {
        match index {
            0 => drop(FeatureVector::decode(payload)?),
            1 => drop(Prediction::decode(payload)?),
            _ => drop(Label::decode(payload)?),
        }
    }
    Ok(n)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Result<()> {
    let n = env_number("MONITOR_BENCH_EVENTS", 50_000);
    let packing = Packing {
        batch: env_number("MONITOR_BENCH_BATCH", 128).max(1),
        traces: env_number("MONITOR_BENCH_TRACES", 1) != 0,
    };
    eprintln!(
        "monitor bench: {n} events × (1 vector of {FEATURES} features + {} predictions + 1 label), \
         vectors and predictions in batches of {}{}, binaries from {}",
        VERSIONS.len(),
        packing.batch,
        if packing.traces { " with traceparents" } else { " without traceparents" },
        millrace_integration_tests::bench::release_bin_dir().display()
    );
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await?;
    for (name, prefix) in STREAMS {
        create_stream(&js, name, prefix).await?;
    }

    let mut g = Gaussian::new(2013);
    let mut building = Messages::new();
    for i in 0..n {
        event(i, &mut g, &packing, &mut building);
    }
    let messages = building.finish();
    let counts = messages.each_ref().map(|m| m.len() as u64);
    let message_total: u64 = counts.iter().sum();
    let records = messages
        .each_ref()
        .map(|m| m.iter().map(RawMessage::records).sum::<u64>());
    let total: u64 = records.iter().sum();
    ensure!(
        records == [n as u64, (n * VERSIONS.len()) as u64, n as u64],
        "packed {records:?} records"
    );
    let bytes: usize = messages.iter().flatten().map(|m| m.payload.len()).sum();

    // The three streams advance together, as they do live: each message goes
    // out at its place in its stream's share of the events.
    let mut order: Vec<(f64, usize, usize)> = Vec::with_capacity(message_total as usize);
    for (s, stream) in messages.iter().enumerate() {
        let mut before = 0;
        for (k, m) in stream.iter().enumerate() {
            order.push((before as f64 / records[s].max(1) as f64, s, k));
            before += m.records();
        }
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let started = Instant::now();
    publish_raw(&js, order.iter().map(|&(_, s, k)| messages[s][k].clone())).await?;
    let publish_s = started.elapsed().as_secs_f64();
    drop(messages);

    let raw_s = raw_consume(&js, counts, false).await?;
    let decode_s = raw_consume(&js, counts, true).await?;

    let dir = test_dir("monitor-bench")?;
    let pipeline_path = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline_path, pipeline_toml())?;
    let settings = ServiceSettings {
        nats_url: nats.url(),
        pipeline_path,
        dir: dir.path().to_path_buf(),
        otlp_endpoint: None,
    };
    // The production cadence, not the tests' 200 ms.
    let mut monitor = ServiceProcess::unstarted(Service::Monitor, &settings)?;
    monitor.set_env("MILLRACE_SNAPSHOT_INTERVAL_MS", "1000");
    monitor.start()?;
    monitor.wait_ready().await?;
    let started = Instant::now();
    let pid = monitor.pid().context("monitor runs")?;
    let cpu_before = process_cpu_seconds(pid)?;
    let mut peak_rss = 0.0f64;
    loop {
        let text = metrics(monitor.http_addr()).await?;
        // Counts records: a batch's items one each.
        let consumed =
            metric_value(&text, "millrace_stage_messages_consumed_total", &[]).unwrap_or_default();
        if let Ok((rss, _)) = process_memory_mib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        if consumed >= total as f64 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "monitor applied {consumed} of {total} records in 10 minutes; log:\n{}",
            monitor.log_tail(30)
        );
        // Scraping /metrics costs monitor some work: not too often.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let monitor_s = started.elapsed().as_secs_f64();
    let monitor_cpu_s = process_cpu_seconds(pid)? - cpu_before;
    let (rss, hwm) = process_memory_mib(pid)?;
    // Let the last snapshot land, then read what the snapshots cost.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics(monitor.http_addr()).await?;
    let snap_count =
        metric_value(&text, "millrace_stage_snapshot_seconds_count", &[]).unwrap_or_default();
    let snap_sum =
        metric_value(&text, "millrace_stage_snapshot_seconds_sum", &[]).unwrap_or_default();
    let snap_bytes = metric_value(&text, "millrace_stage_snapshot_bytes", &[]).unwrap_or_default();
    // Every prediction is joined, still waiting, or counted unmatched. The drain takes
    // the three backlogs a message at a time, and a PREDICTIONS message holds 128
    // predictions where a LABELS one holds one label: predictions run ahead of their
    // labels, past the join's bound (max_pending_predictions), and the oldest are evicted.
    let value =
        |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels).unwrap_or_default();
    let matched = value("millrace_monitor_label_joins_total", &[]);
    let waiting = value(
        "millrace_monitor_label_join_waiting",
        &[("side", "predictions")],
    );
    let unmatched = value("millrace_monitor_predictions_unmatched_total", &[]);
    let predictions = (n * VERSIONS.len()) as f64;
    ensure!(
        matched + waiting + unmatched == predictions,
        "{matched} joined + {waiting} waiting + {unmatched} unmatched != {predictions} predictions"
    );
    let labels_evicted = value(
        "millrace_monitor_labels_unmatched_total",
        &[("reason", "evicted")],
    );
    let predictions_evicted = value(
        "millrace_monitor_predictions_unmatched_total",
        &[("reason", "evicted")],
    );
    let vectors = value("millrace_monitor_feature_vectors_total", &[]);
    ensure!(
        vectors == n as f64,
        "monitor applied {vectors} feature vectors of {n}"
    );
    let per_s = |count: f64, secs: f64| count / secs;
    println!();
    println!(
        "monitor bench ({n} events = {total} records in {message_total} messages, {:.0} B/message; \
         FEATURES {} msgs, PREDICTIONS {} msgs, LABELS {} msgs)",
        bytes as f64 / message_total as f64,
        counts[0],
        counts[1],
        counts[2]
    );
    println!(
        "{:<58} {:>10} {:>12} {:>12}",
        "", "events/s", "messages/s", "records/s"
    );
    let row = |what: &str, secs: f64| {
        println!(
            "{what:<58} {:>10.0} {:>12.0} {:>12.0}",
            per_s(n as f64, secs),
            per_s(message_total as f64, secs),
            per_s(total as f64, secs)
        );
    };
    row(
        "(a) JetStream publish, Nats-Msg-Id, 512 in flight",
        publish_s,
    );
    row(
        "(b) JetStream raw consume, 3 streams at once, no acks",
        raw_s,
    );
    row(
        "(b2) the same, unpacking and decoding every record",
        decode_s,
    );
    row(
        "(c) monitor drain: 20 features, 3 versions, 4 rules",
        monitor_s,
    );
    println!(
        "monitor drain / publish rate: {:.2}; monitor drain / raw consume: {:.2}; / decode: {:.2}",
        publish_s / monitor_s,
        raw_s / monitor_s,
        decode_s / monitor_s
    );
    println!(
        "peak RSS {:.1} MiB (VmHWM {:.1} MiB, {:.1} MiB at the end)",
        peak_rss.max(hwm),
        hwm,
        rss
    );
    println!(
        "monitor CPU: {monitor_cpu_s:.2} s for the drain, {:.1} µs per event: {:.0} events per CPU-second",
        monitor_cpu_s * 1e6 / n as f64,
        n as f64 / monitor_cpu_s
    );
    println!(
        "snapshots: {snap_count:.0} in {monitor_s:.1} s, {:.1} ms each on average, last {:.1} MiB",
        1000.0 * snap_sum / snap_count.max(1.0),
        snap_bytes / (1024.0 * 1024.0)
    );
    println!(
        "label join: {matched:.0} of {predictions:.0} predictions joined; evicted by the store bounds \
         as the backlogs drained at different paces: {predictions_evicted:.0} predictions, {labels_evicted:.0} labels"
    );
    Ok(())
}
