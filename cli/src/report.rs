//! `millrace report`: a page with charts of what a running suite did with a
//! replay, written to a directory (`data/report` by default): `index.html`
//! and its PNG charts, readable offline.
//!
//! 1. ROC AUC and log loss by month of every model version, from inference's
//!    registry (`ListModels`: progressive validation by month), promotions marked.
//! 2. The delay rate by month: the served figures' positives over examples.
//! 3. PSI by month of the features that move most against the first month,
//!    from FEATURES, with the alerts monitor published to ALERTS.
//! 4. Predictions per second and ingest-to-prediction latency, from PREDICTIONS.
//! 5. Dead letters by stage and reason, late events among them, from the DLQ.
//!
//! # Layout
//! - [`gather`]: reads the registry and the streams, folding records into counts.
//! - [`stats`]: months, PSI, latency histograms: the arithmetic, with no I/O.
//! - [`sections`]: what each section says, charts and tables as plain data;
//!   [`quality`] and [`drift`] make the two largest.
//! - [`chart`]: draws a chart (plotters, the font compiled in) and writes the PNG.
//! - [`page`]: renders `index.html`.

mod chart;
mod drift;
mod gather;
mod page;
mod quality;
mod sections;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use millrace_chassis::config::{self, Pipeline, StreamSettings};

use self::stats::FeatureKind;

/// Where the services read their pipeline file when `MILLRACE_PIPELINE` is unset.
const DEFAULT_PIPELINE: &str = "examples/flights/pipeline.toml";
/// Where scripts/up.sh writes the address of the NATS server it started.
const NATS_URL_FILE: &str = "data/nats.url";
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory for index.html and the charts (created when missing).
    #[arg(long, default_value = "data/report")]
    out: PathBuf,
    /// NATS server (default: the one scripts/up.sh wrote to data/nats.url, else
    /// nats://127.0.0.1:4222); NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_CREDS
    /// and NATS_TLS_* as for the services.
    #[arg(long, env = "NATS_URL")]
    nats: Option<String>,
    /// The pipeline file: stream names, the drift settings, the starting model's version.
    #[arg(long, env = "MILLRACE_PIPELINE")]
    pipeline: Option<PathBuf>,
    #[command(flatten)]
    inference: crate::InferenceUrl,
    /// Model name (default: the one inference serves).
    #[arg(long, default_value = "")]
    model: String,
    /// Months with fewer labelled flights (or feature values) are left out of the lines.
    #[arg(long, default_value_t = 200)]
    min_examples: u64,
    /// How many features the drift chart shows: those whose monthly PSI varies most.
    #[arg(long, default_value_t = 6)]
    top_features: usize,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let (pipeline, pipeline_file) = load_pipeline(args.pipeline.as_deref())?;
    let streams = pipeline
        .as_ref()
        .map_or_else(StreamSettings::default, |p| p.streams.clone());
    let nats = nats_url(args.nats.as_deref());

    let mut gathered = gather::Gathered {
        models: gather::models(&args.inference.url, &args.model).await?,
        ..Default::default()
    };
    let bus = gather::connect(&nats, streams).await?;
    println!("reading ALERTS, FEATURES, PREDICTIONS and DLQ from {nats}");
    gather::streams(&bus, &mut gathered).await?;
    println!(
        "read {} model versions, {} alert transitions, {} feature vectors, {} predictions, {} dead letters",
        gathered.models.versions.len(),
        gathered.alerts_total,
        gathered.vectors,
        gathered.throughput.predictions(),
        gathered.dead_letters.values().map(|t| t.records).sum::<u64>()
    );

    let settings = settings(pipeline.as_ref(), pipeline_file, &args);
    let report = sections::build(&gathered, &settings);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the report directory {}", args.out.display()))?;
    let mut charts = 0;
    for c in report.charts() {
        chart::write_png(c, &args.out)?;
        charts += 1;
    }
    let index = args.out.join("index.html");
    std::fs::write(&index, page::render(&report))
        .with_context(|| format!("writing {}", index.display()))?;
    println!("wrote {} and {charts} charts beside it", index.display());
    Ok(())
}

/// The pipeline file named, else the services' default one when it is there.
fn load_pipeline(path: Option<&Path>) -> anyhow::Result<(Option<Pipeline>, String)> {
    let path = match path {
        Some(path) => path,
        None if Path::new(DEFAULT_PIPELINE).is_file() => Path::new(DEFAULT_PIPELINE),
        None => return Ok((None, "no pipeline file: default stream names".into())),
    };
    let pipeline = Pipeline::load(path)
        .with_context(|| format!("reading the pipeline file {}", path.display()))?;
    Ok((Some(pipeline), path.display().to_string()))
}

/// `--nats`/`NATS_URL`, else what scripts/up.sh wrote, else the default.
fn nats_url(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string(NATS_URL_FILE)
                .ok()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_NATS.to_string())
}

fn settings(
    pipeline: Option<&Pipeline>,
    pipeline_file: String,
    args: &ReportArgs,
) -> sections::Settings {
    let default_drift = config::DriftSettings::default();
    let drift = pipeline.map_or(&default_drift, |p| &p.monitor.drift);
    let feature_kinds: BTreeMap<String, FeatureKind> = drift
        .features
        .iter()
        .map(|(name, f)| {
            let kind = match (f.ignore, f.kind) {
                (true, _) => FeatureKind::Ignore,
                (false, config::FeatureKind::Categorical) => FeatureKind::Categorical,
                (false, _) => FeatureKind::Numeric,
            };
            (name.clone(), kind)
        })
        .collect();
    let written_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    sections::Settings {
        pipeline_name: pipeline.map_or_else(|| "millrace".into(), |p| p.pipeline.name.clone()),
        pipeline_file,
        pipeline_version: pipeline.map_or_else(String::new, |p| p.model.version.clone()),
        min_examples: args.min_examples,
        top_features: args.top_features,
        bins: drift.bins,
        max_categories: drift.max_categories,
        psi_moderate: drift.psi_moderate,
        psi_significant: drift.psi_significant,
        feature_kinds,
        written_us,
    }
}
