//! Departures that are labels and feature sources at once, through the real services:
//! ingest stores each departure twice under its event id (its `Label` in LABELS, the
//! event itself in EVENTS), answers ACCEPTED once (with the EVENTS copy's sequence) and
//! DUPLICATE on a resend, ACCEPTED when only one copy was stored before; enrich and
//! feature-state then read the departures as any event, so a mean of their delays is
//! readable through `GetOnlineFeatures`, and a flight's vector counts only the
//! departures stamped by its scoring time, even one applied before it.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use async_nats::HeaderMap;
use millrace_integration_tests::{
    decode_all, read_stream, stream_record_count, wait_for_stream_count, wait_until, Pipeline,
    Service, StoredMessage, LONG,
};
use millrace_proto::v1::{
    AckStatus, Event, EventAck, FeatureStatus, FeatureVector, GetOnlineFeaturesRequest, Label,
    PublishBatchRequest, Value,
};
use prost::Message as _;

/// An hour boundary (2023-11-14 23:00 UTC), so the 5-minute buckets fall on round minutes.
const BASE_US: i64 = 1_700_002_800_000_000;
const MINUTE_US: i64 = 60_000_000;

const PIPELINE: &str = r#"[pipeline]
name = "delays"
partitions = 4

[events.flight_scheduled]
key_field = "origin"
score = true
[events.flight_scheduled.fields]
flight_id = { type = "string", required = true }
origin = { type = "string", required = true }
tailnum = { type = "string" }

[events.flight_departed]
key_field = "flight_id"
label = true
[events.flight_departed.fields]
flight_id = { type = "string", required = true }
origin = { type = "string", required = true }
tailnum = { type = "string" }
dep_delay = { type = "double", required = true }

[label]
event = "flight_departed"
key_field = "flight_id"
scored_key_field = "flight_id"
value_field = "dep_delay"
op = ">="
threshold = 15.0

[[features]]
name = "origin_delay_mean_1h"
source = "flight_departed"
entity = "origin"
aggregation = "mean"
field = "dep_delay"
window = { kind = "sliding", size = "1h", granularity = "5m" }

[[features]]
name = "origin_departures_1h"
source = "flight_departed"
entity = "origin"
aggregation = "count"
window = { kind = "sliding", size = "1h", granularity = "5m" }

[[features]]
name = "tailnum_secs_since_departure"
source = "flight_departed"
entity = "tailnum"
aggregation = "since_last"

[model]
name = "delay"
version = "1"
inputs = [{ name = "origin_delay_mean_1h", weight = 0.01 }]
"#;

fn departure(id: &str, origin: &str, tailnum: &str, delay: f64, minute: i64) -> Event {
    Event {
        event_id: id.into(),
        r#type: "flight_departed".into(),
        event_time_us: BASE_US + minute * MINUTE_US,
        fields: [
            ("flight_id".to_string(), Value::string(format!("f-{id}"))),
            ("origin".to_string(), Value::string(origin)),
            ("tailnum".to_string(), Value::string(tailnum)),
            ("dep_delay".to_string(), Value::double(delay)),
        ]
        .into(),
        ..Default::default()
    }
}

fn scheduled(id: &str, origin: &str, tailnum: &str, minute: i64) -> Event {
    Event {
        event_id: id.into(),
        r#type: "flight_scheduled".into(),
        event_time_us: BASE_US + minute * MINUTE_US,
        fields: [
            ("flight_id".to_string(), Value::string(format!("f-{id}"))),
            ("origin".to_string(), Value::string(origin)),
            ("tailnum".to_string(), Value::string(tailnum)),
        ]
        .into(),
        ..Default::default()
    }
}

async fn publish(pipeline: &Pipeline, events: &[Event]) -> Result<Vec<EventAck>> {
    let acks = pipeline
        .ingest()
        .await?
        .publish_batch(PublishBatchRequest {
            events: events.to_vec(),
            encoded_events: Vec::new(),
        })
        .await
        .context("PublishBatch")?
        .into_inner()
        .acks;
    ensure!(
        acks.len() == events.len(),
        "{} acks for {} events",
        acks.len(),
        events.len()
    );
    Ok(acks)
}

fn statuses(acks: &[EventAck]) -> Vec<(String, AckStatus)> {
    acks.iter()
        .map(|a| (a.event_id.clone(), a.status()))
        .collect()
}

fn msg_id(m: &StoredMessage) -> Option<&str> {
    m.headers.get("Nats-Msg-Id").map(|v| v.as_str())
}

/// Where a record is stored: its message's sequence, subject and `Nats-Msg-Id`.
type Place = (u64, String, Option<String>);

/// Event id → where each record of a stream is stored.
fn by_event_id<M: prost::Message + Default>(
    messages: &[StoredMessage],
    id_of: impl Fn(&M) -> String,
) -> Result<BTreeMap<String, Place>> {
    let mut out = BTreeMap::new();
    for m in messages {
        let decoded: Vec<M> = decode_all(std::slice::from_ref(m))?;
        for record in decoded {
            let place = (m.sequence, m.subject.clone(), msg_id(m).map(str::to_string));
            ensure!(
                out.insert(id_of(&record), place).is_none(),
                "{} is stored twice",
                id_of(&record)
            );
        }
    }
    Ok(out)
}

async fn online(
    pipeline: &Pipeline,
    entity: &str,
    feature: &str,
) -> Result<(FeatureStatus, Option<f64>)> {
    let answer = pipeline
        .feature_state()
        .await?
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: vec![entity.into()],
            features: vec![feature.into()],
        })
        .await
        .context("GetOnlineFeatures")?
        .into_inner();
    let value = answer
        .entities
        .first()
        .and_then(|e| e.values.first())
        .with_context(|| format!("no answer for {entity}/{feature}"))?;
    Ok((value.status(), value.value.as_ref().and_then(Value::as_f64)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_feed_labels_and_features_and_count_only_as_of_the_scoring_time() -> Result<()> {
    let pipeline = Pipeline::builder()
        .pipeline_toml(PIPELINE)
        .only(&[Service::Ingest, Service::Enrich, Service::FeatureState])
        .start()
        .await?;
    let js = pipeline.jetstream();

    // Two departures from JFK: each answered ACCEPTED, with its EVENTS copy's sequence.
    let first = [
        departure("d1", "JFK", "N1", 10.0, 10),
        departure("d2", "JFK", "N2", 30.0, 20),
    ];
    let acks = publish(&pipeline, &first).await?;
    ensure!(
        statuses(&acks)
            == [
                ("d1".to_string(), AckStatus::Accepted),
                ("d2".to_string(), AckStatus::Accepted)
            ],
        "{acks:?}"
    );
    let events = by_event_id::<Event>(&read_stream(js, "EVENTS").await?, |e| e.event_id.clone())?;
    let labels = by_event_id::<Label>(&read_stream(js, "LABELS").await?, |l| l.event_id.clone())?;
    for (ack, sent) in acks.iter().zip(&first) {
        let id = &sent.event_id;
        let (seq, subject, msg) = events
            .get(id)
            .with_context(|| format!("{id} not in EVENTS"))?;
        ensure!(
            subject.starts_with("events.flight_departed.") && msg.as_deref() == Some(id.as_str()),
            "{id} in EVENTS on {subject} under id {msg:?}"
        );
        ensure!(
            ack.stream_sequence == *seq,
            "{id}: the ack says sequence {}, its EVENTS copy is at {seq}",
            ack.stream_sequence
        );
        let (_, subject, msg) = labels
            .get(id)
            .with_context(|| format!("{id} not in LABELS"))?;
        ensure!(
            subject == "labels.flight_departed" && msg.as_deref() == Some(id.as_str()),
            "{id} in LABELS on {subject} under id {msg:?}"
        );
    }
    let stored: Vec<Event> = decode_all(&read_stream(js, "EVENTS").await?)?;
    ensure!(
        stored.iter().all(|e| e.key == string_of(e, "flight_id")
            && e.partition == millrace_chassis::partition::partition_of(&e.key, 4)),
        "keyed and partitioned by flight: {stored:?}"
    );
    let stored_labels: Vec<Label> = decode_all(&read_stream(js, "LABELS").await?)?;
    let d1 = stored_labels
        .iter()
        .find(|l| l.event_id == "d1")
        .context("d1's label")?;
    ensure!(
        (d1.label_key.as_str(), d1.value, d1.observed) == ("f-d1", 0.0, 10.0),
        "{d1:?}"
    );

    // Resent: both copies were stored, so DUPLICATE, naming the first EVENTS copy.
    let again = publish(&pipeline, &first[..1]).await?;
    ensure!(
        again[0].status() == AckStatus::Duplicate
            && again[0].stream_sequence == acks[0].stream_sequence,
        "{again:?}"
    );

    // Only its label made it before (a retry after a partial failure): ACCEPTED, and
    // LABELS still holds it once.
    let d3_label = Label {
        event_id: "d3".into(),
        label_key: "f-d3".into(),
        value: 1.0,
        observed: 50.0,
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "d3");
    js.publish_with_headers(
        "labels.flight_departed",
        headers,
        d3_label.encode_to_vec().into(),
    )
    .await?
    .await
    .context("storing d3's label beforehand")?;
    // d3 leaves at minute 33 and reaches feature-state before the flight scored at
    // minute 31 (same 5-minute bucket [30, 35)): the flight must not count it.
    let second = [
        departure("d3", "JFK", "N1", 50.0, 33),
        scheduled("s1", "JFK", "N1", 31),
    ];
    let acks = publish(&pipeline, &second).await?;
    ensure!(
        statuses(&acks)
            == [
                ("d3".to_string(), AckStatus::Accepted),
                ("s1".to_string(), AckStatus::Accepted)
            ],
        "{acks:?}"
    );
    ensure!(
        stream_record_count(js, "LABELS").await? == 3,
        "LABELS holds d1, d2, d3 once each"
    );

    // A batch big enough to go as atomic batches to both streams, then sent again.
    let ewr: Vec<Event> = (0..30)
        .map(|i| {
            departure(
                &format!("e{i:02}"),
                "EWR",
                &format!("NE{i}"),
                f64::from(i),
                40,
            )
        })
        .collect();
    let acks = publish(&pipeline, &ewr).await?;
    ensure!(
        acks.iter()
            .all(|a| a.status() == AckStatus::Accepted && a.stream_sequence > 0),
        "{:?}",
        statuses(&acks)
    );
    let again = publish(&pipeline, &ewr).await?;
    ensure!(
        again
            .iter()
            .zip(&acks)
            .all(|(a, first)| a.status() == AckStatus::Duplicate
                && a.stream_sequence == first.stream_sequence),
        "{:?}",
        statuses(&again)
    );
    ensure!(
        stream_record_count(js, "LABELS").await? == 33,
        "LABELS: one label per departure"
    );
    ensure!(
        stream_record_count(js, "EVENTS").await? == 34,
        "EVENTS: every departure and the scheduled flight, once each"
    );

    // The scored flight's vector: as of minute 31, d1 and d2 only.
    wait_for_stream_count(js, "FEATURES", 1, LONG).await?;
    let vectors: Vec<FeatureVector> = decode_all(&read_stream(js, "FEATURES").await?)?;
    ensure!(
        vectors.len() == 1,
        "only the scheduled flight is scored: {vectors:?}"
    );
    let v = &vectors[0];
    let read = |name: &str| v.names.iter().position(|n| n == name).map(|i| v.values[i]);
    ensure!(
        (v.event_id.as_str(), v.label_key.as_str()) == ("s1", "f-s1"),
        "{v:?}"
    );
    ensure!(
        read("origin_delay_mean_1h") == Some(20.0) && read("origin_departures_1h") == Some(2.0),
        "d3 (minute 33) counted at minute 31: {v:?}"
    );
    ensure!(
        read("tailnum_secs_since_departure") == Some(21.0 * 60.0),
        "N1 left at minute 10, 21 minutes before: {v:?}"
    );

    // Online, at the clock (minute 40): every departure counts.
    let jfk = wait_until("JFK's delay mean counts d1, d2 and d3", LONG, || async {
        let got = online(&pipeline, "JFK", "origin_delay_mean_1h").await?;
        Ok((got == (FeatureStatus::Present, Some(30.0)), got))
    })
    .await?;
    let ewr_mean = wait_until(
        "EWR's delay mean counts its 30 departures",
        LONG,
        || async {
            let got = online(&pipeline, "EWR", "origin_delay_mean_1h").await?;
            Ok((got == (FeatureStatus::Present, Some(14.5)), got))
        },
    )
    .await?;
    let n2 = online(&pipeline, "N2", "tailnum_secs_since_departure").await?;
    ensure!(
        n2 == (FeatureStatus::Present, Some(20.0 * 60.0)),
        "N2 left at minute 20, the clock is at 40: {n2:?} (JFK {jfk:?}, EWR {ewr_mean:?})"
    );
    let departures = online(&pipeline, "EWR", "origin_departures_1h").await?;
    ensure!(
        departures == (FeatureStatus::Present, Some(30.0)),
        "EWR departures: {departures:?}"
    );
    Ok(())
}

fn string_of<'e>(event: &'e Event, field: &str) -> &'e str {
    millrace_integration_tests::string_field(event, field).unwrap_or_default()
}
