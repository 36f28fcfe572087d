//! `millrace dlq` against real services: records the stages refused are listed, shown
//! and counted, and once their cause is fixed re-driven through ingest, each stored once.
//! A repeated re-drive is a DUPLICATE, `--purge` takes the re-driven records out of the
//! DLQ, and records that cannot go back (malformed bytes, late events) say so and stay.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use millrace_integration_tests::service::bin_dir;
use millrace_integration_tests::{
    decode_all, order, order_placed_v2_with_coupon, orders_pipeline_toml, publish_all_accepted,
    read_stream, wait_for_stream_count, wait_until, Pipeline, Service, LONG, SHORT,
};
use millrace_proto::v1::schemas_client::SchemasClient;
use millrace_proto::v1::{
    AckStatus, EnrichedEvent, Event, PublishBatchRequest, RegisterSchemaRequest, Value,
};
use prost::Message;

/// Bytes that are no protobuf `Event`: field 1 announces ~14 KB of string that never come.
const MALFORMED: &[u8] = b"\x0a\xffnot protobuf";

/// The duplicate window of the enrich test: a record enrich refused can be re-driven
/// once ingest has forgotten the id it stored the first time.
const SHORT_WINDOW_SECS: u64 = 30;

/// Runs `millrace dlq <args>` against `pipeline` and returns its exit status and output.
async fn dlq_command(pipeline: &Pipeline, args: &[&str]) -> Result<(bool, String, String)> {
    let program = bin_dir().join("millrace");
    ensure!(
        program.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        program.display()
    );
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("dlq")
        .args(args)
        .env("NATS_URL", pipeline.nats().url())
        .env("MILLRACE_PIPELINE", pipeline.pipeline_path())
        .env(
            "MILLRACE_INGEST_URL",
            pipeline.service(Service::Ingest).grpc_url(),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "NATS_TOKEN",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_CREDS",
        "NATS_TLS_CA",
        "NATS_TLS_CERT",
        "NATS_TLS_KEY",
        "NATS_TLS_REQUIRED",
    ] {
        command.env_remove(var);
    }
    let output = tokio::time::timeout(SHORT, command.output())
        .await
        .with_context(|| {
            format!(
                "millrace dlq {} did not finish in {SHORT:?}",
                args.join(" ")
            )
        })?
        .with_context(|| format!("running {}", program.display()))?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `millrace dlq <args>`, which must succeed; its standard output.
async fn dlq(pipeline: &Pipeline, args: &[&str]) -> Result<String> {
    let (ok, stdout, stderr) = dlq_command(pipeline, args).await?;
    ensure!(
        ok,
        "millrace dlq {} failed:\n{stderr}\n{stdout}",
        args.join(" ")
    );
    Ok(stdout)
}

/// A line of `dlq list`.
#[derive(Debug, Clone)]
struct Listed {
    sequence: u64,
    stage: String,
    reason: String,
    event_id: String,
    message: String,
}

fn listed(stdout: &str) -> Vec<Listed> {
    stdout
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let [sequence, _time, stage, reason, event_id, message] = cols[..] else {
                return None;
            };
            Some(Listed {
                sequence: sequence.parse().ok()?,
                stage: stage.into(),
                reason: reason.into(),
                event_id: event_id.into(),
                message: message.into(),
            })
        })
        .collect()
}

/// The lines of `dlq redrive`: event id → (outcome, code), and the DLQ sequences.
#[derive(Debug, Default)]
struct Redriven {
    outcomes: BTreeMap<String, (String, String)>,
    sequences: BTreeMap<String, u64>,
    footer: String,
}

fn redriven(stdout: &str) -> Redriven {
    let mut out = Redriven::default();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        match cols[..] {
            [sequence, event_id, outcome, code, _detail] if sequence.parse::<u64>().is_ok() => {
                out.outcomes
                    .insert(event_id.into(), (outcome.into(), code.into()));
                out.sequences
                    .insert(event_id.into(), sequence.parse().unwrap_or_default());
            }
            _ => out.footer = line.to_string(),
        }
    }
    out
}

fn expect(cases: &[(&str, &str, &str)]) -> BTreeMap<String, (String, String)> {
    cases
        .iter()
        .map(|(id, outcome, code)| (id.to_string(), (outcome.to_string(), code.to_string())))
        .collect()
}

/// An order carrying the `coupon` field the pipeline's v1 schema does not know yet,
/// naming no schema version (so the latest applies).
fn with_coupon(id: &str, customer: &str) -> Event {
    let mut e = order(id, customer, 25.0);
    e.schema_version = 0;
    e.fields.insert("coupon".into(), Value::string("WINTER"));
    e
}

/// How many times each event id is in `stream`.
async fn ids_in<M: Message + Default>(
    pipeline: &Pipeline,
    stream: &str,
    id: impl Fn(&M) -> String,
) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for record in decode_all::<M>(&read_stream(pipeline.jetstream(), stream).await?)? {
        *counts.entry(id(&record)).or_insert(0) += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rejects_are_redriven_once_a_schema_version_accepts_them() {
    let pipeline = Pipeline::builder()
        .only(&[Service::Ingest])
        .start()
        .await
        .expect("ingest starts");
    ingest_rejects(&pipeline)
        .await
        .expect("ingest rejects re-driven");
}

async fn ingest_rejects(pipeline: &Pipeline) -> Result<()> {
    // Producers start sending coupons before the schema knows them; one order also lacks
    // its amount, and one record is not an Event at all.
    let mut no_amount = order("no-amount", "carol", 1.0);
    no_amount.fields.remove("amount");
    let mut ingest = pipeline.ingest().await?;
    let answer = ingest
        .publish_batch(PublishBatchRequest {
            events: vec![
                order("good-1", "dave", 5.0),
                with_coupon("coupon-1", "alice"),
                with_coupon("coupon-2", "bob"),
                no_amount,
            ],
            encoded_events: vec![MALFORMED.to_vec()],
        })
        .await
        .context("PublishBatch")?
        .into_inner();
    let codes: Vec<(AckStatus, &str)> = answer
        .acks
        .iter()
        .map(|a| (a.status(), a.code.as_str()))
        .collect();
    ensure!(
        codes
            == [
                (AckStatus::Accepted, ""),
                (AckStatus::Rejected, "unknown_field"),
                (AckStatus::Rejected, "unknown_field"),
                (AckStatus::Rejected, "missing_field"),
                (AckStatus::Rejected, "malformed"),
            ],
        "the batch was answered {:?}",
        answer.acks
    );
    // The same coupon as JSON on the NATS path.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    let json =
        br#"{"event_id":"coupon-json","fields":{"customer":"erin","amount":20,"coupon":"SPRING"}}"#;
    let client = pipeline.nats().client().await?;
    let answer = client
        .request_with_headers("ingest.order_placed", headers, json.to_vec().into())
        .await
        .context("JSON request on ingest.order_placed")?;
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload)?;
    ensure!(
        answer["code"] == "unknown_field",
        "the JSON coupon was answered {answer}"
    );
    wait_for_stream_count(pipeline.jetstream(), "DLQ", 5, SHORT).await?;

    // list, show, stats.
    let all = listed(&dlq(pipeline, &["list"]).await?);
    let mut reasons: Vec<(String, String, String)> = all
        .iter()
        .map(|l| (l.stage.clone(), l.reason.clone(), l.event_id.clone()))
        .filter(|(_, reason, _)| reason != "malformed")
        .collect();
    reasons.sort();
    ensure!(
        reasons
            == [
                ("ingest", "missing_field", "no-amount"),
                ("ingest", "unknown_field", "coupon-1"),
                ("ingest", "unknown_field", "coupon-2"),
                ("ingest", "unknown_field", "coupon-json"),
            ]
            .map(|(s, r, i)| (s.to_string(), r.to_string(), i.to_string())),
        "dlq list shows {all:?}"
    );
    let malformed = all
        .iter()
        .find(|l| l.reason == "malformed")
        .with_context(|| format!("dlq list shows no malformed record: {all:?}"))?;
    let seq = |id: &str| -> Result<u64> {
        all.iter()
            .find(|l| l.event_id == id)
            .map(|l| l.sequence)
            .with_context(|| format!("dlq list shows no {id}: {all:?}"))
    };
    ensure!(
        all.iter()
            .find(|l| l.event_id == "coupon-1")
            .is_some_and(|l| l.message.contains("coupon")),
        "the listed message names the field: {all:?}"
    );
    let only_coupons = listed(&dlq(pipeline, &["list", "--reason", "unknown_field"]).await?);
    ensure!(
        only_coupons.len() == 3,
        "--reason unknown_field lists {only_coupons:?}"
    );

    let shown = dlq(pipeline, &["show", &seq("coupon-1")?.to_string()]).await?;
    for words in [
        "unknown_field",
        "coupon-1",
        "Event, ",
        "\"coupon\": \"WINTER\"",
        "via ingest PublishBatch",
    ] {
        ensure!(shown.contains(words), "dlq show lacks {words:?}:\n{shown}");
    }
    let shown = dlq(pipeline, &["show", &seq("coupon-json")?.to_string()]).await?;
    for words in ["JSON, ", "\"SPRING\"", "via ingest.order_placed as JSON"] {
        ensure!(shown.contains(words), "dlq show lacks {words:?}:\n{shown}");
    }
    let shown = dlq(pipeline, &["show", &malformed.sequence.to_string()]).await?;
    for words in ["not re-drivable (malformed)", "0a ff 6e 6f 74"] {
        ensure!(shown.contains(words), "dlq show lacks {words:?}:\n{shown}");
    }

    let stats = dlq(pipeline, &["stats"]).await?;
    let rows: Vec<(String, String, String)> = stats
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 5).then(|| (cols[0].into(), cols[1].into(), cols[2].into()))
        })
        .collect();
    ensure!(
        rows == [
            ("ingest", "malformed", "1"),
            ("ingest", "missing_field", "1"),
            ("ingest", "unknown_field", "3"),
        ]
        .map(|(s, r, n)| (s.to_string(), r.to_string(), n.to_string())),
        "dlq stats:\n{stats}"
    );
    ensure!(stats.contains("5 records in DLQ"), "dlq stats:\n{stats}");

    // Re-driving needs a selection.
    let (ok, _, stderr) = dlq_command(pipeline, &["redrive"]).await?;
    ensure!(
        !ok && stderr.contains("--stage, --reason, --sequence or --all"),
        "a bare redrive was not refused: {stderr}"
    );

    // A dry run says how each would go back, and sends nothing.
    let dry = redriven(&dlq(pipeline, &["redrive", "--all", "--dry-run"]).await?);
    let malformed_id = malformed.event_id.as_str();
    ensure!(
        dry.outcomes
            == expect(&[
                ("coupon-1", "WOULD_SEND", "-"),
                ("coupon-2", "WOULD_SEND", "-"),
                ("coupon-json", "WOULD_SEND", "-"),
                ("no-amount", "WOULD_SEND", "-"),
                (malformed_id, "NOT_REDRIVABLE", "malformed"),
            ]),
        "dry run: {dry:?}"
    );

    // Before the fix: refused again for the same reasons, and the DLQ does not grow.
    let before_fix = redriven(&dlq(pipeline, &["redrive", "--stage", "ingest"]).await?);
    let still_refused = [
        ("coupon-1", "REJECTED", "unknown_field"),
        ("coupon-2", "REJECTED", "unknown_field"),
        ("coupon-json", "REJECTED", "unknown_field"),
        ("no-amount", "REJECTED", "missing_field"),
        (malformed_id, "NOT_REDRIVABLE", "malformed"),
    ];
    ensure!(
        before_fix.outcomes == expect(&still_refused),
        "re-drive before the fix: {before_fix:?}"
    );
    ensure!(
        pipeline.stream_count("DLQ").await? == 5,
        "a refused re-drive added records to the DLQ"
    );

    // The fix: a schema version with the coupon.
    SchemasClient::connect(pipeline.service(Service::Ingest).grpc_url())
        .await?
        .register_schema(RegisterSchemaRequest {
            schema: Some(order_placed_v2_with_coupon()),
        })
        .await
        .context("registering order_placed v2")?;

    let fixed = redriven(&dlq(pipeline, &["redrive", "--stage", "ingest"]).await?);
    let accepted = [
        ("coupon-1", "ACCEPTED", "-"),
        ("coupon-2", "ACCEPTED", "-"),
        ("coupon-json", "ACCEPTED", "-"),
        ("no-amount", "REJECTED", "missing_field"),
        (malformed_id, "NOT_REDRIVABLE", "malformed"),
    ];
    ensure!(
        fixed.outcomes == expect(&accepted),
        "re-drive after the fix: {fixed:?}"
    );
    ensure!(
        fixed.footer.contains("3 accepted") && fixed.footer.contains("stay in DLQ"),
        "footer: {}",
        fixed.footer
    );
    let events = read_stream(pipeline.jetstream(), "EVENTS").await?;
    let stored: Vec<Event> = decode_all(&events)?;
    let mut ids: Vec<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    ensure!(
        ids == ["coupon-1", "coupon-2", "coupon-json", "good-1"],
        "EVENTS holds {ids:?}"
    );
    for e in stored.iter().filter(|e| e.event_id.starts_with("coupon")) {
        ensure!(
            e.schema_version == 2 && e.fields.contains_key("coupon"),
            "{} stored as {e:?}",
            e.event_id
        );
    }

    // Again: the event ids make it a DUPLICATE, nothing is stored twice.
    let again = redriven(&dlq(pipeline, &["redrive", "--stage", "ingest"]).await?);
    let duplicate = [
        ("coupon-1", "DUPLICATE", "-"),
        ("coupon-2", "DUPLICATE", "-"),
        ("coupon-json", "DUPLICATE", "-"),
        ("no-amount", "REJECTED", "missing_field"),
        (malformed_id, "NOT_REDRIVABLE", "malformed"),
    ];
    ensure!(
        again.outcomes == expect(&duplicate),
        "second re-drive: {again:?}"
    );
    ensure!(
        pipeline.stream_count("EVENTS").await? == 4,
        "a second re-drive stored events again"
    );

    // --purge takes out what is in EVENTS now, and nothing else.
    let purged = redriven(&dlq(pipeline, &["redrive", "--stage", "ingest", "--purge"]).await?);
    ensure!(
        purged.outcomes == expect(&duplicate) && purged.footer.contains("purged 3 from DLQ"),
        "re-drive with --purge: {purged:?}"
    );
    let left = listed(&dlq(pipeline, &["list"]).await?);
    let mut left_ids: Vec<&str> = left.iter().map(|l| l.event_id.as_str()).collect();
    left_ids.sort_unstable();
    let mut want = vec!["no-amount", malformed_id];
    want.sort_unstable();
    ensure!(left_ids == want, "after --purge the DLQ lists {left:?}");
    ensure!(
        pipeline.stream_count("EVENTS").await? == 4,
        "purging changed EVENTS"
    );
    Ok(())
}

/// The test pipeline with a short duplicate window and an enrich rule that drops
/// orders above `limit`.
fn filtered_pipeline(limit: u32) -> String {
    format!(
        "{}\n[streams]\nduplicate_window_secs = {SHORT_WINDOW_SECS}\n\n\
         [[enrich.filters]]\nname = \"implausible_amount\"\nevent = \"order_placed\"\n\
         drop_when = \"amount > {limit}\"\n",
        orders_pipeline_toml()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_refusals_are_redriven_after_the_rule_is_fixed_and_late_events_are_not() {
    let mut pipeline = Pipeline::builder()
        .pipeline_toml(filtered_pipeline(1000))
        .only(&[Service::Ingest, Service::Enrich, Service::FeatureState])
        .start()
        .await
        .expect("ingest, enrich and feature-state start");
    later_stage_refusals(&mut pipeline)
        .await
        .expect("enrich and feature-state refusals");
}

async fn later_stage_refusals(pipeline: &mut Pipeline) -> Result<()> {
    // A large order the rule wrongly calls implausible, and (after an order on time) one
    // an hour behind feature-state's watermark.
    let mut ingest = pipeline.ingest().await?;
    publish_all_accepted(
        &mut ingest,
        &[
            order("ok-1", "alice", 10.0),
            order("big-1", "alice", 2500.0),
        ],
        10,
    )
    .await?;
    let mut late = order("late-1", "alice", 20.0);
    late.event_time_us -= 3_600_000_000;
    publish_all_accepted(&mut ingest, &[late], 10).await?;
    wait_for_stream_count(pipeline.jetstream(), "DLQ", 2, LONG).await?;

    let all = listed(&dlq(pipeline, &["list"]).await?);
    let rows: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|l| (l.stage.as_str(), l.reason.as_str(), l.event_id.as_str()))
        .collect();
    ensure!(
        rows.contains(&("enrich", "filter:implausible_amount", "big-1"))
            && rows.contains(&("feature-state", "late", "late-1"))
            && rows.len() == 2,
        "dlq list: {all:?}"
    );
    let seq = |id: &str| -> Result<u64> {
        all.iter()
            .find(|l| l.event_id == id)
            .map(|l| l.sequence)
            .with_context(|| format!("no {id} listed"))
    };
    let (big, late) = (seq("big-1")?, seq("late-1")?);

    let shown = dlq(pipeline, &["show", &late.to_string()]).await?;
    for words in ["EnrichedEvent, ", "late-1", "not re-drivable (late)"] {
        ensure!(shown.contains(words), "dlq show lacks {words:?}:\n{shown}");
    }

    // Ingest stored big-1 before enrich refused it: until the duplicate window has
    // passed, a re-drive would only be answered DUPLICATE, so it is not sent.
    let early = redriven(&dlq(pipeline, &["redrive", "--stage", "enrich"]).await?);
    ensure!(
        early.outcomes == expect(&[("big-1", "NOT_YET", "duplicate_window")]),
        "re-drive within the duplicate window: {early:?}"
    );
    let never = redriven(
        &dlq(
            pipeline,
            &["redrive", "--stage", "feature-state", "--purge"],
        )
        .await?,
    );
    ensure!(
        never.outcomes == expect(&[("late-1", "NOT_REDRIVABLE", "late")])
            && never.footer.contains("purged 0"),
        "re-drive of a late event: {never:?}"
    );

    // The fix: the rule allows large orders; enrich restarts with it.
    std::fs::write(pipeline.pipeline_path(), filtered_pipeline(100_000))
        .context("rewriting the pipeline file")?;
    let enrich = pipeline.service_mut(Service::Enrich);
    enrich.terminate().await?;
    enrich.restart().await?;
    let pipeline: &Pipeline = pipeline;

    let sequence = big.to_string();
    let redrive_big = ["redrive", "--sequence", sequence.as_str()];
    let first = wait_until(
        "the refused order is re-driven once ingest forgot its id",
        LONG + Duration::from_secs(SHORT_WINDOW_SECS),
        || async {
            let out = redriven(&dlq(pipeline, &redrive_big).await?);
            let outcome = out.outcomes.get("big-1").cloned();
            match outcome.as_ref().map(|(o, c)| (o.as_str(), c.as_str())) {
                Some(("ACCEPTED", _)) => Ok((true, out)),
                Some(("NOT_YET", "duplicate_window")) => Ok((false, out)),
                _ => bail!("unexpected re-drive answer: {out:?}"),
            }
        },
    )
    .await?;
    ensure!(
        first.sequences.get("big-1") == Some(&big),
        "re-drive answered for {first:?}"
    );
    let again = redriven(&dlq(pipeline, &redrive_big).await?);
    ensure!(
        again.outcomes == expect(&[("big-1", "DUPLICATE", "-")]),
        "second re-drive: {again:?}"
    );
    let purged = redriven(&dlq(pipeline, &["redrive", "--stage", "enrich", "--purge"]).await?);
    ensure!(
        purged.outcomes == expect(&[("big-1", "DUPLICATE", "-")])
            && purged.footer.contains("purged 1 from DLQ"),
        "re-drive with --purge: {purged:?}"
    );

    // Enrich passes it now, exactly once; EVENTS holds the copy enrich refused and the
    // re-driven one.
    wait_until("enrich passed big-1", LONG, || async {
        let ids = ids_in::<EnrichedEvent>(pipeline, "ENRICHED", |e| e.event_id.clone()).await?;
        Ok((ids.contains_key("big-1"), ids))
    })
    .await?;
    pipeline.wait_idle(&["EVENTS", "ENRICHED"], LONG).await?;
    let enriched = ids_in::<EnrichedEvent>(pipeline, "ENRICHED", |e| e.event_id.clone()).await?;
    ensure!(
        enriched
            == BTreeMap::from(
                [("big-1", 1), ("late-1", 1), ("ok-1", 1)].map(|(id, n)| (id.to_string(), n))
            ),
        "ENRICHED holds {enriched:?}"
    );
    let events = ids_in::<Event>(pipeline, "EVENTS", |e| e.event_id.clone()).await?;
    ensure!(
        events.get("big-1") == Some(&2) && events.len() == 3,
        "EVENTS holds {events:?}"
    );
    let left = listed(&dlq(pipeline, &["list"]).await?);
    ensure!(
        left.len() == 1 && left[0].event_id == "late-1",
        "the DLQ lists {left:?}"
    );
    Ok(())
}
