//! millrace-feature-state: reads ENRICHED, keeps per-entity features, publishes
//! a point-in-time feature vector to FEATURES for every scored event, and
//! serves `GetOnlineFeatures`.
//!
//! # Layout
//! - [`state`]: the `FeatureStore` actor: aggregates, vectors, lookups.
//! - [`api`]: the gRPC adapter.
//! - `main` wires config, NATS, the actor, the stage loop, gRPC and HTTP.

mod api;
mod state;

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
use millrace_proto::feature_state_server::FeatureStateServer;

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
        stage: "feature-state",
        sources: vec![Source::new(StreamKind::Enriched, "feature-state")],
        snapshot_key: "feature-state".into(),
        batch_size: 512,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "feature-state",
    };
    let (tables, resume_after) = stage::load_state::<state::FeatureTables>(&store, &spec)?;
    let features = state::FeatureStore::new(
        state::FeatureSpec::from_pipeline(&pipeline),
        tables,
        &metrics,
    )
    .start();

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
