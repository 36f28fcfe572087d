//! millrace-enrich: reads EVENTS, drops noise by rule, keeps the reference
//! tables that events feed, joins them onto each event and publishes it to
//! ENRICHED; refused events go to the DLQ with the rule or reason.
//!
//! # Layout
//! - [`rules`]: filter rules (the chassis expression form).
//! - [`tables`]: reference tables, static and versioned (as-of).
//! - [`join`]: the `Enricher` actor that applies both to each event.
//! - `main` wires config, NATS, the actor, the stage loop and the HTTP server.

mod join;
mod rules;
mod tables;

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

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let env = ServiceEnv::from_env(Service::Enrich)?;
    let telemetry = telemetry::init(env.service)?;
    let pipeline = Pipeline::load(&env.pipeline_path)?;
    let (shutdown, _trigger) = Shutdown::on_signals();
    let metrics = Metrics::new();

    let bus = Bus::connect(
        &env.nats,
        "millrace-enrich",
        pipeline.streams.clone(),
        &shutdown,
    )
    .await?;
    bus.provision(&[StreamKind::Events, StreamKind::Enriched, StreamKind::Dlq])
        .await?;
    let store = SnapshotStore::open(&env.data_dir)?;

    let spec = StageSpec {
        stage: "enrich",
        sources: vec![Source::new(StreamKind::Events, "enrich")],
        output: Some(StreamKind::Enriched),
        snapshot_key: "enrich".into(),
        batch_size: 512,
        snapshot_interval: env.snapshot_interval,
        snapshot_every: env.snapshot_every,
        span_name: "enrich",
    };
    let (state, resume) = stage::load_state::<join::EnrichState>(&store, &spec)?;
    let enricher = join::Enricher::new(state, &pipeline.enrich, &metrics)
        .map_err(|e| anyhow::anyhow!("enrich settings in {}: {e}", env.pipeline_path.display()))?
        .start();

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
        enricher,
        resume,
        StageMetrics::new(&metrics),
        shutdown,
    )
    .await
    .context("enrich stage");
    http.abort();
    telemetry.shutdown();
    result
}
