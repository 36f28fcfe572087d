//! The `HealthBoard` alone, no broker: how many scored events per second one
//! thread decodes and applies, and what each concern costs. This is monitor's
//! ceiling; the end-to-end figure (NATS, batches, spans, snapshots) is
//! `cargo bench -p millrace-integration-tests --bench monitor`.
//!
//! One event: a feature vector of 20 features (18 numeric, 2 categorical),
//! predictions of 3 model versions, then its label (the live order: labels come
//! later), with the default windows and 4 alert rules. Records are encoded
//! beforehand and decoded in the timed loop as the stage does
//! (`MonitorInput::decode`), then applied in pieces of up to 128 records.
//! `BOARD_BENCH_EVENTS` sets the count (default 200,000).
//!
//! `cargo bench -p millrace-monitor --bench board`

use std::time::Instant;

use bytes::Bytes;
use millrace_chassis::config::Pipeline;
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::StageInput;
use millrace_monitor::alerts;
use millrace_monitor::health::{HealthBoard, MonitorState};
use millrace_monitor::input::MonitorInput;
use millrace_monitor::metrics::MonitorMetrics;
use millrace_proto::{FeatureVector, Label, Prediction};
use opentelemetry::Context;
use prost::Message as _;

const FEATURES: usize = 20;
const VERSIONS: [&str; 3] = ["1", "2", "3"];
/// Records applied at once, as the stage's pieces.
const PIECE: usize = 128;

const PIPELINE: &str = r#"
[pipeline]
name = "bench"
partitions = 1
[model]
name = "fraud"
version = "1"
inputs = [{ name = "f00", weight = 0.01 }]
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
"#;

/// xorshift64*: the same values on every run.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Roughly normal: the sum of four uniforms, centred.
    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        mean + sd * (s - 2.0) * 1.732
    }
}

/// One event's records, encoded, with their source (0 predictions, 1 labels, 2 features).
struct Event {
    vector: (usize, Bytes),
    predictions: Vec<(usize, Bytes)>,
    label: (usize, Bytes),
}

fn events(n: usize) -> Vec<Event> {
    let mut rng = Rng(2013);
    let t0 = 1_700_000_000_000_000i64;
    (0..n)
        .map(|i| {
            let id = format!("bench-{i:07}");
            let t = t0 + i as i64 * 1000;
            let mut values: Vec<f64> = (0..FEATURES - 2)
                .map(|f| rng.normal(f as f64 * 10.0, 1.0 + f as f64))
                .collect();
            values.push((rng.uniform() * 24.0).floor());
            values.push((rng.uniform() * 7.0).floor());
            let positive = rng.uniform() < 0.2;
            let predictions = VERSIONS
                .iter()
                .map(|v| {
                    let score = (if positive { 0.6 } else { 0.35 } + rng.normal(0.0, 0.15))
                        .clamp(0.0001, 0.9999);
                    let p = Prediction {
                        event_id: id.clone(),
                        model: "fraud".into(),
                        model_version: (*v).into(),
                        score,
                        predicted_positive: score >= 0.5,
                        event_time_us: t,
                        ingest_time_us: t + 10_000,
                        predict_time_us: t + 50_000,
                        label_key: id.clone(),
                        ..Default::default()
                    };
                    (0, Bytes::from(p.encode_to_vec()))
                })
                .collect();
            let encoded = |source: usize, m: &dyn Fn() -> Vec<u8>| (source, Bytes::from(m()));
            Event {
                vector: encoded(2, &|| {
                    FeatureVector {
                        event_id: id.clone(),
                        event_time_us: t,
                        ingest_time_us: t + 10_000,
                        feature_time_us: t + 30_000,
                        names: (0..FEATURES).map(|f| format!("f{f:02}")).collect(),
                        values: values.clone(),
                        label_key: id.clone(),
                        ..Default::default()
                    }
                    .encode_to_vec()
                }),
                predictions,
                label: encoded(1, &|| {
                    Label {
                        event_id: format!("label-{id}"),
                        label_key: id.clone(),
                        value: if positive { 1.0 } else { 0.0 },
                        event_time_us: t + 3_600_000_000,
                        ingest_time_us: t + 3_600_000_000,
                        ..Default::default()
                    }
                    .encode_to_vec()
                }),
            }
        })
        .collect()
}

fn board() -> HealthBoard {
    let pipeline = Pipeline::parse(PIPELINE, std::path::Path::new("bench.toml"))
        .unwrap_or_else(|e| panic!("bench pipeline: {e}"));
    let rules = alerts::check(&pipeline.monitor).unwrap_or_else(|e| panic!("bench rules: {e}"));
    HealthBoard::new(
        MonitorState::default(),
        pipeline.monitor,
        rules,
        MonitorMetrics::new(&Metrics::new()),
    )
}

/// Decodes and applies the records `pick` takes of every event, in pieces;
/// answers (seconds, records).
fn run(events: &[Event], pick: impl Fn(&Event, &mut Vec<(usize, Bytes)>)) -> (f64, usize) {
    let (secs, records, _) = run_board(events, pick);
    (secs, records)
}

fn run_board(
    events: &[Event],
    pick: impl Fn(&Event, &mut Vec<(usize, Bytes)>),
) -> (f64, usize, HealthBoard) {
    let mut b = board();
    let trace = Context::new();
    let mut raw = Vec::new();
    let mut piece: Vec<(MonitorInput, Context)> = Vec::with_capacity(PIECE + 8);
    let mut records = 0;
    let apply = |b: &mut HealthBoard, piece: &mut Vec<(MonitorInput, Context)>| {
        b.apply_all(piece.iter().map(|(m, t)| (m, t)));
        piece.clear();
    };
    let started = Instant::now();
    for e in events {
        raw.clear();
        pick(e, &mut raw);
        for (source, bytes) in raw.drain(..) {
            let input = MonitorInput::decode(source, bytes)
                .unwrap_or_else(|e| panic!("a bench record does not decode: {e}"));
            piece.push((input, trace.clone()));
            records += 1;
        }
        if piece.len() >= PIECE {
            apply(&mut b, &mut piece);
        }
    }
    apply(&mut b, &mut piece);
    (started.elapsed().as_secs_f64(), records, b)
}

fn main() {
    let n: usize = std::env::var("BOARD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let events = events(n);
    println!("HealthBoard, one thread, {n} events (20 features, 3 model versions, 4 rules)");
    println!(
        "{:<44} {:>12} {:>14} {:>12}",
        "", "events/s", "records/s", "µs/event"
    );
    let report = |what: &str, (secs, messages): (f64, usize)| {
        println!(
            "{what:<44} {:>12.0} {:>14.0} {:>12.2}",
            n as f64 / secs,
            messages as f64 / secs,
            secs * 1e6 / n as f64
        );
    };
    let (secs, records, b) = run_board(&events, |e, out| {
        out.push(e.vector.clone());
        out.extend(e.predictions.iter().cloned());
        out.push(e.label.clone());
    });
    report("everything (vector, 3 predictions, label)", (secs, records));
    // What each snapshot costs the stage thread: the state serialized (the stage
    // then writes the bytes).
    let rounds = 20;
    let started = Instant::now();
    let mut size = 0;
    for _ in 0..rounds {
        size = postcard::to_stdvec(b.state())
            .unwrap_or_else(|e| panic!("state does not serialize: {e}"))
            .len();
    }
    println!(
        "{:<44} {:>12.2} ms for {:.2} MiB",
        "a snapshot of the state (serialization)",
        started.elapsed().as_secs_f64() * 1e3 / f64::from(rounds),
        size as f64 / (1 << 20) as f64
    );
    report(
        "feature drift only (20 features)",
        run(&events, |e, out| out.push(e.vector.clone())),
    );
    report(
        "predictions only (stats, latency, score drift)",
        run(&events, |e, out| out.extend(e.predictions.iter().cloned())),
    );
    report(
        "predictions and labels (join, quality)",
        run(&events, |e, out| {
            out.extend(e.predictions.iter().cloned());
            out.push(e.label.clone());
        }),
    );
}
