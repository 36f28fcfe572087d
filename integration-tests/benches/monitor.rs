//! The monitor benchmark: how many scored events per second monitor sustains, next to
//! what JetStream itself delivers of the same messages on the same machine, and the
//! memory it takes to do it.
//!
//! One scored event is five messages, as the pipeline writes them: a feature vector of
//! 20 features (18 numeric, 2 categorical) on FEATURES, predictions from 3 model versions
//! on PREDICTIONS, and its label on LABELS. The run:
//! - (a) publishes N events (`MONITOR_BENCH_EVENTS`, default 50,000) with `Nats-Msg-Id`,
//!   512 acks in flight: JetStream's publish rate;
//! - (b) consumes all three streams at once with pull consumers, no acks, no decoding:
//!   the raw consume rate, the ceiling for any consumer of these streams;
//! - (c) starts the release monitor (alert rules on drift, quality and latency, default
//!   windows) and times it from ready to having applied every message: the backlog drain
//!   rate, the most it can sustain;
//! - (d) prints monitor's peak RSS (VmHWM) and its snapshot size and time.
//!
//! The release binary comes from `MILLRACE_BIN_DIR` (default `target/release`): build it
//! with `cargo build --release -p millrace-monitor`, then `cargo bench -p
//! millrace-integration-tests --bench monitor`. Client, monitor and nats-server share the
//! machine's cores. The harness snapshots every 200 ms (production: 1 s), so the drain
//! pays five times the snapshot cost it would in production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use millrace_integration_tests::monitor::{
    create_stream, process_cpu_seconds, process_memory_mib, publish_raw, Gaussian, RawMessage,
};
use millrace_integration_tests::service::{ServiceProcess, ServiceSettings};
use millrace_integration_tests::{metric_value, metrics, test_dir, NatsServer, Service};
use millrace_proto::v1::{FeatureVector, Label, Prediction};
use tokio::time::Instant;

const FEATURES: usize = 20;
const VERSIONS: [&str; 3] = ["1", "2", "3"];
const STREAMS: [(&str, &str); 3] = [
    ("FEATURES", "features"),
    ("PREDICTIONS", "predictions"),
    ("LABELS", "labels"),
];

fn main() -> Result<()> {
    // The harness spawns services from MILLRACE_BIN_DIR; set before any thread starts.
    std::env::set_var("MILLRACE_BIN_DIR", release_bin_dir());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run())
}

/// `MILLRACE_BIN_DIR`, else the workspace's `target/release`.
fn release_bin_dir() -> PathBuf {
    match std::env::var_os("MILLRACE_BIN_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
    }
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

/// The five messages of event `i`.
fn event(i: usize, g: &mut Gaussian, messages: &mut [Vec<RawMessage>; 3]) {
    let id = format!("bench-{i:07}");
    let now = millrace_integration_tests::now_us();
    let mut values: Vec<f64> = (0..FEATURES - 2)
        .map(|f| g.sample(f as f64 * 10.0, 1.0 + f as f64))
        .collect();
    values.push((g.uniform() * 24.0).floor());
    values.push((g.uniform() * 7.0).floor());
    let vector = FeatureVector {
        event_id: id.clone(),
        event_type: "order_placed".into(),
        entity_key: format!("customer-{:03}", i % 500),
        partition: (i % 4) as u32,
        event_time_us: now - 50_000,
        ingest_time_us: now - 40_000,
        feature_time_us: now - 20_000,
        names: (0..FEATURES).map(|f| format!("f{f:02}")).collect(),
        values,
        label_key: id.clone(),
    };
    messages[0].push(RawMessage::new(
        format!("features.{}", i % 4),
        format!("feature-state:{id}"),
        &vector,
    ));
    let positive = g.uniform() < 0.2;
    for v in VERSIONS {
        let score = (if positive { 0.6 } else { 0.35 } + g.sample(0.0, 0.15)).clamp(0.0001, 0.9999);
        let p = Prediction {
            event_id: id.clone(),
            model: "fraud".into(),
            model_version: v.into(),
            score,
            predicted_positive: score >= 0.5,
            entity_key: vector.entity_key.clone(),
            event_time_us: now - 50_000,
            ingest_time_us: now - 40_000,
            predict_time_us: now,
            label_key: id.clone(),
        };
        messages[1].push(RawMessage::new(
            "predictions.fraud",
            format!("inference:{id}:fraud:{v}"),
            &p,
        ));
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
    messages[2].push(RawMessage::new(
        "labels.outcome",
        format!("ingest:label-{id}"),
        &label,
    ));
}

/// Consumes every stream to its end at once (no acks, no decoding); answers the seconds.
async fn raw_consume(js: &jetstream::Context, counts: [u64; 3]) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((name, _), total) in STREAMS.iter().zip(counts) {
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
            let mut seen = 0u64;
            let mut bytes = 0usize;
            while seen < total {
                match messages.next().await {
                    Some(Ok(m)) => {
                        seen += 1;
                        bytes += m.payload.len();
                    }
                    Some(Err(e)) => eprintln!("raw consumer: {e}"),
                    None => break,
                }
            }
            anyhow::Ok((seen, bytes))
        }));
    }
    for t in tasks {
        let (seen, _) = t.await??;
        ensure!(seen > 0, "a raw consumer saw nothing");
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn run() -> Result<()> {
    let n: usize = std::env::var("MONITOR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    eprintln!(
        "monitor bench: {n} events × (1 vector of {FEATURES} features + {} predictions + 1 label), binaries from {}",
        VERSIONS.len(),
        release_bin_dir().display()
    );
    let nats = NatsServer::start().await?;
    let js = nats.jetstream().await?;
    for (name, prefix) in STREAMS {
        create_stream(&js, name, prefix).await?;
    }

    let mut g = Gaussian::new(2013);
    let mut messages: [Vec<RawMessage>; 3] = Default::default();
    for i in 0..n {
        event(i, &mut g, &mut messages);
    }
    let counts = messages.each_ref().map(|m| m.len() as u64);
    let total: u64 = counts.iter().sum();
    let bytes: usize = messages.iter().flatten().map(|m| m.payload.len()).sum();

    let started = Instant::now();
    for batch in &messages {
        publish_raw(&js, batch.iter().cloned()).await?;
    }
    let publish_s = started.elapsed().as_secs_f64();
    drop(messages);

    let raw_s = raw_consume(&js, counts).await?;

    let dir = test_dir("monitor-bench")?;
    let pipeline_path = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline_path, pipeline_toml())?;
    let settings = ServiceSettings {
        nats_url: nats.url(),
        pipeline_path,
        dir: dir.path().to_path_buf(),
        otlp_endpoint: None,
    };
    let mut monitor = ServiceProcess::spawn(Service::Monitor, &settings)?;
    monitor.wait_ready().await?;
    let started = Instant::now();
    let pid = monitor.pid().context("monitor runs")?;
    let cpu_before = process_cpu_seconds(pid)?;
    let mut peak_rss = 0.0f64;
    loop {
        let text = metrics(monitor.http_addr()).await?;
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
            "monitor applied {consumed} of {total} messages in 10 minutes; log:\n{}",
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
    // Every prediction is joined, still waiting, or counted unmatched; with the
    // labels draining ahead of their predictions, the label store may overflow.
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
    let per_s = |count: f64, secs: f64| count / secs;
    println!();
    println!(
        "monitor bench ({n} events = {total} messages, {:.0} B/message)",
        bytes as f64 / total as f64
    );
    println!("{:<58} {:>12} {:>14}", "", "events/s", "messages/s");
    let row = |what: &str, secs: f64| {
        println!(
            "{what:<58} {:>12.0} {:>14.0}",
            per_s(n as f64, secs),
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
        "(c) monitor drain: 20 features, 3 versions, 4 rules",
        monitor_s,
    );
    println!(
        "monitor at {:.0}% of the raw consume rate; peak RSS {:.1} MiB (VmHWM {:.1} MiB, {:.1} MiB at the end)",
        100.0 * raw_s / monitor_s,
        peak_rss.max(hwm),
        hwm,
        rss
    );
    println!(
        "monitor CPU: {monitor_cpu_s:.1} s for the drain, {:.1} µs per event: {:.0} events per CPU-second",
        monitor_cpu_s * 1e6 / n as f64,
        n as f64 / monitor_cpu_s
    );
    println!(
        "snapshots: {snap_count:.0} in {monitor_s:.1} s, {:.1} ms each on average, last {:.1} MiB",
        1000.0 * snap_sum / snap_count.max(1.0),
        snap_bytes / (1024.0 * 1024.0)
    );
    println!(
        "label join: {matched:.0} of {predictions:.0} predictions joined, {labels_evicted:.0} labels evicted (store bound) as labels drained ahead"
    );
    Ok(())
}
