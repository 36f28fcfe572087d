//! millrace-monitor: wires config, NATS, the `HealthBoard` actor, the stage loop
//! over PREDICTIONS, LABELS and FEATURES, gRPC and HTTP. The library
//! (`millrace_monitor`) does the work; see its layout.

use actix::Actor;
use anyhow::Context as _;
use millrace_chassis::boot::Boot;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::config::Service;
use millrace_chassis::event_order;
use millrace_chassis::runtime;
use millrace_chassis::stage;
use millrace_proto::monitor_server::MonitorServer;

use millrace_monitor::health::{HealthBoard, MonitorState, SharedState};
use millrace_monitor::input::{self, MonitorInput};
use millrace_monitor::{alerts, api, metrics};

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(runtime::Threads::One, run())
}

async fn run() -> anyhow::Result<()> {
    let boot = Boot::load(Service::Monitor)?;
    let rules = alerts::check(&boot.pipeline.monitor)
        .map_err(|m| anyhow::anyhow!("pipeline file {}: {m}", boot.env.pipeline_path.display()))?;
    let mut svc = boot
        .connect(&[
            StreamKind::Predictions,
            StreamKind::Labels,
            StreamKind::Features,
            StreamKind::Alerts,
            StreamKind::Dlq,
        ])
        .await?;

    // One stage over the three streams: its snapshot is the whole state with
    // the last sequence applied from each stream (see `input`).
    // Messages per pull and per chunk: FEATURES and PREDICTIONS messages are
    // batches of at most 512 KiB, so 64 of them bounds what is decoded at once;
    // 512 held about 35 MiB more at the peak for no gain in rate (measured with
    // batches of 128 records).
    let spec = svc
        .stage_spec(input::SNAPSHOT_KEY, input::sources(), None, 64)
        .with_heartbeat(event_order::HEARTBEAT);
    let (state, resume) = stage::load_state::<MonitorState>(&svc.store, &spec)?;
    tracing::info!(resume = ?resume.0, rules = rules.len(), "monitor state loaded");
    let board = HealthBoard::new(
        state,
        svc.pipeline.monitor.clone(),
        rules,
        metrics::MonitorMetrics::new(&svc.metrics),
    )
    .start();

    svc.serve_grpc(
        tonic::transport::Server::builder().add_service(MonitorServer::new(api::ModelHealthApi {
            board: board.clone(),
        })),
    )?;
    svc.serve_http(api::http_routes(board.clone()));
    svc.run_stage::<HealthBoard, MonitorInput, SharedState>(spec, board, resume)
        .await
        .context("monitor stage")
}
