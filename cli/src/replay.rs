//! `millrace replay`: sends the flights year to ingest in event-time order, in
//! batches, and retries what ingest asks to retry (pushback, broker outage)
//! with the same event ids, so a replay run twice stores every event once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use millrace_proto::ingest_client::IngestClient;
use millrace_proto::{AckStatus, Event, PublishBatchRequest};

use crate::flights;

pub async fn run(
    ingest: &str,
    data: &Path,
    selection: flights::Selection,
    batch: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let events = flights::events(data, selection).with_context(|| {
        format!(
            "reading the flights data in {} (scripts/get-nycflights.sh fetches it)",
            data.display()
        )
    })?;
    eprintln!(
        "replay: {} events from {} in {:.1?}",
        events.len(),
        data.display(),
        started.elapsed()
    );
    let mut client = IngestClient::connect(ingest.to_string())
        .await
        .with_context(|| format!("connecting to ingest at {ingest}"))?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let sending = Instant::now();
    for chunk in events.chunks(batch.max(1)) {
        send_until_answered(&mut client, chunk, &mut tally).await?;
    }
    let secs = sending.elapsed().as_secs_f64();
    println!(
        "replayed {} events in {secs:.1}s ({:.0} events/s)",
        events.len(),
        events.len() as f64 / secs.max(1e-9)
    );
    for (outcome, n) in &tally {
        println!("  {outcome}: {n}");
    }
    Ok(())
}

/// Sends `chunk`, resending the records ingest could not store yet, until
/// every record has a final answer (accepted, duplicate or rejected for cause).
async fn send_until_answered(
    client: &mut IngestClient<tonic::transport::Channel>,
    chunk: &[Event],
    tally: &mut BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let mut pending: Vec<Event> = chunk.to_vec();
    let mut delay = Duration::from_millis(20);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ingest kept refusing {} events for 5 minutes",
            pending.len()
        );
        let request = PublishBatchRequest {
            events: pending.clone(),
            encoded_events: vec![],
        };
        let answer = match client.publish_batch(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted
                        | tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(status) => return Err(status).context("ingest refused the batch"),
        };
        let mut retry = Vec::new();
        for (ack, event) in answer.acks.iter().zip(pending) {
            let outcome = match AckStatus::try_from(ack.status) {
                Ok(AckStatus::Accepted) => "accepted".to_string(),
                Ok(AckStatus::Duplicate) => "duplicate".to_string(),
                _ if ack.code == "unavailable" => {
                    retry.push(event);
                    continue;
                }
                _ => format!("rejected {}", ack.code),
            };
            *tally.entry(outcome).or_default() += 1;
        }
        if !retry.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        pending = retry;
    }
    Ok(())
}
