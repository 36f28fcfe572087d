//! millrace-inference: reads FEATURES, scores every feature vector with the
//! active model and publishes the prediction to `predictions.<model>`; serves
//! the same model over the Open Inference Protocol V2 (gRPC).
//!
//! # Layout
//! - [`model`]: the `LogisticModel` both paths score with, built from `[model]`.
//! - [`serving`]: the `ModelServer` actor: vectors in, predictions out, tallies snapshotted.
//! - [`oip`]: the `GRPCInferenceService` adapter: request checks, scoring, answers.
//! - `main` wires config, NATS, the actor, the stage loop, gRPC and HTTP.

mod model;
mod oip;
mod serving;

use std::sync::Arc;

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
use millrace_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::Inference)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    let model = Arc::new(
        model::LogisticModel::from_def(&pipeline.model)
            .with_context(|| format!("pipeline file {}", env.pipeline_path.display()))?,
    );
    let (shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-inference",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[
        StreamKind::Features,
        StreamKind::Predictions,
        StreamKind::Dlq,
    ])
    .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    let spec = StageSpec {
        stage: "inference",
        sources: vec![Source::new(StreamKind::Features, "inference")],
        snapshot_key: "inference".into(),
        batch_size: 512,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "inference",
    };
    let (state, resume_after) = stage::load_state::<serving::ServingState>(&store, &spec)?;
    let server = serving::ModelServer::new(model.clone(), state, &metrics).start();
    tracing::info!(
        model = model.name(),
        version = model.version(),
        "serving model"
    );

    let readiness = Readiness::new(Some(bus.client().clone()));
    let grpc_addr = env.grpc_addr.context("inference needs a gRPC address")?;
    let grpc = millrace_chassis::grpc::spawn(
        grpc_addr,
        tonic::transport::Server::builder().add_service(GrpcInferenceServiceServer::new(
            oip::OpenInference::new(model, readiness.clone(), &metrics),
        )),
        shutdown.clone(),
    )?;
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
        server,
        resume_after,
        StageMetrics::new(&metrics),
        shutdown,
    )
    .await
    .context("inference stage");
    grpc.abort();
    http.abort();
    telemetry.shutdown();
    result
}
