//! millrace-feature-state: wires config, NATS, the store's actor, the stage
//! loop, gRPC and HTTP. The work is in the library (see its layout).

use std::time::Instant;

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::boot::Boot;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::config::Service;
use millrace_chassis::runtime;
use millrace_chassis::stage::{self, Source};
use millrace_feature_state::{
    api, EncodedState, FeatureSpec, FeatureStore, FeatureStoreActor, STAGE,
};
use millrace_proto::feature_state_server::FeatureStateServer;

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(runtime::Threads::One, run())
}

async fn run() -> anyhow::Result<()> {
    let mut svc = Boot::load(Service::FeatureState)?
        .connect(&[StreamKind::Enriched, StreamKind::Features, StreamKind::Dlq])
        .await?;
    let spec = svc.stage_spec(
        STAGE,
        vec![Source::new(StreamKind::Enriched, "feature-state")],
        Some(StreamKind::Features),
        512,
    );
    let started = Instant::now();
    let (chain, resume_after) = stage::load_chain::<EncodedState>(&svc.store, &spec)?;
    let (features, restored) =
        FeatureStore::new(FeatureSpec::from_pipeline(&svc.pipeline), &svc.metrics)
            .restore(&chain)
            .context("restoring feature state")?;
    drop(chain);
    tracing::info!(
        entities = restored.entities,
        started_empty = ?restored.started_empty,
        dropped = ?restored.dropped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "feature state loaded"
    );
    if resume_after.0.iter().any(|&s| s > 0) && !restored.started_empty.is_empty() {
        tracing::warn!(
            features = ?restored.started_empty,
            "these features are new or changed since the snapshot: they start empty (no backfill from the stream)"
        );
    }
    let features = FeatureStoreActor::new(features).start();

    svc.serve_grpc(
        tonic::transport::Server::builder().add_service(FeatureStateServer::new(
            api::OnlineFeatures {
                store: features.clone(),
            },
        )),
    )?;
    svc.serve_http(axum::Router::new());
    svc.run_stage(spec, features, resume_after)
        .await
        .context("feature-state stage")
}
