//! Ingest never loses an event it acknowledged and never stores one twice: not when
//! producers push harder than it can take (it pushes back, they retry or give up), not
//! when the broker stops and comes back under their feet (they see errors and retry the
//! same event ids). Each test keeps a ledger of every answer every producer got, then
//! reads EVENTS whole and holds it against the ledger.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use millrace_integration_tests::{
    decode_all, http_get, metric_value, metrics, order, orders, orders_pipeline_toml, read_stream,
    wait_until, Pipeline, Service, LONG, SHORT,
};
use millrace_proto::v1::ingest_client::IngestClient;
use millrace_proto::v1::{AckStatus, Event, EventAck, PublishBatchRequest};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The per-record code ingest answers when JetStream did not confirm the write.
const UNAVAILABLE: &str = "unavailable";

/// How long a producer waits for the answers to what it sent (a batch, or the records
/// sent on a stream) before it gives up on the call and retries them, as real producers do.
/// Ingest answers every record within its 10 s JetStream ack timeout of taking it in
/// (`unavailable` when JetStream did not confirm it by then), even when the broker dies
/// with acks in flight; the 3 s beyond are slack for a loaded 2-core machine. The
/// broker-restart test checks that no call needed the deadline.
const CALL_DEADLINE: Duration = Duration::from_secs(13);

/// Everything the producers were told about one event id, over all their tries.
#[derive(Debug, Default, Clone)]
struct Answers {
    /// ACCEPTED answers; more than one would mean the event was stored twice.
    accepted: u32,
    /// The EVENTS sequence the first ACCEPTED answer named.
    accepted_sequence: u64,
    duplicate: u32,
    /// Answers that say it was not taken in: RESOURCE_EXHAUSTED, or no answer on a
    /// stream that RESOURCE_EXHAUSTED ended before the record was read.
    refused: u32,
    /// Answers that leave it open, which only a retry settles: the `unavailable` code
    /// ("not stored, retry") ...
    unavailable: u32,
    /// ... or a failed call (a gRPC error other than RESOURCE_EXHAUSTED, or no answer by
    /// the deadline), after which the record may or may not have reached JetStream.
    call_failed: u32,
    /// The producer stopped trying before the event was stored.
    given_up: bool,
}

impl Answers {
    fn stored(&self) -> bool {
        self.accepted + self.duplicate > 0
    }

    fn uncertain(&self) -> u32 {
        self.unavailable + self.call_failed
    }
}

/// The answers of every producer of a test, and the events they sent.
#[derive(Default)]
struct Ledger {
    events: Mutex<HashMap<String, (Event, Answers)>>,
    /// RESOURCE_EXHAUSTED answers, batch or stream.
    pushbacks: AtomicU64,
    /// `unavailable` codes and gRPC errors other than RESOURCE_EXHAUSTED.
    errors: AtomicU64,
    /// ACCEPTED or DUPLICATE answers.
    stored: AtomicU64,
    /// Calls the producer gave up on after [`CALL_DEADLINE`].
    deadlines: AtomicU64,
    /// The longest a producer waited for an answer (a batch's, or a stream's next ack), in ms.
    slowest_answer_ms: AtomicU64,
}

impl Ledger {
    fn with_answers<T>(&self, id: &str, f: impl FnOnce(&mut Answers) -> T) -> T {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let entry = events
            .get_mut(id)
            .unwrap_or_else(|| panic!("{id} is answered but was never sent"));
        f(&mut entry.1)
    }

    fn sending(&self, events: &[Event]) {
        let mut known = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            known
                .entry(e.event_id.clone())
                .or_insert_with(|| (e.clone(), Answers::default()));
        }
    }

    /// Records one per-record answer; true when the record must be sent again.
    fn answer(&self, sent: &Event, ack: &EventAck) -> Result<bool> {
        ensure!(
            ack.event_id == sent.event_id,
            "an ack names {:?} where {:?} was sent",
            ack.event_id,
            sent.event_id
        );
        let retry = match (ack.status(), ack.code.as_str()) {
            (AckStatus::Accepted, _) => {
                self.with_answers(&ack.event_id, |a| {
                    if a.accepted == 0 {
                        a.accepted_sequence = ack.stream_sequence;
                    }
                    a.accepted += 1;
                });
                false
            }
            (AckStatus::Duplicate, _) => {
                self.with_answers(&ack.event_id, |a| a.duplicate += 1);
                false
            }
            (AckStatus::Rejected, UNAVAILABLE) => {
                // It may have been stored: the answer must say how to find out.
                ensure!(
                    ack.message.contains("retry with the same event_id"),
                    "an `unavailable` answer does not say to retry with the same id: {ack:?}"
                );
                self.with_answers(&ack.event_id, |a| a.unavailable += 1);
                self.errors.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => bail!(
                "{} got an answer no valid event should: {ack:?}",
                sent.event_id
            ),
        };
        if !retry {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
        Ok(retry)
    }

    /// Records a failed call for `events`: RESOURCE_EXHAUSTED refuses them all, any other
    /// status leaves them open.
    fn failed(&self, events: &[Event], status: &Status) {
        let refused = status.code() == Code::ResourceExhausted;
        if refused {
            self.pushbacks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if status.code() == Code::DeadlineExceeded {
            self.deadlines.fetch_add(1, Ordering::Relaxed);
        }
        for e in events {
            self.with_answers(&e.event_id, |a| {
                if refused {
                    a.refused += 1;
                } else {
                    a.call_failed += 1;
                }
            });
        }
    }

    fn waited(&self, since: Instant) {
        let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slowest_answer_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn give_up(&self, events: &[Event]) {
        for e in events {
            self.with_answers(&e.event_id, |a| a.given_up = true);
        }
    }

    fn snapshot(&self) -> HashMap<String, (Event, Answers)> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How a producer retries what was not stored: the same event ids, at most `tries`
/// times, the pause doubling from `first_pause` up to `max_pause`.
#[derive(Debug, Clone, Copy)]
struct Retry {
    tries: u32,
    first_pause: Duration,
    max_pause: Duration,
}

impl Retry {
    /// Gives up on a refused batch at once: a producer for whom fresh data beats old.
    const ONCE: Retry = Retry {
        tries: 1,
        first_pause: Duration::ZERO,
        max_pause: Duration::ZERO,
    };

    /// The pause after failed try `n` (1-based), with jitter so that producers refused
    /// together do not come back together.
    fn pause(&self, n: u32, jitter_seed: usize) -> Duration {
        let base = self
            .first_pause
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_pause);
        let jitter = (jitter_seed.wrapping_mul(2_654_435_761) ^ n as usize) % 50;
        base + base * jitter as u32 / 100
    }
}

/// Sends `events` with `PublishBatch` until each is stored or `retry` is spent; gives up
/// on what is left. Answers go to the ledger.
async fn publish_batch(
    client: &mut IngestClient<Channel>,
    ledger: &Ledger,
    events: Vec<Event>,
    retry: Retry,
    seed: usize,
) -> Result<()> {
    ledger.sending(&events);
    let mut todo = events;
    for n in 1..=retry.tries {
        let request = PublishBatchRequest {
            events: todo.clone(),
            encoded_events: Vec::new(),
        };
        let asked = Instant::now();
        // Dropping the call at the deadline cancels it; its records stay uncertain.
        let answer = tokio::time::timeout(CALL_DEADLINE, client.publish_batch(request))
            .await
            .unwrap_or_else(|_| Err(past_deadline()));
        ledger.waited(asked);
        match answer {
            Err(status) => ledger.failed(&todo, &status),
            Ok(response) => {
                let acks = response.into_inner().acks;
                ensure!(
                    acks.len() == todo.len(),
                    "a batch of {} was answered with {} acks",
                    todo.len(),
                    acks.len()
                );
                let mut again = Vec::new();
                for (i, (ack, event)) in acks.iter().zip(&todo).enumerate() {
                    ensure!(ack.index as usize == i, "ack {i} has index {}", ack.index);
                    if ledger.answer(event, ack)? {
                        again.push(event.clone());
                    }
                }
                todo = again;
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        if n < retry.tries {
            tokio::time::sleep(retry.pause(n, seed)).await;
        }
    }
    ledger.give_up(&todo);
    Ok(())
}

/// Sends `events` over one `PublishStream` per try until each is stored or `retry` is
/// spent. The stream answers in order; what it left unanswered, or answered
/// `unavailable`, goes again on the next stream.
async fn publish_stream(
    client: &mut IngestClient<Channel>,
    ledger: &Ledger,
    events: Vec<Event>,
    retry: Retry,
    seed: usize,
) -> Result<()> {
    ledger.sending(&events);
    let mut todo = events;
    for n in 1..=retry.tries {
        let (answered, again, ended) = one_stream(client, ledger, &todo).await?;
        let unanswered = &todo[answered..];
        if let Some(status) = ended {
            ledger.failed(unanswered, &status);
        } else {
            ensure!(
                unanswered.is_empty(),
                "the stream ended cleanly with {} records unanswered",
                unanswered.len()
            );
        }
        todo = again
            .into_iter()
            .chain(unanswered.iter().cloned())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        if n < retry.tries {
            tokio::time::sleep(retry.pause(n, seed)).await;
        }
    }
    ledger.give_up(&todo);
    Ok(())
}

/// One stream carrying `events`: how many were answered (a prefix, in order), which of
/// those to send again, and the status that ended it early, if one did.
async fn one_stream(
    client: &mut IngestClient<Channel>,
    ledger: &Ledger,
    events: &[Event],
) -> Result<(usize, Vec<Event>, Option<Status>)> {
    let outbound = futures::stream::iter(events.to_vec());
    let mut asked = Instant::now();
    // Every record goes out at once, so every answer is due by the same deadline.
    let deadline = asked + CALL_DEADLINE;
    let opened = tokio::time::timeout_at(deadline, client.publish_stream(outbound))
        .await
        .unwrap_or_else(|_| Err(past_deadline()));
    let mut acks = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok((0, Vec::new(), Some(status))),
    };
    let mut again = Vec::new();
    let mut answered = 0;
    loop {
        let next = tokio::time::timeout_at(deadline, acks.message())
            .await
            .unwrap_or_else(|_| Err(past_deadline()));
        ledger.waited(asked);
        asked = Instant::now();
        match next {
            Ok(Some(ack)) => {
                let Some(event) = events.get(answered) else {
                    bail!("the stream answered more records than it was sent: {ack:?}");
                };
                ensure!(
                    ack.index as usize == answered,
                    "stream ack {answered} has index {}",
                    ack.index
                );
                if ledger.answer(event, &ack)? {
                    again.push(event.clone());
                }
                answered += 1;
                if answered == events.len() {
                    // Every record is answered: close our side, which ends the stream.
                    return Ok((answered, again, None));
                }
            }
            Ok(None) => return Ok((answered, again, None)),
            // Dropping `acks` cancels the stream; the unanswered records stay uncertain.
            Err(status) => return Ok((answered, again, Some(status))),
        }
    }
}

fn past_deadline() -> Status {
    Status::deadline_exceeded(format!("no answer within {CALL_DEADLINE:?}"))
}

/// What EVENTS held, checked against the ledger.
#[derive(Debug)]
struct Verdict {
    stored: usize,
    sent: usize,
    duplicates_answered: u32,
    refused_answers: u32,
    unavailable_answers: u32,
    failed_calls: u32,
    given_up: usize,
    /// Events never answered ACCEPTED but DUPLICATE on a retry after an `unavailable`
    /// answer: stored although that answer said "not stored".
    stored_despite_unavailable: usize,
}

/// Reads EVENTS whole and holds it against the ledger:
/// - every event id is stored once, under `Nats-Msg-Id` = event_id, with the fields sent;
/// - every event answered ACCEPTED or DUPLICATE is there, an ACCEPTED one at the sequence
///   its ack named, and no event was answered ACCEPTED twice;
/// - nothing else is there: with `exact`, only events answered ACCEPTED or DUPLICATE;
///   otherwise also events whose answers left it open, but never one only refused;
/// - no event was answered DUPLICATE unless an earlier try was ACCEPTED or left open.
async fn check_events(pipeline: &Pipeline, ledger: &Ledger, exact: bool) -> Result<Verdict> {
    let stored = read_stream(pipeline.jetstream(), "EVENTS").await?;
    let events: Vec<Event> = decode_all(&stored)?;
    let sent = ledger.snapshot();
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (event, message) in events.iter().zip(&stored) {
        if let Some(first) = seen.insert(&event.event_id, message.sequence) {
            problems.push(format!(
                "{} is stored twice: sequences {first} and {}",
                event.event_id, message.sequence
            ));
        }
        let msg_id = message.headers.get("Nats-Msg-Id").map(|v| v.as_str());
        if msg_id != Some(event.event_id.as_str()) {
            problems.push(format!(
                "{} is stored with Nats-Msg-Id {msg_id:?}",
                event.event_id
            ));
        }
        let Some((original, answers)) = sent.get(&event.event_id) else {
            problems.push(format!("{} is stored but was never sent", event.event_id));
            continue;
        };
        if event.fields != original.fields {
            problems.push(format!(
                "{} is stored with other fields than sent",
                event.event_id
            ));
        }
        if !answers.stored() && (exact || answers.uncertain() == 0) {
            problems.push(format!(
                "{} is stored but was never acknowledged: {answers:?}",
                event.event_id
            ));
        }
    }
    for (id, (_, answers)) in &sent {
        // A producer sends an id again only after an answer that left it open (or, in
        // the spike, after ACCEPTED): a DUPLICATE with neither before it means ingest
        // called a new event stored, e.g. a whole atomic batch answered DUPLICATE
        // because one of its ids was.
        if answers.duplicate > 0 && answers.accepted == 0 && answers.uncertain() == 0 {
            problems.push(format!(
                "{id} was answered DUPLICATE though no earlier try could have stored it: \
                 {answers:?}"
            ));
        }
    }
    for (id, (_, answers)) in &sent {
        if answers.accepted > 1 {
            problems.push(format!("{id} was answered ACCEPTED twice: {answers:?}"));
        }
        match seen.get(id.as_str()) {
            None if answers.stored() => {
                problems.push(format!(
                    "{id} was acknowledged but is not stored: {answers:?}"
                ));
            }
            Some(&seq) if answers.accepted > 0 && answers.accepted_sequence != seq => {
                problems.push(format!(
                    "{id} is stored at sequence {seq}, its ACCEPTED ack said {}",
                    answers.accepted_sequence
                ));
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "EVENTS ({} messages) disagrees with the answers for {} sent events in {} ways:\n  {}",
            events.len(),
            sent.len(),
            problems.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let all = || sent.values().map(|(_, a)| a);
    Ok(Verdict {
        stored: events.len(),
        sent: sent.len(),
        duplicates_answered: all().map(|a| a.duplicate).sum(),
        refused_answers: all().map(|a| a.refused).sum(),
        unavailable_answers: all().map(|a| a.unavailable).sum(),
        failed_calls: all().map(|a| a.call_failed).sum(),
        given_up: all().filter(|a| a.given_up && !a.stored()).count(),
        stored_despite_unavailable: all()
            .filter(|a| a.accepted == 0 && a.duplicate > 0 && a.unavailable > 0)
            .count(),
    })
}

impl Verdict {
    fn summary(&self, ledger: &Ledger) -> String {
        format!(
            "{} of {} sent events stored once each; per-record answers: {} DUPLICATE, \
             {} refused ({} RESOURCE_EXHAUSTED calls), {} `unavailable`, {} in failed calls \
             ({} calls past the {CALL_DEADLINE:?} deadline); {} events given up; {} stored \
             despite an `unavailable` answer; slowest answer {} ms",
            self.stored,
            self.sent,
            self.duplicates_answered,
            self.refused_answers,
            ledger.pushbacks.load(Ordering::Relaxed),
            self.unavailable_answers,
            self.failed_calls,
            ledger.deadlines.load(Ordering::Relaxed),
            self.given_up,
            self.stored_despite_unavailable,
            ledger.slowest_answer_ms.load(Ordering::Relaxed),
        )
    }
}

/// The test pipeline with ingest's waiting room cut down to `max_pending_records`.
fn pipeline_with_pending_limit(max_pending_records: usize) -> String {
    format!(
        "{}\n[ingest]\nmax_pending_records = {max_pending_records}\n",
        orders_pipeline_toml()
    )
}

const SPIKE_PENDING_LIMIT: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_producers_see_pushback_and_every_accepted_event_is_stored_once() {
    let pipeline = Pipeline::builder()
        .only(&[Service::Ingest])
        .pipeline_toml(pipeline_with_pending_limit(SPIKE_PENDING_LIMIT))
        .start()
        .await
        .expect("ingest starts");
    spike(&pipeline).await.expect("spike");
}

/// Ten producers at once against room for 200 records:
/// - six patient ones send 15 batches of 100 each, retrying a refused batch with backoff
///   (40 tries at most), then send their first batch once more (answered DUPLICATE);
/// - two impatient ones fire 4 batches of 100 at once, 8 times, and drop whatever is
///   refused;
/// - two stream 1,500 events each as fast as the stream takes them, sending what a
///   RESOURCE_EXHAUSTED left unanswered again on a new stream.
async fn spike(pipeline: &Pipeline) -> Result<()> {
    let ledger = Arc::new(Ledger::default());
    let patient = Retry {
        tries: 40,
        first_pause: Duration::from_millis(5),
        max_pause: Duration::from_millis(250),
    };
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..6 {
        let (mut client, ledger) = (pipeline.ingest().await?, ledger.clone());
        producers.spawn(async move {
            let events = orders(&format!("spike-patient{p}"), 0..1500, 40);
            for (b, batch) in events.chunks(100).enumerate() {
                publish_batch(&mut client, &ledger, batch.to_vec(), patient, p * 100 + b).await?;
            }
            // A producer that lost the answer to its first batch sends it again.
            publish_batch(&mut client, &ledger, events[..100].to_vec(), patient, p).await
        });
    }
    for p in 0..2 {
        let (client, ledger) = (pipeline.ingest().await?, ledger.clone());
        producers.spawn(async move {
            let events = orders(&format!("spike-impatient{p}"), 0..3200, 40);
            for round in events.chunks(400) {
                let bursts = round.chunks(100).map(|batch| {
                    let (mut client, ledger) = (client.clone(), ledger.clone());
                    let batch = batch.to_vec();
                    async move { publish_batch(&mut client, &ledger, batch, Retry::ONCE, 0).await }
                });
                for result in futures::future::join_all(bursts).await {
                    result?;
                }
            }
            Ok(())
        });
    }
    for p in 0..2 {
        let (mut client, ledger) = (pipeline.ingest().await?, ledger.clone());
        producers.spawn(async move {
            let events = orders(&format!("spike-stream{p}"), 0..1500, 40);
            publish_stream(&mut client, &ledger, events, patient, p).await
        });
    }
    let all_done = tokio::time::timeout(LONG, async {
        while let Some(done) = producers.join_next().await {
            done.context("a producer panicked")??;
        }
        anyhow::Ok(())
    });
    all_done
        .await
        .context("the producers did not finish within 120 s")??;

    let pushbacks = ledger.pushbacks.load(Ordering::Relaxed);
    let verdict = check_events(pipeline, &ledger, true).await?;
    eprintln!("spike: {}", verdict.summary(&ledger));
    ensure!(
        pushbacks > 0,
        "ten producers against room for {SPIKE_PENDING_LIMIT} records were never pushed back"
    );
    ensure!(
        verdict.given_up > 0,
        "the impatient producers never dropped a refused batch, so the check that refused \
         events stay out of EVENTS proved nothing"
    );
    ensure!(
        verdict.duplicates_answered >= 100,
        "the patient producers' repeated first batches were answered DUPLICATE only {} times",
        verdict.duplicates_answered
    );
    ensure!(
        pipeline.stream_count("DLQ").await? == 0,
        "valid events reached the DLQ"
    );
    // Pushback is a moment, not a state: once the spike is over ingest takes events again.
    let mut client = pipeline.ingest().await?;
    let after = order("spike-after", "customer-00", 1.0);
    let ledger = Ledger::default();
    publish_batch(&mut client, &ledger, vec![after], Retry::ONCE, 0).await?;
    ensure!(
        ledger.stored.load(Ordering::Relaxed) == 1,
        "after the spike, ingest still refuses a single event: {:?}",
        ledger.snapshot()
    );
    let text = metrics(pipeline.service(Service::Ingest).http_addr()).await?;
    let pending = metric_value(&text, "millrace_ingest_pending_records", &[]);
    ensure!(
        pending == Some(0.0),
        "with every call answered, ingest still counts {pending:?} records pending"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_acknowledged() {
    let mut pipeline = Pipeline::builder()
        .only(&[Service::Ingest])
        .start()
        .await
        .expect("ingest starts");
    broker_restarts(&mut pipeline)
        .await
        .expect("nothing acknowledged is lost");
}

/// How the broker goes down.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// SIGTERM: nats-server flushes and closes its store.
    Stop,
    /// SIGKILL: no flush. The OS keeps what was written, so with the default
    /// `sync_interval` an acknowledged write survives a process crash (not an OS crash).
    Kill,
}

/// Five producers publish continuously, each retrying the same event ids until they are
/// stored: three `PublishBatch` producers with batches of 20, one with batches of 200, and
/// one `PublishStream` producer with 100 events per stream, so every call is a
/// multi-event atomic batch that an outage can catch half sent or committed unanswered.
/// nats-server is stopped with SIGTERM and restarted, then killed with SIGKILL and
/// restarted, each time once the producers have seen errors. Ingest must turn unready
/// while the broker is away and ready again after. In the end every event answered
/// ACCEPTED is in EVENTS once, at the sequence its ack named, and every sent id is stored
/// exactly once ([`check_events`]); no valid event reached the DLQ.
async fn broker_restarts(pipeline: &mut Pipeline) -> Result<()> {
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let until_stored = Retry {
        tries: 200,
        first_pause: Duration::from_millis(50),
        max_pause: Duration::from_secs(1),
    };
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..5 {
        let (mut client, ledger, stop) = (pipeline.ingest().await?, ledger.clone(), stop.clone());
        producers.spawn(async move {
            let prefix = format!("restart-p{p}");
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                if p == 4 {
                    let events = orders(&prefix, next..next + 100, 20);
                    publish_stream(&mut client, &ledger, events, until_stored, next).await?;
                    next += 100;
                } else {
                    let size = if p == 3 { 200 } else { 20 };
                    let events = orders(&prefix, next..next + size, 20);
                    publish_batch(&mut client, &ledger, events, until_stored, next).await?;
                    next += size;
                }
                // Paces the producer so that EVENTS stays small enough to read back whole.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        });
    }

    for outage in [Outage::Stop, Outage::Kill] {
        let at_least = ledger.stored.load(Ordering::Relaxed) + 500;
        wait_until(
            &format!("producers have {at_least} events stored before the {outage:?}"),
            SHORT,
            || async {
                let n = ledger.stored.load(Ordering::Relaxed);
                Ok((n >= at_least, n))
            },
        )
        .await?;
        let errors_before = ledger.errors.load(Ordering::Relaxed);
        let nats = pipeline.nats_mut();
        match outage {
            Outage::Stop => nats.stop().await?,
            Outage::Kill => nats.kill().await?,
        }
        wait_ingest_readyz(pipeline, false, outage).await?;
        wait_until(
            &format!("producers see errors after the {outage:?}"),
            SHORT,
            || async {
                let n = ledger.errors.load(Ordering::Relaxed);
                Ok((n > errors_before, n))
            },
        )
        .await?;
        // Nothing runs after stop()/kill(): restart() starts it again on the same store.
        pipeline.nats_mut().restart().await?;
        wait_ingest_readyz(pipeline, true, outage).await?;
        let at_least = ledger.stored.load(Ordering::Relaxed) + 500;
        wait_until(
            &format!("producers store events again after the {outage:?}"),
            SHORT,
            || async {
                let n = ledger.stored.load(Ordering::Relaxed);
                Ok((n >= at_least, n))
            },
        )
        .await?;
    }
    stop.store(true, Ordering::Relaxed);
    let all_done = tokio::time::timeout(LONG, async {
        while let Some(done) = producers.join_next().await {
            done.context("a producer panicked")??;
        }
        anyhow::Ok(())
    });
    all_done
        .await
        .context("the producers did not finish within 120 s")??;

    let verdict = check_events(pipeline, &ledger, false).await?;
    eprintln!("broker restarts: {}", verdict.summary(&ledger));
    ensure!(
        verdict.given_up == 0 && verdict.stored == verdict.sent,
        "producers retrying until stored left events out: {verdict:?}"
    );
    ensure!(
        verdict.unavailable_answers + verdict.failed_calls > 0,
        "two broker outages produced no error answers: {verdict:?}"
    );
    ensure!(
        pipeline.stream_count("DLQ").await? == 0,
        "valid events reached the DLQ while the broker came and went"
    );
    let deadlines = ledger.deadlines.load(Ordering::Relaxed);
    ensure!(
        deadlines == 0,
        "{deadlines} calls were still unanswered {CALL_DEADLINE:?} after they were made: \
         ingest must answer each record within its 10 s ack timeout"
    );
    Ok(())
}

async fn wait_ingest_readyz(pipeline: &Pipeline, ready: bool, outage: Outage) -> Result<()> {
    let addr = pipeline.service(Service::Ingest).http_addr();
    let what = if ready {
        format!("ingest /readyz answers 200 after the broker came back from a {outage:?}")
    } else {
        format!("ingest /readyz answers 503 while the broker is down ({outage:?})")
    };
    wait_until(&what, SHORT, || async {
        let r = http_get(addr, "/readyz").await?;
        Ok(((r.status == 200) == ready, r.status))
    })
    .await
    .map(|_| ())
}
