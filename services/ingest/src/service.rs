//! `millrace.v1.Ingest` served by hand instead of through the generated
//! `IngestServer`, which would decode every event of a request into an
//! `Event` only for ingest to encode it again. Here each event stays the bytes
//! its producer encoded, sliced out of the request without a copy: a batch
//! is read as [`RawBatch`] (the same wire format as `PublishBatchRequest`), a
//! stream message as the `Event`'s bytes. Answers are the generated messages.
//!
//! A record that is no `Event` is thereby answered REJECTED `malformed` on its
//! own, in either field of a batch or on a stream, instead of failing the call.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use millrace_proto::{EventAck, PublishBatchResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{AckStream, IngestApi};

const PUBLISH_BATCH: &str = "/millrace.v1.Ingest/PublishBatch";
const PUBLISH_STREAM: &str = "/millrace.v1.Ingest/PublishStream";

/// `PublishBatchRequest` with its events left encoded.
#[derive(Clone, PartialEq, Message)]
pub struct RawBatch {
    /// `events` (field 1): each an encoded `Event`.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub events: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub encoded_events: Vec<Bytes>,
}

/// The ingest service, ready for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct IngestService {
    api: Arc<IngestApi>,
    /// Largest request (and answer) message, in bytes.
    max_message_bytes: usize,
}

impl IngestService {
    pub fn new(api: IngestApi, max_message_bytes: usize) -> Self {
        Self {
            api: Arc::new(api),
            max_message_bytes,
        }
    }
}

impl NamedService for IngestService {
    const NAME: &'static str = millrace_proto::ingest_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for IngestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        let max = Some(self.max_message_bytes);
        match request.uri().path() {
            PUBLISH_BATCH => Box::pin(async move {
                let mut grpc = Grpc::new(WireCodec::<PublishBatchResponse, RawBatch>::default())
                    .apply_max_message_size_config(max, max);
                Ok(grpc.unary(BatchMethod(api), request).await)
            }),
            PUBLISH_STREAM => Box::pin(async move {
                let mut grpc = Grpc::new(WireCodec::<EventAck, Bytes>::default())
                    .apply_max_message_size_config(max, max);
                Ok(grpc.streaming(StreamMethod(api), request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

struct BatchMethod(Arc<IngestApi>);

impl UnaryService<RawBatch> for BatchMethod {
    type Response = PublishBatchResponse;
    type Future = BoxFuture<Response<PublishBatchResponse>, Status>;

    fn call(&mut self, request: Request<RawBatch>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.publish_batch(request).await })
    }
}

struct StreamMethod(Arc<IngestApi>);

impl StreamingService<Bytes> for StreamMethod {
    type Response = EventAck;
    type ResponseStream = AckStream;
    type Future = BoxFuture<Response<AckStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.publish_stream(request).await })
    }
}

/// Encodes answers `E` with prost, reads requests as `D`.
struct WireCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for WireCodec<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> Codec for WireCodec<E, D>
where
    E: Message + Send + 'static,
    D: FromWire + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = WireDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

struct WireEncoder<E>(PhantomData<fn(E)>);

impl<E: Message> Encoder for WireEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

struct WireDecoder<D>(PhantomData<fn() -> D>);

impl<D: FromWire> Decoder for WireDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::from_wire(src).map(Some)
    }
}

/// How a request message is read off the wire.
trait FromWire: Sized {
    fn from_wire(src: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

/// A stream message: one encoded `Event`, read later record by record.
impl FromWire for Bytes {
    fn from_wire(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        Ok(src.copy_to_bytes(src.remaining()))
    }
}

impl FromWire for RawBatch {
    fn from_wire(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        RawBatch::decode(src)
            .map_err(|e| Status::invalid_argument(format!("not a PublishBatchRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::{Event, PublishBatchRequest};

    #[test]
    fn a_raw_batch_holds_each_event_as_its_producer_encoded_it() {
        let event = |id: &str| Event {
            event_id: id.into(),
            r#type: "t".into(),
            ..Default::default()
        };
        let request = PublishBatchRequest {
            events: vec![event("a"), event("b")],
            encoded_events: vec![event("c").encode_to_vec(), b"junk".to_vec()],
        };
        let raw = RawBatch::decode(request.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            raw.events,
            vec![
                Bytes::from(event("a").encode_to_vec()),
                Bytes::from(event("b").encode_to_vec())
            ]
        );
        assert_eq!(
            raw.encoded_events,
            vec![
                Bytes::from(event("c").encode_to_vec()),
                Bytes::from_static(b"junk")
            ]
        );
    }
}
