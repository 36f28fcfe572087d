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
use crate::publish::{Ingestor, Pending, Record, Tally};
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
    let mut subscription = client.queue_subscribe(SUBJECT, QUEUE_GROUP.into()).await?;
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
    loop {
        let msg = tokio::select! {
            _ = shutdown.recv() => break,
            msg = subscription.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let encoding = Encoding::of(msg.headers.as_ref());
        let reply = msg.reply.clone();
        let step = match ingestor.reserve(1) {
            None => Step::Refused(EventAck {
                index,
                status: AckStatus::Rejected as i32,
                code: "resource_exhausted".into(),
                message: format!(
                    "ingest holds its limit of {} records waiting for JetStream; retry with backoff",
                    ingestor.limits().max_pending_records
                ),
                ..Default::default()
            }),
            Some(room) => {
                let record = read(&msg, encoding, &schemas);
                let parent = telemetry::context_from_headers(msg.headers.as_ref());
                let pending = ingestor
                    .submit(index, record, &parent, tokio::time::Instant::now())
                    .await;
                Step::Record(Box::new(pending), room)
            }
        };
        index = index.wrapping_add(1);
        if steps.send((reply, encoding, step)).await.is_err() {
            break;
        }
    }
    let _ = subscription.unsubscribe().await;
    drop(steps);
    // Answer what was taken in before stopping.
    let _ = answering.await;
    Ok(())
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
