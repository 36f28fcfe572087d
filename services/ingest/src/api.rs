//! The ingest gRPC API: a unary batch and a bidirectional stream, both thin
//! adapters onto [`Ingestor`], answering every record in order. Served by
//! [`crate::service::IngestService`], which hands over each event as its bytes.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use millrace_chassis::config::IngestLimits;
use millrace_chassis::telemetry;
use millrace_proto::{AckStatus, EventAck, PublishBatchResponse};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::publish::{Ingestor, Pending, Record, Submission, Tally, GATHER};
use crate::registry::{to_proto, ExportSchemas, List, Register, SchemaBook, SchemaHandle};
use crate::service::RawBatch;
use crate::SCHEMAS_KEY;
use millrace_chassis::snapshot::SnapshotStore;
use millrace_proto::schemas_server::Schemas;
use millrace_proto::{
    EventSchema, GetSchemaRequest, ListSchemasRequest, ListSchemasResponse, RegisterSchemaRequest,
    RegisterSchemaResponse,
};

/// Records a stream may have sent and not yet been answered for.
const STREAM_WINDOW: usize = 4096;

/// The answers of a `PublishStream`.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<EventAck, Status>> + Send>>;

pub struct IngestApi {
    pub ingestor: Ingestor,
}

fn full(ingestor: &Ingestor) -> Status {
    Status::resource_exhausted(ingestor.full_message())
}

/// Why a batch of `n` records can never be taken in, if it cannot: over
/// `max_batch_records`, or over `max_pending_records`, the room ingest has in
/// all (a retry would be refused for ever, so it is no RESOURCE_EXHAUSTED).
fn batch_size_problem(n: usize, limits: &IngestLimits) -> Option<String> {
    let (max_batch, max_pending) = (limits.max_batch_records, limits.max_pending_records);
    if n <= max_batch && n <= max_pending {
        return None;
    }
    Some(format!(
        "batch has {n} records, at most {} per call: the pipeline allows {max_batch} per batch \
         (max_batch_records) and {max_pending} waiting for JetStream in all (max_pending_records); \
         split the batch",
        max_batch.min(max_pending)
    ))
}

impl IngestApi {
    /// `PublishBatch`: `events` first, then `encoded_events`, answered in that order.
    pub async fn publish_batch(
        &self,
        request: Request<RawBatch>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let taken_in = Instant::now();
        let parent = telemetry::context_from_grpc(request.metadata());
        let RawBatch {
            events,
            encoded_events,
        } = request.into_inner();
        let n = events.len() + encoded_events.len();
        if n == 0 {
            return Err(Status::invalid_argument(
                "batch is empty: send at least one event",
            ));
        }
        if let Some(problem) = batch_size_problem(n, self.ingestor.limits()) {
            return Err(Status::invalid_argument(problem));
        }
        let _room = self
            .ingestor
            .reserve(n)
            .ok_or_else(|| full(&self.ingestor))?;
        let records = events
            .into_iter()
            .chain(encoded_events)
            .map(Record::Encoded);
        let submissions = (0u32..)
            .zip(records)
            .map(|(index, record)| Submission {
                index,
                record,
                parent: parent.clone(),
                taken_in,
            })
            .collect();
        let pending = self.ingestor.submit(submissions).await;
        let mut response = PublishBatchResponse {
            acks: Vec::with_capacity(n),
            ..Default::default()
        };
        let mut tally = Tally::default();
        for p in pending {
            let ack = self.ingestor.settle(p, &mut tally).await;
            match AckStatus::try_from(ack.status) {
                Ok(AckStatus::Accepted) => response.accepted += 1,
                Ok(AckStatus::Duplicate) => response.duplicates += 1,
                _ => response.rejected += 1,
            }
            response.acks.push(ack);
        }
        self.ingestor.count(tally);
        Ok(Response::new(response))
    }

    /// `PublishStream`: events in, one ack per event out, in order.
    pub async fn publish_stream(
        &self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<AckStream>, Status> {
        let parent = telemetry::context_from_grpc(request.metadata());
        // What the stream has ready goes out together: one atomic batch (one
        // fsync) for many events when the producer is fast, one event alone
        // when it is not.
        let mut inbound = request.into_inner().ready_chunks(GATHER);
        let (steps, mut steps_rx) = mpsc::channel::<Step>(STREAM_WINDOW);
        let (answers, answers_rx) = mpsc::channel(STREAM_WINDOW);

        let reader = self.ingestor.clone();
        tokio::spawn(async move {
            let mut index = 0u32;
            while let Some(ready) = inbound.next().await {
                let mut submissions = Vec::with_capacity(ready.len());
                let mut rooms = Vec::with_capacity(ready.len());
                let mut failure = None;
                for item in ready {
                    let room = match item.map(|bytes| (reader.reserve(1), bytes)) {
                        Err(status) => Err(status),
                        Ok((None, _)) => Err(full(&reader)),
                        Ok((Some(room), bytes)) => Ok((room, bytes)),
                    };
                    match room {
                        Ok((room, bytes)) => {
                            submissions.push(Submission {
                                index,
                                record: Record::Encoded(bytes),
                                parent: parent.clone(),
                                taken_in: Instant::now(),
                            });
                            rooms.push(room);
                            index = index.wrapping_add(1);
                        }
                        Err(status) => {
                            failure = Some(status);
                            break;
                        }
                    }
                }
                for (pending, room) in reader.submit(submissions).await.into_iter().zip(rooms) {
                    if steps
                        .send(Step::Record(Box::new(pending), room))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if let Some(status) = failure {
                    let _ = steps.send(Step::Fail(status)).await;
                    return;
                }
            }
        });

        let answerer = self.ingestor.clone();
        tokio::spawn(async move {
            while let Some(step) = steps_rx.recv().await {
                let answer = match step {
                    Step::Record(pending, _room) => {
                        let mut tally = Tally::default();
                        let ack = answerer.settle(*pending, &mut tally).await;
                        answerer.count(tally);
                        Ok(ack)
                    }
                    Step::Fail(status) => Err(status),
                };
                let stop = answer.is_err();
                if answers.send(answer).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answers_rx))))
    }
}

enum Step {
    Record(Box<Pending>, OwnedSemaphorePermit),
    Fail(Status),
}

/// The schema registry over gRPC. Registration goes through the book (one
/// writer) and is persisted before it is answered.
pub struct SchemasApi {
    pub book: actix::Addr<SchemaBook>,
    pub schemas: SchemaHandle,
    pub store: SnapshotStore,
}

impl SchemasApi {
    async fn persist(&self) -> Result<(), Status> {
        let state = self
            .book
            .send(ExportSchemas)
            .await
            .map_err(|e| Status::unavailable(format!("schema book is not running: {e}")))?;
        self.store
            .save(SCHEMAS_KEY, &[], &state)
            .map_err(|e| Status::internal(format!("persisting schemas: {e}")))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Schemas for SchemasApi {
    async fn register_schema(
        &self,
        request: Request<RegisterSchemaRequest>,
    ) -> Result<Response<RegisterSchemaResponse>, Status> {
        let schema = request
            .into_inner()
            .schema
            .ok_or_else(|| Status::invalid_argument("register_schema needs a schema"))?;
        let version = self
            .book
            .send(Register(schema))
            .await
            .map_err(|e| Status::unavailable(format!("schema book is not running: {e}")))?
            .map_err(|r| match r.code {
                "incompatible_schema" => Status::failed_precondition(r.message),
                _ => Status::invalid_argument(r.message),
            })?;
        self.persist().await?;
        Ok(Response::new(RegisterSchemaResponse { version }))
    }

    async fn list_schemas(
        &self,
        request: Request<ListSchemasRequest>,
    ) -> Result<Response<ListSchemasResponse>, Status> {
        let schemas = self
            .book
            .send(List(request.into_inner().event_type))
            .await
            .map_err(|e| Status::unavailable(format!("schema book is not running: {e}")))?;
        Ok(Response::new(ListSchemasResponse { schemas }))
    }

    async fn get_schema(
        &self,
        request: Request<GetSchemaRequest>,
    ) -> Result<Response<EventSchema>, Status> {
        let GetSchemaRequest {
            event_type,
            version,
        } = request.into_inner();
        let registry = self.schemas.current();
        let schema = registry.get(&event_type, version).ok_or_else(|| {
            let which = if version == 0 {
                "any version".to_string()
            } else {
                format!("version {version}")
            };
            Status::not_found(format!("no schema `{event_type}` with {which}"))
        })?;
        Ok(Response::new(to_proto(&event_type, schema)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_over_either_limit_is_refused_naming_both() {
        let limits = IngestLimits {
            max_batch_records: 1000,
            max_pending_records: 200,
            ..IngestLimits::default()
        };
        assert_eq!(batch_size_problem(200, &limits), None);
        for n in [201, 1000, 1001] {
            let problem = batch_size_problem(n, &limits).expect("refused");
            for words in [
                "at most 200 per call",
                "1000 per batch (max_batch_records)",
                "200 waiting for JetStream in all (max_pending_records)",
            ] {
                assert!(problem.contains(words), "{problem:?} lacks {words:?}");
            }
        }
        let roomy = IngestLimits {
            max_batch_records: 10,
            max_pending_records: 100,
            ..IngestLimits::default()
        };
        assert_eq!(batch_size_problem(10, &roomy), None);
        let problem = batch_size_problem(11, &roomy).expect("refused");
        assert!(problem.contains("at most 10 per call"), "{problem}");
    }
}
