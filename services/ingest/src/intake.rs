//! The NATS ingest path: producers publish to `ingest.<type>` (protobuf
//! `Event`, or JSON with `Content-Type: application/json`) and, when they give
//! a reply subject, get the record's answer there in the same encoding once
//! JetStream stored it. Instances share the subject through a queue group.

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use millrace_chassis::shutdown::Shutdown;
use millrace_chassis::telemetry;
use millrace_proto::{AckStatus, EventAck};
use prost::Message as _;
use tokio::sync::mpsc;

use crate::json;
use crate::publish::{Ingestor, Pending, Record, Submission, Tally, GATHER};
use crate::registry::SchemaHandle;

/// Subject producers publish to; the last token is the event type.
pub const SUBJECT: &str = "ingest.*";
const QUEUE_GROUP: &str = "millrace-ingest";
/// Records read from NATS and not yet answered, per instance.
const WINDOW: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: Option<&HeaderMap>) -> Self {
        let json = headers
            .and_then(|h| h.get("Content-Type"))
            .is_some_and(|v| v.as_str().to_ascii_lowercase().contains("json"));
        if json {
            Self::Json
        } else {
            Self::Protobuf
        }
    }
}

/// Serves `ingest.*` until shutdown.
pub async fn serve(
    client: async_nats::Client,
    ingestor: Ingestor,
    schemas: SchemaHandle,
    mut shutdown: Shutdown,
) -> Result<(), async_nats::SubscribeError> {
    let subscription = client.queue_subscribe(SUBJECT, QUEUE_GROUP.into()).await?;
    tracing::info!(subject = SUBJECT, "NATS ingest path listening");
    let (steps, mut steps_rx) =
        mpsc::channel::<(Option<async_nats::Subject>, Encoding, Step)>(WINDOW);

    let answerer = ingestor.clone();
    let replies = client.clone();
    let answering = tokio::spawn(async move {
        while let Some((reply, encoding, step)) = steps_rx.recv().await {
            let ack = match step {
                Step::Record(pending, _room) => {
                    let mut tally = Tally::default();
                    let ack = answerer.settle(*pending, &mut tally).await;
                    answerer.count(tally);
                    ack
                }
                Step::Refused(ack) => ack,
            };
            if let Some(reply) = reply {
                let body = match encoding {
                    Encoding::Json => Bytes::from(json::ack_to_json(&ack)),
                    Encoding::Protobuf => Bytes::from(ack.encode_to_vec()),
                };
                if let Err(e) = replies.publish(reply, body).await {
                    tracing::warn!(event_id = %ack.event_id, "replying on NATS: {e}");
                }
            }
        }
    });

    let mut index = 0u32;
    // What has arrived goes out together: one atomic batch for many records
    // under load, one record alone when traffic is light.
    let mut arrivals = subscription.ready_chunks(GATHER);
    'serving: loop {
        let ready = tokio::select! {
            _ = shutdown.recv() => break,
            ready = arrivals.next() => match ready {
                Some(ready) => ready,
                None => break,
            },
        };
        let mut waiting = Vec::with_capacity(ready.len());
        let mut submissions = Vec::with_capacity(ready.len());
        let mut steps_in_order = Vec::with_capacity(ready.len());
        for msg in ready {
            let encoding = Encoding::of(msg.headers.as_ref());
            let reply = msg.reply.clone();
            match ingestor.reserve(1) {
                None => steps_in_order.push((reply, encoding, Some(refused(index, &ingestor)))),
                Some(room) => {
                    submissions.push(Submission {
                        index,
                        record: read(&msg, encoding, &schemas),
                        parent: telemetry::context_from_headers(msg.headers.as_ref()),
                        taken_in: tokio::time::Instant::now(),
                    });
                    waiting.push(room);
                    steps_in_order.push((reply, encoding, None));
                }
            }
            index = index.wrapping_add(1);
        }
        let mut pending = ingestor.submit(submissions).await.into_iter().zip(waiting);
        for (reply, encoding, refused) in steps_in_order {
            let step = match refused {
                Some(ack) => Step::Refused(ack),
                None => match pending.next() {
                    Some((pending, room)) => Step::Record(Box::new(pending), room),
                    None => continue,
                },
            };
            if steps.send((reply, encoding, step)).await.is_err() {
                break 'serving;
            }
        }
    }
    let _ = arrivals.into_inner().unsubscribe().await;
    drop(steps);
    // Answer what was taken in before stopping.
    let _ = answering.await;
    Ok(())
}

/// The answer for a record that found ingest full.
fn refused(index: u32, ingestor: &Ingestor) -> EventAck {
    EventAck {
        index,
        status: AckStatus::Rejected as i32,
        code: "resource_exhausted".into(),
        message: ingestor.full_message(),
        ..Default::default()
    }
}

enum Step {
    /// Holds its room in the pending limit until answered.
    Record(Box<Pending>, tokio::sync::OwnedSemaphorePermit),
    Refused(EventAck),
}

/// The record a NATS message carries; the subject names its type.
fn read(msg: &Message, encoding: Encoding, schemas: &SchemaHandle) -> Record {
    let event_type = msg.subject.as_str().rsplit('.').next().unwrap_or_default();
    let bytes = msg.payload.clone();
    match encoding {
        Encoding::Json => match json::event_from_json(&bytes, event_type, &schemas.current()) {
            Ok(event) => Record::Parsed(event, bytes),
            Err(rejection) => Record::Unreadable(bytes, rejection),
        },
        // Read (and its type checked against the subject's) by the publisher.
        Encoding::Protobuf => Record::EncodedAs(bytes, event_type.to_string()),
    }
}
