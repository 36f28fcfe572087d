//! millrace-inference: the binary. It only wires: config, NATS, the catalog
//! and registry, the `ModelServer` actor and the stage loop over FEATURES and
//! LABELS, the gRPC services (OIP V2, `Score`, `ModelRegistry`) and HTTP. The
//! work lives in the library (`millrace_inference`; see its module map).

use std::sync::Arc;

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::boot::Boot;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::config::Service;
use millrace_chassis::event_order;
use millrace_chassis::runtime;
use millrace_chassis::stage::{self, Source};
use millrace_inference::catalog::Catalog;
use millrace_inference::registry::Registry;
use millrace_inference::registry_api::{RegistryService, MAX_ARTIFACT_BYTES};
use millrace_inference::score::{ScoreService, DEFAULT_FEATURE_STATE_URL};
use millrace_inference::scorer::ModelArtifact;
use millrace_inference::{oip, serving};
use millrace_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use millrace_proto::inference_server::InferenceServer;
use millrace_proto::model_registry_server::ModelRegistryServer;

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(runtime::Threads::PerCore, run())
}

async fn run() -> anyhow::Result<()> {
    let boot = Boot::load(Service::Inference)?;
    let pipeline_model = ModelArtifact::from_def(&boot.pipeline.model);
    pipeline_model
        .load()
        .with_context(|| format!("pipeline file {}", boot.env.pipeline_path.display()))?;
    let mut svc = boot
        .connect(&[
            StreamKind::Features,
            StreamKind::Labels,
            StreamKind::Predictions,
            StreamKind::Dlq,
        ])
        .await?;

    // One stage over both streams: the snapshot holds the state and both sequences.
    let spec = svc
        .stage_spec(
            "inference",
            vec![
                Source::new(StreamKind::Features, "inference"),
                Source::new(StreamKind::Labels, "inference-labels").of_single_records(),
            ],
            Some(StreamKind::Predictions),
            512,
        )
        .with_heartbeat(event_order::HEARTBEAT);
    let (mut state, resume) = stage::load_state::<serving::ServingState>(&svc.store, &spec)?;
    let pipeline = &svc.pipeline;
    let online = &pipeline.model.online;
    if online.enabled && pipeline.label.is_some() {
        let inputs = if online.inputs.is_empty() {
            pipeline_model.meta.inputs.clone()
        } else {
            online.inputs.clone()
        };
        let retrain = &pipeline.model.retrain;
        millrace_inference::retrain::check(retrain)
            .with_context(|| format!("pipeline file {}", svc.env.pipeline_path.display()))?;
        let retrain_inputs = if retrain.inputs.is_empty() {
            pipeline_model.meta.inputs.clone()
        } else {
            retrain.inputs.clone()
        };
        state = state
            .with_online(online, inputs, pipeline.model.threshold)
            .with_retraining(retrain, retrain_inputs);
    } else {
        state = state.without_online();
    }
    let registry = Registry::open(&svc.env.data_dir)?;
    let catalog = Arc::new(
        Catalog::open(
            registry,
            &pipeline_model,
            state.online.as_ref().map(|o| &o.learner),
        )
        .context("opening the model registry")?,
    );
    let served = catalog.load();
    tracing::info!(
        model = catalog.model(),
        active = served.active.version(),
        shadow = served.shadow.as_ref().map(|s| s.version()),
        online = state.online.is_some(),
        "serving model"
    );
    let server = serving::ModelServer::new(catalog.clone(), state, &svc.metrics)
        .retraining(svc.pipeline.model.retrain.clone())
        .start();

    let oip = oip::OpenInference::new(catalog.clone(), svc.readiness.clone(), &svc.metrics);
    let api = oip.api_metrics();
    let feature_state_url = std::env::var("MILLRACE_FEATURE_STATE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_FEATURE_STATE_URL.into());
    let score = ScoreService::new(
        catalog.clone(),
        svc.pipeline.features.clone(),
        &feature_state_url,
        api.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    svc.serve_grpc(
        tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(oip))
            .add_service(InferenceServer::new(score))
            .add_service(
                ModelRegistryServer::new(RegistryService::new(catalog, api))
                    .max_decoding_message_size(MAX_ARTIFACT_BYTES),
            ),
    )?;
    svc.serve_http(axum::Router::new());
    svc.run_stage(spec, server, resume)
        .await
        .context("inference stage")
}
