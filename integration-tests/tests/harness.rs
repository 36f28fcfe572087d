//! The harness checked against the real broker, without any millrace service: if these
//! fail, the other integration tests cannot be trusted.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use millrace_integration_tests::{
    read_stream, stream_message_count, wait_for_stream_count, wait_until, NatsServer, OtlpReceiver,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarts_on_the_same_port_and_keeps_its_streams() {
    let mut nats = NatsServer::start().await.expect("nats-server starts");
    let js = jetstream::new(nats.client().await.expect("client"));
    assert_eq!(
        stream_message_count(&js, "T").await.expect("count"),
        0,
        "no stream yet reads as 0"
    );
    js.create_stream(stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("stream created");

    // The same Nats-Msg-Id twice is stored once, before and after a restart.
    let publish = |js: jetstream::Context, id: String| async move {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        js.publish_with_headers("t.a", headers, id.clone().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    };
    for i in 0..10 {
        publish(js.clone(), format!("m{i}")).await;
    }
    publish(js.clone(), "m3".into()).await;
    assert_eq!(stream_message_count(&js, "T").await.expect("count"), 10);

    let url = nats.url();
    nats.restart().await.expect("restart");
    assert_eq!(nats.url(), url, "same port after restart");
    // The old connection reconnects by itself.
    wait_for_stream_count(&js, "T", 10, Duration::from_secs(30))
        .await
        .expect("stream survived");
    publish(js.clone(), "m4".into()).await;
    publish(js.clone(), "m10".into()).await;

    let stored = read_stream(&js, "T").await.expect("read");
    let payloads: Vec<String> = stored
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..=10).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected);
    assert!(stored.iter().all(|m| m.subject == "t.a"));

    nats.kill().await.expect("kill");
    nats.restart().await.expect("restart after SIGKILL");
    wait_for_stream_count(&js, "T", 11, Duration::from_secs(30))
        .await
        .expect("stream survived SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receiver_keeps_spans_with_their_service_name() {
    let receiver = OtlpReceiver::start().await.expect("receiver starts");
    let mut client = TraceServiceClient::connect(receiver.endpoint())
        .await
        .expect("connect");
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let span = |name: &str, event_id: &str| Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
        name: name.into(),
        attributes: vec![kv("millrace.event_id", event_id)],
        ..Default::default()
    };
    client
        .export(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "millrace-ingest")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span("publish", "e1"), span("publish", "e2")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .expect("export");

    let spans = wait_until("both spans arrived", Duration::from_secs(10), || async {
        let spans = receiver.spans();
        Ok((spans.len() == 2, spans))
    })
    .await
    .expect("spans");
    let e1 = receiver.spans_with_attribute("millrace.event_id", "e1");
    assert_eq!(e1.len(), 1, "{spans:?}");
    assert_eq!(e1[0].service_name, "millrace-ingest");
    assert_eq!(e1[0].trace_id, "ab".repeat(16));
    assert_eq!(e1[0].span_id, "0102030405060708");
    assert_eq!(e1[0].parent_span_id, "");
    assert_eq!(e1[0].name, "publish");
}
