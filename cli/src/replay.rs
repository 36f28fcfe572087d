//! `millrace replay`: streams the flights year to ingest in event-time order
//! and retries what ingest asks to retry (pushback, broker outage, a broken
//! stream) with the same event ids, so a replay run twice stores every event once.
//!
//! All events go through one `PublishStream`, because ingest stores a
//! stream's events in the order it receives them; unary batches in flight
//! side by side could be stored out of order, and later stages would treat
//! whole hours of events as late.
//!
//! - [`run`]: plans the replay ([`flights::Timeline`]), reads it on a blocking
//!   thread ([`read`]) that hands encoded events over in chunks, sends them
//!   (or, with `--dry-run`, only counts them) and prints the summary.
//! - [`Publisher`]: keeps up to `--window` events sent and not yet answered,
//!   reads the answers (one per event, in order) as it sends, re-sends the
//!   `unavailable` ones and, when a stream breaks, opens another and re-sends
//!   every unanswered event first, in order.
//! - [`EncodedEventCodec`]: the stream's codec; events go out as the bytes the
//!   reader encoded, never decoded again.
//! - [`Progress`]: the progress line on stderr.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher as _, RandomState};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use millrace_proto::{AckStatus, EventAck};
use prost::bytes::{BufMut as _, Bytes};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::flights;

const PUBLISH_STREAM: &str = "/millrace.v1.Ingest/PublishStream";
/// Events the reader thread hands over at a time, and how many such chunks
/// it may read ahead of the sender (what the reader holds beyond the window).
const READ_CHUNK: usize = 512;
const CHUNKS_AHEAD: usize = 8;
/// Answers read without going back through the select loop, when they are
/// already there: a loop turn per answer costs more than the answer.
const ANSWERS_PER_TURN: usize = 256;
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(300);
/// Longest wait for a connection or for ingest to take a new stream: a hung
/// ingest must not hold the replay past the no-progress limit.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How the replay sends.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Events sent and not yet answered, at most.
    pub window: usize,
    /// Events handed to the stream at a time.
    pub batch: usize,
    /// Read and encode only; send nothing.
    pub dry_run: bool,
    /// Events per second at most: a throttled replay, whose figures must
    /// equal a fast one's (event time, not arrival, drives the pipeline).
    pub rate: Option<u32>,
}

/// Where a dry run writes the events it read: each encoded `Event` after its
/// length as a protobuf varint (length-delimited), the bytes a replay sends.
/// The year benchmark stores exactly these in JetStream for its baseline.
pub type EventsFile = Option<std::path::PathBuf>;

pub async fn run(
    ingest: &str,
    data: &Path,
    selection: flights::Selection,
    options: Options,
    write_events: EventsFile,
) -> anyhow::Result<()> {
    anyhow::ensure!(options.window > 0, "--window must be at least 1");
    anyhow::ensure!(options.batch > 0, "--batch must be at least 1");
    let planning = Instant::now();
    let timeline = flights::Timeline::open(data, selection).with_context(|| {
        format!(
            "reading the flights data in {} (scripts/get-nycflights.sh fetches it)",
            data.display()
        )
    })?;
    let total = timeline.total();
    let skipped = match timeline.skipped_rows() {
        0 => String::new(),
        n => format!("; {n} flights.csv rows without identity or time skipped"),
    };
    eprintln!(
        "replay: {total} events from {} (planned in {:.1?}{skipped})",
        data.display(),
        planning.elapsed()
    );

    let (chunks, source) = mpsc::channel(CHUNKS_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read(timeline, &chunks));
    let source = match options.rate {
        Some(rate) => throttle(source, rate, options.batch),
        None => source,
    };
    let mut progress = Progress::new(total, options.dry_run);
    let started = Instant::now();
    let outcome = if options.dry_run {
        count(source, &mut progress, write_events.as_deref()).await
    } else {
        let channel = Endpoint::from_shared(ingest.to_string())
            .with_context(|| format!("--ingest {ingest}: not a URL"))?
            .connect_timeout(OPEN_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("connecting to ingest at {ingest}"))?;
        Publisher::new(channel, ingest, source, options)
            .publish(&mut progress)
            .await
    };
    progress.clear();
    let outcome = outcome?;
    let read = reader.await.context("the flights reader thread failed")?;
    let secs = started.elapsed().as_secs_f64();
    let rate = read.events as f64 / secs.max(1e-9);
    match outcome {
        Outcome::Counted { bytes } => println!(
            "read {} events ({:.1} MB encoded) in {secs:.1}s ({rate:.0} events/s); \
             sent nothing (--dry-run)",
            read.events,
            bytes as f64 / 1e6
        ),
        Outcome::Answered(tally) => {
            println!(
                "replayed {} events in {secs:.1}s ({rate:.0} events/s)",
                read.events
            );
            for (outcome, n) in &tally {
                println!("  {outcome}: {n}");
            }
        }
    }
    if read.events != total {
        eprintln!(
            "replay: the plan counted {total} events but {} were read: did the data change?",
            read.events
        );
    }
    if read.out_of_order > 0 {
        eprintln!(
            "replay: {} events out of event-time order (a row made an event earlier than one \
             already sent; they were sent late, not dropped)",
            read.out_of_order
        );
    }
    if let Some(kib) = peak_rss_kib() {
        eprintln!("replay: peak RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}

/// Passes the chunks on at `rate` events per second at most, in pieces of
/// at most `batch` events, about twenty a second.
fn throttle(
    mut source: mpsc::Receiver<anyhow::Result<Vec<Bytes>>>,
    rate: u32,
    batch: usize,
) -> mpsc::Receiver<anyhow::Result<Vec<Bytes>>> {
    let (tx, rx) = mpsc::channel(2);
    let rate = f64::from(rate.max(1));
    let piece = batch.min((rate / 20.0).ceil() as usize).max(1);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut sent = 0u64;
        while let Some(chunk) = source.recv().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            for events in chunk.chunks(piece) {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due).await;
                sent += events.len() as u64;
                if tx.send(Ok(events.to_vec())).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// What the reader thread saw.
#[derive(Debug, Clone, Copy)]
struct ReadSummary {
    events: u64,
    out_of_order: u64,
}

/// Reads the timeline into `chunks`, an error as the last item. Stops early
/// when the receiver is gone (the sender failed and says why itself).
fn read(
    mut timeline: flights::Timeline,
    chunks: &mpsc::Sender<anyhow::Result<Vec<Bytes>>>,
) -> ReadSummary {
    let mut events = 0u64;
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    for event in timeline.by_ref() {
        match event {
            Ok(event) => {
                events += 1;
                chunk.push(event);
                if chunk.len() == READ_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(READ_CHUNK));
                    if chunks.blocking_send(Ok(full)).is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                chunk.clear();
                // A closed channel means the sender has failed already.
                let _ = chunks.blocking_send(Err(e));
                break;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.blocking_send(Ok(chunk));
    }
    ReadSummary {
        events,
        out_of_order: timeline.out_of_order(),
    }
}

enum Outcome {
    /// `--dry-run`: how many bytes the events encode to.
    Counted { bytes: u64 },
    /// Final answers by outcome: `accepted`, `duplicate`, `rejected <code>`.
    Answered(BTreeMap<String, u64>),
}

/// `--dry-run`: takes the events as the sender would, and counts them.
async fn count(
    mut source: mpsc::Receiver<anyhow::Result<Vec<Bytes>>>,
    progress: &mut Progress,
    write_to: Option<&Path>,
) -> anyhow::Result<Outcome> {
    use std::io::Write as _;
    let mut file = match write_to {
        Some(path) => Some((
            std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ),
            path,
        )),
        None => None,
    };
    let mut ticker = ticker();
    let (mut events, mut bytes) = (0u64, 0u64);
    let mut length = Vec::with_capacity(10);
    loop {
        tokio::select! {
            chunk = source.recv() => match chunk {
                Some(Ok(chunk)) => {
                    events += chunk.len() as u64;
                    bytes += chunk.iter().map(|e| e.len() as u64).sum::<u64>();
                    if let Some((out, path)) = file.as_mut() {
                        for event in &chunk {
                            length.clear();
                            prost::encoding::encode_varint(event.len() as u64, &mut length);
                            out.write_all(&length)
                                .and_then(|()| out.write_all(event))
                                .with_context(|| format!("writing {}", path.display()))?;
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    if let Some((mut out, path)) = file {
                        out.flush().with_context(|| format!("writing {}", path.display()))?;
                    }
                    return Ok(Outcome::Counted { bytes });
                }
            },
            _ = ticker.tick() => progress.show(events),
        }
    }
}

fn ticker() -> Interval {
    let mut ticker = tokio::time::interval(Progress::TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Why a stream stopped.
enum StreamEnd {
    /// Every event has its final answer.
    Finished,
    /// The stream failed in a way worth retrying; the text says how.
    Broken(String),
}

/// The sending side of the replay: one stream at a time, the window of
/// unanswered events, and what must be sent again.
struct Publisher {
    grpc: tonic::client::Grpc<Channel>,
    url: String,
    window: usize,
    batch: usize,
    source: mpsc::Receiver<anyhow::Result<Vec<Bytes>>>,
    source_done: bool,
    /// Read from the source, not sent yet.
    fresh: VecDeque<Bytes>,
    /// To send before anything fresh, in their original order: events
    /// answered `unavailable`, and those unanswered when their stream broke.
    resend: VecDeque<Bytes>,
    /// Sent on the current stream and not answered yet, in the order sent:
    /// answers come in that order, so the front is the next one answered.
    inflight: VecDeque<Bytes>,
    tally: BTreeMap<String, u64>,
    answered: u64,
    backoff: Backoff,
    last_progress: Instant,
    last_problem: String,
}

impl Publisher {
    fn new(
        channel: Channel,
        url: &str,
        source: mpsc::Receiver<anyhow::Result<Vec<Bytes>>>,
        options: Options,
    ) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
            url: url.to_string(),
            window: options.window,
            batch: options.batch,
            source,
            source_done: false,
            fresh: VecDeque::new(),
            resend: VecDeque::new(),
            inflight: VecDeque::new(),
            tally: BTreeMap::new(),
            answered: 0,
            backoff: Backoff::new(),
            last_progress: Instant::now(),
            last_problem: String::new(),
        }
    }

    /// Sends every event of the source until each has a final answer.
    async fn publish(mut self, progress: &mut Progress) -> anyhow::Result<Outcome> {
        let mut ticker = ticker();
        loop {
            match self.stream(&mut ticker, progress).await? {
                StreamEnd::Finished => return Ok(Outcome::Answered(self.tally)),
                StreamEnd::Broken(problem) => {
                    // Unanswered events were sent after those waiting to be re-sent.
                    self.resend.extend(self.inflight.drain(..));
                    self.last_problem = problem;
                    self.give_up_if_stalled()?;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }

    /// One `PublishStream`, until everything is answered or it breaks.
    async fn stream(
        &mut self,
        ticker: &mut Interval,
        progress: &mut Progress,
    ) -> anyhow::Result<StreamEnd> {
        let (requests, outbound) = mpsc::unbounded_channel::<Vec<Bytes>>();
        let outbound = futures::stream::unfold(outbound, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((futures::stream::iter(chunk), chunks))
        })
        .flatten();
        let grpc = &mut self.grpc;
        let opening = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
            grpc.streaming(
                tonic::Request::new(outbound),
                PathAndQuery::from_static(PUBLISH_STREAM),
                EncodedEventCodec,
            )
            .await
        };
        let mut answers = match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return self.broken(status),
            Err(_) => {
                return Ok(StreamEnd::Broken(format!(
                    "ingest did not open the stream within {} s",
                    OPEN_TIMEOUT.as_secs()
                )))
            }
        };
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            if paused_until.is_none() {
                self.fill(&requests)?;
            }
            if self.source_done
                && self.fresh.is_empty()
                && self.resend.is_empty()
                && self.inflight.is_empty()
            {
                // Ending our side lets ingest end its side: a clean close.
                drop(requests);
                let _ = tokio::time::timeout(Duration::from_secs(5), answers.message()).await;
                return Ok(StreamEnd::Finished);
            }
            let wants_source = paused_until.is_none()
                && !self.source_done
                && self.fresh.is_empty()
                && self.inflight.len() < self.window;
            let resume_at = paused_until.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                biased;
                batch = ready_answers(&mut answers, ANSWERS_PER_TURN) => {
                    for answer in batch {
                        if let Some(end) = self.take_answer(answer, &mut paused_until)? {
                            return Ok(end);
                        }
                    }
                }
                chunk = self.source.recv(), if wants_source => self.take_chunk(chunk)?,
                () = tokio::time::sleep_until(resume_at), if paused_until.is_some() => {
                    paused_until = None;
                }
                _ = ticker.tick() => {
                    progress.show(self.answered);
                    self.give_up_if_stalled()?;
                }
            }
        }
    }

    /// Sends what the window allows: events to re-send first, then fresh ones.
    fn fill(&mut self, requests: &mpsc::UnboundedSender<Vec<Bytes>>) -> anyhow::Result<()> {
        while self.inflight.len() < self.window {
            let room = (self.window - self.inflight.len()).min(self.batch);
            let mut chunk = Vec::with_capacity(room);
            while chunk.len() < room {
                let next = match self.resend.pop_front() {
                    Some(event) => Some(event),
                    None => self.next_fresh()?,
                };
                let Some(event) = next else { break };
                chunk.push(event);
            }
            if chunk.is_empty() {
                break;
            }
            self.inflight.extend(chunk.iter().cloned());
            if requests.send(chunk).is_err() {
                // The stream is gone; reading its answers says why.
                break;
            }
        }
        Ok(())
    }

    fn next_fresh(&mut self) -> anyhow::Result<Option<Bytes>> {
        if self.fresh.is_empty() && !self.source_done {
            match self.source.try_recv() {
                Ok(chunk) => self.take_chunk(Some(chunk))?,
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => self.source_done = true,
            }
        }
        Ok(self.fresh.pop_front())
    }

    fn take_chunk(&mut self, chunk: Option<anyhow::Result<Vec<Bytes>>>) -> anyhow::Result<()> {
        match chunk {
            Some(Ok(events)) => self.fresh.extend(events),
            Some(Err(e)) => return Err(e),
            None => self.source_done = true,
        }
        Ok(())
    }

    /// Takes one message of the answer stream; `Some` when the stream is over.
    fn take_answer(
        &mut self,
        answer: Result<Option<EventAck>, Status>,
        paused_until: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<Option<StreamEnd>> {
        let ack = match answer {
            Ok(Some(ack)) => ack,
            Ok(None) => {
                return Ok(Some(StreamEnd::Broken(format!(
                    "ingest ended the stream with {} events unanswered",
                    self.inflight.len()
                ))))
            }
            Err(status) => return self.broken(status).map(Some),
        };
        let Some(event) = self.inflight.pop_front() else {
            bail!(
                "ingest at {} answered more events than were sent (an answer for {:?})",
                self.url,
                ack.event_id
            );
        };
        // Answers are matched to events by position alone: one out of step
        // would count every later event under another's answer.
        if let Some(sent) = encoded_event_id(&event) {
            if !ack.event_id.is_empty() && ack.event_id != sent {
                bail!(
                    "ingest at {} answered {:?} where {sent:?} was next: answers and events \
                     are out of step",
                    self.url,
                    ack.event_id
                );
            }
        }
        let outcome: Cow<'static, str> = match AckStatus::try_from(ack.status) {
            Ok(AckStatus::Accepted) => "accepted".into(),
            Ok(AckStatus::Duplicate) => "duplicate".into(),
            _ if ack.code == "unavailable" => {
                // Maybe stored, maybe not: the same event again settles it.
                self.resend.push_back(event);
                self.last_problem = format!(
                    "event {:?} answered unavailable: {}",
                    ack.event_id, ack.message
                );
                if paused_until.is_none() {
                    *paused_until = Some(tokio::time::Instant::now() + self.backoff.next_delay());
                }
                return Ok(None);
            }
            _ => format!("rejected {}", ack.code).into(),
        };
        match self.tally.get_mut(outcome.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.tally.insert(outcome.into_owned(), 1);
            }
        }
        self.answered += 1;
        self.last_progress = Instant::now();
        self.backoff.reset();
        Ok(None)
    }

    /// A failed stream: retried unless ingest refuses the call itself.
    fn broken(&self, status: Status) -> anyhow::Result<StreamEnd> {
        let refused = matches!(
            status.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated
        );
        if refused {
            bail!(
                "ingest at {} refused the event stream: {:?}: {}",
                self.url,
                status.code(),
                status.message()
            );
        }
        Ok(StreamEnd::Broken(format!(
            "stream failed: {:?}: {}",
            status.code(),
            status.message()
        )))
    }

    fn give_up_if_stalled(&self) -> anyhow::Result<()> {
        if self.last_progress.elapsed() >= NO_PROGRESS_LIMIT {
            bail!(
                "ingest at {} gave no final answer for {} s ({} events answered, {} waiting); \
                 last problem: {}",
                self.url,
                NO_PROGRESS_LIMIT.as_secs(),
                self.answered,
                self.inflight.len() + self.resend.len(),
                self.last_problem
            );
        }
        Ok(())
    }
}

/// The `event_id` of an encoded `Event`, read without decoding the rest:
/// prost writes fields in tag order, so a non-empty id (field 1) comes first.
fn encoded_event_id(mut event: &[u8]) -> Option<&str> {
    const EVENT_ID_KEY: u8 = (1 << 3) | 2; // field 1, length-delimited
    event = event.strip_prefix(&[EVENT_ID_KEY])?;
    let len = usize::try_from(prost::encoding::decode_varint(&mut event).ok()?).ok()?;
    std::str::from_utf8(event.get(..len)?).ok()
}

/// The answers already received, at most `max`, or else the next one to come:
/// a turn of the select loop per answer costs more than the answer. Every
/// answer taken out of the stream is returned; none may be dropped, or the
/// event it answers would hold a place in the window for ever.
fn ready_answers(
    answers: &mut Streaming<EventAck>,
    max: usize,
) -> impl Future<Output = Vec<Result<Option<EventAck>, Status>>> + '_ {
    futures::future::poll_fn(move |cx| {
        let mut ready = Vec::new();
        while ready.len() < max {
            match answers.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(ack))) => ready.push(Ok(Some(ack))),
                Poll::Ready(Some(Err(status))) => {
                    ready.push(Err(status));
                    break;
                }
                Poll::Ready(None) => {
                    ready.push(Ok(None));
                    break;
                }
                Poll::Pending => break,
            }
        }
        if ready.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(ready)
        }
    })
}

/// Waits that double from 20 ms to 2 s, each drawn between half and all of
/// its nominal length so that many replays do not retry in step.
struct Backoff {
    nominal: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    fn new() -> Self {
        Self {
            nominal: FIRST_BACKOFF,
            random: RandomState::new(),
            draws: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal;
        self.nominal = (nominal * 2).min(MAX_BACKOFF);
        self.draws += 1;
        let fraction = (self.random.hash_one(self.draws) % 1024) as f64 / 1024.0;
        nominal.mul_f64(0.5 + 0.5 * fraction)
    }

    fn reset(&mut self) {
        self.nominal = FIRST_BACKOFF;
    }
}

/// `PublishStream` with events sent as already-encoded `Event` bytes and
/// answers read as `EventAck`: the wire format is the same as the generated
/// client's, without decoding each event only to encode it again.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedEventCodec;

impl Codec for EncodedEventCodec {
    type Encode = Bytes;
    type Decode = EventAck;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for EncodedEventCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, event: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(event);
        Ok(())
    }
}

impl Decoder for EncodedEventCodec {
    type Item = EventAck;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<EventAck>, Status> {
        EventAck::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("an answer from ingest is no EventAck: {e}")))
    }
}

/// The progress line: rewritten in place a few times a second on a terminal,
/// a plain line every 5 s otherwise (a log keeps every line).
struct Progress {
    total: u64,
    verb: &'static str,
    started: Instant,
    terminal: bool,
    last_shown: Instant,
    /// (when, how many done) over the last few seconds: the recent rate.
    recent: VecDeque<(Instant, u64)>,
    drawn: bool,
}

impl Progress {
    const TICK: Duration = Duration::from_millis(250);
    const PLAIN_EVERY: Duration = Duration::from_secs(5);
    const RATE_OVER: Duration = Duration::from_secs(3);

    fn new(total: u64, dry_run: bool) -> Self {
        let now = Instant::now();
        Self {
            total,
            verb: if dry_run { "read" } else { "answered" },
            started: now,
            terminal: std::io::stderr().is_terminal(),
            last_shown: now,
            recent: VecDeque::new(),
            drawn: false,
        }
    }

    fn show(&mut self, done: u64) {
        let now = Instant::now();
        self.recent.push_back((now, done));
        while self.recent.len() > 2
            && self
                .recent
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > Self::RATE_OVER)
        {
            self.recent.pop_front();
        }
        let every = if self.terminal {
            Self::TICK
        } else {
            Self::PLAIN_EVERY
        };
        if now.duration_since(self.last_shown) < every {
            return;
        }
        self.last_shown = now;
        let rate = match self.recent.front() {
            Some(&(at, then)) if now > at => {
                done.saturating_sub(then) as f64 / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        let eta = Duration::try_from_secs_f64(self.total.saturating_sub(done) as f64 / rate)
            .map_or_else(|_| "?".to_string(), clock);
        let line = format!(
            "replay: {done}/{} events {} ({:.1}%), {rate:.0} events/s, {} elapsed, ETA {eta}",
            self.total,
            self.verb,
            100.0 * done as f64 / self.total.max(1) as f64,
            clock(self.started.elapsed()),
        );
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the replay.
        let _ = if self.terminal {
            write!(err, "\r{line}\x1b[K").and_then(|()| err.flush())
        } else {
            writeln!(err, "{line}")
        };
        self.drawn = true;
    }

    /// Erases the line on a terminal, so that the summary starts clean.
    fn clear(&mut self) {
        if self.terminal && self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}

/// `1:02:03` or `2:03`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The process's peak resident set (VmHWM), in KiB, where /proc has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use futures::Stream;
    use millrace_proto::ingest_server::{Ingest, IngestServer};
    use millrace_proto::{Event, PublishBatchRequest, PublishBatchResponse};
    use tonic::{Request, Response, Streaming};

    use super::*;

    /// What the fake ingest does with the events it receives.
    #[derive(Default)]
    struct Script {
        /// Stored, but answered `unavailable` the first time (JetStream was late to confirm).
        unconfirmed: HashSet<String>,
        /// Not stored, answered `unavailable` the first time.
        lost: HashSet<String>,
        /// Answered REJECTED `missing_field`.
        rejected: HashSet<String>,
        /// Per stream in turn: how many events it answers, then the status it
        /// fails with (`None`: it just ends).
        breaks: VecDeque<(usize, Option<Status>)>,
        /// Answer only once no event came for this long (to see the window).
        answer_when_quiet: Option<Duration>,
    }

    /// What the fake ingest saw.
    #[derive(Default)]
    struct Ledger {
        stored: Vec<String>,
        received: Vec<String>,
        /// With `answer_when_quiet`: how many events came before each pause.
        bursts: Vec<usize>,
        streams: usize,
    }

    #[derive(Clone, Default)]
    struct FakeIngest {
        script: Arc<Mutex<Script>>,
        ledger: Arc<Mutex<Ledger>>,
    }

    impl FakeIngest {
        fn ack(&self, event: &Event) -> EventAck {
            let id = event.event_id.clone();
            let mut script = self.script.lock().unwrap();
            let mut ledger = self.ledger.lock().unwrap();
            ledger.received.push(id.clone());
            let (status, code) = if script.rejected.contains(&id) {
                (AckStatus::Rejected, "missing_field")
            } else if script.lost.remove(&id) {
                (AckStatus::Rejected, "unavailable")
            } else if ledger.stored.contains(&id) {
                (AckStatus::Duplicate, "")
            } else {
                ledger.stored.push(id.clone());
                if script.unconfirmed.remove(&id) {
                    (AckStatus::Rejected, "unavailable")
                } else {
                    (AckStatus::Accepted, "")
                }
            };
            EventAck {
                event_id: id,
                status: status as i32,
                code: code.into(),
                ..Default::default()
            }
        }
    }

    type AckStream = Pin<Box<dyn Stream<Item = Result<EventAck, Status>> + Send>>;

    #[tonic::async_trait]
    impl Ingest for FakeIngest {
        async fn publish_batch(
            &self,
            _: Request<PublishBatchRequest>,
        ) -> Result<Response<PublishBatchResponse>, Status> {
            Err(Status::unimplemented("the replay streams"))
        }

        type PublishStreamStream = AckStream;

        async fn publish_stream(
            &self,
            request: Request<Streaming<Event>>,
        ) -> Result<Response<AckStream>, Status> {
            let mut inbound = request.into_inner();
            let fake = self.clone();
            let (answers, outbound) = mpsc::unbounded_channel();
            let (limit, failure, quiet) = {
                let mut script = fake.script.lock().unwrap();
                fake.ledger.lock().unwrap().streams += 1;
                let (limit, failure) = script.breaks.pop_front().unwrap_or((usize::MAX, None));
                (limit, failure, script.answer_when_quiet)
            };
            tokio::spawn(async move {
                let mut waiting = Vec::new();
                let mut taken = 0;
                loop {
                    let next = match quiet {
                        None => inbound.next().await,
                        Some(quiet) => match tokio::time::timeout(quiet, inbound.next()).await {
                            Ok(next) => next,
                            Err(_) => {
                                if !waiting.is_empty() {
                                    fake.ledger.lock().unwrap().bursts.push(waiting.len());
                                }
                                for event in waiting.drain(..) {
                                    let _ = answers.send(Ok(fake.ack(&event)));
                                }
                                continue;
                            }
                        },
                    };
                    let Some(Ok(event)) = next else { return };
                    if taken == limit {
                        if let Some(status) = failure {
                            let _ = answers.send(Err(status));
                        }
                        return;
                    }
                    taken += 1;
                    match quiet {
                        Some(_) => waiting.push(event),
                        None => {
                            let _ = answers.send(Ok(fake.ack(&event)));
                        }
                    }
                }
            });
            let acks = futures::stream::unfold(outbound, |mut outbound| async move {
                let ack = outbound.recv().await?;
                Some((ack, outbound))
            });
            Ok(Response::new(Box::pin(acks)))
        }
    }

    async fn serve(fake: FakeIngest) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IngestServer::new(fake))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        url
    }

    fn id(i: usize) -> String {
        format!("e{i:03}")
    }

    /// Publishes events `e000`… through the fake at `url`, handed over in chunks of 7.
    async fn publish(url: &str, n: usize, window: usize, batch: usize) -> anyhow::Result<Outcome> {
        let (chunks, source) = mpsc::channel(4);
        let events: Vec<Bytes> = (0..n)
            .map(|i| {
                Event {
                    event_id: id(i),
                    r#type: "t".into(),
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            })
            .collect();
        tokio::spawn(async move {
            for chunk in events.chunks(7) {
                if chunks.send(Ok(chunk.to_vec())).await.is_err() {
                    break;
                }
            }
        });
        let channel = Endpoint::from_shared(url.to_string())?.connect().await?;
        let mut progress = Progress::new(n as u64, false);
        progress.terminal = false;
        let options = Options {
            window,
            batch,
            dry_run: false,
            rate: None,
        };
        Publisher::new(channel, url, source, options)
            .publish(&mut progress)
            .await
    }

    fn tally(outcome: Outcome) -> BTreeMap<String, u64> {
        match outcome {
            Outcome::Answered(tally) => tally,
            Outcome::Counted { .. } => panic!("nothing was sent"),
        }
    }

    #[tokio::test]
    async fn every_event_gets_one_final_answer_through_retries_and_broken_streams() {
        let fake = FakeIngest::default();
        {
            let mut script = fake.script.lock().unwrap();
            script.unconfirmed.insert(id(5));
            script.lost.extend([id(50), id(51)]);
            script.rejected.insert(id(7));
            script.breaks.extend([
                (40, Some(Status::resource_exhausted("ingest is full"))),
                (100, None),
                (20, Some(Status::unavailable("broker down"))),
            ]);
        }
        let url = serve(fake.clone()).await;
        let answers = tally(publish(&url, 300, 16, 5).await.unwrap());
        let expected: BTreeMap<String, u64> = [
            ("accepted".to_string(), 298),
            ("duplicate".to_string(), 1),
            ("rejected missing_field".to_string(), 1),
        ]
        .into();
        assert_eq!(answers, expected);

        let ledger = fake.ledger.lock().unwrap();
        assert_eq!(ledger.streams, 4);
        // Rejected for cause: final, never sent again.
        assert_eq!(ledger.received.iter().filter(|r| **r == id(7)).count(), 1);
        // Each stored once, in the order sent but for the two resent after
        // `unavailable` (they could not be stored in their place).
        let mut stored = ledger.stored.clone();
        assert_eq!(stored.len(), 299);
        stored.retain(|s| *s != id(50) && *s != id(51));
        let mut sorted = stored.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(stored, sorted);
        assert_eq!(stored.len(), 297);
    }

    #[tokio::test]
    async fn no_more_than_the_window_is_ever_unanswered() {
        let fake = FakeIngest::default();
        fake.script.lock().unwrap().answer_when_quiet = Some(Duration::from_millis(100));
        let url = serve(fake.clone()).await;
        let answers = tally(publish(&url, 40, 8, 3).await.unwrap());
        assert_eq!(answers.get("accepted"), Some(&40));
        let ledger = fake.ledger.lock().unwrap();
        assert_eq!(ledger.bursts.iter().sum::<usize>(), 40);
        assert_eq!(ledger.bursts.first(), Some(&8), "{:?}", ledger.bursts);
        assert!(ledger.bursts.iter().all(|&b| b <= 8), "{:?}", ledger.bursts);
    }

    #[tokio::test]
    async fn answers_arriving_in_bursts_larger_than_a_turn_are_all_taken() {
        let fake = FakeIngest::default();
        fake.script.lock().unwrap().answer_when_quiet = Some(Duration::from_millis(50));
        let url = serve(fake.clone()).await;
        let n = 5 * ANSWERS_PER_TURN + 3;
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            publish(&url, n, 4 * ANSWERS_PER_TURN, 1000),
        )
        .await
        .expect("the replay stalls");
        assert_eq!(tally(outcome.unwrap()).get("accepted"), Some(&(n as u64)));
        let ledger = fake.ledger.lock().unwrap();
        assert!(
            ledger.bursts.iter().any(|&b| b > ANSWERS_PER_TURN),
            "{:?}",
            ledger.bursts
        );
    }

    #[tokio::test]
    async fn a_stream_ingest_refuses_is_an_error_not_a_retry() {
        let fake = FakeIngest::default();
        fake.script
            .lock()
            .unwrap()
            .breaks
            .push_back((0, Some(Status::permission_denied("not you"))));
        let url = serve(fake.clone()).await;
        let error = publish(&url, 10, 8, 3).await.err().unwrap().to_string();
        assert!(
            error.contains("refused the event stream: PermissionDenied: not you"),
            "{error}"
        );
        assert_eq!(fake.ledger.lock().unwrap().streams, 1);
    }

    #[test]
    fn the_event_id_is_read_from_the_encoded_event() {
        let mut event = Event {
            event_id: "sched:2013-01-01-UA1545-EWR-0515".into(),
            r#type: "flight_scheduled".into(),
            event_time_us: 1_357_034_400_000_000,
            ..Default::default()
        };
        event
            .fields
            .insert("origin".into(), millrace_proto::Value::string("EWR"));
        let id = "x".repeat(300);
        for expected in ["sched:2013-01-01-UA1545-EWR-0515", id.as_str()] {
            event.event_id = expected.into();
            assert_eq!(encoded_event_id(&event.encode_to_vec()), Some(expected));
        }
        event.event_id.clear();
        assert_eq!(encoded_event_id(&event.encode_to_vec()), None);
        assert_eq!(encoded_event_id(b"\x0a\x05ab"), None);
    }

    #[test]
    fn backoff_doubles_from_20_ms_to_2_s_with_jitter_and_resets() {
        let mut backoff = Backoff::new();
        let mut nominal = FIRST_BACKOFF;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{delay:?} for {nominal:?}"
            );
            nominal = (nominal * 2).min(MAX_BACKOFF);
        }
        assert_eq!(nominal, MAX_BACKOFF);
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST_BACKOFF);
    }
}
