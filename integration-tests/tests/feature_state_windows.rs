//! Windowed features through the real services: events with chosen event times go in
//! through ingest, pass enrich, and feature-state publishes one point-in-time vector per
//! event whose values equal the ones computed here by hand; a late event goes to
//! `dlq.feature-state` (reason `late`) instead, counted; `GetOnlineFeatures` answers at
//! the newest event time.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::{
    decode_all, metric_value, metrics, publish_all_accepted, read_stream, wait_for_stream_count,
    Pipeline, Service, LONG,
};
use millrace_proto::v1::{
    DeadLetter, Event, FeatureStatus, FeatureVector, GetOnlineFeaturesRequest, Value,
};

/// An hour boundary (2023-11-14 23:00 UTC), so window edges fall on round minutes.
const BASE_US: i64 = 1_700_002_800_000_000;
const MINUTE_US: i64 = 60_000_000;

const PIPELINE: &str = r#"[pipeline]
name = "windows"
partitions = 4

[events.txn]
key_field = "account"
score = true
[events.txn.fields]
account = { type = "string", required = true }
merchant = { type = "string", required = true }
amount = { type = "double", required = true }

[[features]]
name = "acct_count"
source = "txn"
entity = "account"
aggregation = "count"

[[features]]
name = "acct_sum_10m"
source = "txn"
entity = "account"
aggregation = "sum"
field = "amount"
window = { kind = "sliding", size = "10m", granularity = "1m" }

[[features]]
name = "acct_mean_prev_hour"
source = "txn"
entity = "account"
aggregation = "mean"
field = "amount"
window = { kind = "tumbling", size = "1h" }

[[features]]
name = "acct_merchants_1h"
source = "txn"
entity = "account"
aggregation = "distinct_count"
field = "merchant"
window = { kind = "sliding", size = "1h", granularity = "10m" }

[[features]]
name = "acct_session_txns"
source = "txn"
entity = "account"
aggregation = "count"
window = { kind = "session", gap = "5m" }

[[features]]
name = "acct_big_txns"
source = "txn"
entity = "account"
aggregation = "count"
filter = "amount >= 100"

[[features]]
name = "acct_merchant_txns"
source = "txn"
entity = ["account", "merchant"]
aggregation = "count"

[feature_state]
allowed_lateness = "10m"

[model]
name = "fraud"
version = "1"
inputs = [{ name = "acct_count", weight = 0.1 }]
"#;

fn txn(id: &str, account: &str, merchant: &str, amount: f64, minute: i64) -> Event {
    Event {
        event_id: id.into(),
        r#type: "txn".into(),
        schema_version: 1,
        event_time_us: BASE_US + minute * MINUTE_US,
        fields: [
            ("account".to_string(), Value::string(account)),
            ("merchant".to_string(), Value::string(merchant)),
            ("amount".to_string(), Value::double(amount)),
        ]
        .into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_features_lateness_and_lookups_through_the_services() {
    let pipeline = Pipeline::builder()
        .pipeline_toml(PIPELINE)
        .only(&[Service::Ingest, Service::Enrich, Service::FeatureState])
        .start()
        .await
        .expect("pipeline starts");
    windows(&pipeline).await.expect("windowed features");
}

async fn windows(pipeline: &Pipeline) -> Result<()> {
    // (event, the vector's values by feature, hand-computed). Windows as of the event's
    // time: sum over the ten 1-minute buckets up to it, the mean of the previous clock
    // hour, distinct merchants over the six 10-minute buckets up to it, the session
    // open at it (gap 5 min: minutes 0 and 3 are one session, 9 and 12 the next).
    let sent = [
        txn("b0", "a2", "m1", 500.0, 1),
        txn("e0", "a1", "m1", 50.0, 0),
        txn("e1", "a1", "m2", 150.0, 3),
        txn("e2", "a1", "m1", 20.0, 9),
        txn("e3", "a1", "m3", 5.0, 12),
        txn("e4", "a1", "m1", 100.0, 30),
        txn("e5", "a1", "m2", 10.0, 65),
        // Out of order, within the 10 minutes of lateness (watermark 55).
        txn("e6", "a1", "m4", 1.0, 64),
        // Beyond it: late.
        txn("e7", "a1", "m1", 7.0, 40),
    ];
    let expected: [(&str, &[(&str, f64)]); 8] = [
        (
            "b0",
            &[
                ("acct_count", 1.0),
                ("acct_sum_10m", 500.0),
                ("acct_merchants_1h", 1.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 1.0),
                ("acct_merchant_txns", 1.0),
            ],
        ),
        (
            "e0",
            &[
                ("acct_count", 1.0),
                ("acct_sum_10m", 50.0),
                ("acct_merchants_1h", 1.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 0.0),
                ("acct_merchant_txns", 1.0),
            ],
        ),
        (
            "e1",
            &[
                ("acct_count", 2.0),
                ("acct_sum_10m", 200.0),
                ("acct_merchants_1h", 2.0),
                ("acct_session_txns", 2.0),
                ("acct_big_txns", 1.0),
                ("acct_merchant_txns", 1.0),
            ],
        ),
        (
            "e2",
            &[
                ("acct_count", 3.0),
                ("acct_sum_10m", 220.0),
                ("acct_merchants_1h", 2.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 1.0),
                ("acct_merchant_txns", 2.0),
            ],
        ),
        (
            "e3",
            &[
                ("acct_count", 4.0),
                ("acct_sum_10m", 175.0),
                ("acct_merchants_1h", 3.0),
                ("acct_session_txns", 2.0),
                ("acct_big_txns", 1.0),
                ("acct_merchant_txns", 1.0),
            ],
        ),
        (
            "e4",
            &[
                ("acct_count", 5.0),
                ("acct_sum_10m", 100.0),
                ("acct_merchants_1h", 3.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 2.0),
                ("acct_merchant_txns", 3.0),
            ],
        ),
        (
            "e5",
            &[
                ("acct_count", 6.0),
                ("acct_sum_10m", 10.0),
                ("acct_mean_prev_hour", 65.0),
                ("acct_merchants_1h", 3.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 2.0),
                ("acct_merchant_txns", 2.0),
            ],
        ),
        // The minute-65 event came first but is stamped after 64: nothing read as of 64
        // counts it, not the lifetime count, not the 10-minute bucket both lie in (m2 is
        // not among the merchants), not the session it later joins 64 to.
        (
            "e6",
            &[
                ("acct_count", 6.0),
                ("acct_sum_10m", 1.0),
                ("acct_mean_prev_hour", 65.0),
                ("acct_merchants_1h", 3.0),
                ("acct_session_txns", 1.0),
                ("acct_big_txns", 2.0),
                ("acct_merchant_txns", 1.0),
            ],
        ),
    ];
    let mut ingest = pipeline.ingest().await?;
    for event in &sent {
        publish_all_accepted(&mut ingest, std::slice::from_ref(event), 1).await?;
    }
    let js = pipeline.jetstream();
    wait_for_stream_count(js, "FEATURES", expected.len() as u64, LONG).await?;
    wait_for_stream_count(js, "DLQ", 1, LONG).await?;

    let vectors: Vec<FeatureVector> = decode_all(&read_stream(js, "FEATURES").await?)?;
    ensure!(
        vectors.len() == expected.len(),
        "FEATURES holds {} vectors for {} on-time events",
        vectors.len(),
        expected.len()
    );
    let by_id: BTreeMap<&str, &FeatureVector> =
        vectors.iter().map(|v| (v.event_id.as_str(), v)).collect();
    let mut problems = Vec::new();
    for (id, values) in expected {
        let Some(v) = by_id.get(id) else {
            problems.push(format!("{id}: no vector"));
            continue;
        };
        let got: BTreeMap<&str, f64> = v
            .names
            .iter()
            .map(String::as_str)
            .zip(v.values.iter().copied())
            .collect();
        let mut want: BTreeMap<&str, f64> = values.iter().copied().collect();
        let own = sent
            .iter()
            .find(|e| e.event_id == id)
            .and_then(|e| e.fields["amount"].as_f64());
        want.insert("amount", own.unwrap_or_default());
        if got != want {
            problems.push(format!("{id}: got {got:?}\n      want {want:?}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "vectors differ from the hand computation:\n  {}",
        problems.join("\n  ")
    );

    // The late event: in the DLQ with its reason, counted, not applied.
    let letters: Vec<DeadLetter> = decode_all(&read_stream(js, "DLQ").await?)?;
    ensure!(
        letters.len() == 1
            && letters[0].stage == "feature-state"
            && letters[0].reason == "late"
            && letters[0].event_id == "e7",
        "DLQ should hold exactly e7 as late: {letters:?}"
    );
    let text = metrics(pipeline.service(Service::FeatureState).http_addr()).await?;
    let late = metric_value(&text, "millrace_feature_state_late_events_total", &[]);
    ensure!(late == Some(1.0), "late events counted: {late:?}");

    // Lookups at the clock (minute 65).
    let response = pipeline
        .feature_state()
        .await?
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: vec!["a1".into(), "a2".into(), "a1|m1".into(), "nobody".into()],
            features: vec![
                "acct_count".into(),
                "acct_sum_10m".into(),
                "acct_mean_prev_hour".into(),
                "acct_merchants_1h".into(),
                "acct_session_txns".into(),
                "acct_big_txns".into(),
                "acct_merchant_txns".into(),
                "no_such_feature".into(),
            ],
        })
        .await
        .context("GetOnlineFeatures")?
        .into_inner();
    use FeatureStatus::{NotFound, Present, UnknownFeature};
    let cases: [(&str, &str, FeatureStatus, Option<f64>); 16] = [
        ("a1", "acct_count", Present, Some(7.0)),
        ("a1", "acct_sum_10m", Present, Some(11.0)),
        ("a1", "acct_mean_prev_hour", Present, Some(65.0)),
        ("a1", "acct_merchants_1h", Present, Some(4.0)),
        ("a1", "acct_session_txns", Present, Some(2.0)),
        ("a1", "acct_big_txns", Present, Some(2.0)),
        ("a1", "acct_merchant_txns", NotFound, None),
        ("a2", "acct_count", Present, Some(1.0)),
        ("a2", "acct_sum_10m", Present, Some(0.0)),
        ("a2", "acct_mean_prev_hour", Present, Some(500.0)),
        ("a2", "acct_merchants_1h", Present, Some(0.0)),
        ("a2", "acct_session_txns", Present, Some(0.0)),
        ("a1|m1", "acct_merchant_txns", Present, Some(3.0)),
        ("a1|m1", "acct_count", NotFound, None),
        ("nobody", "acct_count", NotFound, None),
        ("a1", "no_such_feature", UnknownFeature, None),
    ];
    let mut problems = Vec::new();
    for (entity, feature, status, value) in cases {
        let got = response
            .entities
            .iter()
            .find(|e| e.entity_key == entity)
            .and_then(|e| e.values.iter().find(|v| v.name == feature));
        let ok = got.is_some_and(|v| {
            v.status() == status && v.value.as_ref().and_then(Value::as_f64) == value
        });
        if !ok {
            problems.push(format!(
                "{entity}/{feature}: want {status:?} {value:?}, got {got:?}"
            ));
        }
    }
    let a1_count = response.entities[0].values[0].event_time_us;
    if a1_count != BASE_US + 65 * MINUTE_US {
        problems.push(format!(
            "a1/acct_count event time {a1_count}, want minute 65"
        ));
    }
    ensure!(
        problems.is_empty(),
        "GetOnlineFeatures:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}
