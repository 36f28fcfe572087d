//! millrace-feature-state: wires config, NATS, the store's actor, the stage
//! loop, gRPC and HTTP. The work is in the library (see its layout).

use std::time::Instant;

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::bus::{Bus, StreamKind};
use millrace_chassis::config::{Pipeline, Service, ServiceEnv};
use millrace_chassis::http::{self, Readiness};
use millrace_chassis::metrics::{Metrics, StageMetrics};
use millrace_chassis::shutdown::Shutdown;
use millrace_chassis::snapshot::SnapshotStore;
use millrace_chassis::stage::{self, Source, StageSpec};
use millrace_chassis::{runtime, telemetry};
use millrace_feature_state::{
    api, EncodedState, FeatureSpec, FeatureStore, FeatureStoreActor, STAGE,
};
use millrace_proto::feature_state_server::FeatureStateServer;

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::FeatureState)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-feature-state",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[StreamKind::Enriched, StreamKind::Features, StreamKind::Dlq])
        .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    let spec = StageSpec {
        stage: STAGE,
        sources: vec![Source::new(StreamKind::Enriched, "feature-state")],
        output: Some(StreamKind::Features),
        snapshot_key: "feature-state".into(),
        batch_size: 512,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "feature-state",
    };
    let started = Instant::now();
    let (state, resume_after) = stage::load_state::<EncodedState>(&store, &spec)?;
    let (features, restored) = FeatureStore::new(FeatureSpec::from_pipeline(&pipeline), &metrics)
        .restore(&state.0)
        .context("restoring feature state")?;
    drop(state);
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

    let grpc_addr = env
        .grpc_addr
        .context("feature-state needs a gRPC address")?;
    let grpc = millrace_chassis::grpc::spawn(
        grpc_addr,
        tonic::transport::Server::builder().add_service(FeatureStateServer::new(
            api::OnlineFeatures {
                store: features.clone(),
            },
        )),
        shutdown.clone(),
    )?;
    let readiness = Readiness::new(Some(bus.client().clone()));
    let http = tokio::spawn(http::serve(
        env.http_addr,
        metrics.clone(),
        readiness.clone(),
        axum::Router::new(),
        shutdown.clone(),
    ));
    readiness.set_started();
    let result = stage::run(
        bus,
        store,
        spec,
        features,
        resume_after,
        StageMetrics::new(&metrics),
        shutdown,
    )
    .await
    .context("feature-state stage");
    grpc.abort();
    http.abort();
    telemetry.shutdown();
    result
}
