//! millrace-monitor: wires config, NATS, the `HealthBoard` actor, the stage loop
//! over PREDICTIONS, LABELS and FEATURES, gRPC and HTTP. The library
//! (`millrace_monitor`) does the work; see its layout.

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::bus::{Bus, StreamKind};
use millrace_chassis::config::{Pipeline, Service, ServiceEnv};
use millrace_chassis::http::{self, Readiness};
use millrace_chassis::metrics::{Metrics, StageMetrics};
use millrace_chassis::shutdown::Shutdown;
use millrace_chassis::snapshot::SnapshotStore;
use millrace_chassis::stage::{self, StageSpec};
use millrace_chassis::{runtime, telemetry};
use millrace_proto::monitor_server::MonitorServer;

use millrace_monitor::health::{HealthBoard, MonitorState, SharedState};
use millrace_monitor::input::{self, MonitorInput};
use millrace_monitor::{alerts, api, metrics};

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::Monitor)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    let rules = alerts::check(&pipeline.monitor)
        .map_err(|m| anyhow::anyhow!("pipeline file {}: {m}", env.pipeline_path.display()))?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-monitor",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[
        StreamKind::Predictions,
        StreamKind::Labels,
        StreamKind::Features,
        StreamKind::Alerts,
        StreamKind::Dlq,
    ])
    .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    // One stage over the three streams: its snapshot is the whole state with
    // the last sequence applied from each stream (see `input`).
    let spec = StageSpec {
        stage: "monitor",
        sources: input::sources(),
        output: None,
        snapshot_key: input::SNAPSHOT_KEY.into(),
        // Messages per pull and per chunk. FEATURES and PREDICTIONS messages are
        // batches of up to 128 records: 64 of them is 8k records decoded at once,
        // where 512 held about 35 MiB more at the peak for no gain in rate.
        batch_size: 64,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "monitor",
    };
    let (state, resume) = stage::load_state::<MonitorState>(&store, &spec)?;
    tracing::info!(resume = ?resume.0, rules = rules.len(), "monitor state loaded");
    let board = HealthBoard::new(
        state,
        pipeline.monitor.clone(),
        rules,
        metrics::MonitorMetrics::new(&metrics),
    )
    .start();

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

    let result = stage::run::<HealthBoard, MonitorInput, SharedState>(
        bus,
        store,
        spec,
        board,
        resume,
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
