//! Inference learns online from late labels through the real pipeline: orders are
//! scored, their outcomes arrive later (some before the order's feature vector),
//! labels join their vectors in inference, the SGD learner updates, and its
//! progressive-validation ROC AUC beats the pipeline's fixed model, which has the
//! relationship backwards. Then the registry: the live learner is promoted, rolled
//! back and shadowed while requests keep flowing, and `Score` fetches the
//! entity's online features from feature-state itself. A second test kills
//! inference mid-stream: every label is still learned from exactly once. A third
//! stops it while orders and outcomes pile up: catching up, it reads labels in
//! step with the batched vectors, so a small join store loses none of them.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::pipeline::{customer, orders_model_probability};
use millrace_integration_tests::{
    decode_all, labelled_orders_sections, metric_value, metrics, now_us, order,
    publish_all_accepted, read_stream, wait_for_stream_count, wait_until, Pipeline, Service, LONG,
};
use millrace_proto::inference::model_infer_request::InferInputTensor;
use millrace_proto::inference::{InferTensorContents, ModelInferRequest};
use millrace_proto::v1::inference_client::InferenceClient;
use millrace_proto::v1::model_registry_client::ModelRegistryClient;
use millrace_proto::v1::{
    Event, ListModelsRequest, Prediction, PromoteModelRequest, RegisterModelRequest,
    RollbackModelRequest, ScoreRequest, SetShadowRequest, Value,
};

/// The orders pipeline plus a label: `order_outcome` names the order by `order_id`
/// and is positive when `chargeback >= 1`. The fixed model `fraud` v1 scores higher
/// amounts as riskier; in this test's world small orders are the fraudulent ones.
fn labelled_orders_toml() -> String {
    format!(
        "{}{}{}",
        r#"[pipeline]
name = "test"
partitions = 4

"#,
        labelled_orders_sections(),
        r#"

[model.online]
learning_rate = 0.3
min_learning_rate = 0.02
"#
    )
}

const CUSTOMERS: usize = 20;

/// Everything inference needs; monitor reads what inference writes and is not under test.
const UPSTREAM: [Service; 4] = [
    Service::Ingest,
    Service::Enrich,
    Service::FeatureState,
    Service::Inference,
];

fn amount_of(i: usize) -> f64 {
    ((i * 37) % 200) as f64 + 0.5
}

/// Order `i`: customer `i % 20`, id `<prefix>-<i>`, carrying its own `order_id`.
fn labelled_order(prefix: &str, i: usize) -> Event {
    let id = format!("{prefix}-{i:05}");
    let mut e = order(&id, &customer(i % CUSTOMERS), amount_of(i));
    e.fields.insert("order_id".into(), Value::string(id));
    e
}

/// The truth of this world: orders under 40 are charged back.
fn outcome(prefix: &str, i: usize) -> Event {
    let order_id = format!("{prefix}-{i:05}");
    let chargeback = if amount_of(i) < 40.0 { 1.0 } else { 0.0 };
    Event {
        event_id: format!("outcome-{order_id}"),
        r#type: "order_outcome".into(),
        schema_version: 1,
        event_time_us: now_us(),
        fields: [
            ("order_id".to_string(), Value::string(order_id)),
            ("chargeback".to_string(), Value::double(chargeback)),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// Sends orders `range` and their outcomes, 50 at a time: every fifth outcome goes out
/// before its order (the label arrives first), the rest once the orders are scored.
async fn send_labelled(
    pipeline: &Pipeline,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Result<()> {
    let already = pipeline.stream_count("PREDICTIONS").await?;
    let first = range.start;
    let mut ingest = pipeline.ingest().await?;
    for chunk in range.collect::<Vec<_>>().chunks(50) {
        let early: Vec<Event> = chunk
            .iter()
            .filter(|&&i| i % 5 == 0)
            .map(|&i| outcome(prefix, i))
            .collect();
        let late: Vec<Event> = chunk
            .iter()
            .filter(|&&i| i % 5 != 0)
            .map(|&i| outcome(prefix, i))
            .collect();
        let orders: Vec<Event> = chunk.iter().map(|&i| labelled_order(prefix, i)).collect();
        publish_all_accepted(&mut ingest, &early, 50).await?;
        publish_all_accepted(&mut ingest, &orders, 50).await?;
        // The other outcomes only once these orders are scored: labels after their vectors.
        let scored = already + (chunk[chunk.len() - 1] + 1 - first) as u64;
        wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", scored, LONG).await?;
        publish_all_accepted(&mut ingest, &late, 50).await?;
    }
    Ok(())
}

async fn inference_metric(
    pipeline: &Pipeline,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<Option<f64>> {
    let text = metrics(pipeline.service(Service::Inference).http_addr()).await?;
    Ok(metric_value(&text, name, labels))
}

async fn wait_joined(pipeline: &Pipeline, n: usize) -> Result<()> {
    wait_until(
        &format!("inference has joined {n} labels"),
        LONG,
        || async {
            let joined = inference_metric(
                pipeline,
                "millrace_inference_label_join_total",
                &[("outcome", "joined")],
            )
            .await?;
            Ok((joined == Some(n as f64), joined))
        },
    )
    .await
    .map(|_| ())
}

#[ignore = "open (issue 20): with the event-time order some records stay held at the end of a run; see the session note"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_learner_beats_the_fixed_model_on_late_labels() {
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(labelled_orders_toml())
        .only(&UPSTREAM)
        .start()
        .await
        .expect("pipeline starts");
    online_learning(&pipeline).await.expect("online learning");
    restart_with_feature_state(&mut pipeline)
        .await
        .expect("inference restarts where it was");
    registry_and_score(&pipeline)
        .await
        .expect("registry and Score");
}

async fn online_learning(pipeline: &Pipeline) -> Result<()> {
    let n = 600;
    send_labelled(pipeline, "learn", 0..n).await?;
    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", n as u64, LONG).await?;
    wait_joined(pipeline, n).await?;

    let updates =
        inference_metric(pipeline, "millrace_inference_online_updates_total", &[]).await?;
    ensure!(
        updates == Some(n as f64),
        "online updates {updates:?}, expected {n}"
    );
    let label_first = inference_metric(
        pipeline,
        "millrace_inference_label_join_total",
        &[("outcome", "label_first")],
    )
    .await?
    .unwrap_or(0.0);
    eprintln!("{label_first} of {n} labels arrived before their feature vector");

    let auc = |version: &'static str| async move {
        inference_metric(
            pipeline,
            "millrace_inference_progressive_roc_auc",
            &[("model", "fraud"), ("model_version", version)],
        )
        .await?
        .with_context(|| format!("no progressive ROC AUC for version {version}"))
    };
    let (online, fixed) = (auc("online").await?, auc("1").await?);
    eprintln!("progressive ROC AUC: online learner {online:.4}, fixed model v1 {fixed:.4}");
    ensure!(
        fixed < 0.5,
        "the fixed model should have it backwards, its AUC is {fixed}"
    );
    ensure!(
        online > 0.8 && online > fixed + 0.3,
        "the online learner's progressive AUC {online} does not beat the fixed model's {fixed}"
    );
    // Every prediction came from the active version, v1, exactly once per order.
    let predictions: Vec<Prediction> =
        decode_all(&read_stream(pipeline.jetstream(), "PREDICTIONS").await?)?;
    ensure!(
        predictions.len() == n,
        "{} predictions for {n} orders",
        predictions.len()
    );
    ensure!(predictions
        .iter()
        .all(|p| p.model_version == "1" && p.label_key.starts_with("learn-")));
    Ok(())
}

/// Points inference at this test's feature-state (for `Score`) through an orderly
/// restart: SIGTERM (drain, snapshot), start again; the learner and its metrics resume.
async fn restart_with_feature_state(pipeline: &mut Pipeline) -> Result<()> {
    let auc_labels = [("model", "fraud"), ("model_version", "online")];
    let before = inference_metric(
        pipeline,
        "millrace_inference_progressive_roc_auc",
        &auc_labels,
    )
    .await?;
    let url = pipeline.service(Service::FeatureState).grpc_url();
    let inference = pipeline.service_mut(Service::Inference);
    let status = inference.terminate().await?;
    ensure!(
        status.success(),
        "inference exited with {status} on SIGTERM"
    );
    inference.set_env("MILLRACE_FEATURE_STATE_URL", &url);
    inference.restart().await?;
    let after = inference_metric(
        pipeline,
        "millrace_inference_progressive_roc_auc",
        &auc_labels,
    )
    .await?;
    ensure!(
        after == before,
        "progressive AUC {before:?} before the restart, {after:?} after"
    );
    let updates =
        inference_metric(pipeline, "millrace_inference_online_updates_total", &[]).await?;
    ensure!(
        updates == Some(600.0),
        "after the restart: {updates:?} updates"
    );
    Ok(())
}

async fn registry_and_score(pipeline: &Pipeline) -> Result<()> {
    let url = pipeline.service(Service::Inference).grpc_url();
    let mut registry = ModelRegistryClient::connect(url.clone()).await?;
    let list = registry
        .list_models(ListModelsRequest::default())
        .await
        .context("ListModels")?
        .into_inner();
    ensure!(list.active == "1", "active {:?}", list.active);
    let online = list
        .versions
        .iter()
        .find(|v| v.version == "online")
        .context("the live learner is listed")?;
    ensure!(
        online.kind == "online_logistic" && online.progressive_examples == 600,
        "{online:?}"
    );

    // Requests keep flowing while versions change; none fails.
    let oip = pipeline.inference().await?;
    let hammer = tokio::spawn(async move {
        let mut oip = oip;
        let mut versions = BTreeMap::<String, u32>::new();
        for i in 0..400 {
            let request = ModelInferRequest {
                model_name: "fraud".into(),
                id: format!("r{i}"),
                inputs: vec![InferInputTensor {
                    name: "features".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 2],
                    contents: Some(InferTensorContents {
                        fp32_contents: vec![3.0, 20.0],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let response = oip
                .model_infer(request)
                .await
                .with_context(|| format!("ModelInfer {i} during swaps"))?;
            *versions
                .entry(response.into_inner().model_version)
                .or_default() += 1;
        }
        anyhow::Ok(versions)
    });
    for _ in 0..10 {
        let roles = registry
            .promote_model(PromoteModelRequest {
                model: "fraud".into(),
                version: "online".into(),
            })
            .await?
            .into_inner();
        ensure!(roles.active == "online", "{roles:?}");
        let roles = registry
            .rollback_model(RollbackModelRequest {
                model: "fraud".into(),
            })
            .await?
            .into_inner();
        ensure!(roles.active == "1", "{roles:?}");
    }
    let versions = hammer.await??;
    eprintln!("ModelInfer answers by version during the swaps: {versions:?}");

    // The learner is served: new orders are scored by it.
    registry
        .promote_model(PromoteModelRequest {
            model: "fraud".into(),
            version: "online".into(),
        })
        .await?;
    // And a frozen copy of it can be registered and shadowed.
    let frozen = registry
        .register_model(RegisterModelRequest {
            snapshot_online_as: "sgd-1".into(),
            description: "frozen learner".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        frozen.kind == "online_logistic" && frozen.training_rows == 600,
        "{frozen:?}"
    );
    registry
        .set_shadow(SetShadowRequest {
            model: "fraud".into(),
            version: "sgd-1".into(),
        })
        .await?;
    send_labelled(pipeline, "served", 0..40).await?;
    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", 640, LONG).await?;
    let predictions: Vec<Prediction> =
        decode_all(&read_stream(pipeline.jetstream(), "PREDICTIONS").await?)?;
    let served: Vec<&Prediction> = predictions
        .iter()
        .filter(|p| p.label_key.starts_with("served-"))
        .collect();
    ensure!(
        served.len() == 40 && served.iter().all(|p| p.model_version == "online"),
        "{served:?}"
    );
    // Small orders are fraud now, as the learner knows.
    let mean = |small: bool| {
        let scores: Vec<f64> = served
            .iter()
            .filter(|p| {
                let i: usize = p
                    .label_key
                    .trim_start_matches("served-")
                    .parse()
                    .unwrap_or(0);
                if small {
                    amount_of(i) < 40.0
                } else {
                    amount_of(i) > 80.0
                }
            })
            .map(|p| p.score)
            .collect();
        scores.iter().sum::<f64>() / scores.len().max(1) as f64
    };
    ensure!(
        mean(true) > mean(false) + 0.2,
        "the learner scores small orders {} and large ones {}",
        mean(true),
        mean(false)
    );
    wait_until("the shadow scored the new orders", LONG, || async {
        let shadowed = inference_metric(
            pipeline,
            "millrace_inference_shadow_predictions_total",
            &[("model", "fraud"), ("model_version", "sgd-1")],
        )
        .await?;
        Ok((shadowed == Some(40.0), shadowed))
    })
    .await?;
    registry
        .rollback_model(RollbackModelRequest {
            model: "fraud".into(),
        })
        .await?;

    // Score by entity: inference asks feature-state for customer-03's order count.
    wait_joined(pipeline, 640).await?;
    let mut score = InferenceClient::connect(url).await?;
    let answer = score
        .score(ScoreRequest {
            event_id: "ask-1".into(),
            event_type: "order_placed".into(),
            fields: [
                ("customer".to_string(), Value::string(customer(3))),
                ("amount".to_string(), Value::double(10.0)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .context("Score")?
        .into_inner();
    // customer-03 placed orders 3, 23, 43, … of 600, then 3 and 23 of the 40.
    let count = (0..600).filter(|i| i % CUSTOMERS == 3).count()
        + (0..40).filter(|i| i % CUSTOMERS == 3).count();
    ensure!(
        answer.model_version == "1"
            && answer.names == ["customer_orders", "amount"]
            && answer.missing.is_empty(),
        "{answer:?}"
    );
    ensure!(
        answer.values == [count as f64, 10.0],
        "Score used {:?}, expected [{count}, 10]",
        answer.values
    );
    let want = orders_model_probability(count as f64, 10.0);
    ensure!(
        (answer.score - want).abs() < 1e-9,
        "score {} expected {want}",
        answer.score
    );

    // `millrace train` from the replayed FEATURES and LABELS, registered.
    let program = millrace_integration_tests::service::bin_dir().join("millrace");
    let out = tokio::process::Command::new(&program)
        .args([
            "train",
            "--version",
            "replayed",
            "--register",
            "--holdout",
            "0.25",
        ])
        .args(["--nats", &pipeline.nats().url()])
        .args([
            "--inference",
            &pipeline.service(Service::Inference).grpc_url(),
        ])
        .arg("--pipeline")
        .arg(pipeline.pipeline_path())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "millrace train from the streams failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("replayed 640 feature vectors and 640 labels")
            && stdout.contains("640 labelled rows")
            && stdout.contains("registered fraud vreplayed"),
        "{stdout}"
    );
    let replayed = registry
        .get_model(millrace_proto::v1::GetModelRequest {
            model: "fraud".into(),
            version: "replayed".into(),
        })
        .await?
        .into_inner();
    let auc = replayed
        .metrics
        .get("holdout_roc_auc")
        .copied()
        .unwrap_or_default();
    ensure!(
        auc > 0.9,
        "the model trained on replayed streams has holdout AUC {auc}"
    );
    Ok(())
}

#[ignore = "open (issue 20): with the event-time order some records stay held at the end of a run; see the session note"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_killed_mid_stream_learns_every_label_exactly_once() {
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(labelled_orders_toml())
        .only(&UPSTREAM)
        .start()
        .await
        .expect("pipeline starts");
    killed(&mut pipeline)
        .await
        .expect("exactly once across a SIGKILL");
}

async fn killed(pipeline: &mut Pipeline) -> Result<()> {
    let sender = {
        let ingest = pipeline.ingest().await?;
        // The same as send_labelled, on its own task so the kill lands mid-stream.
        let events: Vec<Vec<Event>> = (0..400usize)
            .collect::<Vec<_>>()
            .chunks(20)
            .map(|chunk| {
                let mut batch: Vec<Event> = chunk
                    .iter()
                    .filter(|&&i| i % 5 == 0)
                    .map(|&i| outcome("crash", i))
                    .collect();
                batch.extend(chunk.iter().map(|&i| labelled_order("crash", i)));
                batch.extend(
                    chunk
                        .iter()
                        .filter(|&&i| i % 5 != 0)
                        .map(|&i| outcome("crash", i)),
                );
                batch
            })
            .collect();
        tokio::spawn(async move {
            let mut ingest = ingest;
            for batch in events {
                publish_all_accepted(&mut ingest, &batch, 40).await?;
            }
            anyhow::Ok(())
        })
    };
    wait_until("inference has learned from some labels", LONG, || async {
        let updates =
            inference_metric(pipeline, "millrace_inference_online_updates_total", &[]).await?;
        Ok((updates.is_some_and(|u| u >= 20.0), updates))
    })
    .await?;
    pipeline.service_mut(Service::Inference).kill().await?;
    let at_kill = pipeline.stream_count("PREDICTIONS").await?;
    sender.await??;
    eprintln!("inference killed with {at_kill} of 400 predictions out");
    pipeline.service_mut(Service::Inference).restart().await?;

    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", 400, LONG).await?;
    wait_joined(pipeline, 400).await?;
    let updates =
        inference_metric(pipeline, "millrace_inference_online_updates_total", &[]).await?;
    ensure!(
        updates == Some(400.0),
        "after the crash the learner counts {updates:?} updates for 400 labels"
    );
    let examples = inference_metric(
        pipeline,
        "millrace_inference_progressive_examples",
        &[("model", "fraud"), ("model_version", "online")],
    )
    .await?;
    ensure!(
        examples == Some(400.0),
        "progressive validation counts {examples:?} examples for 400 labels"
    );
    let predictions: Vec<Prediction> =
        decode_all(&read_stream(pipeline.jetstream(), "PREDICTIONS").await?)?;
    let mut ids: Vec<&str> = predictions.iter().map(|p| p.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        predictions.len() == 400 && ids.len() == 400,
        "{} predictions ({} distinct) for 400 orders",
        predictions.len(),
        ids.len()
    );
    Ok(())
}

#[ignore = "open (issue 20): with the event-time order some records stay held at the end of a run; see the session note"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_catching_up_joins_every_label_within_a_small_store() {
    // The join holds at most 60 entries: enough for live traffic, where labels
    // follow their vectors by 20 orders, so a catch-up must keep that pace too.
    let toml =
        labelled_orders_toml().replace("[model.online]\n", "[model.online]\njoin_capacity = 60\n");
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(toml)
        .only(&UPSTREAM)
        .start()
        .await
        .expect("pipeline starts");
    catch_up(&mut pipeline)
        .await
        .expect("every label joined after a catch-up");
}

async fn catch_up(pipeline: &mut Pipeline) -> Result<()> {
    const N: usize = 600;
    pipeline.service_mut(Service::Inference).terminate().await?;
    // As live traffic would: each chunk's outcomes once its orders have their vectors.
    let mut ingest = pipeline.ingest().await?;
    for chunk in (0..N).collect::<Vec<_>>().chunks(20) {
        let orders: Vec<Event> = chunk
            .iter()
            .map(|&i| labelled_order("backlog", i))
            .collect();
        let outcomes: Vec<Event> = chunk.iter().map(|&i| outcome("backlog", i)).collect();
        let upto = (chunk[chunk.len() - 1] + 1) as u64;
        publish_all_accepted(&mut ingest, &orders, 20).await?;
        wait_for_stream_count(pipeline.jetstream(), "FEATURES", upto, LONG).await?;
        publish_all_accepted(&mut ingest, &outcomes, 20).await?;
        wait_for_stream_count(pipeline.jetstream(), "LABELS", upto, LONG).await?;
    }
    let features = pipeline
        .jetstream()
        .get_stream("FEATURES")
        .await?
        .info()
        .await?
        .state
        .messages;
    wait_for_stream_count(pipeline.jetstream(), "LABELS", N as u64, LONG).await?;
    eprintln!("backlog: {N} vectors in {features} FEATURES messages, {N} LABELS messages");
    ensure!(
        features * 2 <= N as u64,
        "the vectors should come in batches: {features} messages for {N}"
    );

    pipeline.service_mut(Service::Inference).restart().await?;
    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", N as u64, LONG).await?;
    pipeline.wait_idle(&["FEATURES", "LABELS"], LONG).await?;
    let text = metrics(pipeline.service(Service::Inference).http_addr()).await?;
    let outcome = |name: &str| {
        metric_value(
            &text,
            "millrace_inference_label_join_total",
            &[("outcome", name)],
        )
        .unwrap_or(0.0)
    };
    let (joined, evicted) = (outcome("joined"), outcome("evicted"));
    ensure!(
        joined == N as f64 && evicted == 0.0,
        "after catching up: {joined} of {N} labels joined, {evicted} entries evicted"
    );
    Ok(())
}
