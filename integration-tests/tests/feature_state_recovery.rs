//! Windowed feature state survives SIGKILL exactly: feature-state is killed twice while
//! 3,000 events flow, restarted each time, and afterwards FEATURES holds exactly one
//! vector per event whose windowed values equal an offline computation written here from
//! the window definitions (not through the service code); `GetOnlineFeatures` agrees at
//! the end.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::{
    decode_all, publish_all_accepted, read_stream, wait_for_stream_count, Pipeline, Service, LONG,
};
use millrace_proto::v1::{Event, FeatureStatus, FeatureVector, GetOnlineFeaturesRequest, Value};

const BASE_US: i64 = 1_700_002_800_000_000;
const SECOND_US: i64 = 1_000_000;
const MINUTE_US: i64 = 60 * SECOND_US;
const EVENTS: usize = 3000;
const ACCOUNTS: usize = 30;

const PIPELINE: &str = r#"[pipeline]
name = "recovery"
partitions = 4

[events.txn]
key_field = "account"
score = true
[events.txn.fields]
account = { type = "string", required = true }
merchant = { type = "string", required = true }
amount = { type = "double", required = true }

[[features]]
name = "count_10m"
source = "txn"
entity = "account"
aggregation = "count"
window = { kind = "sliding", size = "10m", granularity = "1m" }

[[features]]
name = "sum_10m"
source = "txn"
entity = "account"
aggregation = "sum"
field = "amount"
window = { kind = "sliding", size = "10m", granularity = "1m" }

[[features]]
name = "max_prev_15m"
source = "txn"
entity = "account"
aggregation = "max"
field = "amount"
window = { kind = "hopping", size = "15m", hop = "5m" }

[[features]]
name = "merchants_30m"
source = "txn"
entity = "account"
aggregation = "distinct_count"
field = "merchant"
window = { kind = "sliding", size = "30m", granularity = "5m" }

[[features]]
name = "session_txns"
source = "txn"
entity = "account"
aggregation = "count"
window = { kind = "session", gap = "5m" }

[[features]]
name = "amount_stddev"
source = "txn"
entity = "account"
aggregation = "stddev"
field = "amount"

[model]
name = "fraud"
version = "1"
inputs = [{ name = "count_10m", weight = 0.1 }]
"#;

/// Event `i`: account `i % 30`, 7 s after the previous one, with a 20-minute pause every
/// 500 events (sessions end, windows empty); amounts are quarters, so sums are exact.
struct Txn {
    id: String,
    account: String,
    merchant: String,
    amount: f64,
    t: i64,
}

fn traffic() -> Vec<Txn> {
    (0..EVENTS)
        .map(|i| Txn {
            id: format!("r-{i:05}"),
            account: format!("acct-{:02}", i % ACCOUNTS),
            merchant: format!("m{}", (i * 7) % 11),
            amount: ((i * 37) % 400) as f64 * 0.25,
            t: BASE_US + i as i64 * 7 * SECOND_US + (i / 500) as i64 * 20 * MINUTE_US,
        })
        .collect()
}

fn event(t: &Txn) -> Event {
    Event {
        event_id: t.id.clone(),
        r#type: "txn".into(),
        schema_version: 1,
        event_time_us: t.t,
        fields: [
            ("account".to_string(), Value::string(&t.account)),
            ("merchant".to_string(), Value::string(&t.merchant)),
            ("amount".to_string(), Value::double(t.amount)),
        ]
        .into(),
        ..Default::default()
    }
}

/// The features of the account's events `history` (in order, the last one at `at`), as
/// of `at`, straight from the definitions: bucket `⌊t/width⌋`.
fn offline(history: &[&Txn], at: i64) -> BTreeMap<&'static str, f64> {
    let bucket = |t: i64, w: i64| t.div_euclid(w);
    let in_buckets = |t: i64, w: i64, first: i64, last: i64| (first..=last).contains(&bucket(t, w));
    let minute = MINUTE_US;
    let mut out = BTreeMap::new();
    let b = bucket(at, minute);
    let last10: Vec<&&Txn> = history
        .iter()
        .filter(|x| in_buckets(x.t, minute, b - 9, b))
        .collect();
    out.insert("count_10m", last10.len() as f64);
    out.insert("sum_10m", last10.iter().map(|x| x.amount).sum());
    let end = bucket(at, 5 * minute);
    let hopping: Vec<f64> = history
        .iter()
        .filter(|x| in_buckets(x.t, 5 * minute, end - 3, end - 1))
        .map(|x| x.amount)
        .collect();
    if let Some(max) = hopping.iter().copied().reduce(f64::max) {
        out.insert("max_prev_15m", max);
    }
    let b5 = bucket(at, 5 * minute);
    let merchants: BTreeSet<&str> = history
        .iter()
        .filter(|x| in_buckets(x.t, 5 * minute, b5 - 5, b5))
        .map(|x| x.merchant.as_str())
        .collect();
    out.insert("merchants_30m", merchants.len() as f64);
    // The session open at `at`: walk back while consecutive events are under 5 min apart.
    let mut session = 0;
    let mut next = at;
    for x in history.iter().rev() {
        if next - x.t >= 5 * minute {
            break;
        }
        session += 1;
        next = x.t;
    }
    out.insert("session_txns", f64::from(session));
    let n = history.len() as f64;
    let mean = history.iter().map(|x| x.amount).sum::<f64>() / n;
    let var = history
        .iter()
        .map(|x| (x.amount - mean).powi(2))
        .sum::<f64>()
        / n;
    out.insert("amount_stddev", var.sqrt());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_state_killed_twice_keeps_windows_exact() {
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(PIPELINE)
        .only(&[Service::Ingest, Service::Enrich, Service::FeatureState])
        .start()
        .await
        .expect("pipeline starts");
    killed_twice(&mut pipeline)
        .await
        .expect("exact windows across SIGKILLs");
}

async fn killed_twice(pipeline: &mut Pipeline) -> Result<()> {
    let txns = traffic();
    let events: Vec<Event> = txns.iter().map(event).collect();
    let mut ingest = pipeline.ingest().await?;
    let publisher = {
        let (mut ingest, events) = (ingest.clone(), events[..2000].to_vec());
        tokio::spawn(async move { publish_all_accepted(&mut ingest, &events, 25).await })
    };
    for at_least in [300, 1200] {
        wait_for_stream_count(pipeline.jetstream(), "FEATURES", at_least, LONG).await?;
        pipeline.service_mut(Service::FeatureState).kill().await?;
        let at_kill = pipeline.stream_count("FEATURES").await?;
        eprintln!("feature-state killed with {at_kill} vectors out");
        pipeline
            .service_mut(Service::FeatureState)
            .restart()
            .await?;
    }
    publisher.await??;
    publish_all_accepted(&mut ingest, &events[2000..], 100).await?;

    let js = pipeline.jetstream();
    wait_for_stream_count(js, "FEATURES", EVENTS as u64, LONG).await?;
    pipeline
        .wait_idle(&["EVENTS", "ENRICHED", "FEATURES"], LONG)
        .await?;
    let vectors: Vec<FeatureVector> = decode_all(&read_stream(js, "FEATURES").await?)?;
    ensure!(
        vectors.len() == EVENTS,
        "FEATURES holds {} vectors for {EVENTS} events",
        vectors.len()
    );
    let ids: HashSet<&str> = vectors.iter().map(|v| v.event_id.as_str()).collect();
    ensure!(
        ids.len() == EVENTS,
        "{} distinct event ids among {EVENTS} vectors",
        ids.len()
    );

    let by_id: BTreeMap<&str, &FeatureVector> =
        vectors.iter().map(|v| (v.event_id.as_str(), v)).collect();
    let mut history: BTreeMap<&str, Vec<&Txn>> = BTreeMap::new();
    let mut problems = Vec::new();
    for x in &txns {
        let h = history.entry(x.account.as_str()).or_default();
        h.push(x);
        let mut want = offline(h, x.t);
        want.insert("amount", x.amount);
        let Some(v) = by_id.get(x.id.as_str()) else {
            problems.push(format!("{}: no vector", x.id));
            continue;
        };
        let got: BTreeMap<&str, f64> = v
            .names
            .iter()
            .map(String::as_str)
            .zip(v.values.iter().copied())
            .collect();
        let same = got.len() == want.len()
            && want.iter().all(|(k, w)| {
                got.get(k)
                    .is_some_and(|g| (g - w).abs() <= 1e-9 * w.abs().max(1.0))
            });
        if !same {
            problems.push(format!("{}: got {got:?}\n      want {want:?}", x.id));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} vectors differ from the offline computation, e.g.:\n  {}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );

    // The final state, at the newest event time.
    let clock = txns.iter().map(|x| x.t).max().unwrap_or_default();
    let accounts: Vec<String> = (0..ACCOUNTS).map(|a| format!("acct-{a:02}")).collect();
    let response = pipeline
        .feature_state()
        .await?
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: accounts.clone(),
            features: vec![],
        })
        .await
        .context("GetOnlineFeatures")?
        .into_inner();
    for entity in &response.entities {
        let want = offline(&history[entity.entity_key.as_str()], clock);
        for v in &entity.values {
            let got = v.value.as_ref().and_then(Value::as_f64);
            let w = want.get(v.name.as_str()).copied();
            ensure!(
                v.status() == FeatureStatus::Present
                    && match (got, w) {
                        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                        (None, None) => true,
                        _ => false,
                    },
                "{}/{}: online {got:?}, offline {w:?}",
                entity.entity_key,
                v.name
            );
        }
    }
    Ok(())
}
