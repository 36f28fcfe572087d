//! Monitor reads three streams and keeps everything it learns from them in one state:
//! killed while all three flow, and later stopped with SIGTERM, it comes back with every
//! prediction, label and feature vector counted exactly once. A message applied twice
//! would show as a count or a labelled total one too high; a lost one as one too low.
//!
//! Messages go straight to PREDICTIONS (three model versions), LABELS (half of them
//! before their predictions, half after) and FEATURES, as the upstream stages write them:
//! predictions and feature vectors packed in `millrace.v1.Batch` messages (up to 128
//! records, `Millrace-Batch`), every third chunk as single-record messages, as a tool
//! may publish them; labels one per message. Monitor is killed with batches in flight.

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::monitor::{model_health_json, publish_raw, Gaussian, RawMessage};
use millrace_integration_tests::{
    metric_value, metrics, now_us, wait_until, Pipeline, Service, LONG,
};
use millrace_proto::v1::{FeatureVector, Label, Prediction};

const EVENTS: usize = 1200;
const CHUNK: usize = 100;
/// Records per batch message, as the stages pack them.
const BATCH: usize = 128;
const VERSIONS: [&str; 3] = ["1", "2", "3"];

fn pipeline_toml() -> String {
    r#"[pipeline]
name = "recovery"
partitions = 1

[model]
name = "fraud"
version = "1"
inputs = [{ name = "x", weight = 1.0 }]

[monitor.quality]
window_labels = 5000
evaluate_every = 50

[monitor.drift]
reference_events = 500
window_events = 200
evaluate_every = 20
"#
    .to_string()
}

/// One event's records: the label message (before or after), the vector, three predictions.
struct EventMessages {
    id: String,
    label: RawMessage,
    label_first: bool,
    vector: FeatureVector,
    predictions: Vec<Prediction>,
}

fn event(i: usize, g: &mut Gaussian) -> EventMessages {
    let id = format!("r-{i:05}");
    let t = now_us();
    let positive = g.uniform() < 0.3;
    let label = Label {
        event_id: format!("label-{id}"),
        label_key: id.clone(),
        value: if positive { 1.0 } else { 0.0 },
        event_time_us: t,
        ingest_time_us: t,
        event_type: "outcome".into(),
        observed: 0.0,
    };
    let vector = FeatureVector {
        event_id: id.clone(),
        event_type: "order_placed".into(),
        event_time_us: t,
        ingest_time_us: t,
        feature_time_us: t,
        names: vec!["x".into(), "y".into()],
        values: vec![g.sample(0.0, 1.0), g.sample(5.0, 2.0)],
        label_key: id.clone(),
        ..Default::default()
    };
    let predictions = VERSIONS
        .iter()
        .map(|v| {
            // Informative but imperfect scores, different per version.
            let score = (if positive { 0.6 } else { 0.4 } + g.sample(0.0, 0.2)).clamp(0.001, 0.999);
            Prediction {
                event_id: id.clone(),
                model: "fraud".into(),
                model_version: (*v).into(),
                score,
                predicted_positive: score >= 0.5,
                event_time_us: t,
                ingest_time_us: t,
                predict_time_us: t,
                label_key: id.clone(),
                ..Default::default()
            }
        })
        .collect();
    EventMessages {
        label: RawMessage::new("labels.outcome", format!("ingest:label-{id}"), &label),
        label_first: i.is_multiple_of(2),
        vector,
        predictions,
        id,
    }
}

/// The records as messages: batches of up to [`BATCH`] with ids `<stage>:<subject>:<chunk>:<part>`,
/// or (`singles`) one message per record.
fn messages<M: prost::Message + Clone>(
    stage: &str,
    subject: &str,
    chunk: usize,
    singles: bool,
    records: &[(String, M)],
) -> Vec<RawMessage> {
    if singles {
        return records
            .iter()
            .map(|(id, r)| RawMessage::new(subject, format!("{stage}:{id}"), r))
            .collect();
    }
    records
        .chunks(BATCH)
        .enumerate()
        .map(|(part, run)| {
            let items: Vec<(M, String)> = run
                .iter()
                .map(|(_, r)| (r.clone(), String::new()))
                .collect();
            RawMessage::batch(subject, format!("{stage}:{subject}:{chunk}:{part}"), &items)
        })
        .collect()
}

/// Publishes events chunk by chunk, the three streams interleaved; `first_chunk` numbers
/// the first chunk (batch ids must not repeat across calls). Answers the PREDICTIONS
/// messages published.
async fn publish(pipeline: &Pipeline, events: &[EventMessages], first_chunk: usize) -> Result<u64> {
    let mut prediction_messages = 0;
    for (i, chunk) in events.chunks(CHUNK).enumerate() {
        let number = first_chunk + i;
        let singles = number % 3 == 2;
        let vectors: Vec<(String, FeatureVector)> = chunk
            .iter()
            .map(|e| (e.id.clone(), e.vector.clone()))
            .collect();
        let predictions: Vec<(String, Prediction)> = chunk
            .iter()
            .flat_map(|e| {
                e.predictions
                    .iter()
                    .map(move |p| (format!("{}:fraud:{}", e.id, p.model_version), p.clone()))
            })
            .collect();
        let predictions = messages(
            "inference",
            "predictions.fraud",
            number,
            singles,
            &predictions,
        );
        prediction_messages += predictions.len() as u64;
        let mut batch = Vec::new();
        batch.extend(
            chunk
                .iter()
                .filter(|e| e.label_first)
                .map(|e| e.label.clone()),
        );
        batch.extend(messages(
            "feature-state",
            "features.0",
            number,
            singles,
            &vectors,
        ));
        batch.extend(predictions);
        batch.extend(
            chunk
                .iter()
                .filter(|e| !e.label_first)
                .map(|e| e.label.clone()),
        );
        publish_raw(pipeline.jetstream(), batch).await?;
    }
    Ok(prediction_messages)
}

/// (predictions per version, labels, feature vectors, joins per version) as exported.
async fn counted(
    pipeline: &Pipeline,
) -> Result<(Vec<Option<f64>>, Option<f64>, Option<f64>, Vec<Option<f64>>)> {
    let text = metrics(pipeline.service(Service::Monitor).http_addr()).await?;
    let per_version = |name: &str| -> Vec<Option<f64>> {
        VERSIONS
            .iter()
            .map(|v| metric_value(&text, name, &[("model", "fraud"), ("model_version", v)]))
            .collect()
    };
    Ok((
        per_version("millrace_monitor_predictions_total"),
        metric_value(&text, "millrace_monitor_labels_total", &[]),
        metric_value(&text, "millrace_monitor_feature_vectors_total", &[]),
        per_version("millrace_monitor_label_joins_total"),
    ))
}

async fn check_exact(pipeline: &Pipeline) -> Result<()> {
    let n = Some(EVENTS as f64);
    let all = (vec![n; 3], n, n, vec![n; 3]);
    // At least everything (a count one too high stops the wait at once), then exactly.
    wait_until("monitor counted everything", LONG, || async {
        let c = counted(pipeline).await?;
        let reached = |v: &Option<f64>| v.is_some_and(|v| v >= EVENTS as f64);
        let done =
            c.0.iter().all(reached) && reached(&c.1) && reached(&c.2) && c.3.iter().all(reached);
        Ok((done, c))
    })
    .await?;
    pipeline
        .wait_idle(&["PREDICTIONS", "LABELS", "FEATURES"], LONG)
        .await?;
    let c = counted(pipeline).await?;
    ensure!(
        c == all,
        "once idle, monitor counts {c:?}, expected {all:?}"
    );
    let health = model_health_json(pipeline.service(Service::Monitor).http_addr(), None).await?;
    ensure!(
        health["join"]["matched"] == 3 * EVENTS
            && health["join"]["labels"] == EVENTS
            && health["join"]["waiting_predictions"] == 0
            && health["join"]["waiting_labels"] == 0,
        "join: {:#}",
        health["join"]
    );
    for m in health["models"].as_array().context("models")? {
        ensure!(
            m["predictions"] == EVENTS
                && m["labelled"] == EVENTS
                && m["quality"]["labels"]["labelled"] == EVENTS,
            "{} v{}: {m:#}",
            m["model"],
            m["model_version"]
        );
    }
    for f in health["features"].as_array().context("features")? {
        ensure!(f["observed"] == EVENTS, "feature {}: {f:#}", f["feature"]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_killed_with_three_streams_in_flight_counts_everything_once() {
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(pipeline_toml())
        .only(&[Service::Monitor])
        .start()
        .await
        .expect("monitor starts");
    kill_and_terminate(&mut pipeline)
        .await
        .expect("exactly once across SIGKILL and SIGTERM");
}

async fn kill_and_terminate(pipeline: &mut Pipeline) -> Result<()> {
    let mut g = Gaussian::new(42);
    let events: Vec<EventMessages> = (0..EVENTS).map(|i| event(i, &mut g)).collect();
    let (snapshotted, rest) = events.split_at(EVENTS / 4);
    let (applied, while_down) = rest.split_at(EVENTS / 4);
    let monitor = pipeline.service(Service::Monitor).http_addr();

    // A first quarter that a snapshot covers, then a second one applied on top of it...
    let covered = publish(pipeline, snapshotted, 0).await? as f64;
    wait_until("a snapshot covers the first quarter", LONG, || async {
        let text = metrics(monitor).await?;
        // The gauge gives each stream's position at the newest snapshot.
        let at = metric_value(
            &text,
            "millrace_stage_last_applied_sequence",
            &[("stream", "PREDICTIONS")],
        );
        Ok((at.is_some_and(|s| s >= covered), at))
    })
    .await?;
    publish(pipeline, applied, snapshotted.len() / CHUNK).await?;
    // Per model version: one prediction per event.
    let all_applied = Some((snapshotted.len() + applied.len()) as f64);
    wait_until("monitor applied the second quarter", LONG, || async {
        let (p, ..) = counted(pipeline).await?;
        Ok((p[2] == all_applied, p))
    })
    .await?;
    // ... and killed right away, most likely before a snapshot covers the second quarter.
    pipeline.service_mut(Service::Monitor).kill().await?;
    publish(
        pipeline,
        while_down,
        (snapshotted.len() + applied.len()) / CHUNK,
    )
    .await?;
    pipeline.service_mut(Service::Monitor).restart().await?;
    check_exact(pipeline).await?;

    // An orderly stop (drain, snapshot, ack) and a start: nothing replays twice either.
    let status = pipeline.service_mut(Service::Monitor).terminate().await?;
    ensure!(
        status.success(),
        "millrace-monitor exited with {status} on SIGTERM; log tail:\n{}",
        pipeline.service(Service::Monitor).log_tail(40)
    );
    pipeline.service_mut(Service::Monitor).restart().await?;
    check_exact(pipeline).await
}
