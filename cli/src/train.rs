//! `millrace train`: a training set from a CSV export or from the FEATURES
//! and LABELS streams replayed (each vector joined to its label by label
//! key), a model (smartcore's logistic regression or random forest, or
//! inference's gradient-boosted trees) fit on the earlier rows and checked on
//! the later ones, and the artifact written to a file and/or registered with
//! inference.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use futures::StreamExt as _;
use millrace_chassis::config::Pipeline;
use millrace_inference::batch::{self, Algorithm, Dataset};
use millrace_inference::forest::ForestShape;
use millrace_inference::gbdt::GbdtParams;
use millrace_proto::model_registry_client::ModelRegistryClient;
use millrace_proto::{FeatureVector, Label, RegisterModelRequest};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Train from this CSV (a header row; `--label` names the 0/1 column).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The label column of the CSV.
    #[arg(long, default_value = "label")]
    label: String,
    /// Without --csv: replay FEATURES and LABELS from this NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "FEATURES")]
    features_stream: String,
    #[arg(long, default_value = "LABELS")]
    labels_stream: String,
    /// The pipeline file: the model's name, inputs and threshold by default.
    #[arg(long, env = "MILLRACE_PIPELINE")]
    pipeline: Option<PathBuf>,
    /// Inputs, comma-separated (default: the pipeline model's, else every column).
    #[arg(long, value_delimiter = ',')]
    inputs: Vec<String>,
    /// `logistic`, `forest` or `gbdt` (gradient-boosted trees; with --csv an
    /// empty or `NA` input cell is a missing value, not a skipped row).
    #[arg(long, alias = "kind", default_value = "logistic")]
    algorithm: String,
    /// L2 penalty of the logistic regression.
    #[arg(long, default_value_t = 0.0)]
    alpha: f64,
    /// Trees: the forest's (default 50), or gbdt's boosting rounds (default 200).
    #[arg(long)]
    trees: Option<usize>,
    /// Depth bound: the forest's (default 8), gbdt's (default none: 0).
    #[arg(long)]
    max_depth: Option<u16>,
    /// Rows a leaf must keep: the forest's (default 20), gbdt's (default 50).
    #[arg(long)]
    min_leaf: Option<usize>,
    /// gbdt: shrinkage of each tree (default 0.05).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// gbdt: leaves per tree (default 31).
    #[arg(long)]
    max_leaves: Option<usize>,
    /// gbdt: L2 penalty on leaf values (default 10).
    #[arg(long)]
    l2: Option<f64>,
    /// gbdt: any of its parameters as JSON, e.g. '{"row_subsample":1.0}'
    /// (the flags above override it).
    #[arg(long)]
    gbdt_params: Option<String>,
    /// Model name (default: the pipeline's).
    #[arg(long)]
    name: Option<String>,
    /// Version to register the model as.
    #[arg(long)]
    version: String,
    #[arg(long)]
    threshold: Option<f64>,
    /// The latest fraction of rows (by event time) held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Write the artifact (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Register the model with inference.
    #[arg(long)]
    register: bool,
    /// Register and make it the active version.
    #[arg(long)]
    promote: bool,
    #[command(flatten)]
    inference: crate::InferenceUrl,
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let pipeline = match &args.pipeline {
        Some(path) if path.exists() => Some(Pipeline::load(path)?),
        _ => None,
    };
    let inputs = if !args.inputs.is_empty() {
        args.inputs.clone()
    } else {
        pipeline
            .as_ref()
            .map(|p| p.model.inputs.iter().map(|i| i.name.clone()).collect())
            .unwrap_or_default()
    };
    let name = args
        .name
        .clone()
        .or_else(|| pipeline.as_ref().map(|p| p.model.name.clone()))
        .unwrap_or_else(|| "model".into());
    let threshold = args
        .threshold
        .or_else(|| pipeline.as_ref().map(|p| p.model.threshold))
        .unwrap_or(0.5);

    let algorithm = algorithm(&args)?;
    let (data, skipped, source) = match &args.csv {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let (data, skipped) = match algorithm {
                Algorithm::Gbdt(_) => Dataset::from_csv_with_missing(&text, &args.label, &inputs),
                _ => Dataset::from_csv(&text, &args.label, &inputs),
            }
            .map_err(anyhow::Error::msg)?;
            (data, skipped, path.display().to_string())
        }
        None => {
            let js = jetstream::new(
                async_nats::connect(&args.nats)
                    .await
                    .with_context(|| format!("connecting to NATS at {}", args.nats))?,
            );
            let vectors: Vec<FeatureVector> = replay(&js, &args.features_stream).await?;
            let labels: Vec<Label> = replay(&js, &args.labels_stream).await?;
            println!(
                "replayed {} feature vectors and {} labels",
                vectors.len(),
                labels.len()
            );
            let (data, skipped) = Dataset::from_joined(&vectors, &labels, &inputs);
            (
                data,
                skipped,
                format!("{} + {}", args.features_stream, args.labels_stream),
            )
        }
    };
    if data.is_empty() {
        bail!("no labelled rows in {source} ({skipped} skipped)");
    }
    let positives = data.labels.iter().filter(|&&y| y == 1.0).count();
    println!(
        "{} labelled rows from {source} ({positives} positive, {skipped} skipped), inputs {}",
        data.len(),
        data.inputs.join(", ")
    );
    let trained = batch::train(
        &data,
        algorithm,
        &name,
        &args.version,
        threshold,
        args.holdout,
    )
    .map_err(anyhow::Error::msg)?;
    let h = &trained.holdout;
    println!(
        "{name} version {}: train ROC AUC {:.4}; holdout ({} rows) ROC AUC {:.4}, log loss {:.4}, Brier {:.4}, calibration error {:.4}",
        args.version,
        trained.train.roc_auc,
        h.rows,
        h.roc_auc,
        h.log_loss,
        h.brier,
        h.calibration_error()
    );
    println!("reliability (bin: rows, mean score, positive rate):");
    for (i, b) in h
        .reliability
        .iter()
        .enumerate()
        .filter(|(_, b)| b.count > 0)
    {
        println!(
            "  {:.1}-{:.1}: {:>6} {:.3} {:.3}",
            i as f64 / 10.0,
            (i + 1) as f64 / 10.0,
            b.count,
            b.mean_score,
            b.positive_rate
        );
    }
    let json = trained.artifact.to_json().map_err(anyhow::Error::msg)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    if args.register || args.promote {
        let mut client = ModelRegistryClient::connect(args.inference.url.clone())
            .await
            .with_context(|| format!("connecting to inference at {}", args.inference.url))?
            .max_encoding_message_size(64 * 1024 * 1024);
        let v = client
            .register_model(RegisterModelRequest {
                artifact: json,
                promote: args.promote,
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "registered {} v{} ({}){}",
            v.model,
            v.version,
            v.kind,
            if v.role.is_empty() {
                String::new()
            } else {
                format!(", {}", v.role)
            }
        );
    }
    Ok(())
}

/// The model kind and its parameters, from the flags.
fn algorithm(args: &TrainArgs) -> anyhow::Result<Algorithm> {
    Ok(match args.algorithm.as_str() {
        "logistic" => Algorithm::Logistic { alpha: args.alpha },
        "forest" => {
            let d = ForestShape::default();
            Algorithm::Forest(ForestShape {
                trees: args.trees.unwrap_or(d.trees),
                max_depth: args.max_depth.unwrap_or(d.max_depth),
                min_samples_leaf: args.min_leaf.unwrap_or(d.min_samples_leaf),
                ..d
            })
        }
        "gbdt" => {
            let mut p: GbdtParams = match &args.gbdt_params {
                Some(json) => serde_json::from_str(json).context("--gbdt-params")?,
                None => GbdtParams::default(),
            };
            p.rounds = args.trees.unwrap_or(p.rounds);
            p.max_depth = args.max_depth.map_or(p.max_depth, usize::from);
            p.min_rows_in_leaf = args.min_leaf.unwrap_or(p.min_rows_in_leaf);
            p.learning_rate = args.learning_rate.unwrap_or(p.learning_rate);
            p.max_leaves = args.max_leaves.unwrap_or(p.max_leaves);
            p.l2 = args.l2.unwrap_or(p.l2);
            Algorithm::Gbdt(p)
        }
        other => bail!("--algorithm {other}: use `logistic`, `forest` or `gbdt`"),
    })
}

/// Every message of `stream`, decoded, read with an ordered consumer.
async fn replay<M: prost::Message + Default>(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<M>> {
    let mut handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    let state = handle.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = handle
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("consumer on {stream}"))?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    while let Some(msg) = messages.next().await {
        let msg = msg.with_context(|| format!("reading {stream}"))?;
        let sequence = msg.info().map_err(anyhow::Error::msg)?.stream_sequence;
        out.extend(
            millrace_chassis::batch::decode_records::<M>(msg.headers.as_ref(), msg.payload.clone())
                .with_context(|| format!("{stream} message {sequence} does not decode"))?,
        );
        if sequence >= state.last_sequence {
            break;
        }
    }
    Ok(out)
}
