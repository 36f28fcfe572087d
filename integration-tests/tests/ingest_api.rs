//! Ingest's other doors: the NATS subject path (protobuf and JSON, answered on
//! the reply subject), the schema registry over gRPC (versions, compatibility,
//! persistence across a restart), and label events becoming labels.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use millrace_integration_tests::{
    decode_all, order, order_placed_v2_with_coupon, orders_pipeline_toml, read_stream, Pipeline,
    Service,
};
use millrace_proto::v1::schemas_client::SchemasClient;
use millrace_proto::v1::{
    AckStatus, DeadLetter, Event, EventAck, GetSchemaRequest, Label, ListSchemasRequest,
    PublishBatchRequest, RegisterSchemaRequest, Value,
};
use prost::Message;

async fn ingest_only(toml: Option<String>) -> Result<Pipeline> {
    let mut builder = Pipeline::builder().only(&[Service::Ingest]);
    if let Some(toml) = toml {
        builder = builder.pipeline_toml(toml);
    }
    builder.start().await
}

async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: Option<async_nats::HeaderMap>,
    body: Vec<u8>,
) -> Result<Bytes> {
    let answer = match headers {
        Some(h) => {
            client
                .request_with_headers(subject.to_string(), h, body.into())
                .await
        }
        None => client.request(subject.to_string(), body.into()).await,
    }
    .with_context(|| format!("request on {subject}"))?;
    Ok(answer.payload)
}

fn json_headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Content-Type", "application/json");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_subject_path_answers_protobuf_and_json_and_stores_each_event_once() {
    let pipeline = ingest_only(None).await.expect("ingest starts");
    let client = pipeline.nats().client().await.expect("client");

    // Protobuf, type taken from the subject.
    let mut proto_event = order("nats-proto-1", "alice", 5.0);
    proto_event.r#type.clear();
    let body = proto_event.encode_to_vec();
    let ack = EventAck::decode(
        request(&client, "ingest.order_placed", None, body.clone())
            .await
            .expect("answer"),
    )
    .expect("an EventAck");
    assert_eq!(ack.status(), AckStatus::Accepted, "{ack:?}");
    assert!(ack.stream_sequence > 0);
    let again = EventAck::decode(
        request(&client, "ingest.order_placed", None, body)
            .await
            .expect("answer"),
    )
    .expect("an EventAck");
    assert_eq!(
        again.status(),
        AckStatus::Duplicate,
        "the same id is stored once: {again:?}"
    );

    // JSON: numbers are typed by the schema.
    let json = br#"{"event_id":"nats-json-1","fields":{"customer":"bob","amount":12}}"#.to_vec();
    let answer = request(&client, "ingest.order_placed", Some(json_headers()), json)
        .await
        .expect("answer");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(answer["status"], "accepted", "{answer}");

    // Bad JSON is refused with its reason and lands in the DLQ whole.
    let bad =
        br#"{"event_id":"nats-json-bad","fields":{"customer":"bob","amount":"lots"}}"#.to_vec();
    let answer = request(
        &client,
        "ingest.order_placed",
        Some(json_headers()),
        bad.clone(),
    )
    .await
    .expect("answer");
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(
        (answer["status"].as_str(), answer["code"].as_str()),
        (Some("rejected"), Some("wrong_type")),
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("amount")),
        "{answer}"
    );

    // A protobuf event whose type disagrees with the subject is refused.
    let mismatch = order("nats-mismatch", "carol", 1.0).encode_to_vec();
    let ack = EventAck::decode(
        request(&client, "ingest.refund_issued", None, mismatch)
            .await
            .expect("answer"),
    )
    .expect("an EventAck");
    assert_eq!(
        (ack.status(), ack.code.as_str()),
        (AckStatus::Rejected, "type_mismatch"),
        "{ack:?}"
    );

    let js = pipeline.jetstream();
    let stored: Vec<Event> =
        decode_all(&read_stream(js, "EVENTS").await.expect("EVENTS")).expect("events");
    let mut ids: Vec<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["nats-json-1", "nats-proto-1"]);
    let json_event = stored
        .iter()
        .find(|e| e.event_id == "nats-json-1")
        .expect("json event");
    assert_eq!(json_event.fields["amount"], Value::double(12.0));
    assert_eq!(json_event.key, "bob");

    let letters: Vec<DeadLetter> =
        decode_all(&read_stream(js, "DLQ").await.expect("DLQ")).expect("letters");
    let letter = letters
        .iter()
        .find(|l| l.reason == "wrong_type")
        .expect("the bad JSON is dead-lettered");
    assert_eq!(letter.payload, bad, "the DLQ keeps the original bytes");
    assert_eq!(letter.stage, "ingest");
    assert!(letters.iter().any(|l| l.reason == "type_mismatch"));
}

async fn publish_one(pipeline: &Pipeline, event: Event) -> Result<EventAck> {
    let mut ingest = pipeline.ingest().await?;
    let response = ingest
        .publish_batch(PublishBatchRequest {
            events: vec![event],
            encoded_events: vec![],
        })
        .await?
        .into_inner();
    response.acks.into_iter().next().context("one ack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_are_registered_when_compatible_and_survive_a_restart() {
    let mut pipeline = ingest_only(None).await.expect("ingest starts");
    let url = pipeline.service(Service::Ingest).grpc_url();
    let mut schemas = SchemasClient::connect(url.clone())
        .await
        .expect("schemas API");

    let listed = schemas
        .list_schemas(ListSchemasRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.schemas.len(),
        1,
        "the pipeline file seeds v1: {listed:?}"
    );
    assert_eq!(listed.schemas[0].version, 1);

    let v2 = schemas
        .register_schema(RegisterSchemaRequest {
            schema: Some(order_placed_v2_with_coupon()),
        })
        .await
        .expect("an optional field is compatible")
        .into_inner();
    assert_eq!(v2.version, 2);

    let mut narrowing = order_placed_v2_with_coupon();
    narrowing.fields.retain(|f| f.name != "amount");
    let refused = schemas
        .register_schema(RegisterSchemaRequest {
            schema: Some(narrowing),
        })
        .await
        .expect_err("removing a field is not compatible");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("`amount` is removed"),
        "{}",
        refused.message()
    );

    let with_coupon = |id: &str, version: u32| {
        let mut e = order(id, "dave", 3.0);
        e.schema_version = version;
        e.fields.insert("coupon".into(), Value::string("WINTER"));
        e
    };
    let ack = publish_one(&pipeline, with_coupon("coupon-latest", 0))
        .await
        .expect("ack");
    assert_eq!(ack.status(), AckStatus::Accepted, "{ack:?}");
    let ack = publish_one(&pipeline, with_coupon("coupon-v1", 1))
        .await
        .expect("ack");
    assert_eq!(
        (ack.status(), ack.code.as_str()),
        (AckStatus::Rejected, "unknown_field"),
        "{ack:?}"
    );

    let stored: Vec<Event> = decode_all(
        &read_stream(pipeline.jetstream(), "EVENTS")
            .await
            .expect("EVENTS"),
    )
    .expect("events");
    assert_eq!(
        stored
            .iter()
            .find(|e| e.event_id == "coupon-latest")
            .map(|e| e.schema_version),
        Some(2)
    );

    let ingest = pipeline.service_mut(Service::Ingest);
    ingest.terminate().await.expect("SIGTERM");
    ingest.restart().await.expect("restart");
    ingest.wait_ready().await.expect("ready again");

    let mut schemas = SchemasClient::connect(url).await.expect("schemas API");
    let latest = schemas
        .get_schema(GetSchemaRequest {
            event_type: "order_placed".into(),
            version: 0,
        })
        .await
        .expect("latest")
        .into_inner();
    assert_eq!(
        latest.version, 2,
        "the registered version survives the restart"
    );
    let missing = schemas
        .get_schema(GetSchemaRequest {
            event_type: "order_placed".into(),
            version: 9,
        })
        .await
        .expect_err("no v9");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let ack = publish_one(&pipeline, with_coupon("coupon-after-restart", 0))
        .await
        .expect("ack");
    assert_eq!(ack.status(), AckStatus::Accepted, "{ack:?}");
}

fn pipeline_with_labels() -> String {
    let mut toml = orders_pipeline_toml();
    toml.push_str(
        r#"
[events.chargeback]
label = true
key_field = "customer"
[events.chargeback.fields.customer]
type = "string"
required = true
[events.chargeback.fields.amount_lost]
type = "double"
required = true

[label]
event = "chargeback"
key_field = "customer"
scored_key_field = "customer"
value_field = "amount_lost"
op = ">"
threshold = 0.0
"#,
    );
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_events_become_labels_on_the_labels_stream() -> Result<()> {
    let pipeline = ingest_only(Some(pipeline_with_labels())).await?;
    let label_event = |id: &str, customer: &str, lost: f64| Event {
        event_id: id.into(),
        r#type: "chargeback".into(),
        fields: [
            ("customer".to_string(), Value::string(customer)),
            ("amount_lost".to_string(), Value::double(lost)),
        ]
        .into(),
        ..Default::default()
    };
    for (id, customer, lost) in [("cb-1", "alice", 40.0), ("cb-2", "bob", 0.0)] {
        let ack = publish_one(&pipeline, label_event(id, customer, lost)).await?;
        ensure!(ack.status() == AckStatus::Accepted, "{ack:?}");
    }
    let js = pipeline.jetstream();
    let stored = read_stream(js, "LABELS").await?;
    ensure!(
        stored.iter().all(|m| m.subject == "labels.chargeback"),
        "subjects: {stored:?}"
    );
    let labels: Vec<Label> = decode_all(&stored)?;
    let summary: Vec<(&str, &str, f64, f64)> = labels
        .iter()
        .map(|l| {
            (
                l.event_id.as_str(),
                l.label_key.as_str(),
                l.value,
                l.observed,
            )
        })
        .collect();
    ensure!(
        summary == [("cb-1", "alice", 1.0, 40.0), ("cb-2", "bob", 0.0, 0.0)],
        "labels: {summary:?}"
    );
    ensure!(
        millrace_integration_tests::stream_message_count(js, "EVENTS").await? == 0,
        "label events do not enter EVENTS"
    );
    Ok(())
}
