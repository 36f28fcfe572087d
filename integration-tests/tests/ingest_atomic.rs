//! Ingest stores each call's accepted events as ADR-50 atomic batches (at most 1,000
//! messages each, one batch per target stream: EVENTS for ordinary events, LABELS for
//! label events), and still answers every event on its own: ACCEPTED with the sequence
//! its stream holds it at, DUPLICATE for an id already stored, REJECTED for an invalid
//! record. When the server refuses a batch because it holds a stored id, ingest stores
//! that batch's events one by one, so the new ones are still ACCEPTED.
//!
//! Each test sends through `PublishBatch` or `PublishStream`, then reads EVENTS and
//! LABELS whole and holds them against the answers.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use millrace_integration_tests::{
    decode_all, labelled_orders_sections, read_stream, Pipeline, Service, StoredMessage,
};
use millrace_proto::v1::ingest_client::IngestClient;
use millrace_proto::v1::{AckStatus, Event, EventAck, Label, PublishBatchRequest, Value};
use tonic::transport::Channel;

/// The per-record code ingest answers when JetStream did not confirm the write.
const UNAVAILABLE: &str = "unavailable";

/// The orders pipeline with labels: `order_placed` (to EVENTS) carries an `order_id`,
/// `order_outcome` (the `[label]` type, to LABELS) names it.
fn labelled_pipeline_toml() -> String {
    format!(
        "[pipeline]\nname = \"atomic\"\npartitions = 4\n\n{}",
        labelled_orders_sections()
    )
}

async fn ingest_alone() -> Result<Pipeline> {
    Pipeline::builder()
        .only(&[Service::Ingest])
        .pipeline_toml(labelled_pipeline_toml())
        .start()
        .await
}

/// An `order_placed` event (stored in EVENTS) whose `order_id` is its event id.
fn placed(id: &str, n: usize) -> Event {
    Event {
        event_id: id.to_string(),
        r#type: "order_placed".into(),
        schema_version: 1,
        event_time_us: 1_700_000_000_000_000 + n as i64 * 1_000,
        fields: [
            (
                "customer".to_string(),
                Value::string(format!("c-{:02}", n % 17)),
            ),
            ("order_id".to_string(), Value::string(id)),
            ("amount".to_string(), Value::double((n % 200) as f64 + 0.5)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// An `order_outcome` label event (stored in LABELS as a `Label`).
fn outcome(id: &str, n: usize) -> Event {
    Event {
        event_id: id.to_string(),
        r#type: "order_outcome".into(),
        schema_version: 1,
        event_time_us: 1_700_000_000_000_000 + n as i64 * 1_000,
        fields: [
            ("order_id".to_string(), Value::string(format!("order-{n}"))),
            ("chargeback".to_string(), Value::double((n % 3) as f64)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// `n` events numbered from `first`, ids `<prefix>-<i>`; every `label_every`-th is a
/// label event (0: none), so one call spans EVENTS and LABELS.
fn mixed(prefix: &str, first: usize, n: usize, label_every: usize) -> Vec<Event> {
    (first..first + n)
        .map(|i| {
            let id = format!("{prefix}-{i:05}");
            if label_every > 0 && i % label_every == 0 {
                outcome(&id, i)
            } else {
                placed(&id, i)
            }
        })
        .collect()
}

fn is_label(event: &Event) -> bool {
    event.r#type == "order_outcome"
}

fn stream_of(event: &Event) -> &'static str {
    if is_label(event) {
        "LABELS"
    } else {
        "EVENTS"
    }
}

/// One `PublishBatch` call; checks there is one ack per event, in order, naming it.
async fn publish_batch(
    client: &mut IngestClient<Channel>,
    events: &[Event],
) -> Result<Vec<EventAck>> {
    let response = client
        .publish_batch(PublishBatchRequest {
            events: events.to_vec(),
            encoded_events: Vec::new(),
        })
        .await
        .with_context(|| format!("PublishBatch of {} events", events.len()))?
        .into_inner();
    check_ack_order(events, &response.acks)?;
    Ok(response.acks)
}

/// How long a stream's next answer may take before the test says ingest is holding it
/// back (ingest answers every record within its 10 s JetStream timeout).
const NEXT_ANSWER: std::time::Duration = std::time::Duration::from_secs(30);

/// One `PublishStream` carrying `events`, kept open (as a producer that waits for its
/// answers does: `millrace replay`) until every event is answered, then closed.
async fn publish_stream(
    client: &mut IngestClient<Channel>,
    events: &[Event],
) -> Result<Vec<EventAck>> {
    let (outbound, requests) = futures::channel::mpsc::unbounded::<Event>();
    for event in events {
        outbound
            .unbounded_send(event.clone())
            .context("queueing a stream record")?;
    }
    let mut acks_in = client
        .publish_stream(requests)
        .await
        .with_context(|| format!("opening PublishStream for {} events", events.len()))?
        .into_inner();
    let mut acks = Vec::with_capacity(events.len());
    while acks.len() < events.len() {
        let next = tokio::time::timeout(NEXT_ANSWER, acks_in.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "PublishStream: {} of {} records answered, then nothing for {NEXT_ANSWER:?} \
                     while the stream stayed open (next unanswered: {:?})",
                    acks.len(),
                    events.len(),
                    events.get(acks.len()).map(|e| &e.event_id)
                )
            })?
            .with_context(|| format!("PublishStream after {} acks", acks.len()))?;
        match next {
            Some(ack) => acks.push(ack),
            None => break,
        }
    }
    // Every record is answered: closing our side ends the call.
    drop(outbound);
    check_ack_order(events, &acks)?;
    Ok(acks)
}

fn check_ack_order(events: &[Event], acks: &[EventAck]) -> Result<()> {
    ensure!(
        acks.len() == events.len(),
        "{} events were answered with {} acks",
        events.len(),
        acks.len()
    );
    for (i, (ack, event)) in acks.iter().zip(events).enumerate() {
        ensure!(
            ack.index as usize == i && ack.event_id == event.event_id,
            "ack {i} names index {} / id {:?}, expected {i} / {:?}",
            ack.index,
            ack.event_id,
            event.event_id
        );
    }
    Ok(())
}

/// Requires each ack to have `want`'s status (for an id in `want`), listing every
/// event that got something else.
fn expect_statuses(
    what: &str,
    events: &[Event],
    acks: &[EventAck],
    want: impl Fn(&Event) -> AckStatus,
) -> Result<()> {
    let wrong: Vec<String> = events
        .iter()
        .zip(acks)
        .filter(|(e, a)| a.status() != want(e))
        .map(|(e, a)| {
            format!(
                "{} ({}): expected {:?}, got {:?} {} {}",
                e.event_id,
                e.r#type,
                want(e),
                a.status(),
                a.code,
                a.message
            )
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "{what}: {} of {} events got the wrong answer, e.g.:\n  {}",
        wrong.len(),
        events.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    Ok(())
}

/// Where one event is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    stream: &'static str,
    sequence: u64,
    /// The atomic batch it was stored in (`Nats-Batch-Id`, which the server keeps on the
    /// stored message) and its position there (`Nats-Batch-Sequence`, from 1).
    batch: Option<(String, u64)>,
}

/// EVENTS and LABELS read whole: every stored id with its place. Fails if an id is
/// stored twice (in one stream or across both), if a message's `Nats-Msg-Id` is not
/// its event id, or if a record is in the wrong stream for its type.
async fn stored_places(pipeline: &Pipeline) -> Result<HashMap<String, Place>> {
    let js = pipeline.jetstream();
    let events = read_stream(js, "EVENTS").await?;
    let labels = read_stream(js, "LABELS").await?;
    let mut places: HashMap<String, Place> = HashMap::new();
    let mut problems = Vec::new();
    let mut note =
        |stream: &'static str, id: String, message: &StoredMessage, problems: &mut Vec<String>| {
            let msg_id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string());
            if msg_id.as_deref() != Some(id.as_str()) {
                problems.push(format!(
                    "{stream} sequence {} holds {id} under Nats-Msg-Id {msg_id:?}",
                    message.sequence
                ));
            }
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
            let batch = header("Nats-Batch-Id").map(|id| {
                let at = header("Nats-Batch-Sequence").and_then(|n| n.parse().ok());
                (id, at.unwrap_or_default())
            });
            let place = Place {
                stream,
                sequence: message.sequence,
                batch,
            };
            if let Some(first) = places.insert(id.clone(), place.clone()) {
                problems.push(format!("{id} is stored twice: {first:?} and {place:?}"));
            }
        };
    for message in &events {
        let decoded: Vec<Event> = decode_all(std::slice::from_ref(message))?;
        ensure!(
            decoded.len() == 1,
            "EVENTS sequence {} holds {} records; ingest stores one message per event",
            message.sequence,
            decoded.len()
        );
        let event = &decoded[0];
        if is_label(event) {
            problems.push(format!("label event {} is in EVENTS", event.event_id));
        }
        note("EVENTS", event.event_id.clone(), message, &mut problems);
    }
    for message in &labels {
        let decoded: Vec<Label> = decode_all(std::slice::from_ref(message))?;
        ensure!(
            decoded.len() == 1,
            "LABELS sequence {} holds {} records; ingest stores one message per label event",
            message.sequence,
            decoded.len()
        );
        note(
            "LABELS",
            decoded[0].event_id.clone(),
            message,
            &mut problems,
        );
    }
    if !problems.is_empty() {
        bail!(
            "EVENTS ({} messages) and LABELS ({} messages) are wrong in {} ways:\n  {}",
            events.len(),
            labels.len(),
            problems.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(places)
}

/// Every ACCEPTED ack names the sequence its event is stored at, in the stream its
/// type goes to; every ACCEPTED or DUPLICATE event is stored.
fn check_acks_against_store(
    what: &str,
    events: &[Event],
    acks: &[EventAck],
    places: &HashMap<String, Place>,
) -> Result<()> {
    let mut problems = Vec::new();
    for (event, ack) in events.iter().zip(acks) {
        let stored = places.get(&event.event_id);
        match (ack.status(), stored) {
            (AckStatus::Accepted, Some(place))
                if place.stream != stream_of(event) || place.sequence != ack.stream_sequence =>
            {
                problems.push(format!(
                    "{} answered ACCEPTED at {} sequence {} but stored at {place:?}",
                    event.event_id,
                    stream_of(event),
                    ack.stream_sequence
                ))
            }
            (AckStatus::Accepted | AckStatus::Duplicate, None) => problems.push(format!(
                "{} answered {:?} but is in neither EVENTS nor LABELS",
                event.event_id,
                ack.status()
            )),
            (AckStatus::Duplicate, Some(place)) if place.stream != stream_of(event) => problems
                .push(format!(
                    "{} answered DUPLICATE is stored in {place:?}, not {}",
                    event.event_id,
                    stream_of(event)
                )),
            _ => {}
        }
    }
    ensure!(
        problems.is_empty(),
        "{what}: the answers disagree with the streams in {} ways:\n  {}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    Ok(())
}

/// The events of a call that were all new went to each stream as atomic batches of at
/// most 1,000 messages, as few as that allows (`ceil(n / 1000)`), each stored whole at
/// consecutive sequences in its own order (`Nats-Batch-Sequence` 1, 2, ... at sequence
/// s, s + 1, ...).
fn check_atomic_batches(
    what: &str,
    events: &[Event],
    acks: &[EventAck],
    places: &HashMap<String, Place>,
) -> Result<()> {
    for stream in ["EVENTS", "LABELS"] {
        let mut batches: std::collections::BTreeMap<String, Vec<(u64, u64, &str)>> =
            Default::default();
        let mut stored = 0usize;
        for (event, ack) in events.iter().zip(acks) {
            if stream_of(event) != stream || ack.status() != AckStatus::Accepted {
                continue;
            }
            stored += 1;
            let place = places
                .get(&event.event_id)
                .with_context(|| format!("{what}: {} is not stored", event.event_id))?;
            let Some((batch, at)) = &place.batch else {
                bail!(
                    "{what}: {} is stored at {stream} sequence {} without a Nats-Batch-Id: \
                     not through an atomic batch",
                    event.event_id,
                    place.sequence
                );
            };
            batches.entry(batch.clone()).or_default().push((
                place.sequence,
                *at,
                event.event_id.as_str(),
            ));
        }
        let want = stored.div_ceil(1000);
        let sizes: Vec<usize> = batches.values().map(Vec::len).collect();
        ensure!(
            batches.len() == want && sizes.iter().all(|n| *n <= 1000),
            "{what}: {stored} new events went to {stream} in {} atomic batches of sizes \
             {sizes:?}; expected {want} of at most 1,000",
            batches.len()
        );
        for (batch, mut members) in batches {
            members.sort_unstable();
            let first = members[0].0;
            for (i, (sequence, at, id)) in members.iter().enumerate() {
                ensure!(
                    *sequence == first + i as u64 && *at == i as u64 + 1,
                    "{what}: atomic batch {batch} in {stream} is not stored whole and in order: \
                     {id} is its message {at} at sequence {sequence}, expected message {} at {}",
                    i + 1,
                    first + i as u64
                );
            }
        }
    }
    Ok(())
}

/// The ACCEPTED events of a call whose events were all new take consecutive sequences in
/// call order, stream by stream (one atomic batch per stream and per 1,000 messages,
/// committed in order; nothing else writes to the streams meanwhile).
fn check_consecutive_in_order(what: &str, events: &[Event], acks: &[EventAck]) -> Result<()> {
    for stream in ["EVENTS", "LABELS"] {
        let sequences: Vec<(&str, u64)> = events
            .iter()
            .zip(acks)
            .filter(|(e, a)| stream_of(e) == stream && a.status() == AckStatus::Accepted)
            .map(|(e, a)| (e.event_id.as_str(), a.stream_sequence))
            .collect();
        for pair in sequences.windows(2) {
            ensure!(
                pair[1].1 == pair[0].1 + 1,
                "{what}: in {stream}, {} is at sequence {} right after {} at {}; \
                 a call's new events must take consecutive sequences in call order",
                pair[1].0,
                pair[1].1,
                pair[0].0,
                pair[0].1
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_stored_and_new_events_answers_each_and_stores_each_once() -> Result<()> {
    let pipeline = ingest_alone().await?;
    let mut client = pipeline.ingest().await?;

    // 300 new events, every 5th a label: one call spanning EVENTS (240) and LABELS (60).
    let first = mixed("mix", 0, 300, 5);
    let first_acks = publish_batch(&mut client, &first).await?;
    expect_statuses("the first batch (all new)", &first, &first_acks, |_| {
        AckStatus::Accepted
    })?;
    check_consecutive_in_order("the first batch", &first, &first_acks)?;

    // 150 of those again (every other one, labels among them), interleaved with 150 new.
    let repeated: Vec<Event> = first.iter().step_by(2).cloned().collect();
    let fresh = mixed("mix", 300, 150, 5);
    ensure!(repeated.len() == 150 && fresh.iter().any(is_label) && repeated.iter().any(is_label));
    let second: Vec<Event> = repeated
        .iter()
        .zip(&fresh)
        .flat_map(|(old, new)| [new.clone(), old.clone()])
        .collect();
    let fresh_ids: std::collections::HashSet<&str> =
        fresh.iter().map(|e| e.event_id.as_str()).collect();
    let second_acks = publish_batch(&mut client, &second).await?;
    expect_statuses(
        "the second batch (150 stored, 150 new)",
        &second,
        &second_acks,
        |e| {
            if fresh_ids.contains(e.event_id.as_str()) {
                AckStatus::Accepted
            } else {
                AckStatus::Duplicate
            }
        },
    )?;

    // Only stored ids: the whole call is DUPLICATE, nothing is stored again.
    let third: Vec<Event> = first.iter().rev().take(40).cloned().collect();
    let third_acks = publish_batch(&mut client, &third).await?;
    expect_statuses("a batch of stored events only", &third, &third_acks, |_| {
        AckStatus::Duplicate
    })?;

    let places = stored_places(&pipeline).await?;
    check_acks_against_store("the first batch", &first, &first_acks, &places)?;
    check_atomic_batches("the first batch", &first, &first_acks, &places)?;
    check_acks_against_store("the second batch", &second, &second_acks, &places)?;
    check_acks_against_store("the third batch", &third, &third_acks, &places)?;
    let labels = first.iter().chain(&fresh).filter(|e| is_label(e)).count();
    let in_labels = places.values().filter(|p| p.stream == "LABELS").count();
    ensure!(
        places.len() == 450 && in_labels == labels,
        "EVENTS and LABELS hold {} events ({in_labels} in LABELS); expected the 450 sent \
         once each ({labels} label events in LABELS)",
        places.len()
    );
    // The second call's new events come after everything the first one stored.
    for stream in ["EVENTS", "LABELS"] {
        let first_last = first
            .iter()
            .zip(&first_acks)
            .filter(|(e, _)| stream_of(e) == stream)
            .map(|(_, a)| a.stream_sequence)
            .max()
            .unwrap_or_default();
        for (event, ack) in second.iter().zip(&second_acks) {
            ensure!(
                ack.status() != AckStatus::Accepted
                    || stream_of(event) != stream
                    || ack.stream_sequence > first_last,
                "{} (new in the second batch) is at {stream} sequence {}, not after the first \
                 batch's last ({first_last})",
                event.event_id,
                ack.stream_sequence
            );
        }
    }
    ensure!(
        pipeline.stream_count("DLQ").await? == 0,
        "valid events (new or repeated) reached the DLQ"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_more_than_a_thousand_events_is_stored_whole_in_order_each_once() -> Result<()> {
    let pipeline = ingest_alone().await?;
    let mut client = pipeline.ingest().await?;

    // 2,600 events: 2,080 orders (three atomic batches' worth in EVENTS), 260 labels, and
    // 260 orders with a negative amount that ingest rejects in between.
    let mut events = mixed("big", 0, 2_600, 10);
    for (i, event) in events.iter_mut().enumerate() {
        if i % 10 == 5 {
            event
                .fields
                .insert("amount".into(), Value::double(-1.0 - i as f64));
        }
    }
    let invalid = |e: &Event| {
        e.fields
            .get("amount")
            .and_then(Value::as_f64)
            .is_some_and(|a| a < 0.0)
    };
    let acks = publish_batch(&mut client, &events).await?;
    expect_statuses("the big batch", &events, &acks, |e| {
        if invalid(e) {
            AckStatus::Rejected
        } else {
            AckStatus::Accepted
        }
    })?;
    for (event, ack) in events.iter().zip(&acks) {
        ensure!(
            ack.status() != AckStatus::Rejected || ack.code != UNAVAILABLE,
            "{} was rejected as `unavailable`, not for its negative amount: {ack:?}",
            event.event_id
        );
    }
    check_consecutive_in_order("the big batch", &events, &acks)?;

    let places = stored_places(&pipeline).await?;
    check_acks_against_store("the big batch", &events, &acks, &places)?;
    check_atomic_batches("the big batch", &events, &acks, &places)?;
    let accepted: Vec<&Event> = events.iter().filter(|e| !invalid(e)).collect();
    let orders = accepted.iter().filter(|e| !is_label(e)).count();
    ensure!(orders > 2_000, "only {orders} orders would be accepted");
    ensure!(
        places.len() == accepted.len(),
        "EVENTS and LABELS hold {} events; the batch had {} valid ones",
        places.len(),
        accepted.len()
    );
    // In order: each stream holds the call's events in the order they were sent.
    for stream in ["EVENTS", "LABELS"] {
        let mut stored: Vec<(u64, &str)> = places
            .iter()
            .filter(|(_, p)| p.stream == stream)
            .map(|(id, p)| (p.sequence, id.as_str()))
            .collect();
        stored.sort_unstable();
        let sent: Vec<&str> = accepted
            .iter()
            .filter(|e| stream_of(e) == stream)
            .map(|e| e.event_id.as_str())
            .collect();
        let stored_ids: Vec<&str> = stored.iter().map(|(_, id)| *id).collect();
        if stored_ids != sent {
            let at = stored_ids
                .iter()
                .zip(&sent)
                .position(|(a, b)| a != b)
                .unwrap_or(stored_ids.len().min(sent.len()));
            bail!(
                "{stream} holds {} events, {} sent; the orders differ first at position {at}: \
                 stored {:?}, sent {:?}",
                stored_ids.len(),
                sent.len(),
                stored_ids.get(at),
                sent.get(at)
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_mixing_stored_and_new_events_answers_each_in_order_and_stores_each_once(
) -> Result<()> {
    let pipeline = ingest_alone().await?;
    let mut client = pipeline.ingest().await?;

    // 1,500 new events on one stream: more than one atomic batch of EVENTS.
    let first = mixed("stream", 0, 1_500, 7);
    let first_acks = publish_stream(&mut client, &first).await?;
    expect_statuses("the first stream (all new)", &first, &first_acks, |_| {
        AckStatus::Accepted
    })?;

    // A second stream: every third of those again, and 1,000 new ones of which every
    // 50th is invalid (a negative amount) and rejected.
    let mut fresh = mixed("stream", 1_500, 1_000, 7);
    for event in fresh.iter_mut().skip(25).step_by(50) {
        event.r#type = "order_placed".into();
        event.fields = placed(&event.event_id, 0).fields;
        event.fields.insert("amount".into(), Value::double(-5.0));
    }
    let invalid = |e: &Event| {
        e.fields
            .get("amount")
            .and_then(Value::as_f64)
            .is_some_and(|a| a < 0.0)
    };
    let rejected = fresh.iter().filter(|e| invalid(e)).count();
    ensure!(rejected == 20, "{rejected} invalid events, meant 20");
    let fresh_ids: std::collections::HashSet<&str> =
        fresh.iter().map(|e| e.event_id.as_str()).collect();
    let mut second: Vec<Event> = Vec::new();
    let mut old = first.iter().step_by(3);
    for (i, new) in fresh.iter().enumerate() {
        second.push(new.clone());
        if i % 2 == 0 {
            if let Some(old) = old.next() {
                second.push(old.clone());
            }
        }
    }
    let second_acks = publish_stream(&mut client, &second).await?;
    expect_statuses(
        "the second stream (stored, new and invalid)",
        &second,
        &second_acks,
        |e| {
            if invalid(e) {
                AckStatus::Rejected
            } else if fresh_ids.contains(e.event_id.as_str()) {
                AckStatus::Accepted
            } else {
                AckStatus::Duplicate
            }
        },
    )?;

    let places = stored_places(&pipeline).await?;
    check_acks_against_store("the first stream", &first, &first_acks, &places)?;
    check_acks_against_store("the second stream", &second, &second_acks, &places)?;
    ensure!(
        places.len() == first.len() + fresh.len() - rejected,
        "EVENTS and LABELS hold {} events; {} distinct valid ones were sent",
        places.len(),
        first.len() + fresh.len() - rejected
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_repeated_within_a_batch_is_stored_once_and_answered_once_accepted() -> Result<()> {
    let pipeline = ingest_alone().await?;
    let mut client = pipeline.ingest().await?;

    // 100 new events, the 10th sent again at the end of the same call (same content).
    let mut events = mixed("twice", 0, 100, 4);
    events.push(events[10].clone());
    let acks = publish_batch(&mut client, &events).await?;
    let answers: Vec<AckStatus> = acks.iter().map(EventAck::status).collect();
    let twice: Vec<AckStatus> = vec![answers[10], answers[100]];
    ensure!(
        twice == [AckStatus::Accepted, AckStatus::Duplicate],
        "the id sent twice in one call was answered {twice:?} ({:?} / {:?}); expected ACCEPTED \
         then DUPLICATE",
        acks[10],
        acks[100]
    );
    let others_wrong: Vec<&EventAck> = acks[..100]
        .iter()
        .filter(|a| a.status() != AckStatus::Accepted)
        .collect();
    ensure!(
        others_wrong.is_empty(),
        "the other new events of the call were not all ACCEPTED: {others_wrong:?}"
    );
    let places = stored_places(&pipeline).await?;
    check_acks_against_store("the batch", &events, &acks, &places)?;
    ensure!(
        places.len() == 100,
        "EVENTS and LABELS hold {} events for 100 distinct ids",
        places.len()
    );
    Ok(())
}
