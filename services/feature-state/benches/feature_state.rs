//! feature-state's benchmark, one run, one table (`cargo bench -p millrace-feature-state`):
//!
//! 1. in-process state updates per second on one core: 10 features of every
//!    aggregation and window over 100k entities, and the same with a vector per event;
//! 2. memory per entity (the store's own accounting, and the process's RSS growth);
//! 3. snapshot size and time, and recovery (load the snapshot → ready), with 1M entities:
//!    in process, and the release binary restarted on that snapshot until `/readyz`;
//! 4. end to end over a real nats-server: EVENTS → enrich → ENRICHED → feature-state →
//!    FEATURES with the release binaries, next to a raw JetStream consume of the same
//!    EVENTS stream (the baseline: ≥ 50% of it is the target).
//!
//! Binaries come from `MILLRACE_BIN_DIR`, default `target/release`
//! (`cargo build --release --bins` first). `FS_BENCH_QUICK=1` shrinks every size 10×.
//! Part 1's knobs: `FS_BENCH_ENTITIES` (its entity count), `FS_BENCH_NO_PREFETCH=1`
//! (apply without asking for rows ahead, as the actor does), `FS_BENCH_IN_PROCESS_ONLY=1`
//! (stop after it).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::consumer;
use futures::StreamExt;
use millrace_chassis::config::Pipeline;
use millrace_chassis::metrics::Metrics;
use millrace_chassis::partition::partition_of;
use millrace_chassis::snapshot::{Encoded, SnapshotStore};
use millrace_feature_state::{Applied, EncodedState, FeatureSpec, FeatureStore};
use millrace_integration_tests::monitor::process_cpu_seconds;
use millrace_integration_tests::service::{Service, ServiceProcess, ServiceSettings};
use millrace_integration_tests::{
    http_get, metric_value, metrics, test_dir, NatsServer, BATCH_HEADER,
};
use millrace_proto::view::EnrichedView;
use millrace_proto::{EnrichedEvent, Event, Value};
use prost::Message;

const FEATURES: &str = r#"
[[features]]
name = "txn_count"
source = "txn"
entity = "account"
aggregation = "count"

[[features]]
name = "amount_sum_1h"
source = "txn"
entity = "account"
aggregation = "sum"
field = "amount"
window = { kind = "sliding", size = "1h", granularity = "1m" }

[[features]]
name = "amount_mean_prev_hour"
source = "txn"
entity = "account"
aggregation = "mean"
field = "amount"
window = { kind = "tumbling", size = "1h" }

[[features]]
name = "amount_min_prev_hour"
source = "txn"
entity = "account"
aggregation = "min"
field = "amount"
window = { kind = "hopping", size = "1h", hop = "15m" }

[[features]]
name = "amount_max_1d"
source = "txn"
entity = "account"
aggregation = "max"
field = "amount"
window = { kind = "sliding", size = "1d", granularity = "1h" }

[[features]]
name = "amount_stddev"
source = "txn"
entity = "account"
aggregation = "stddev"
field = "amount"

[[features]]
name = "amount_last"
source = "txn"
entity = "account"
aggregation = "last"
field = "amount"

[[features]]
name = "merchants_1d"
source = "txn"
entity = "account"
aggregation = "distinct_count"
field = "merchant"
window = { kind = "sliding", size = "1d", granularity = "1h" }

[[features]]
name = "session_txns"
source = "txn"
entity = "account"
aggregation = "count"
window = { kind = "session", gap = "30m" }

[[features]]
name = "amount_mean_10m"
source = "txn"
entity = "account"
aggregation = "mean"
field = "amount"
window = { kind = "sliding", size = "10m", granularity = "1m" }
"#;

fn pipeline_toml(scored: bool) -> String {
    format!(
        r#"[pipeline]
name = "bench"
partitions = 4

[events.txn]
key_field = "account"
score = {scored}
[events.txn.fields]
account = {{ type = "string", required = true }}
merchant = {{ type = "string", required = true }}
amount = {{ type = "double", required = true }}
{FEATURES}
[feature_state]
allowed_lateness = "5m"
entity_ttl = "7d"

[model]
name = "bench"
version = "1"
inputs = [{{ name = "txn_count", weight = 0.1 }}]
"#
    )
}

const BASE_US: i64 = 1_700_002_800_000_000;
const DAY_US: i64 = 86_400_000_000;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` transactions over `entities` accounts (each at least once when `n` allows),
/// spread evenly over `span_us` of event time from `start_us`.
fn txns(n: usize, entities: u64, start_us: i64, span_us: i64, seed: u64) -> Vec<EnrichedEvent> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let account = if (i as u64) < entities {
                i as u64
            } else {
                rng.below(entities)
            };
            let account = format!("acct-{account:07}");
            let id = format!("t-{seed}-{i}");
            EnrichedEvent {
                event_id: id.clone(),
                event: Some(Event {
                    event_id: id,
                    r#type: "txn".into(),
                    schema_version: 1,
                    partition: partition_of(&account, 4),
                    key: account.clone(),
                    event_time_us: start_us + span_us * i as i64 / n.max(1) as i64,
                    fields: [
                        ("account".to_string(), Value::string(account)),
                        (
                            "merchant".to_string(),
                            Value::string(format!("m{}", rng.below(1000))),
                        ),
                        (
                            "amount".to_string(),
                            Value::double((rng.below(100_000) as f64) / 100.0),
                        ),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn store(scored: bool) -> Result<FeatureStore> {
    let pipeline = Pipeline::parse(&pipeline_toml(scored), std::path::Path::new("bench.toml"))?;
    Ok(FeatureStore::new(
        FeatureSpec::from_pipeline(&pipeline),
        &Metrics::new(),
    ))
}

/// Applies `events` as the actor applies a batch: rows asked for a group
/// ahead (unless `prefetching` is off).
fn apply_all(
    s: &mut FeatureStore,
    events: &[EnrichedView],
    prefetching: bool,
    mut each: impl FnMut(Applied),
) {
    for (i, e) in events.iter().enumerate() {
        if prefetching {
            s.prefetch_ahead(events, i, |e| e);
        }
        each(s.apply_view(e, 0));
    }
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

struct Row(String, String, String);

fn main() -> Result<()> {
    let quick = std::env::var_os("FS_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { n / 10 } else { n };
    if std::env::var_os("MILLRACE_BIN_DIR").is_none() {
        let release = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release");
        std::env::set_var("MILLRACE_BIN_DIR", release);
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |what: &str, value: String, note: &str| {
        eprintln!("  {what}: {value}");
        rows.push(Row(what.into(), value, note.into()));
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // FS_BENCH_E2E_ONLY: only part 3 (for profiling the stages).
    if std::env::var_os("FS_BENCH_E2E_ONLY").is_none() {
        // 1. In-process updates, one core.
        // FS_BENCH_ENTITIES: the entity count of this part (how much memory latency weighs).
        let entities = std::env::var("FS_BENCH_ENTITIES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(scale(100_000)) as u64;
        let n = scale(2_000_000);
        // As the actor applies a batch: rows asked for a group ahead. FS_BENCH_NO_PREFETCH: without.
        let prefetching = std::env::var_os("FS_BENCH_NO_PREFETCH").is_none();
        eprintln!("generating {n} events over {entities} entities…");
        // Read in place as the stage reads them, before the clock starts. The
        // generated messages live on until memory is measured, so that the
        // store does not grow into the space they would free.
        let generated = txns(n, entities, BASE_US, DAY_US, 1);
        let events: Vec<EnrichedView> = generated.iter().map(EnrichedView::from).collect();
        let rss_before = rss_bytes();
        let mut s = store(false)?;
        let started = Instant::now();
        apply_all(&mut s, &events, prefetching, |_| {});
        let secs = started.elapsed().as_secs_f64();
        row(
            "in-process: events/s (10 features, unscored)",
            format!("{:.0}", n as f64 / secs),
            &format!("{n} events, {entities} entities, 1 core"),
        );
        row(
            "in-process: feature updates/s",
            format!("{:.0}", 10.0 * n as f64 / secs),
            "target ≥ 1,000,000 per core",
        );
        let sweep = s.sweep();
        let rss_after = rss_bytes();
        row(
            "memory per entity (store accounting)",
            format!("{:.0} B", sweep.bytes as f64 / sweep.rows.max(1) as f64),
            &format!(
                "{} entities, {:.1} MB of state, 10 features each",
                sweep.rows,
                sweep.bytes as f64 / 1e6
            ),
        );
        row(
            "memory per entity (RSS growth)",
            format!(
                "{:.0} B",
                rss_after.saturating_sub(rss_before) as f64 / sweep.rows.max(1) as f64
            ),
            "allocator overhead included",
        );
        drop(generated);
        drop(s);
        let mut s = store(true)?;
        let started = Instant::now();
        let mut vectors = 0usize;
        apply_all(&mut s, &events, prefetching, |applied| {
            if let Applied::OnTime(Some(_)) = applied {
                vectors += 1;
            }
        });
        let secs = started.elapsed().as_secs_f64();
        row(
            "in-process: events/s with a vector each",
            format!("{:.0}", n as f64 / secs),
            &format!("{vectors} point-in-time vectors of 10 features + own fields"),
        );
        drop(s);
        drop(events);
        // FS_BENCH_IN_PROCESS_ONLY: stop after part 1.
        if std::env::var_os("FS_BENCH_IN_PROCESS_ONLY").is_some() {
            return Ok(());
        }

        // 2. 1M entities: snapshot and recovery.
        let big = scale(1_000_000);
        let per_entity: i64 = 3;
        eprintln!("building {big} entities…");
        let mut s = store(false)?;
        for chunk in 0..per_entity {
            for e in txns(
                big,
                big as u64,
                BASE_US + chunk * DAY_US / 4,
                DAY_US / 4,
                100 + chunk as u64,
            ) {
                s.apply(&e, 0);
            }
        }
        let entities = s.entity_count();
        let dir = test_dir("fs-bench")?;
        let data_dir = dir.path().join("data").join("feature-state");
        std::fs::create_dir_all(&data_dir)?;
        let snapshots = SnapshotStore::open(&data_dir)?;
        // A slice first, so that it meets the state as the whole sweep would.
        let started = Instant::now();
        s.sweep_slice();
        let sweep_slice = started.elapsed();
        let started = Instant::now();
        s.sweep();
        let sweep = started.elapsed();
        let started = Instant::now();
        let state = s.snapshot()?.state;
        let encode = started.elapsed();
        let saved = Instant::now();
        let size = snapshots.save("feature-state", &[0], &state)?;
        let save = saved.elapsed();
        // 10k events later: the next snapshot holds only the entities they touched.
        let touched = scale(10_000);
        for e in txns(
            touched,
            big as u64,
            BASE_US + per_entity * DAY_US / 4,
            60_000_000,
            99,
        ) {
            s.apply(&e, 0);
        }
        let started = Instant::now();
        let changes = s.snapshot()?;
        let changes_encode = started.elapsed();
        let saved = Instant::now();
        let changes_size = snapshots.write(&Encoded::new(
            "feature-state",
            &[1],
            &changes.state,
            changes.part,
        )?)?;
        let changes_save = saved.elapsed();
        row(
            "snapshot size (1M entities)",
            format!("{:.1} MB", size as f64 / 1e6),
            &format!(
                "{entities} entities × 10 features, {per_entity} events each; {:.0} B/entity",
                size as f64 / entities as f64
            ),
        );
        row(
            "snapshot time: sweep in the actor (TTL, trim, measure)",
            format!("{:.0} ms", sweep.as_secs_f64() * 1e3),
            &format!(
                "all rows at once; the stage sweeps a tenth per snapshot, at most one a second: {:.0} ms",
                sweep_slice.as_secs_f64() * 1e3
            ),
        );
        row(
            "snapshot time: encode in the actor",
            format!("{:.0} ms", encode.as_secs_f64() * 1e3),
            "a whole state; the actor is busy for the encode",
        );
        row(
            "snapshot time: chassis save (postcard, CRC, sled, fsync)",
            format!("{:.0} ms", save.as_secs_f64() * 1e3),
            "",
        );
        row(
            "snapshot of changes after 10k events (1M entities)",
            format!("{:.2} MB", changes_size as f64 / 1e6),
            &format!(
                "{:?}: encode {:.1} ms in the actor, save {:.1} ms; what most snapshots are",
                changes.part,
                changes_encode.as_secs_f64() * 1e3,
                changes_save.as_secs_f64() * 1e3
            ),
        );
        drop(changes);
        drop(state);
        drop(s);
        let started = Instant::now();
        let loaded = snapshots
            .load::<EncodedState>("feature-state")?
            .context("the snapshot just saved")?;
        let read = started.elapsed();
        let mut chain = vec![loaded.state];
        chain.extend(loaded.changes);
        let (restored, report) = store(false)?.restore(&chain)?;
        let total = started.elapsed();
        row(
            "recovery in process: load + decode (1M entities, whole + changes)",
            format!("{:.0} ms", total.as_secs_f64() * 1e3),
            &format!(
                "sled read + CRC {:.0} ms; {} entities restored; target < 5 s",
                read.as_secs_f64() * 1e3,
                report.entities
            ),
        );
        drop(chain);
        drop(restored);
        drop(snapshots);

        runtime.block_on(async {
            let nats = NatsServer::start().await?;
            let pipeline_path = dir.path().join("pipeline.toml");
            std::fs::write(&pipeline_path, pipeline_toml(false))?;
            let settings = ServiceSettings {
                nats_url: nats.url(),
                pipeline_path,
                dir: dir.path().to_path_buf(),
                otlp_endpoint: None,
            };
            let started = Instant::now();
            let mut fs = ServiceProcess::spawn(Service::FeatureState, &settings)?;
            let ready = poll_ready(&mut fs, Duration::from_secs(120)).await?;
            let log = std::fs::read_to_string(fs.log_path()).unwrap_or_default();
            if !log.contains(&format!("entities={entities}"))
                && !log.contains(&format!("entities: {entities}"))
            {
                eprintln!(
                    "note: the log does not show {entities} entities restored:\n{}",
                    fs.log_tail(5)
                );
            }
            row(
                "recovery of the release binary: spawn → /readyz (1M entities)",
                format!("{:.2} s", ready.as_secs_f64()),
                &format!(
                    "process start, NATS connect, load, consumer; measured {:.2} s",
                    started.elapsed().as_secs_f64()
                ),
            );
            fs.kill().await?;
            drop(nats);
            anyhow::Ok(())
        })?;
        drop(dir);
    }
    // 3. End to end over NATS. FS_BENCH_E2E_RUNS picks runs (comma-separated names
    // below), FS_BENCH_E2E_N the size, FS_BENCH_PERF a directory for `perf record`
    // of each process during the measured stretch (FS_BENCH_PERF_ARGS its options),
    // FS_BENCH_STOP=term stops the services with SIGTERM instead of SIGKILL.
    // A million events by default: 200k went through in about a second, before
    // the 1 s snapshot clock fired, so the figure left snapshots out.
    let e2e = std::env::var("FS_BENCH_E2E_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(scale(1_000_000));
    let wanted = std::env::var("FS_BENCH_E2E_RUNS").unwrap_or_default();
    let runs: [(&str, &str, bool, Cadence, bool); 5] = [
        (
            "scored",
            "end to end: enrich + feature-state, every event scored",
            true,
            DEFAULT_CADENCE,
            false,
        ),
        (
            "unscored",
            "end to end: same, no event scored (no FEATURES publish)",
            false,
            DEFAULT_CADENCE,
            false,
        ),
        (
            "relaxed",
            "end to end: every event scored, snapshots every 10 s",
            true,
            RELAXED_CADENCE,
            false,
        ),
        (
            "alone",
            "feature-state alone over ENRICHED, every event scored",
            true,
            DEFAULT_CADENCE,
            true,
        ),
        (
            "alone_relaxed",
            "feature-state alone, snapshots every 10 s",
            true,
            RELAXED_CADENCE,
            true,
        ),
    ];
    // Each run is repeated (FS_BENCH_E2E_REPEAT, default 3), each time on a fresh
    // broker with its own raw consume, and reported by its median: on a shared
    // 2-core machine one pair moves by a fifth from run to run.
    let repeat = std::env::var("FS_BENCH_E2E_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let load_before = load_average();
    for (name, what, scored, cadence, alone) in runs {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == name) {
            continue;
        }
        let mut done = Vec::with_capacity(repeat);
        for i in 0..repeat {
            let run = runtime.block_on(one_pipeline(e2e, scored, cadence, alone, name))?;
            eprintln!(
                "    {name} {}/{repeat}: {:.0} events/s against a raw consume of {:.0} msg/s = {:.0}%",
                i + 1,
                run.through,
                run.raw(),
                100.0 * run.through / run.raw()
            );
            done.push(run);
        }
        let stream = if alone { "ENRICHED" } else { "EVENTS" };
        row(
            &format!("raw JetStream consume of {stream}"),
            format!("{:.0} msg/s", median(done.iter().map(E2eRun::raw))),
            &format!(
                "median of {} ({}); {e2e} messages of one event; pull consumer, no acks, 512 per batch: the baseline{}",
                done.len() * RAW_TRIES,
                range(done.iter().flat_map(|r| r.raws.iter().copied()), 0),
                if alone { " (as enrich would publish them, one per message)" } else { "" }
            ),
        );
        let cpu = |i: usize| range(done.iter().filter_map(|r| r.cpu_us[i]), 2);
        row(
            what,
            format!("{:.0} events/s", median(done.iter().map(|r| r.through))),
            &format!(
                "{:.0}% of raw consume (median of {} runs, each against its own raw consume: {}%){}; runs {} events/s; CPU µs per event: {}nats-server {}, feature-state {}{}; load {}",
                100.0 * median(done.iter().map(|r| r.through / r.raw())),
                done.len(),
                range(done.iter().map(|r| 100.0 * r.through / r.raw()), 0),
                match (alone, cadence == DEFAULT_CADENCE) {
                    (false, true) if scored => " (target ≥ 50%); snapshots every 1 s / 1M events (the defaults)",
                    (false, true) => "; snapshots every 1 s / 1M events (the defaults)",
                    (true, true) => " of ENRICHED; snapshots every 1 s / 1M events",
                    (true, false) => " of ENRICHED",
                    (false, false) => "",
                },
                range(done.iter().map(|r| r.through), 0),
                if alone { String::new() } else { format!("enrich {}, ", cpu(0)) },
                cpu(2),
                cpu(1),
                match scored {
                    true => format!(", {} vectors in FEATURES each", done[0].vectors),
                    false => String::new(),
                },
                done.iter().map(|r| r.load.as_str()).collect::<Vec<_>>().join("; "),
            ),
        );
    }
    eprintln!(
        "load average (1, 5, 15 min) before the end-to-end runs: {load_before}; after: {}",
        load_average()
    );

    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    println!(
        "\nfeature-state benchmark ({} cores){}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if quick { " — QUICK sizes" } else { "" }
    );
    println!("| {:w0$} | {:>w1$} | note |", "measure", "value");
    println!("|{}|{}|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
    for Row(a, b, c) in &rows {
        println!("| {a:w0$} | {b:>w1$} | {c} |");
    }
    Ok(())
}

async fn poll_ready(process: &mut ServiceProcess, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http_get(process.http_addr(), "/readyz").await {
            if r.status == 200 {
                return Ok(started.elapsed());
            }
        }
        if !process.is_running() {
            bail!(
                "{} exited:\n{}",
                process.service().binary(),
                process.log_tail(20)
            );
        }
        if started.elapsed() > limit {
            bail!("not ready within {limit:?}:\n{}", process.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Snapshot cadence of both services: (interval ms, every this many events).
type Cadence = (&'static str, &'static str);
const DEFAULT_CADENCE: Cadence = ("1000", "1000000");
const RELAXED_CADENCE: Cadence = ("10000", "100000000");

/// `/proc/loadavg`'s first three fields: whether others shared the machine meanwhile.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Raw consumes per broker; the run compares with their median.
const RAW_TRIES: usize = 3;

/// The middle value (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "lowest–highest" with `decimals` digits after the point.
fn range(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let v: Vec<f64> = values.collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match v.len() {
        0 => "n/a".into(),
        _ if lo == hi => format!("{lo:.decimals$}"),
        _ => format!("{lo:.decimals$}–{hi:.decimals$}"),
    }
}

/// What one end-to-end run measured.
struct E2eRun {
    /// Each raw consume of the input stream on this run's broker, msg/s.
    raws: Vec<f64>,
    /// Events per second from the first output the first stage stored to the last
    /// vector in FEATURES (unscored: until feature-state counted the last event).
    through: f64,
    /// CPU µs per event over the run: enrich, feature-state, nats-server.
    cpu_us: [Option<f64>; 3],
    vectors: u64,
    load: String,
}

impl E2eRun {
    /// The baseline this run is compared with: the median of its raw consumes, msg/s.
    fn raw(&self) -> f64 {
        median(self.raws.iter().copied())
    }
}

/// CPU seconds used so far by each process (`None` where there is none).
fn cpu_now(pids: [Option<u32>; 3]) -> [Option<f64>; 3] {
    pids.map(|pid| pid.and_then(|p| process_cpu_seconds(p).ok()))
}

/// `perf record` attached to the processes, when FS_BENCH_PERF names a directory.
struct Perf(Vec<std::process::Child>);

impl Perf {
    fn attach(run: &str, processes: &[(&str, Option<u32>)]) -> Result<Self> {
        let Some(dir) = std::env::var_os("FS_BENCH_PERF") else {
            return Ok(Self(Vec::new()));
        };
        let args = std::env::var("FS_BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 999 -g".into());
        let mut children = Vec::new();
        for (name, pid) in processes {
            let Some(pid) = pid else { continue };
            let out = std::path::Path::new(&dir).join(format!("{run}-{name}.data"));
            children.push(
                std::process::Command::new("perf")
                    .arg("record")
                    .args(args.split_whitespace())
                    .arg("-o")
                    .arg(&out)
                    .arg("-p")
                    .arg(pid.to_string())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting perf record")?,
            );
        }
        Ok(Self(children))
    }

    /// SIGINT, so each perf writes its file out.
    fn stop(self) -> Result<()> {
        for mut child in self.0 {
            std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// Unix nanoseconds of a point in time.
fn unix_nanos(t: std::time::SystemTime) -> i128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Records in FEATURES (items of batches count one each) and when the last was stored.
async fn features_stored(js: &async_nats::jetstream::Context) -> Result<(u64, i128)> {
    let mut stream = js.get_stream("FEATURES").await?;
    let last = stream.info().await?.state.last_sequence;
    if last == 0 {
        return Ok((0, 0));
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let (mut records, mut newest) = (0, 0);
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .context("FEATURES stopped delivering")?
    {
        let msg = msg?;
        records += msg
            .headers
            .as_ref()
            .and_then(|h| h.get(BATCH_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .unwrap_or(1);
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        newest = newest.max(info.published.unix_timestamp_nanos());
        if info.stream_sequence >= last {
            break;
        }
    }
    Ok((records, newest))
}

/// When the first message of `stream` was stored (Unix ns).
async fn first_stored(js: &async_nats::jetstream::Context, stream: &str) -> Result<i128> {
    let mut stream = js.get_stream(stream).await?;
    let first = stream.info().await?.state.first_sequence;
    let msg = stream.get_raw_message(first).await?;
    Ok(msg.time.unix_timestamp_nanos())
}

/// Reads the `n` messages of `stream` through a new pull consumer (no acks,
/// 512 per pull) as fast as a client takes them: messages per second. The
/// client runs alone on one thread with its own connection, as the stages do
/// (`Threads::One`), so the baseline pays no more wake-ups than they do.
async fn raw_consume(nats: &NatsServer, stream: &str, n: usize) -> Result<f64> {
    let (url, stream) = (nats.url(), stream.to_string());
    let nats_cpu = nats.pid().and_then(|p| process_cpu_seconds(p).ok());
    let (rate, ack_policy) = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(consume_all(&url, &stream, n))
    })
    .await??;
    if let (Some(before), Some(after)) = (
        nats_cpu,
        nats.pid().and_then(|p| process_cpu_seconds(p).ok()),
    ) {
        eprintln!(
            "    raw consume: {rate:.0} msg/s, nats-server {:.2} µs CPU per message ({ack_policy:?})",
            (after - before) * 1e6 / n as f64
        );
    }
    Ok(rate)
}

/// [`raw_consume`]'s client: connects, consumes, and answers the rate.
async fn consume_all(url: &str, stream: &str, n: usize) -> Result<(f64, consumer::AckPolicy)> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let stream = js.get_stream(stream).await?;
    let ack_policy = match std::env::var("FS_BENCH_RAW_ACK").as_deref() {
        Ok("all") => consumer::AckPolicy::All,
        _ => consumer::AckPolicy::None,
    };
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy,
            max_ack_pending: 1_000_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await?;
    let mut seen = 0;
    while seen < n {
        match messages.next().await {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => bail!("raw consume: {e}"),
            None => bail!("raw consume ended at {seen}"),
        }
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), ack_policy))
}

/// Starts both services on an empty broker (so they provision their streams) and stops
/// them; publishes `n` events to EVENTS as ingest would; measures [`RAW_TRIES`] raw consumes of them;
/// then restarts the services with `cadence` and measures
/// from the first ENRICHED batch stored to the last FEATURES vector stored (alone: from
/// feature-state's restart), with the CPU each process spent meanwhile.
async fn one_pipeline(
    n: usize,
    scored: bool,
    cadence: Cadence,
    alone: bool,
    run: &str,
) -> Result<E2eRun> {
    let nats = NatsServer::start().await?;
    let dir = test_dir("fs-bench-e2e")?;
    let pipeline_path = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline_path, pipeline_toml(scored))?;
    let settings = ServiceSettings {
        nats_url: nats.url(),
        pipeline_path,
        dir: dir.path().to_path_buf(),
        otlp_endpoint: None,
    };
    let mut feature_state = ServiceProcess::spawn(Service::FeatureState, &settings)?;
    feature_state.wait_ready().await?;
    let mut enrich = ServiceProcess::spawn(Service::Enrich, &settings)?;
    enrich.wait_ready().await?;
    for process in [&mut feature_state, &mut enrich] {
        process.terminate().await?;
        process.set_env("MILLRACE_SNAPSHOT_INTERVAL_MS", cadence.0);
        process.set_env("MILLRACE_SNAPSHOT_EVERY", cadence.1);
        process.set_env("RUST_LOG", "warn");
    }
    let js = nats.jetstream().await?;
    // Alone: feature-state reads an ENRICHED stream filled here, as enrich would.
    let stream = if alone { "ENRICHED" } else { "EVENTS" };
    eprintln!("publishing {n} events to {stream}…");
    let events = txns(n, 100_000, BASE_US, DAY_US, 7);
    let mut acks = std::collections::VecDeque::new();
    for e in events {
        let Some(event) = e.event.as_ref() else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        let (subject, id, payload) = if alone {
            (
                format!("enriched.{}", event.partition),
                format!("enrich:{}", e.event_id),
                e.encode_to_vec(),
            )
        } else {
            (
                format!("events.txn.{}", event.partition),
                format!("ingest:{}", e.event_id),
                event.encode_to_vec(),
            )
        };
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = js
            .publish_with_headers(subject, headers, payload.into())
            .await?;
        acks.push_back(ack);
        if acks.len() >= 512 {
            if let Some(oldest) = acks.pop_front() {
                oldest.await?;
            }
        }
    }
    while let Some(oldest) = acks.pop_front() {
        oldest.await?;
    }

    let mut raws = Vec::with_capacity(RAW_TRIES);
    for _ in 0..RAW_TRIES {
        raws.push(raw_consume(&nats, stream, n).await?);
    }

    feature_state.restart().await?;
    let restarted = std::time::SystemTime::now();
    let load_before = load_average();
    let pids = |enrich: &ServiceProcess, fs: &ServiceProcess| {
        [enrich.pid().filter(|_| !alone), fs.pid(), nats.pid()]
    };
    let cpu_before = cpu_now(pids(&enrich, &feature_state));
    let started = Instant::now();
    if !alone {
        enrich.restart().await?;
    }
    let perf = Perf::attach(
        run,
        &[
            ("enrich", enrich.pid().filter(|_| !alone)),
            ("feature-state", feature_state.pid()),
            ("nats-server", nats.pid()),
        ],
    )?;
    loop {
        let text = metrics(feature_state.http_addr()).await.unwrap_or_default();
        let consumed =
            metric_value(&text, "millrace_stage_messages_consumed_total", &[]).unwrap_or(0.0);
        if consumed >= n as f64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) || !(alone || enrich.is_running()) {
            bail!(
                "end to end stalled at {consumed} of {n}:\n{}\n{}",
                enrich.log_tail(10),
                feature_state.log_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counted = std::time::SystemTime::now();
    let cpu_after = cpu_now(pids(&enrich, &feature_state));
    perf.stop()?;
    let (mut vectors, mut last_vector) = (0, 0);
    if scored {
        // The last batches may still be on their way to the store.
        let deadline = Instant::now() + Duration::from_secs(10);
        while vectors < n as u64 && Instant::now() < deadline {
            (vectors, last_vector) = features_stored(&js).await?;
        }
    }
    let load = load_average();
    let from = match alone {
        true => unix_nanos(restarted),
        false => first_stored(&js, "ENRICHED").await?,
    };
    let to = match scored {
        true => last_vector,
        false => unix_nanos(counted),
    };
    let through = n as f64 / ((to - from).max(1) as f64 / 1e9);
    let mut cpu_us = [None; 3];
    for (i, slot) in cpu_us.iter_mut().enumerate() {
        if let (Some(a), Some(b)) = (cpu_before[i].or(Some(0.0)), cpu_after[i]) {
            *slot = Some((b - a) * 1e6 / n as f64);
        }
    }
    let text = metrics(feature_state.http_addr()).await.unwrap_or_default();
    let batches = metric_value(&text, "millrace_feature_state_batches_total", &[]).unwrap_or(0.0);
    let mut stored = String::new();
    for part in ["whole", "changes"] {
        let n = metric_value(&text, "millrace_stage_snapshots_total", &[("part", part)]);
        stored += &format!("; {} snapshots {part}", n.unwrap_or(0.0));
    }
    for name in ["ENRICHED", "FEATURES"] {
        let state = js.get_stream(name).await?.info().await?.state.clone();
        stored += &format!(
            "; {name} {} messages, {:.0} B per event",
            state.messages,
            state.bytes as f64 / n as f64
        );
    }
    eprintln!(
        "    {run}: feature-state applied {n} events in {batches} batches ({:.1} per batch); {vectors} vectors{stored}; load {load_before} → {load}",
        n as f64 / batches.max(1.0)
    );
    if scored && vectors != n as u64 {
        bail!("FEATURES holds {vectors} vectors for {n} scored events");
    }
    // FS_BENCH_STOP=term: SIGTERM, so a profiler wrapping a service writes its output.
    let graceful = std::env::var("FS_BENCH_STOP").is_ok_and(|v| v == "term");
    for process in [&mut enrich, &mut feature_state] {
        match (process.is_running(), graceful) {
            (false, _) => {}
            (true, true) => drop(process.terminate().await?),
            (true, false) => process.kill().await?,
        }
    }
    Ok(E2eRun {
        raws,
        through,
        cpu_us,
        vectors,
        load: format!("{load_before} → {load}"),
    })
}
