//! The system under test: one broker and the five services started in dataflow order,
//! reading a small pipeline file the harness writes (orders scored for fraud by a
//! logistic model of the customer's order count and the amount). And the check most
//! tests end with: every accepted event became exactly one prediction, counted once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream;
use millrace_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use millrace_proto::v1::feature_state_client::FeatureStateClient;
use millrace_proto::v1::ingest_client::IngestClient;
use millrace_proto::v1::monitor_client::MonitorClient;
use millrace_proto::v1::{
    AckStatus, Event, EventAck, EventSchema, FeatureStatus, FieldSchema, FieldType,
    GetModelHealthRequest, GetOnlineFeaturesRequest, Prediction, PublishBatchRequest, Value,
};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::http::parse_samples;
use crate::http::{metric_value, metrics};
use crate::nats::{
    decode_all, observe_quiet, read_stream, stream_record_count, wait_for_stream_count, Positions,
    Quiet,
};
use crate::service::{Service, ServiceProcess, ServiceSettings};
use crate::wait::{wait_until, LONG};
use crate::{test_dir, NatsServer};

/// The model's intercept in the test pipeline.
pub const ORDERS_INTERCEPT: f64 = -2.0;
/// The weight of `customer_orders` (the customer's order count, this order included).
pub const ORDERS_COUNT_WEIGHT: f64 = 0.1;
/// The weight of the order's `amount`.
pub const ORDERS_AMOUNT_WEIGHT: f64 = 0.01;

/// The test pipeline: `order_placed` events keyed by customer, a per-customer count, and
/// a model `fraud` v1 reading `[customer_orders, amount]`.
pub fn orders_pipeline_toml() -> String {
    format!(
        "[pipeline]\nname = \"test\"\npartitions = 4\n\n{}",
        orders_sections(false)
    )
}

/// The `order_placed` schema, the `customer_orders` feature and the `fraud` model; when
/// `labelled`, orders carry an `order_id` and `order_outcome` events label them.
fn orders_sections(labelled: bool) -> String {
    let (order_id, label) = if labelled {
        (
            "[events.order_placed.fields.order_id]\ntype = \"string\"\nrequired = true\n",
            r#"
[events.order_outcome]
key_field = "order_id"
label = true
[events.order_outcome.fields.order_id]
type = "string"
required = true
[events.order_outcome.fields.chargeback]
type = "double"
required = true

[label]
event = "order_outcome"
key_field = "order_id"
scored_key_field = "order_id"
value_field = "chargeback"
op = ">="
threshold = 1.0
"#,
        )
    } else {
        ("", "")
    };
    format!(
        r#"[events.order_placed]
key_field = "customer"
score = true
[events.order_placed.fields.customer]
type = "string"
required = true
{order_id}[events.order_placed.fields.amount]
type = "double"
required = true
min = 0.0
{label}
[[features]]
name = "customer_orders"
source = "order_placed"
entity = "customer"
aggregation = "count"

[model]
name = "fraud"
version = "1"
intercept = {ORDERS_INTERCEPT:?}
inputs = [{{ name = "customer_orders", weight = {ORDERS_COUNT_WEIGHT:?} }}, {{ name = "amount", weight = {ORDERS_AMOUNT_WEIGHT:?} }}]
"#
    )
}

/// The probability the test model gives an order: `sigmoid(intercept + w·[count, amount])`.
pub fn orders_model_probability(customer_orders: f64, amount: f64) -> f64 {
    let z =
        ORDERS_INTERCEPT + ORDERS_COUNT_WEIGHT * customer_orders + ORDERS_AMOUNT_WEIGHT * amount;
    1.0 / (1.0 + (-z).exp())
}

/// The order count a score implies for an order of `amount`: the inverse of
/// [`orders_model_probability`]. A whole number when the pipeline counted right.
pub fn implied_customer_orders(score: f64, amount: f64) -> f64 {
    let logit = (score / (1.0 - score)).ln();
    (logit - ORDERS_INTERCEPT - ORDERS_AMOUNT_WEIGHT * amount) / ORDERS_COUNT_WEIGHT
}

/// Orders number `range` over `customers` customers (`customer-00`, …): order `i` belongs
/// to customer `i % customers`, has id `<prefix>-<i>` and an amount between 0.5 and 199.5.
pub fn orders(prefix: &str, range: Range<usize>, customers: usize) -> Vec<Event> {
    range
        .map(|i| {
            order(
                &format!("{prefix}-{i:05}"),
                &customer(i % customers.max(1)),
                amount_of(i),
            )
        })
        .collect()
}

pub fn customer(n: usize) -> String {
    format!("customer-{n:02}")
}

fn amount_of(i: usize) -> f64 {
    ((i * 37) % 200) as f64 + 0.5
}

/// One `order_placed` event, as a producer sends it (no key: ingest takes the customer).
pub fn order(event_id: &str, customer: &str, amount: f64) -> Event {
    Event {
        event_id: event_id.to_string(),
        r#type: "order_placed".into(),
        schema_version: 1,
        event_time_us: now_us(),
        fields: [
            ("customer".to_string(), Value::string(customer)),
            ("amount".to_string(), Value::double(amount)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A string field of an event.
pub fn string_field<'e>(event: &'e Event, name: &str) -> Option<&'e str> {
    match event.fields.get(name)?.kind.as_ref()? {
        millrace_proto::v1::value::Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// Sends `events` in batches of `batch` through `PublishBatch` and requires every one to
/// be acknowledged ACCEPTED, in order; returns the acks.
pub async fn publish_all_accepted(
    client: &mut IngestClient<Channel>,
    events: &[Event],
    batch: usize,
) -> Result<Vec<EventAck>> {
    let mut all = Vec::with_capacity(events.len());
    for chunk in events.chunks(batch.max(1)) {
        let response = client
            .publish_batch(PublishBatchRequest {
                events: chunk.to_vec(),
                encoded_events: Vec::new(),
            })
            .await
            .with_context(|| {
                format!(
                    "PublishBatch of {} events from {}",
                    chunk.len(),
                    chunk[0].event_id
                )
            })?
            .into_inner();
        ensure!(
            response.acks.len() == chunk.len(),
            "PublishBatch of {} events answered {} acks",
            chunk.len(),
            response.acks.len()
        );
        for (i, (ack, event)) in response.acks.iter().zip(chunk).enumerate() {
            ensure!(
                ack.index as usize == i && ack.event_id == event.event_id,
                "ack {i} is for index {} / id {:?}, expected {:?}",
                ack.index,
                ack.event_id,
                event.event_id
            );
            ensure!(
                ack.status() == AckStatus::Accepted,
                "event {} was not accepted: {:?} {} {}",
                event.event_id,
                ack.status(),
                ack.code,
                ack.message
            );
        }
        all.extend(response.acks);
    }
    Ok(all)
}

/// How to start a [`Pipeline`].
pub struct PipelineBuilder {
    pipeline_toml: String,
    services: Vec<Service>,
    otlp_endpoint: Option<String>,
    nats_config: Option<String>,
    service_env: Vec<(String, String)>,
}

impl PipelineBuilder {
    /// Another pipeline file than [`orders_pipeline_toml`].
    pub fn pipeline_toml(mut self, text: impl Into<String>) -> Self {
        self.pipeline_toml = text.into();
        self
    }

    /// Starts only these services (still in dataflow order).
    pub fn only(mut self, services: &[Service]) -> Self {
        self.services = services.to_vec();
        self
    }

    /// Makes every service export its spans to this OTLP/gRPC endpoint.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Starts the broker with this configuration text (see
    /// [`NatsServer::start_with_config`]: no store directory, ports or listen address).
    pub fn nats_config(mut self, text: impl Into<String>) -> Self {
        self.nats_config = Some(text.into());
        self
    }

    /// Sets an environment variable for every service (over the harness's own, e.g.
    /// `MILLRACE_SNAPSHOT_INTERVAL_MS`).
    pub fn service_env(mut self, name: &str, value: &str) -> Self {
        self.service_env.push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the broker, then each service in dataflow order, each ready before the next.
    pub async fn start(mut self) -> Result<Pipeline> {
        self.services.sort();
        self.services.dedup();
        let nats = match &self.nats_config {
            Some(config) => NatsServer::start_with_config(config).await?,
            None => NatsServer::start().await?,
        };
        let dir = test_dir("pipeline")?;
        let pipeline_path = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline_path, &self.pipeline_toml)
            .with_context(|| format!("writing {}", pipeline_path.display()))?;
        let settings = ServiceSettings {
            nats_url: nats.url(),
            pipeline_path: pipeline_path.clone(),
            dir: dir.path().to_path_buf(),
            otlp_endpoint: self.otlp_endpoint,
        };
        let mut services: Vec<ServiceProcess> = Vec::new();
        for service in self.services {
            let mut process = ServiceProcess::unstarted(service, &settings)?;
            for (name, value) in &self.service_env {
                process.set_env(name, value);
            }
            process.start()?;
            process.wait_ready().await?;
            services.push(process);
        }
        let js = nats.jetstream().await?;
        Ok(Pipeline {
            services,
            js,
            nats,
            pipeline_path,
            dir,
        })
    }
}

/// A broker and the services of one test. Everything stops when it is dropped; dropped
/// during a panic, each process prints the tail of its log.
pub struct Pipeline {
    // Declaration order is drop order: services, then the broker, then the files.
    services: Vec<ServiceProcess>,
    js: jetstream::Context,
    nats: NatsServer,
    pipeline_path: PathBuf,
    dir: TempDir,
}

impl Pipeline {
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder {
            pipeline_toml: orders_pipeline_toml(),
            services: Service::ALL.to_vec(),
            otlp_endpoint: None,
            nats_config: None,
            service_env: Vec::new(),
        }
    }

    /// All five services on the test pipeline.
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    pub fn nats_mut(&mut self) -> &mut NatsServer {
        &mut self.nats
    }

    /// A JetStream context on the harness's own connection.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pipeline_path(&self) -> &Path {
        &self.pipeline_path
    }

    /// The process of `service`; panics if this pipeline did not start it.
    pub fn service(&self, service: Service) -> &ServiceProcess {
        self.services
            .iter()
            .find(|p| p.service() == service)
            .unwrap_or_else(|| panic!("{} was not started in this pipeline", service.binary()))
    }

    pub fn service_mut(&mut self, service: Service) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|p| p.service() == service)
            .unwrap_or_else(|| panic!("{} was not started in this pipeline", service.binary()))
    }

    pub fn services(&self) -> &[ServiceProcess] {
        &self.services
    }

    pub async fn ingest(&self) -> Result<IngestClient<Channel>> {
        let url = self.service(Service::Ingest).grpc_url();
        IngestClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to ingest at {url}"))
    }

    pub async fn feature_state(&self) -> Result<FeatureStateClient<Channel>> {
        let url = self.service(Service::FeatureState).grpc_url();
        FeatureStateClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to feature-state at {url}"))
    }

    pub async fn monitor(&self) -> Result<MonitorClient<Channel>> {
        let url = self.service(Service::Monitor).grpc_url();
        MonitorClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to monitor at {url}"))
    }

    pub async fn inference(&self) -> Result<GrpcInferenceServiceClient<Channel>> {
        let url = self.service(Service::Inference).grpc_url();
        GrpcInferenceServiceClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to inference at {url}"))
    }

    /// `millrace_monitor_predictions_total{model="fraud",model_version="1"}`, if exposed yet.
    pub async fn monitor_predictions(&self) -> Result<Option<f64>> {
        let text = metrics(self.service(Service::Monitor).http_addr()).await?;
        Ok(metric_value(
            &text,
            "millrace_monitor_predictions_total",
            &[("model", "fraud"), ("model_version", "1")],
        ))
    }

    /// Waits until the pipeline has stopped moving: every service's (durable) consumer
    /// on `streams` has been delivered everything, its service's newest snapshot covers
    /// all of it, and the record counts did not change between two looks. Returns the
    /// counts.
    pub async fn wait_idle(&self, streams: &[&str], limit: Duration) -> Result<Quiet> {
        let previous: std::sync::Mutex<Option<Quiet>> = std::sync::Mutex::new(None);
        let previous = &previous;
        wait_until("the pipeline is idle", limit, || async move {
            let positions = self.snapshot_positions().await;
            let quiet = observe_quiet(&self.js, streams, &positions).await?;
            let mut before = previous
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let idle = quiet.busy_consumers.is_empty() && before.as_ref() == Some(&quiet);
            *before = Some(quiet.clone());
            Ok((idle, quiet))
        })
        .await
    }

    /// Where the running services' snapshots stand in the streams they read; a
    /// service that does not answer (stopped, killed) reports nothing.
    async fn snapshot_positions(&self) -> Positions {
        let mut positions = Positions::new();
        for service in &self.services {
            let Ok(text) = metrics(service.http_addr()).await else {
                continue;
            };
            for sample in parse_samples(&text) {
                if sample.name != "millrace_stage_last_applied_sequence" {
                    continue;
                }
                if let (Some(stream), Some(consumer)) =
                    (sample.label("stream"), sample.label("consumer"))
                {
                    // Sequences are integers well inside f64's exact range.
                    positions.insert((stream.into(), consumer.into()), sample.value as u64);
                }
            }
        }
        positions
    }

    /// The records stream `name` holds now (a batch counts for its items; 0 before it exists).
    pub async fn stream_count(&self, name: &str) -> Result<u64> {
        stream_record_count(&self.js, name).await
    }
}

/// The end state every accepted event must reach, checked hop by hop once the pipeline
/// is idle:
/// - PREDICTIONS holds exactly one `fraud` v1 prediction per sent event and nothing
///   else, each with a score in (0, 1) that the model gives for the customer's true order
///   count at that event (so a replayed event counted twice shows up as a wrong score);
/// - EVENTS and FEATURES hold exactly one message per event;
/// - monitor's prediction counter and `GetModelHealth` say exactly the number of events;
/// - `GetOnlineFeatures` gives each customer exactly its number of orders.
pub async fn check_exactly_once(pipeline: &Pipeline, sent: &[Event]) -> Result<()> {
    let n = sent.len() as u64;
    let js = pipeline.jetstream();
    wait_for_stream_count(js, "PREDICTIONS", n, LONG).await?;
    let expected_per_customer = orders_per_customer(sent);
    check_predictions(js, sent, &expected_per_customer).await?;

    wait_until("monitor has counted every prediction", LONG, || async {
        let seen = pipeline.monitor_predictions().await?;
        Ok((seen.is_some_and(|v| v >= n as f64), seen))
    })
    .await?;
    let quiet = pipeline
        .wait_idle(&["EVENTS", "ENRICHED", "FEATURES", "PREDICTIONS"], LONG)
        .await?;
    for (stream, count) in &quiet.counts {
        if stream != "ENRICHED" {
            ensure!(
                *count == n,
                "once idle, {stream} holds {count} messages for {n} accepted events (all counts: {:?})",
                quiet.counts
            );
        }
    }
    let counted = pipeline.monitor_predictions().await?;
    ensure!(
        counted == Some(n as f64),
        "once idle, monitor counts {counted:?} predictions for {n} events"
    );

    let health = pipeline
        .monitor()
        .await?
        .get_model_health(GetModelHealthRequest {
            model: "fraud".into(),
        })
        .await
        .context("GetModelHealth(fraud)")?
        .into_inner();
    let fraud = health
        .models
        .iter()
        .find(|m| m.model == "fraud" && m.model_version == "1")
        .with_context(|| format!("GetModelHealth has no fraud v1: {health:?}"))?;
    ensure!(
        fraud.predictions == n,
        "GetModelHealth says fraud v1 made {} predictions, expected {n}",
        fraud.predictions
    );

    check_online_counts(pipeline, &expected_per_customer).await
}

fn orders_per_customer(sent: &[Event]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for event in sent {
        let customer = string_field(event, "customer")
            .unwrap_or_default()
            .to_string();
        *counts.entry(customer).or_insert(0) += 1;
    }
    counts
}

async fn check_predictions(
    js: &jetstream::Context,
    sent: &[Event],
    expected_per_customer: &BTreeMap<String, u64>,
) -> Result<()> {
    let stored = read_stream(js, "PREDICTIONS").await?;
    let mut predictions: Vec<(Prediction, u64)> = Vec::with_capacity(sent.len());
    for m in &stored {
        for p in decode_all::<Prediction>(std::slice::from_ref(m))? {
            predictions.push((p, m.sequence));
        }
    }
    let by_id: HashMap<&str, &Event> = sent.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut seen = HashSet::new();
    let mut problems = Vec::new();
    let mut implied: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (p, sequence) in &predictions {
        if !seen.insert(p.event_id.as_str()) {
            problems.push(format!(
                "{} predicted twice (again at seq {})",
                p.event_id, sequence
            ));
            continue;
        }
        let Some(event) = by_id.get(p.event_id.as_str()) else {
            problems.push(format!("prediction for unknown event {:?}", p.event_id));
            continue;
        };
        if (p.model.as_str(), p.model_version.as_str()) != ("fraud", "1") {
            problems.push(format!(
                "{}: model {:?} v{:?}",
                p.event_id, p.model, p.model_version
            ));
        }
        if !(p.score > 0.0 && p.score < 1.0) {
            problems.push(format!("{}: score {} outside (0, 1)", p.event_id, p.score));
            continue;
        }
        let customer = string_field(event, "customer").unwrap_or_default();
        if p.entity_key != customer {
            problems.push(format!(
                "{}: entity_key {:?}, expected {customer:?}",
                p.event_id, p.entity_key
            ));
        }
        let amount = event
            .fields
            .get("amount")
            .and_then(Value::as_f64)
            .unwrap_or_default();
        let count = implied_customer_orders(p.score, amount);
        if (count - count.round()).abs() > 0.05 {
            problems.push(format!(
                "{}: score {} implies {count:.3} orders for customer {customer}, not a whole number",
                p.event_id, p.score
            ));
        }
        implied
            .entry(customer.to_string())
            .or_default()
            .push(count.round() as i64);
    }
    let missing: Vec<&str> = sent
        .iter()
        .map(|e| e.event_id.as_str())
        .filter(|id| !seen.contains(id))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} events have no prediction, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    for (customer, expected) in expected_per_customer {
        let mut counts = implied.remove(customer).unwrap_or_default();
        counts.sort_unstable();
        let want: Vec<i64> = (1..=*expected as i64).collect();
        if counts != want {
            problems.push(format!(
                "customer {customer}: the scores imply order counts {counts:?}, expected 1..={expected} once each"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "PREDICTIONS ({} messages) for {} events is wrong in {} ways:\n  {}",
            predictions.len(),
            sent.len(),
            problems.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(())
}

async fn check_online_counts(pipeline: &Pipeline, expected: &BTreeMap<String, u64>) -> Result<()> {
    let response = pipeline
        .feature_state()
        .await?
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: expected.keys().cloned().collect(),
            features: vec!["customer_orders".into()],
        })
        .await
        .context("GetOnlineFeatures")?
        .into_inner();
    let mut problems = Vec::new();
    for (customer, want) in expected {
        let value = response
            .entities
            .iter()
            .find(|e| &e.entity_key == customer)
            .and_then(|e| e.values.iter().find(|v| v.name == "customer_orders"));
        match value {
            Some(v)
                if v.status() == FeatureStatus::Present
                    && v.value.as_ref().and_then(Value::as_f64) == Some(*want as f64) => {}
            other => problems.push(format!("{customer}: expected {want}, got {other:?}")),
        }
    }
    ensure!(
        problems.is_empty(),
        "GetOnlineFeatures customer_orders is wrong for {} customers:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    Ok(())
}

/// `order_placed` v2 of [`orders_pipeline_toml`]: v1 plus an optional `coupon` string, a
/// backward-compatible change the schema registry accepts.
pub fn order_placed_v2_with_coupon() -> EventSchema {
    let field = |name: &str, kind: FieldType, required: bool| FieldSchema {
        name: name.into(),
        r#type: kind as i32,
        required,
        ..Default::default()
    };
    EventSchema {
        event_type: "order_placed".into(),
        version: 0,
        key_field: "customer".into(),
        score: true,
        label: false,
        fields: vec![
            field("customer", FieldType::String, true),
            FieldSchema {
                min: Some(0.0),
                ..field("amount", FieldType::Double, true)
            },
            field("coupon", FieldType::String, false),
        ],
    }
}

/// The orders pipeline's events, feature and model plus a label: `order_outcome` names
/// the order by `order_id` and is positive when `chargeback >= 1`. The fixed model `fraud`
/// v1 scores higher amounts as riskier. Tests prepend their `[pipeline]` table and append
/// their own sections (`[model.online]`, `[monitor.*]`).
pub fn labelled_orders_sections() -> String {
    orders_sections(true)
}
