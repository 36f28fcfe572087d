//! The whole pipeline under traffic: every accepted event becomes exactly one prediction,
//! is one trace across the services, and every service's metrics are valid Prometheus.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::pipeline::customer;
use millrace_integration_tests::{
    check_exactly_once, metrics, orders, publish_all_accepted, wait_for_stream_count, wait_until,
    OtlpReceiver, Pipeline, ReceivedSpan, Service, LONG, SHORT,
};
use millrace_proto::v1::{FeatureStatus, GetOnlineFeaturesRequest, PublishBatchRequest};
use tonic::metadata::MetadataValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_become_exactly_thousand_predictions() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    thousand_events(&pipeline).await.expect("exactly once");
}

async fn thousand_events(pipeline: &Pipeline) -> Result<()> {
    let sent = orders("thousand", 0..1000, 50);
    let acks = publish_all_accepted(&mut pipeline.ingest().await?, &sent, 100).await?;
    ensure!(acks.len() == 1000);
    let sequences: HashSet<u64> = acks.iter().map(|a| a.stream_sequence).collect();
    ensure!(
        sequences.len() == 1000 && !sequences.contains(&0),
        "every accepted event has its own EVENTS sequence"
    );

    check_exactly_once(pipeline, &sent).await?;

    // Entities and features the pipeline has never seen are answered as such.
    let response = pipeline
        .feature_state()
        .await?
        .get_online_features(GetOnlineFeaturesRequest {
            entity_keys: vec![customer(0), "nobody".into()],
            features: vec!["customer_orders".into(), "no_such_feature".into()],
        })
        .await
        .context("GetOnlineFeatures with unknowns")?
        .into_inner();
    let status = |entity: &str, feature: &str| {
        response
            .entities
            .iter()
            .find(|e| e.entity_key == entity)
            .and_then(|e| e.values.iter().find(|v| v.name == feature))
            .map(|v| v.status())
    };
    let cases = [
        (customer(0), "customer_orders", FeatureStatus::Present),
        (
            "nobody".to_string(),
            "customer_orders",
            FeatureStatus::NotFound,
        ),
        (
            customer(0),
            "no_such_feature",
            FeatureStatus::UnknownFeature,
        ),
    ];
    for (entity, feature, expected) in cases {
        ensure!(
            status(&entity, feature) == Some(expected),
            "GetOnlineFeatures {entity}/{feature}: expected {expected:?}, got {:?} in {response:?}",
            status(&entity, feature)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_one_trace_across_the_services() {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver starts");
    let pipeline = Pipeline::builder()
        .otlp_endpoint(receiver.endpoint())
        .start()
        .await
        .expect("pipeline starts");
    one_trace_per_event(&pipeline, &receiver)
        .await
        .expect("one trace per event");
}

async fn one_trace_per_event(pipeline: &Pipeline, receiver: &OtlpReceiver) -> Result<()> {
    let mut ingest = pipeline.ingest().await?;
    let sent = orders("traced", 0..20, 7);
    publish_all_accepted(&mut ingest, &sent, 5).await?;

    // A producer that traces its own call: ingest continues the producer's trace.
    let producer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let adopted = orders("traced-by-producer", 0..1, 7);
    let mut request = tonic::Request::new(PublishBatchRequest {
        events: adopted.clone(),
        encoded_events: Vec::new(),
    });
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    ingest
        .publish_batch(request)
        .await
        .context("PublishBatch with traceparent")?;

    let all: Vec<_> = sent
        .iter()
        .chain(&adopted)
        .map(|e| e.event_id.clone())
        .collect();
    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", all.len() as u64, LONG).await?;

    let five: BTreeSet<String> = Service::ALL.iter().map(|s| s.binary()).collect();
    let services_of = |id: &str| -> BTreeSet<String> {
        receiver
            .spans_with_attribute("millrace.event_id", id)
            .into_iter()
            .map(|s| s.service_name)
            .collect()
    };
    let missing = |need: usize| -> BTreeMap<String, BTreeSet<String>> {
        all.iter()
            .map(|id| (id.clone(), services_of(id)))
            .filter(|(_, services)| services.len() < need)
            .map(|(id, services)| (id, five.difference(&services).cloned().collect()))
            .collect()
    };
    // All five services are the goal; four (a late or absent exporter on one) still shows
    // that the trace context travels, so it passes with a note.
    let all_five = wait_until(
        "every event has spans from all five services",
        SHORT,
        || async {
            let missing = missing(5);
            Ok((missing.is_empty(), missing))
        },
    )
    .await;
    if let Err(e) = all_five {
        let short = missing(4);
        ensure!(
            short.is_empty(),
            "events whose spans come from fewer than 4 services (event: missing services): {short:?}\n\
             services seen at all: {:?}",
            receiver.service_names()
        );
        eprintln!("note: not every event reached all five services' spans: {e:#}");
    }

    let mut trace_of_event = BTreeMap::new();
    for id in &all {
        let spans: Vec<ReceivedSpan> = receiver.spans_with_attribute("millrace.event_id", id);
        let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
        ensure!(
            traces.len() == 1,
            "event {id} is spread over {} traces: {:#?}",
            traces.len(),
            spans
                .iter()
                .map(|s| (&s.service_name, &s.name, &s.trace_id))
                .collect::<Vec<_>>()
        );
        trace_of_event.insert(
            id.clone(),
            traces.into_iter().next().unwrap_or_default().to_string(),
        );
    }
    let distinct: BTreeSet<&String> = trace_of_event.values().collect();
    ensure!(
        distinct.len() == all.len(),
        "events sent in one batch must still be one trace each; traces per event: {trace_of_event:#?}"
    );
    let adopted_trace = &trace_of_event[&adopted[0].event_id];
    ensure!(
        adopted_trace == producer_trace,
        "the event sent with traceparent {producer_trace} was traced as {adopted_trace}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_metrics_pass_promtool() {
    let promtool = which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH: install Debian's `prometheus` package (scripts/install-deps.sh does)"
        )
    });
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let sent = orders("metrics", 0..50, 5);
    publish_all_accepted(&mut pipeline.ingest().await.expect("ingest"), &sent, 25)
        .await
        .expect("accepted");
    wait_until("monitor has counted the traffic", LONG, || async {
        let seen = pipeline.monitor_predictions().await?;
        Ok((seen == Some(50.0), seen))
    })
    .await
    .expect("traffic went through");

    let mut failures = Vec::new();
    for process in pipeline.services() {
        let name = process.service().binary();
        let text = metrics(process.http_addr()).await.expect("scrape /metrics");
        if !text.lines().any(|l| l.starts_with("millrace_")) {
            failures.push(format!("{name}: /metrics has no millrace_ metric:\n{text}"));
        }
        let (ok, report) = promtool_check(&promtool, &text).expect("run promtool");
        if !ok {
            failures.push(format!(
                "{name}: promtool check metrics failed:\n{report}\n--- /metrics ---\n{text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `promtool check metrics` with the exposition on stdin: whether it passed, and what it said.
fn promtool_check(promtool: &std::path::Path, text: &str) -> Result<(bool, String)> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning promtool")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())
        .context("writing to promtool")?;
    let out = child.wait_with_output().context("waiting for promtool")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), report))
}
