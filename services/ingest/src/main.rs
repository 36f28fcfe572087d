//! millrace-ingest: takes events from producers over gRPC, validates them
//! against the registered schemas, and answers each one only after JetStream
//! stored it in EVENTS (or LABELS); refused records go to the DLQ.
//!
//! # Layout
//! - [`schema`]: validation rules and their error codes.
//! - [`registry`]: the `SchemaBook` actor that owns and snapshots the schemas.
//! - [`publish`]: the record's path to JetStream and its answer.
//! - [`wire`]: an `Event` read in place, and ingest's fields appended to its bytes.
//! - [`api`]: the gRPC adapters: ingest (batch and stream) and the schema registry.
//! - [`service`]: the ingest service over tonic, handing over events as their bytes.
//! - [`intake`]: the NATS path (`ingest.<type>`, protobuf or [`json`]).

mod api;
mod intake;
mod json;
mod publish;
mod registry;
mod schema;
mod service;
mod wire;

// Ingest allocates and frees a few small buffers per event; mimalloc does
// that markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::bus::{Bus, StreamKind};
use millrace_chassis::config::{Pipeline, Service, ServiceEnv};
use millrace_chassis::http::{self, Readiness};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::shutdown::Shutdown;
use millrace_chassis::snapshot::SnapshotStore;
use millrace_chassis::{grpc, runtime, telemetry};
use millrace_proto::schemas_server::SchemasServer;

/// Snapshot key of the schema book.
pub(crate) const SCHEMAS_KEY: &str = "schemas";

/// Refuses limits under which nothing could be taken in, and warns about
/// batches that could never be (they are answered INVALID_ARGUMENT).
fn check_limits(limits: &millrace_chassis::config::IngestLimits) -> anyhow::Result<()> {
    let named = [
        ("max_pending_records", limits.max_pending_records),
        ("max_batch_records", limits.max_batch_records),
        ("max_record_bytes", limits.max_record_bytes),
        ("max_batch_bytes", limits.max_batch_bytes),
    ];
    if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
        anyhow::bail!("[ingest] {name} is 0: ingest could take in no record");
    }
    if limits.max_batch_records > limits.max_pending_records {
        tracing::warn!(
            "[ingest] max_batch_records ({}) exceeds max_pending_records ({}): batches of more \
             than {} records are refused with INVALID_ARGUMENT",
            limits.max_batch_records,
            limits.max_pending_records,
            limits.max_pending_records
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::Ingest)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    check_limits(&pipeline.ingest)?;
    let (mut shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-ingest",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[StreamKind::Events, StreamKind::Labels, StreamKind::Dlq])
        .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    let registered = store
        .load(SCHEMAS_KEY)?
        .map(|s| s.state)
        .unwrap_or_default();
    let book = registry::SchemaBook::new(&pipeline.events, registered);
    let schemas = book.handle();
    let book = book.start();
    store.save(SCHEMAS_KEY, &[], &book.send(registry::ExportSchemas).await?)?;

    let ingestor = publish::Ingestor::new(
        bus.clone(),
        schemas.clone(),
        publish::Settings {
            label_rule: pipeline.label.clone(),
            partitions: pipeline.pipeline.partitions,
            limits: pipeline.ingest.clone(),
            metrics: publish::IngestMetrics::new(&metrics),
            spans: telemetry::spans_exported(),
        },
    );
    let grpc_addr = env.grpc_addr.context("ingest needs a gRPC address")?;
    let api = service::IngestService::new(
        api::IngestApi {
            ingestor: ingestor.clone(),
        },
        pipeline.ingest.max_batch_bytes,
    );
    let schemas_api = SchemasServer::new(api::SchemasApi {
        book: book.clone(),
        schemas: schemas.clone(),
        store: store.clone(),
    });
    let grpc = grpc::spawn(
        grpc_addr,
        tonic::transport::Server::builder()
            .add_service(api)
            .add_service(schemas_api),
        shutdown.clone(),
    )?;

    let nats_intake = tokio::spawn(intake::serve(
        bus.client().clone(),
        ingestor.clone(),
        schemas.clone(),
        shutdown.clone(),
    ));

    let readiness = Readiness::new(Some(bus.client().clone()));
    let http = tokio::spawn(http::serve(
        env.http_addr,
        metrics.clone(),
        readiness.clone(),
        axum::Router::new(),
        shutdown.clone(),
    ));
    readiness.set_started();

    shutdown.recv().await;
    // The gRPC server stops taking requests and finishes those in flight,
    // whose answers already wait on JetStream's acks.
    match grpc.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("gRPC server: {e}"),
        Err(e) => tracing::error!("gRPC server task: {e}"),
    }
    match nats_intake.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("NATS ingest path: {e}"),
        Err(e) => tracing::error!("NATS ingest path task: {e}"),
    }
    store.save(SCHEMAS_KEY, &[], &book.send(registry::ExportSchemas).await?)?;
    http.abort();
    telemetry.shutdown();
    Ok(())
}
