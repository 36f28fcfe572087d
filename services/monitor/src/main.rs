//! millrace-monitor: reads PREDICTIONS, keeps per model version what the
//! predictions say about the model, exports it as Prometheus metrics and
//! answers `GetModelHealth` (gRPC, and JSON at `/v1/model-health`).
//!
//! # Layout
//! - [`stats`]: per model version prediction stats (counts, positives, mean score).
//! - [`health`]: the `HealthBoard` actor: owns the state monitor snapshots and
//!   mirrors it into metrics.
//! - [`api`]: the gRPC and HTTP adapters onto the board.
//! - `main` wires config, NATS, the actor, the stage loop, gRPC and HTTP.

mod api;
mod health;
mod stats;

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
use millrace_proto::monitor_server::MonitorServer;

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::Monitor)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-monitor",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[StreamKind::Predictions, StreamKind::Alerts, StreamKind::Dlq])
        .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    let spec = StageSpec {
        stage: "monitor",
        sources: vec![Source::new(StreamKind::Predictions, "monitor")],
        snapshot_key: "monitor".into(),
        batch_size: 512,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "monitor",
    };
    let (state, resume_after) = stage::load_state::<health::MonitorState>(&store, &spec)?;
    let board = health::HealthBoard::new(state, health::HealthMetrics::new(&metrics)).start();

    let grpc_addr = env.grpc_addr.context("monitor needs a gRPC address")?;
    let grpc = millrace_chassis::grpc::spawn(
        grpc_addr,
        tonic::transport::Server::builder().add_service(MonitorServer::new(api::ModelHealthApi {
            board: board.clone(),
        })),
        shutdown.clone(),
    )?;
    let readiness = Readiness::new(Some(bus.client().clone()));
    let http = tokio::spawn(http::serve(
        env.http_addr,
        metrics.clone(),
        readiness.clone(),
        api::http_routes(board.clone()),
        shutdown.clone(),
    ));
    readiness.set_started();
    let result = stage::run(
        bus,
        store,
        spec,
        board,
        resume_after,
        StageMetrics::new(&metrics),
        shutdown,
    )
    .await
    .context("monitor stage");
    grpc.abort();
    http.abort();
    telemetry.shutdown();
    result
}
