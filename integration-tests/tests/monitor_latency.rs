//! Monitor's latency figures follow the pipeline: when a stage stalls, the
//! event-to-prediction histogram moves, the latency rule fires to ALERTS, and once
//! traffic flows normally again the rule resolves.
//!
//! The stall is real: inference is frozen with SIGSTOP while orders keep arriving, and
//! released with SIGCONT [`STALL`] after the last of them was accepted. Every order sent
//! during the stall therefore waits at least that long for its prediction, whatever the
//! machine's load, which makes the lower bound exact (a sleep is the point here: it is
//! the stall being injected; everything else waits on conditions). The stall stays under
//! the pull consumer's 5 s heartbeat so the frozen consumer is not torn down.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::monitor::signal_process;
use millrace_integration_tests::{
    decode_all, metric_value, metrics, orders, orders_pipeline_toml, publish_all_accepted,
    read_stream, wait_for_stream_count, wait_until, Pipeline, Service, LONG,
};
use millrace_proto::v1::{Alert, AlertState};
use tokio::time::Instant;

const STALL: Duration = Duration::from_millis(4500);
const BATCH: usize = 20;
/// The rule fires above 4 s at the 95th percentile of the last 20 predictions.
const THRESHOLD_SECS: f64 = 4.0;

fn pipeline_toml() -> String {
    format!(
        r#"{}
[monitor.latency]
window_predictions = {BATCH}
evaluate_every = 10

[[monitor.alerts]]
name = "slow_predictions"
metric = "event_to_prediction_seconds"
op = ">"
threshold = {THRESHOLD_SECS:?}
quantile = 0.95
"#,
        orders_pipeline_toml()
    )
}

/// The event-to-prediction histogram of fraud v1: (count, sum, observations ≤ 2.5 s).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Histogram {
    count: f64,
    sum: f64,
    within_2_5s: f64,
}

async fn histogram(pipeline: &Pipeline, name: &str) -> Result<Histogram> {
    let text = metrics(pipeline.service(Service::Monitor).http_addr()).await?;
    let v1 = [("model", "fraud"), ("model_version", "1")];
    let get = |suffix: &str, extra: Option<(&str, &str)>| {
        let mut labels = v1.to_vec();
        labels.extend(extra);
        metric_value(&text, &format!("{name}{suffix}"), &labels)
            .with_context(|| format!("{name}{suffix} is not exported"))
    };
    Ok(Histogram {
        count: get("_count", None)?,
        sum: get("_sum", None)?,
        within_2_5s: get("_bucket", Some(("le", "2.5")))?,
    })
}

async fn wait_predictions(pipeline: &Pipeline, n: usize) -> Result<()> {
    wait_until("monitor counted the predictions", LONG, || async {
        let seen = pipeline.monitor_predictions().await?;
        Ok((seen == Some(n as f64), seen))
    })
    .await?;
    Ok(())
}

async fn latency_alerts(pipeline: &Pipeline) -> Result<Vec<Alert>> {
    let alerts: Vec<Alert> = decode_all(&read_stream(pipeline.jetstream(), "ALERTS").await?)?;
    Ok(alerts.into_iter().filter(|a| a.kind == "latency").collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stage_moves_the_latency_histogram_and_fires_the_rule() {
    let pipeline = Pipeline::builder()
        .pipeline_toml(pipeline_toml())
        .start()
        .await
        .expect("pipeline starts");
    stall_and_recover(&pipeline)
        .await
        .expect("latency follows the stall");
}

async fn stall_and_recover(pipeline: &Pipeline) -> Result<()> {
    let mut ingest = pipeline.ingest().await?;
    let e2p = "millrace_monitor_event_to_prediction_seconds";
    let i2p = "millrace_monitor_ingest_to_prediction_seconds";

    // Flowing normally.
    publish_all_accepted(&mut ingest, &orders("fast", 0..BATCH, 5), 5).await?;
    wait_predictions(pipeline, BATCH).await?;
    let before = histogram(pipeline, e2p).await?;
    let before_ingest = histogram(pipeline, i2p).await?;
    ensure!(before.count == BATCH as f64, "{before:?}");

    // Inference stalls while orders arrive.
    let inference = pipeline
        .service(Service::Inference)
        .pid()
        .context("inference runs")?;
    signal_process(inference, "STOP").await?;
    let stalled = async {
        publish_all_accepted(&mut ingest, &orders("stalled", 0..BATCH, 5), 5).await?;
        let accepted = Instant::now();
        wait_for_stream_count(pipeline.jetstream(), "FEATURES", 2 * BATCH as u64, LONG).await?;
        tokio::time::sleep_until(accepted + STALL).await;
        anyhow::Ok(())
    }
    .await;
    signal_process(inference, "CONT").await?;
    stalled?;
    wait_predictions(pipeline, 2 * BATCH).await?;

    let after = histogram(pipeline, e2p).await?;
    let (n, added, fast) = (
        after.count - before.count,
        after.sum - before.sum,
        after.within_2_5s - before.within_2_5s,
    );
    eprintln!(
        "event→prediction: {BATCH} fast, mean {:.3} s; {n} stalled, mean {:.3} s",
        before.sum / before.count,
        added / n
    );
    ensure!(
        n == BATCH as f64,
        "{n} new observations: {before:?} → {after:?}"
    );
    ensure!(
        fast == 0.0,
        "{fast} stalled predictions landed at or below 2.5 s: {before:?} → {after:?}"
    );
    ensure!(
        added / n >= STALL.as_secs_f64() && added / n > before.sum / before.count,
        "the stalled mean {} s did not move past the stall and the fast mean: {before:?} → {after:?}",
        added / n
    );
    let after_ingest = histogram(pipeline, i2p).await?;
    ensure!(
        after_ingest.within_2_5s == before_ingest.within_2_5s
            && after_ingest.count == before_ingest.count + BATCH as f64,
        "ingest→prediction moved too: {before_ingest:?} → {after_ingest:?}"
    );

    let fired = wait_until("the latency rule fired", LONG, || async {
        let alerts = latency_alerts(pipeline).await?;
        Ok((!alerts.is_empty(), alerts))
    })
    .await?;
    let first = &fired[0];
    ensure!(
        first.state() == AlertState::Firing
            && first.alert_id == "slow_predictions:fraud:1#1"
            && first.metric == "event_to_prediction_seconds"
            && first.value >= STALL.as_secs_f64()
            && first.threshold == THRESHOLD_SECS,
        "{first:#?}"
    );

    // Flowing again: once the window holds only fast predictions, the rule resolves.
    // A machine too loaded for 20 orders to go through in 4 s gets more rounds.
    let mut sent = 2 * BATCH;
    for round in 0..5 {
        publish_all_accepted(
            &mut ingest,
            &orders(&format!("again-{round}"), 0..BATCH, 5),
            5,
        )
        .await?;
        sent += BATCH;
        wait_predictions(pipeline, sent).await?;
        let resolved = wait_until("ALERTS holds what monitor published", LONG, || async {
            let alerts = latency_alerts(pipeline).await?;
            let firing = pipeline
                .monitor()
                .await?
                .get_model_health(millrace_proto::v1::GetModelHealthRequest::default())
                .await?
                .into_inner()
                .firing;
            // Settled when ALERTS agrees with what is firing now.
            let published_firing = alerts
                .last()
                .is_some_and(|a| a.state() == AlertState::Firing);
            let firing_now = !firing.is_empty();
            Ok((published_firing == firing_now, alerts))
        })
        .await?;
        if resolved
            .last()
            .is_some_and(|a| a.state() == AlertState::Resolved)
        {
            ensure!(
                resolved.len() == 2 && resolved[1].alert_id == first.alert_id,
                "one firing, one resolved: {resolved:#?}"
            );
            return Ok(());
        }
    }
    anyhow::bail!("the latency alert did not resolve after 5 rounds of normal traffic")
}
