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
use millrace_chassis::boot::Boot;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::config::Service;
use millrace_chassis::runtime;
use millrace_chassis::stage::{self, Source};

/// Records are decoded, copied and packed in small buffers; mimalloc frees and
/// reuses them markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    runtime::block_on(runtime::Threads::One, run())
}

async fn run() -> anyhow::Result<()> {
    let mut svc = Boot::load(Service::Enrich)?
        .connect(&[StreamKind::Events, StreamKind::Enriched, StreamKind::Dlq])
        .await?;
    let spec = svc.stage_spec(
        "enrich",
        vec![Source::new(StreamKind::Events, "enrich")],
        Some(StreamKind::Enriched),
        // One event per EVENTS message, so a chunk of a backlog holds this
        // many events: ENRICHED batches of about 500 (BENCHMARKS.md).
        2048,
    );
    let (state, resume) = stage::load_state::<join::EnrichState>(&svc.store, &spec)?;
    let enricher = join::Enricher::new(
        state,
        &svc.pipeline.enrich,
        svc.pipeline.pipeline.partitions,
        &svc.metrics,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "enrich settings in {}: {e}",
            svc.env.pipeline_path.display()
        )
    })?
    .start();
    svc.serve_http(axum::Router::new());
    svc.run_stage(spec, enricher, resume)
        .await
        .context("enrich stage")
}
