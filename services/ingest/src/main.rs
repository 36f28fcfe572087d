//! millrace-ingest: takes events from producers over gRPC, validates them
//! against the registered schemas, and answers each one only after JetStream
//! stored it in EVENTS (or LABELS; a label event that features read in
//! both); refused records go to the DLQ.
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
use millrace_chassis::boot::Boot;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::config::Service;
use millrace_chassis::{runtime, telemetry};
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

/// The label types some feature reads: ingest stores their events in EVENTS
/// (for enrich and feature-state) as well as their labels in LABELS.
fn label_sources(
    pipeline: &millrace_chassis::config::Pipeline,
) -> std::collections::BTreeSet<String> {
    pipeline
        .features
        .iter()
        .filter(|f| pipeline.events.get(&f.source).is_some_and(|s| s.label))
        .map(|f| f.source.clone())
        .collect()
}

fn main() -> anyhow::Result<()> {
    runtime::block_on(runtime::Threads::PerCore, run())
}

async fn run() -> anyhow::Result<()> {
    let boot = Boot::load(Service::Ingest)?;
    check_limits(&boot.pipeline.ingest)?;
    let mut svc = boot
        .connect(&[StreamKind::Events, StreamKind::Labels, StreamKind::Dlq])
        .await?;
    let pipeline = svc.pipeline.clone();

    let registered = svc
        .store
        .load(SCHEMAS_KEY)?
        .map(|s| s.state)
        .unwrap_or_default();
    let book = registry::SchemaBook::new(&pipeline.events, registered);
    let schemas = book.handle();
    let book = book.start();
    svc.store
        .save(SCHEMAS_KEY, &[], &book.send(registry::ExportSchemas).await?)?;

    let ingestor = publish::Ingestor::new(
        svc.bus.clone(),
        schemas.clone(),
        publish::Settings {
            label_rule: pipeline.label.clone(),
            label_sources: label_sources(&pipeline),
            partitions: pipeline.pipeline.partitions,
            limits: pipeline.ingest.clone(),
            metrics: publish::IngestMetrics::new(&svc.metrics),
            spans: telemetry::spans_exported(),
        },
    );
    let api = service::IngestService::new(
        api::IngestApi {
            ingestor: ingestor.clone(),
        },
        pipeline.ingest.max_batch_bytes,
    );
    let schemas_api = SchemasServer::new(api::SchemasApi {
        book: book.clone(),
        schemas: schemas.clone(),
        store: svc.store.clone(),
    });
    let grpc = svc.serve_grpc(
        tonic::transport::Server::builder()
            .add_service(api)
            .add_service(schemas_api),
    )?;
    let nats_intake = tokio::spawn(intake::serve(
        svc.bus.client().clone(),
        ingestor.clone(),
        schemas.clone(),
        svc.shutdown.clone(),
    ));
    svc.serve_http(axum::Router::new());

    svc.shutdown.clone().recv().await;
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
    svc.store
        .save(SCHEMAS_KEY, &[], &book.send(registry::ExportSchemas).await?)?;
    svc.finish();
    Ok(())
}
