//! Ingest answers every record on its own: a bad record gets a precise, machine-readable
//! reason and lands in the DLQ whole, without sinking the good records of its batch.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::{
    decode_all, http_get, order, orders, orders_pipeline_toml, read_stream, string_field,
    wait_for_stream_count, Pipeline, Service, SHORT,
};
use millrace_proto::v1::{AckStatus, DeadLetter, Event, PublishBatchRequest, Value};
use prost::Message;

/// A record of the test batch and the answer it must get.
struct Case {
    rule: &'static str,
    record: Record,
    /// `None`: accepted. `Some((code, words))`: rejected with `code`, the message naming
    /// every one of `words`.
    rejected: Option<(&'static str, &'static [&'static str])>,
}

enum Record {
    /// Sent in `events`.
    Event(Event),
    /// Sent in `encoded_events`, as these bytes.
    Encoded(Vec<u8>),
}

impl Record {
    /// The id the producer gave the record; `None` for bytes that are no `Event`, which
    /// ingest may name as it likes (as long as the ack and the dead letter agree).
    fn event_id(&self) -> Option<String> {
        match self {
            Record::Event(e) => Some(e.event_id.clone()),
            Record::Encoded(bytes) => Event::decode(bytes.as_slice()).ok().map(|e| e.event_id),
        }
    }
}

/// Bytes that are no protobuf `Event`: field 1 announces ~14 KB of string that never come.
const MALFORMED: &[u8] = b"\x0a\xffnot protobuf";

fn cases() -> Vec<Case> {
    let without = |id: &str, field: &str| {
        let mut e = order(id, "alice", 10.0);
        e.fields.remove(field);
        e
    };
    let with = |id: &str, field: &str, value: Value| {
        let mut e = order(id, "alice", 10.0);
        e.fields.insert(field.into(), value);
        e
    };
    let mut unknown_type = order("bad-type", "alice", 10.0);
    unknown_type.r#type = "refund_issued".into();
    vec![
        Case {
            rule: "a valid event is accepted",
            record: Record::Event(order("good-0", "alice", 12.5)),
            rejected: None,
        },
        Case {
            rule: "a missing required field is named",
            record: Record::Event(without("bad-missing", "amount")),
            rejected: Some(("missing_field", &["amount"])),
        },
        Case {
            rule: "a value of the wrong type is named",
            record: Record::Event(with("bad-type-of-amount", "amount", Value::string("12.5"))),
            rejected: Some(("wrong_type", &["amount"])),
        },
        Case {
            rule: "a second valid event is accepted",
            record: Record::Event(order("good-1", "bob", 0.0)),
            rejected: None,
        },
        Case {
            rule: "a value below the minimum is out of range",
            record: Record::Event(with("bad-range", "amount", Value::double(-5.0))),
            rejected: Some(("out_of_range", &["amount"])),
        },
        Case {
            rule: "an undeclared event type is unknown",
            record: Record::Event(unknown_type),
            rejected: Some(("unknown_type", &["refund_issued"])),
        },
        Case {
            rule: "an event without id cannot be deduplicated and is refused",
            record: Record::Event(order("", "alice", 10.0)),
            rejected: Some(("missing_event_id", &[])),
        },
        Case {
            rule: "a valid event sent encoded is accepted",
            record: Record::Encoded(order("good-2", "carol", 99.0).encode_to_vec()),
            rejected: None,
        },
        Case {
            rule: "bytes that are not an Event are malformed",
            record: Record::Encoded(MALFORMED.to_vec()),
            rejected: Some(("malformed", &[])),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_per_record_answer_and_goes_to_the_dlq() {
    assert!(
        Event::decode(MALFORMED).is_err(),
        "the malformed case must really be malformed"
    );
    let pipeline = Pipeline::builder()
        .only(&[Service::Ingest])
        .start()
        .await
        .expect("ingest starts");
    per_record_answers(&pipeline)
        .await
        .expect("per-record answers");
}

async fn per_record_answers(pipeline: &Pipeline) -> Result<()> {
    let cases = cases();
    // `events` first, then `encoded_events`: the order acks are indexed in.
    let (events, encoded): (Vec<&Case>, Vec<&Case>) = cases
        .iter()
        .partition(|c| matches!(c.record, Record::Event(_)));
    let ordered: Vec<&Case> = events.iter().chain(&encoded).copied().collect();
    let request = PublishBatchRequest {
        events: events
            .iter()
            .filter_map(|c| match &c.record {
                Record::Event(e) => Some(e.clone()),
                Record::Encoded(_) => None,
            })
            .collect(),
        encoded_events: encoded
            .iter()
            .filter_map(|c| match &c.record {
                Record::Encoded(b) => Some(b.clone()),
                Record::Event(_) => None,
            })
            .collect(),
    };
    let mut ingest = pipeline.ingest().await?;
    let response = ingest
        .publish_batch(request)
        .await
        .context("PublishBatch with good and bad records")?
        .into_inner();
    ensure!(
        response.acks.len() == ordered.len(),
        "{} records answered with {} acks: {:?}",
        ordered.len(),
        response.acks.len(),
        response.acks
    );

    let mut failures = Vec::new();
    let mut answered: Vec<(&Case, String)> = Vec::new();
    for (index, case) in ordered.iter().enumerate() {
        let Some(ack) = response.acks.iter().find(|a| a.index as usize == index) else {
            failures.push(format!("{}: no ack with index {index}", case.rule));
            continue;
        };
        answered.push((case, ack.event_id.clone()));
        let problem = match case.rejected {
            None if ack.status() != AckStatus::Accepted => {
                Some(format!("expected ACCEPTED, got {ack:?}"))
            }
            None => None,
            Some((code, words)) => {
                if ack.status() != AckStatus::Rejected || ack.code != code {
                    Some(format!("expected REJECTED {code}, got {ack:?}"))
                } else {
                    words
                        .iter()
                        .find(|w| !ack.message.contains(*w))
                        .map(|word| format!("the message {:?} does not name {word:?}", ack.message))
                }
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{} (index {index}): {problem}", case.rule));
        }
        if case.record.event_id().is_some_and(|id| id != ack.event_id) {
            failures.push(format!(
                "{} (index {index}): ack names event {:?}",
                case.rule, ack.event_id
            ));
        }
    }
    let rejected = cases.iter().filter(|c| c.rejected.is_some()).count();
    let accepted = cases.len() - rejected;
    if (
        response.accepted as usize,
        response.rejected as usize,
        response.duplicates,
    ) != (accepted, rejected, 0)
    {
        failures.push(format!(
            "totals: accepted {} rejected {} duplicates {}, expected {accepted} {rejected} 0",
            response.accepted, response.rejected, response.duplicates
        ));
    }
    ensure!(
        failures.is_empty(),
        "per-record answers are wrong:\n  {}",
        failures.join("\n  ")
    );

    check_events_stream(pipeline, &cases).await?;
    check_dead_letters(pipeline, &answered).await?;

    for path in ["/healthz", "/readyz"] {
        let r = http_get(pipeline.service(Service::Ingest).http_addr(), path).await?;
        ensure!(
            r.status == 200,
            "ingest {path} answers {} after bad input: {}",
            r.status,
            r.body
        );
    }
    check_duplicates(pipeline, &mut ingest).await
}

/// The accepted records, and only they, are in EVENTS, keyed and partitioned.
async fn check_events_stream(pipeline: &Pipeline, cases: &[Case]) -> Result<()> {
    let good: BTreeSet<String> = cases
        .iter()
        .filter(|c| c.rejected.is_none())
        .filter_map(|c| c.record.event_id())
        .collect();
    // Ingest answers only after JetStream stored the event: no waiting needed.
    let stored = read_stream(pipeline.jetstream(), "EVENTS").await?;
    let events: Vec<Event> = decode_all(&stored)?;
    let ids: BTreeSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
    ensure!(
        events.len() == good.len() && ids == good,
        "EVENTS holds {ids:?} ({} messages), expected exactly {good:?}",
        events.len()
    );
    for (event, message) in events.iter().zip(&stored) {
        let customer = string_field(event, "customer").unwrap_or_default();
        ensure!(
            event.key == customer,
            "{}: key {:?}, expected the customer {customer:?}",
            event.event_id,
            event.key
        );
        ensure!(
            event.partition < 4,
            "{}: partition {} of 4",
            event.event_id,
            event.partition
        );
        ensure!(
            message.subject == format!("events.order_placed.{}", event.partition),
            "{}: subject {} for partition {}",
            event.event_id,
            message.subject,
            event.partition
        );
        ensure!(
            event.ingest_time_us > 0,
            "{}: ingest_time_us not set",
            event.event_id
        );
    }
    Ok(())
}

/// Every reject is in the DLQ on `dlq.ingest`, with the stage, its reason, the record and
/// the event id its ack gave.
async fn check_dead_letters(pipeline: &Pipeline, answered: &[(&Case, String)]) -> Result<()> {
    let rejects: Vec<&(&Case, String)> = answered
        .iter()
        .filter(|(c, _)| c.rejected.is_some())
        .collect();
    let js = pipeline.jetstream();
    wait_for_stream_count(js, "DLQ", rejects.len() as u64, SHORT).await?;
    let stored = read_stream(js, "DLQ").await?;
    let letters: Vec<DeadLetter> = decode_all(&stored)?;
    ensure!(
        letters.len() == rejects.len(),
        "DLQ holds {} letters for {} rejects: {letters:?}",
        letters.len(),
        rejects.len()
    );
    ensure!(
        stored.iter().all(|m| m.subject == "dlq.ingest"),
        "DLQ subjects: {:?}",
        stored.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    for (case, acked_id) in rejects {
        let Some((code, _)) = case.rejected else {
            continue;
        };
        let letter = letters.iter().find(|l| l.reason == code);
        let Some(letter) = letter else {
            failures.push(format!("{}: no dead letter with reason {code}", case.rule));
            continue;
        };
        if letter.stage != "ingest" {
            failures.push(format!("{}: stage {:?}", case.rule, letter.stage));
        }
        if letter.time_us <= 0 {
            failures.push(format!("{}: time_us not set", case.rule));
        }
        if letter.message.is_empty() {
            failures.push(format!("{}: no message", case.rule));
        }
        match &case.record {
            // The record as sent, byte for byte.
            Record::Encoded(bytes) if &letter.payload[..] != bytes.as_slice() => {
                failures.push(format!(
                    "{}: payload {:?} is not the bytes sent",
                    case.rule, letter.payload
                ));
            }
            Record::Encoded(_) => {}
            // Re-encoding a map may order it differently, so compare decoded.
            Record::Event(sent) => match Event::decode(letter.payload.as_slice()) {
                Ok(kept)
                    if kept.event_id == sent.event_id
                        && kept.r#type == sent.r#type
                        && kept.fields == sent.fields => {}
                Ok(kept) => failures.push(format!(
                    "{}: payload holds {kept:?}, sent {sent:?}",
                    case.rule
                )),
                Err(e) => failures.push(format!("{}: payload is not an Event: {e}", case.rule)),
            },
        }
        if &letter.event_id != acked_id {
            failures.push(format!(
                "{}: event_id {:?}, the ack said {acked_id:?}",
                case.rule, letter.event_id
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "dead letters are wrong:\n  {}",
        failures.join("\n  ")
    );
    Ok(())
}

/// An event id sent again is answered DUPLICATE and stored once; a new one beside it is
/// accepted.
async fn check_duplicates(
    pipeline: &Pipeline,
    ingest: &mut millrace_proto::v1::ingest_client::IngestClient<tonic::transport::Channel>,
) -> Result<()> {
    let before = pipeline.stream_count("EVENTS").await?;
    let response = ingest
        .publish_batch(PublishBatchRequest {
            events: vec![order("good-0", "alice", 12.5), order("good-3", "dave", 1.0)],
            encoded_events: Vec::new(),
        })
        .await
        .context("PublishBatch with a repeated event id")?
        .into_inner();
    let statuses: Vec<(String, AckStatus)> = response
        .acks
        .iter()
        .map(|a| (a.event_id.clone(), a.status()))
        .collect();
    ensure!(
        statuses
            == vec![
                ("good-0".to_string(), AckStatus::Duplicate),
                ("good-3".to_string(), AckStatus::Accepted)
            ],
        "a repeated id and a new one were answered {statuses:?}"
    );
    ensure!(
        (response.accepted, response.duplicates, response.rejected) == (1, 1, 0),
        "totals {response:?}"
    );
    let after = pipeline.stream_count("EVENTS").await?;
    ensure!(
        after == before + 1,
        "EVENTS went from {before} to {after} messages; expected one more"
    );
    let ids: Vec<String> =
        decode_all::<Event>(&read_stream(pipeline.jetstream(), "EVENTS").await?)?
            .into_iter()
            .map(|e| e.event_id)
            .filter(|id| id == "good-0")
            .collect();
    ensure!(ids.len() == 1, "EVENTS holds good-0 {} times", ids.len());
    Ok(())
}

/// A batch larger than ingest's whole waiting room (`max_pending_records`) could never
/// be taken in, so it is no RESOURCE_EXHAUSTED ("retry") but INVALID_ARGUMENT naming both
/// limits; a batch that fits goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_pending_limit_is_an_invalid_argument() {
    let toml = format!(
        "{}\n[ingest]\nmax_batch_records = 50\nmax_pending_records = 10\n",
        orders_pipeline_toml()
    );
    let pipeline = Pipeline::builder()
        .only(&[Service::Ingest])
        .pipeline_toml(toml)
        .start()
        .await
        .expect("ingest starts");
    oversized_for_the_pending_limit(&pipeline)
        .await
        .expect("the batch size limits");
}

async fn oversized_for_the_pending_limit(pipeline: &Pipeline) -> Result<()> {
    let mut ingest = pipeline.ingest().await?;
    let status = ingest
        .publish_batch(PublishBatchRequest {
            events: orders("too-many", 0..11, 4),
            encoded_events: Vec::new(),
        })
        .await
        .err()
        .context("a batch of 11 with room for 10 pending was taken")?;
    ensure!(
        status.code() == tonic::Code::InvalidArgument,
        "a batch over max_pending_records got {status:?}, expected INVALID_ARGUMENT"
    );
    for words in [
        "11 records",
        "at most 10",
        "max_pending_records",
        "max_batch_records",
    ] {
        ensure!(
            status.message().contains(words),
            "the refusal {:?} does not name {words:?}",
            status.message()
        );
    }
    ensure!(
        pipeline.stream_count("EVENTS").await? == 0,
        "a refused batch left events in EVENTS"
    );
    let response = ingest
        .publish_batch(PublishBatchRequest {
            events: orders("fits", 0..10, 4),
            encoded_events: Vec::new(),
        })
        .await
        .context("a batch of 10 with room for 10 pending")?
        .into_inner();
    ensure!(
        response.accepted == 10,
        "a batch that fits the limits was answered {response:?}"
    );
    Ok(())
}
