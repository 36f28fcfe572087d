//! Monitor joins predictions with labels that arrive late (and some early) through the
//! real pipeline, and its quality figures per model version equal the ones computed
//! here, by brute force, from what PREDICTIONS holds and the labels sent. Labels with no
//! prediction and predictions with no label are counted as waiting; a rule on accuracy
//! fires to ALERTS (`alerts.quality`) and shows in `GetModelHealth`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::monitor::{model_health_json, promtool_check};
use millrace_integration_tests::pipeline::customer;
use millrace_integration_tests::{
    decode_all, labelled_orders_sections, metric_value, metrics, now_us, order,
    publish_all_accepted, read_stream, wait_for_stream_count, wait_until, Pipeline, Service, LONG,
};
use millrace_proto::v1::{Alert, AlertState, Event, GetModelHealthRequest, Prediction, Value};

/// The orders pipeline with a label (`order_outcome`, positive when `chargeback >= 1`,
/// naming the order by `order_id`) and a rule on accuracy.
fn pipeline_toml() -> String {
    format!(
        "{}{}{}",
        r#"[pipeline]
name = "quality"
partitions = 4

"#,
        labelled_orders_sections(),
        r#"

[monitor.quality]
evaluate_every = 10

[[monitor.alerts]]
name = "low_accuracy"
metric = "accuracy"
op = "<"
threshold = 0.9
hysteresis = 0.05
model = "fraud"
"#
    )
}

const ORDERS: usize = 200;
/// Orders whose outcome arrives before the order itself.
const EARLY: std::ops::Range<usize> = 0..20;
/// Orders whose outcome arrives after their prediction.
const LATE: std::ops::Range<usize> = 20..150;
/// Outcomes for orders that never existed.
const GHOSTS: usize = 10;

fn amount_of(i: usize) -> f64 {
    ((i * 37) % 200) as f64 + 0.5
}

fn order_id(i: usize) -> String {
    format!("q-{i:05}")
}

fn labelled_order(i: usize) -> Event {
    let mut e = order(&order_id(i), &customer(i % 20), amount_of(i));
    e.fields
        .insert("order_id".into(), Value::string(order_id(i)));
    e
}

/// In this world small orders are the fraudulent ones: the model has it backwards.
fn is_fraud(i: usize) -> bool {
    amount_of(i) < 40.0
}

fn outcome(id: &str, fraud: bool) -> Event {
    Event {
        event_id: format!("outcome-{id}"),
        r#type: "order_outcome".into(),
        schema_version: 1,
        event_time_us: now_us(),
        fields: [
            ("order_id".to_string(), Value::string(id)),
            (
                "chargeback".to_string(),
                Value::double(if fraud { 1.0 } else { 0.0 }),
            ),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// A labelled prediction: (score, decided positive, labelled positive).
type Pair = (f64, bool, bool);

/// The figures, computed the slow and obvious way.
#[derive(Debug)]
struct Expected {
    n: usize,
    accuracy: f64,
    precision: Option<f64>,
    recall: Option<f64>,
    roc_auc: Option<f64>,
    log_loss: f64,
    brier: f64,
}

fn expected(pairs: &[Pair]) -> Expected {
    let n = pairs.len();
    let count = |f: &dyn Fn(&Pair) -> bool| pairs.iter().filter(|p| f(p)).count();
    let tp = count(&|p| p.1 && p.2);
    let predicted = count(&|p| p.1);
    let positives = count(&|p| p.2);
    let right = count(&|p| p.1 == p.2);
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    let mut wins = 0.0;
    let mut pairs_compared = 0usize;
    for (s_pos, _, _) in pairs.iter().filter(|p| p.2) {
        for (s_neg, _, _) in pairs.iter().filter(|p| !p.2) {
            pairs_compared += 1;
            wins += if s_pos > s_neg {
                1.0
            } else if s_pos == s_neg {
                0.5
            } else {
                0.0
            };
        }
    }
    let eps = 1e-15;
    Expected {
        n,
        accuracy: right as f64 / n as f64,
        precision: ratio(tp, predicted),
        recall: ratio(tp, positives),
        roc_auc: (pairs_compared > 0).then(|| wins / pairs_compared as f64),
        log_loss: pairs
            .iter()
            .map(|(s, _, y)| {
                let s = s.clamp(eps, 1.0 - eps);
                if *y {
                    -s.ln()
                } else {
                    -(1.0 - s).ln()
                }
            })
            .sum::<f64>()
            / n as f64,
        brier: pairs
            .iter()
            .map(|(s, _, y)| (s - if *y { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>()
            / n as f64,
    }
}

fn close(got: &serde_json::Value, want: Option<f64>, what: &str) -> Result<()> {
    match (got.as_f64(), want) {
        (Some(g), Some(w)) => ensure!((g - w).abs() < 1e-9, "{what}: monitor {g}, expected {w}"),
        (None, None) => {}
        (g, w) => anyhow::bail!("{what}: monitor {g:?}, expected {w:?}"),
    }
    Ok(())
}

#[ignore = "open (issue 20): with the event-time order some records stay held at the end of a run; see the session note"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_early_labels_join_their_predictions_into_exact_quality_figures() {
    let pipeline = Pipeline::builder()
        .pipeline_toml(pipeline_toml())
        .start()
        .await
        .expect("pipeline starts");
    quality_through_the_pipeline(&pipeline)
        .await
        .expect("quality figures");
}

async fn quality_through_the_pipeline(pipeline: &Pipeline) -> Result<()> {
    let mut ingest = pipeline.ingest().await?;
    let js = pipeline.jetstream();
    let early: Vec<Event> = EARLY.map(|i| outcome(&order_id(i), is_fraud(i))).collect();
    publish_all_accepted(&mut ingest, &early, 10).await?;
    wait_for_stream_count(js, "LABELS", early.len() as u64, LONG).await?;

    let orders: Vec<Event> = (0..ORDERS).map(labelled_order).collect();
    publish_all_accepted(&mut ingest, &orders, 50).await?;
    wait_for_stream_count(js, "PREDICTIONS", ORDERS as u64, LONG).await?;

    let mut late: Vec<Event> = LATE.map(|i| outcome(&order_id(i), is_fraud(i))).collect();
    late.extend((0..GHOSTS).map(|g| outcome(&format!("ghost-{g}"), true)));
    publish_all_accepted(&mut ingest, &late, 25).await?;
    let labels_sent = (early.len() + late.len()) as u64;
    wait_for_stream_count(js, "LABELS", labels_sent, LONG).await?;
    pipeline
        .wait_idle(
            &["EVENTS", "ENRICHED", "FEATURES", "PREDICTIONS", "LABELS"],
            LONG,
        )
        .await?;

    // What monitor should have made of it, from the stream itself.
    let predictions: Vec<Prediction> = decode_all(&read_stream(js, "PREDICTIONS").await?)?;
    let truth: HashMap<String, bool> = EARLY
        .chain(LATE)
        .map(|i| (order_id(i), is_fraud(i)))
        .collect();
    let mut pairs: BTreeMap<(String, String), Vec<Pair>> = BTreeMap::new();
    let mut waiting_predictions = 0u64;
    for p in &predictions {
        match truth.get(&p.label_key) {
            Some(fraud) => pairs
                .entry((p.model.clone(), p.model_version.clone()))
                .or_default()
                .push((p.score, p.predicted_positive, *fraud)),
            None => waiting_predictions += 1,
        }
    }
    let v1 = ("fraud".to_string(), "1".to_string());
    ensure!(
        pairs.get(&v1).map(Vec::len) == Some(EARLY.len() + LATE.len()),
        "fraud v1 scored every labelled order: {:?}",
        pairs.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
    );
    let matched: u64 = pairs.values().map(|v| v.len() as u64).sum();

    let addr = pipeline.service(Service::Monitor).http_addr();
    let health = wait_until("monitor joined every label", LONG, || async {
        let h = model_health_json(addr, Some("fraud")).await?;
        Ok((h["join"]["matched"] == matched, h))
    })
    .await?;
    let join = &health["join"];
    ensure!(
        join["labels"] == labels_sent
            && join["waiting_labels"] == GHOSTS
            && join["waiting_predictions"] == waiting_predictions,
        "join counts: {join:#}"
    );
    for ((model, version), version_pairs) in &pairs {
        let m = health["models"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m["model"] == model.as_str() && m["model_version"] == version.as_str()
                })
            })
            .with_context(|| format!("{model} v{version} in {health:#}"))?;
        let want = expected(version_pairs);
        ensure!(
            m["labelled"] == want.n,
            "{model} v{version} labelled: {m:#}"
        );
        for window in ["labels", "time"] {
            let q = &m["quality"][window];
            let what = |f: &str| format!("{model} v{version} {window} {f}");
            ensure!(q["labelled"] == want.n, "{}: {q:#}", what("labelled"));
            close(&q["accuracy"], Some(want.accuracy), &what("accuracy"))?;
            close(&q["precision"], want.precision, &what("precision"))?;
            close(&q["recall"], want.recall, &what("recall"))?;
            close(&q["roc_auc"], want.roc_auc, &what("roc_auc"))?;
            close(&q["log_loss"], Some(want.log_loss), &what("log_loss"))?;
            close(&q["brier"], Some(want.brier), &what("brier"))?;
        }
        eprintln!("{model} v{version}: {want:?}");
    }

    // Prometheus says the same (gauges refresh within a second).
    let want_v1 = expected(&pairs[&v1]);
    let text = wait_until("the accuracy gauge caught up", LONG, || async {
        let text = metrics(addr).await?;
        let accuracy = metric_value(
            &text,
            "millrace_monitor_accuracy_ratio",
            &[
                ("model", "fraud"),
                ("model_version", "1"),
                ("window", "labels"),
            ],
        );
        let caught_up = accuracy.is_some_and(|a| (a - want_v1.accuracy).abs() < 1e-9);
        Ok((caught_up, (accuracy, text)))
    })
    .await?
    .1;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    ensure!(
        value(
            "millrace_monitor_label_joins_total",
            &[("model", "fraud"), ("model_version", "1")]
        ) == Some(want_v1.n as f64),
        "label joins counter"
    );
    ensure!(value("millrace_monitor_labels_total", &[]) == Some(labels_sent as f64));
    ensure!(
        value("millrace_monitor_label_join_waiting", &[("side", "labels")]) == Some(GHOSTS as f64)
    );
    let (ok, report) = promtool_check(&text).await?;
    ensure!(
        ok,
        "promtool check metrics failed:\n{report}\n--- /metrics ---\n{text}"
    );

    // The model has it backwards: the accuracy rule fires for v1.
    ensure!(
        want_v1.accuracy < 0.9,
        "the test world should defeat the model: {want_v1:?}"
    );
    let alerts: Vec<Alert> = decode_all(&read_stream(js, "ALERTS").await?)?;
    let fired = alerts
        .iter()
        .find(|a| a.alert_id == "low_accuracy:fraud:1#1")
        .with_context(|| format!("no accuracy alert for fraud v1 in {alerts:#?}"))?;
    ensure!(
        fired.state() == AlertState::Firing
            && fired.kind == "quality"
            && fired.metric == "accuracy"
            && fired.value < 0.9
            && fired.threshold == 0.9,
        "{fired:#?}"
    );
    let health = pipeline
        .monitor()
        .await?
        .get_model_health(GetModelHealthRequest {
            model: "fraud".into(),
        })
        .await
        .context("GetModelHealth")?
        .into_inner();
    ensure!(
        health.firing.iter().any(|a| a.alert_id == fired.alert_id),
        "GetModelHealth lists {}: {:#?}",
        fired.alert_id,
        health.firing
    );
    // The gRPC answer carries the same count-window figures as the JSON.
    let v1 = health
        .models
        .iter()
        .find(|m| m.model_version == "1")
        .with_context(|| format!("fraud v1 in {:#?}", health.models))?;
    let near = |got: Option<f64>, want: Option<f64>| match (got, want) {
        (Some(g), Some(w)) => (g - w).abs() < 1e-9,
        (g, w) => g == w,
    };
    ensure!(
        v1.labelled == want_v1.n as u64
            && near(v1.accuracy, Some(want_v1.accuracy))
            && near(v1.roc_auc, want_v1.roc_auc)
            && near(v1.log_loss, Some(want_v1.log_loss))
            && near(v1.brier, Some(want_v1.brier)),
        "GetModelHealth fraud v1 {v1:#?} vs {want_v1:?}"
    );
    Ok(())
}
