//! Monitor watches features for drift against a reference window and raises an alert
//! to ALERTS when one moves, then resolves it once it is back, without flapping.
//!
//! Feature vectors are published straight to FEATURES (as feature-state would write
//! them) from a seeded generator, so the stream, and what monitor makes of it, is the
//! same on every run. The drift settings: the first 1,000 values are the reference, a
//! window of the last 500 is compared with it every 50 values, PSI over 10 quantile
//! bins. The rule fires above PSI 0.2 and resolves at PSI ≤ 0.1 (hysteresis 0.1).
//!
//! The stated bounds, for a shift of two standard deviations:
//! - a stable stream raises no alert (its PSI stays below 0.1 here);
//! - after the shift the alert fires within [`FIRE_WITHIN`] = 250 values (half the window:
//!   by then half the window holds shifted values);
//! - after the shift back it resolves within [`RESOLVE_WITHIN`] = 550 values (the window
//!   refilled with stable values, plus one evaluation period).

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::monitor::{
    model_health_json, promtool_check, publish_raw, Gaussian, RawMessage,
};
use millrace_integration_tests::service::bin_dir;
use millrace_integration_tests::{
    decode_all, metric_value, metrics, now_us, read_stream, test_dir, wait_until, Pipeline,
    Service, LONG,
};
use millrace_proto::v1::model_registry_client::ModelRegistryClient;
use millrace_proto::v1::{
    Alert, AlertState, FeatureVector, GetModelHealthRequest, Prediction, RegisterModelRequest,
};

const REFERENCE: usize = 1000;
const WINDOW: usize = 500;
const EVALUATE_EVERY: usize = 50;
const FIRE_WITHIN: usize = WINDOW / 2;
const RESOLVE_WITHIN: usize = WINDOW + EVALUATE_EVERY;

fn pipeline_toml() -> String {
    format!(
        r#"[pipeline]
name = "drift"
partitions = 1

[model]
name = "fraud"
version = "1"
inputs = [{{ name = "amount", weight = 0.01 }}]

[monitor.drift]
reference_events = {REFERENCE}
window_events = {WINDOW}
evaluate_every = {EVALUATE_EVERY}
bins = 10

[monitor.drift.features.hour]
kind = "categorical"

[[monitor.alerts]]
name = "feature_drift"
metric = "psi"
op = ">"
hysteresis = 0.1
"#
    )
}

/// Vector `i` of a phase: `amount` ~ N(amount_mean, 20), `customer_orders` ~ N(10, 3),
/// `hour` uniform over 0..24 (categorical).
fn vector(i: usize, g: &mut Gaussian, amount_mean: f64) -> RawMessage {
    let hour = (g.uniform() * 24.0).floor();
    let v = FeatureVector {
        event_id: format!("drift-{i:05}"),
        event_type: "order_placed".into(),
        entity_key: "customer-00".into(),
        event_time_us: now_us(),
        ingest_time_us: now_us(),
        feature_time_us: now_us(),
        names: vec!["amount".into(), "customer_orders".into(), "hour".into()],
        values: vec![g.sample(amount_mean, 20.0), g.sample(10.0, 3.0), hour],
        label_key: format!("drift-{i:05}"),
        ..Default::default()
    };
    RawMessage::new("features.0", format!("feature-state:drift-{i:05}"), &v)
}

/// Index of a `drift-NNNNN` event id.
fn index_of(event_id: &str) -> Option<usize> {
    event_id.strip_prefix("drift-")?.parse().ok()
}

struct Drift<'a> {
    pipeline: &'a Pipeline,
    generator: Gaussian,
    sent: usize,
}

impl Drift<'_> {
    /// Publishes `n` vectors with `amount` centred on `mean` and waits until monitor has
    /// applied them and acknowledged FEATURES (so every alert they caused is stored).
    async fn phase(&mut self, n: usize, mean: f64) -> Result<()> {
        let messages: Vec<RawMessage> = (self.sent..self.sent + n)
            .map(|i| vector(i, &mut self.generator, mean))
            .collect();
        publish_raw(self.pipeline.jetstream(), messages).await?;
        self.sent += n;
        let want = self.sent as f64;
        let addr = self.pipeline.service(Service::Monitor).http_addr();
        wait_until("monitor applied every feature vector", LONG, || async {
            let text = metrics(addr).await?;
            let seen = metric_value(&text, "millrace_monitor_feature_vectors_total", &[]);
            Ok((seen == Some(want), seen))
        })
        .await?;
        self.pipeline.wait_idle(&["FEATURES"], LONG).await?;
        Ok(())
    }

    async fn alerts(&self) -> Result<Vec<(String, Alert)>> {
        let stored = read_stream(self.pipeline.jetstream(), "ALERTS").await?;
        let alerts: Vec<Alert> = decode_all(&stored)?;
        Ok(stored
            .iter()
            .map(|m| {
                m.headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .zip(alerts)
            .collect())
    }

    async fn firing_over_grpc(&self) -> Result<Vec<Alert>> {
        let health = self
            .pipeline
            .monitor()
            .await?
            .get_model_health(GetModelHealthRequest::default())
            .await
            .context("GetModelHealth")?
            .into_inner();
        Ok(health.firing)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_features_raise_nothing_a_shift_fires_and_the_return_resolves() {
    let pipeline = Pipeline::builder()
        .pipeline_toml(pipeline_toml())
        .only(&[Service::Monitor])
        .start()
        .await
        .expect("monitor starts");
    drift_scenario(&pipeline).await.expect("drift scenario");
}

async fn drift_scenario(pipeline: &Pipeline) -> Result<()> {
    let mut drift = Drift {
        pipeline,
        generator: Gaussian::new(20_130_101),
        sent: 0,
    };
    let monitor_http = pipeline.service(Service::Monitor).http_addr();

    // Stable: the reference and then three windows' worth of the same distribution.
    drift.phase(REFERENCE + 3 * WINDOW, 100.0).await?;
    let alerts = drift.alerts().await?;
    ensure!(
        alerts.is_empty(),
        "a stable stream raised alerts: {alerts:#?}"
    );
    let health = model_health_json(monitor_http, None).await?;
    let features: BTreeMap<String, serde_json::Value> = health["features"]
        .as_array()
        .context("features in the health JSON")?
        .iter()
        .map(|f| {
            (
                f["feature"].as_str().unwrap_or_default().to_string(),
                f.clone(),
            )
        })
        .collect();
    for name in ["amount", "customer_orders", "hour"] {
        let f = features
            .get(name)
            .with_context(|| format!("no drift report for {name}: {health:#}"))?;
        ensure!(
            f["reference"] == REFERENCE && f["window"] == WINDOW,
            "{name}: reference and window sizes: {f}"
        );
        let psi = f["psi"]
            .as_f64()
            .with_context(|| format!("{name}: no psi: {f}"))?;
        ensure!(psi < 0.1, "{name}: a stable stream has PSI {psi}");
        ensure!(f["severity"] == "none", "{name}: {f}");
    }
    ensure!(features["hour"]["kind"] == "categorical" && features["hour"]["ks"].is_null());
    ensure!(features["amount"]["ks"].as_f64().is_some_and(|ks| ks < 0.1));

    // Shifted by two standard deviations.
    let shift_at = drift.sent;
    drift.phase(600, 140.0).await?;
    let alerts = drift.alerts().await?;
    ensure!(
        alerts.len() == 1,
        "one alert after the shift, got {alerts:#?}"
    );
    let (msg_id, fired) = &alerts[0];
    ensure!(
        fired.state() == AlertState::Firing
            && fired.kind == "drift"
            && fired.feature == "amount"
            && fired.metric == "psi"
            && fired.alert_id == "feature_drift:amount#1"
            && msg_id == "monitor:alert:feature_drift:amount#1:firing",
        "the alert says what fired: {msg_id} {fired:#?}"
    );
    ensure!(
        fired.value > 0.2 && fired.threshold == 0.2,
        "value and threshold: {fired:?}"
    );
    let fired_at = index_of(&fired.event_id).context("the alert names its event")?;
    let after = fired_at + 1 - shift_at;
    eprintln!("drift alert fired {after} values after the shift (bound {FIRE_WITHIN})");
    ensure!(
        after <= FIRE_WITHIN,
        "fired {after} values after the shift, bound {FIRE_WITHIN}"
    );
    let firing = drift.firing_over_grpc().await?;
    ensure!(
        firing.len() == 1 && firing[0].alert_id == fired.alert_id && firing[0].value > 0.2,
        "GetModelHealth lists the firing alert: {firing:#?}"
    );
    let json = model_health_json(monitor_http, None).await?;
    let amount = json["features"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["feature"] == "amount"))
        .context("amount in the JSON")?;
    ensure!(amount["severity"] == "significant", "{amount}");
    ensure!(
        json["firing"][0]["alert_id"] == "feature_drift:amount#1"
            && json["firing"][0]["state"] == "firing",
        "the JSON lists the firing alert: {}",
        json["firing"]
    );

    // Back to the reference distribution.
    let back_at = drift.sent;
    drift.phase(1000, 100.0).await?;
    let alerts = drift.alerts().await?;
    ensure!(alerts.len() == 2, "firing then resolved, got {alerts:#?}");
    let (msg_id, resolved) = &alerts[1];
    ensure!(
        resolved.state() == AlertState::Resolved
            && resolved.alert_id == "feature_drift:amount#1"
            && msg_id == "monitor:alert:feature_drift:amount#1:resolved"
            && resolved.value <= 0.1,
        "the alert resolves below the hysteresis level: {msg_id} {resolved:#?}"
    );
    let resolved_at = index_of(&resolved.event_id).context("the alert names its event")?;
    let after = resolved_at + 1 - back_at;
    eprintln!("drift alert resolved {after} values after the shift back (bound {RESOLVE_WITHIN})");
    ensure!(
        after <= RESOLVE_WITHIN,
        "resolved {after} values after the shift back, bound {RESOLVE_WITHIN}"
    );
    ensure!(
        drift.firing_over_grpc().await?.is_empty(),
        "nothing firing once resolved"
    );

    // The metrics say the same and are valid Prometheus.
    let text = metrics(monitor_http).await?;
    let firing_total = metric_value(
        &text,
        "millrace_monitor_alert_transitions_total",
        &[("rule", "feature_drift"), ("state", "firing")],
    );
    ensure!(firing_total == Some(1.0), "transitions: {firing_total:?}");
    let psi = metric_value(
        &text,
        "millrace_monitor_feature_psi",
        &[("feature", "amount")],
    );
    ensure!(psi.is_some_and(|p| p <= 0.1), "psi gauge {psi:?}");
    let (ok, report) = promtool_check(&text).await?;
    ensure!(
        ok,
        "promtool check metrics failed:\n{report}\n--- /metrics ---\n{text}"
    );
    Ok(())
}

#[test]
fn monitor_refuses_a_bad_alert_rule_with_the_reason() {
    // The rules are checked before monitor connects anywhere: no broker needed.
    let dir = test_dir("monitor-bad-rule").expect("test dir");
    let path = dir.path().join("pipeline.toml");
    let bad = format!(
        "{}\n[[monitor.alerts]]\nname = \"low_accuracy\"\nmetric = \"accuracy\"\nop = \"<\"\n",
        pipeline_toml()
    );
    std::fs::write(&path, bad).expect("write pipeline");
    let out = std::process::Command::new(bin_dir().join(Service::Monitor.binary()))
        .env("MILLRACE_PIPELINE", &path)
        .env("MILLRACE_DATA_DIR", dir.path().join("data"))
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("RUST_BACKTRACE", "0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run millrace-monitor (build it first)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "monitor started with a rule without a threshold"
    );
    assert!(
        stderr.contains("low_accuracy") && stderr.contains("needs a threshold"),
        "monitor names the rule and the reason: {stderr}"
    );
}

/// `reference = "training"`: a model version registered with the distribution it was
/// trained on is watched against it from its first window, with no first values to wait
/// for. Training: `amount` ~ N(100, 20), scores uniform over [0.1, 0.4]. Served: `amount`
/// ~ N(140, 20), scores over [0.6, 0.9]. The first-events reference (10,000 values) never
/// fills in this test, so any PSI, and any alert, comes from the training reference.
/// The pipeline's own version 1 has no training distribution: it stays on first events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_drifts_against_a_training_reference_from_the_registry() {
    let toml = r#"[pipeline]
name = "drift"
partitions = 1

[model]
name = "fraud"
version = "1"
inputs = [{ name = "amount", weight = 0.01 }]

[monitor.drift]
reference_events = 10000
window_events = 200
evaluate_every = 50
bins = 10

[monitor.drift.models.fraud]
reference = "training"

[[monitor.alerts]]
name = "feature_drift"
metric = "psi"
op = ">"

[[monitor.alerts]]
name = "score_drift"
metric = "score_psi"
op = ">"
"#;
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(toml)
        .only(&[Service::Inference, Service::Monitor])
        .start()
        .await
        .expect("inference and monitor start");
    training_scenario(&mut pipeline)
        .await
        .expect("training reference scenario");
}

/// The JSON `ValueDistribution` of `values`, every distinct value (as `millrace train` records few).
fn distribution_json(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let (mut distinct, mut at_or_below) = (Vec::<f64>::new(), Vec::<u64>::new());
    for (i, v) in values.iter().enumerate() {
        if distinct.last() == Some(v) {
            if let Some(c) = at_or_below.last_mut() {
                *c = i as u64 + 1;
            }
        } else {
            distinct.push(*v);
            at_or_below.push(i as u64 + 1);
        }
    }
    serde_json::json!({ "count": values.len(), "values": distinct, "at_or_below": at_or_below })
}

fn prediction(i: usize, version: &str, score: f64) -> RawMessage {
    let p = Prediction {
        event_id: format!("train-{i:05}"),
        model: "fraud".into(),
        model_version: version.into(),
        score,
        predicted_positive: score >= 0.5,
        event_time_us: now_us(),
        ingest_time_us: now_us(),
        predict_time_us: now_us(),
        ..Default::default()
    };
    RawMessage::new(
        "predictions.fraud",
        format!("inference:fraud:{version}:train-{i:05}"),
        &p,
    )
}

async fn training_scenario(pipeline: &mut Pipeline) -> Result<()> {
    let mut g = Gaussian::new(7);
    // Register t1 with its training distribution, as `millrace train --out` writes it.
    let amounts: Vec<f64> = (0..2000).map(|_| g.sample(100.0, 20.0).round()).collect();
    let scores: Vec<f64> = (0..2000)
        .map(|_| 0.1 + (g.uniform() * 300.0).floor() / 1000.0)
        .collect();
    let artifact = serde_json::json!({
        "meta": {
            "name": "fraud", "version": "t1", "inputs": ["amount"], "threshold": 0.5,
            "training": {
                "inputs": { "amount": distribution_json(amounts) },
                "scores": distribution_json(scores),
            },
        },
        "spec": { "kind": "logistic", "intercept": 0.0, "weights": [0.01] },
    });
    let inference_url = pipeline.service(Service::Inference).grpc_url();
    let mut registry = ModelRegistryClient::connect(inference_url.clone())
        .await
        .context("registry client")?;
    let registered = registry
        .register_model(RegisterModelRequest {
            artifact: serde_json::to_vec(&artifact)?,
            ..Default::default()
        })
        .await
        .context("RegisterModel t1")?
        .into_inner();
    ensure!(
        registered.training_inputs.contains_key("amount")
            && registered
                .training_scores
                .as_ref()
                .is_some_and(|s| s.count == 2000),
        "the registry keeps the training distribution: {registered:?}"
    );

    // Monitor finds inference by MILLRACE_INFERENCE_URL.
    let monitor = pipeline.service_mut(Service::Monitor);
    monitor.terminate().await?;
    monitor.set_env("MILLRACE_INFERENCE_URL", &inference_url);
    monitor.restart().await?;
    let monitor_http = pipeline.service(Service::Monitor).http_addr();

    // The first predictions of t1 (and of 1) make monitor ask the registry.
    publish_raw(
        pipeline.jetstream(),
        vec![prediction(0, "t1", 0.2), prediction(1, "1", 0.2)],
    )
    .await?;
    let health = wait_until(
        "t1's score drifts against its training scores",
        LONG,
        || async {
            let json = model_health_json(monitor_http, None).await?;
            let from = |version: &str| {
                json["models"].as_array().and_then(|ms| {
                    ms.iter()
                        .find(|m| m["model_version"] == version)
                        .map(|m| m["score_drift"]["reference_from"].clone())
                })
            };
            let amount = json["features"].as_array().and_then(|fs| {
                fs.iter()
                    .find(|f| f["feature"] == "amount")
                    .map(|f| f["reference_from"].clone())
            });
            let ready = from("t1") == Some("training".into())
                && amount == Some("training".into())
                && from("1") == Some("first_events".into());
            Ok((ready, json))
        },
    )
    .await?;
    let amount = health["features"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["feature"] == "amount"))
        .context("amount in the health JSON")?;
    ensure!(
        amount["reference"] == 2000 && amount["reference_version"] == "fraud/t1",
        "amount's reference is t1's training data: {amount}"
    );
    let text = metrics(monitor_http).await?;
    let reference = |version: &str, r: &str| {
        metric_value(
            &text,
            "millrace_monitor_score_drift_reference",
            &[
                ("model", "fraud"),
                ("model_version", version),
                ("reference", r),
            ],
        )
    };
    ensure!(
        reference("t1", "training") == Some(1.0) && reference("1", "first_events") == Some(1.0),
        "the metric says which reference each version uses"
    );

    // Served data moved away from the training data: one window is enough.
    let mut messages: Vec<RawMessage> = (0..300)
        .map(|i| prediction(10 + i, "t1", 0.6 + g.uniform() * 0.3))
        .collect();
    messages.extend((0..300).map(|i| vector(i, &mut g, 140.0)));
    publish_raw(pipeline.jetstream(), messages).await?;
    let fired = wait_until("feature and score drift alerts", LONG, || async {
        let stored = read_stream(pipeline.jetstream(), "ALERTS").await?;
        let alerts: Vec<Alert> = decode_all(&stored)?;
        let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
        let both = ids.iter().any(|id| id == "feature_drift:amount#1")
            && ids.iter().any(|id| id == "score_drift:fraud:t1#1");
        Ok((both, alerts))
    })
    .await?;
    for a in &fired {
        eprintln!(
            "{}: {} = {:.3} ({})",
            a.alert_id, a.metric, a.value, a.message
        );
        ensure!(
            a.state() == AlertState::Firing
                && a.value > 0.2
                && a.message.contains("against the training data"),
            "fired against the training reference: {a:?}"
        );
    }
    ensure!(
        !fired.iter().any(|a| a.model_version == "1"),
        "version 1 has no reference yet, so no score drift: {fired:#?}"
    );
    Ok(())
}
