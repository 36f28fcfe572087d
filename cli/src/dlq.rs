//! `millrace dlq …`: the dead-letter queue of a running pipeline. Lists,
//! counts and inspects the records the stages refused, and re-drives them
//! through ingest once the cause is fixed.
//!
//! # Layout
//! - [`Connection`], [`DlqAction`], [`Selection`]: the command line.
//! - [`DeadLetters`]: the DLQ stream, read with an ordered (ephemeral) consumer
//!   or by sequence, and purged record by record; nothing outlives the command.
//! - [`plan`]: how a record can go back in, decided by what its stage put in
//!   the payload; [`Outcome`]: what happened to it, one line per record.
//! - the rest renders records for people: one-line, JSON-ish and hex forms.
//!
//! # How each kind of record goes back
//! - **ingest** kept the producer's bytes. An `Event` goes to ingest's
//!   `PublishBatch` as those bytes, so it is validated again; one that came
//!   without its type (it named it by the subject), or as JSON, goes back on
//!   `ingest.<type>` the way it came. Its `event_id` makes a repeated re-drive a
//!   DUPLICATE, never a second event.
//! - **enrich** kept the `Event` as EVENTS stores it: ingest accepted that event
//!   once already, so its id stays in the duplicate window and ingest would
//!   answer DUPLICATE to a re-drive without storing anything. Such a record is
//!   re-driven only after the window (`NOT_YET duplicate_window` until then),
//!   and a DUPLICATE that turns out to be the copy enrich refused is reported
//!   the same way, never as re-driven.
//! - **feature-state** `late` records (an `EnrichedEvent`) cannot be re-driven:
//!   their event time stays behind the watermark. Bytes a stage could not read
//!   (`malformed`) cannot either. Both are reported `NOT_REDRIVABLE`.
//!
//! `--purge` deletes the records re-driven ACCEPTED or DUPLICATE (the event is
//! in the pipeline now); everything else stays in the DLQ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::RawMessageErrorKind};
use futures::StreamExt as _;
use millrace_chassis::batch;
use millrace_chassis::bus::{subject, Bus, StreamKind};
use millrace_chassis::config::{Pipeline, Service, ServiceEnv, StreamSettings};
use millrace_chassis::shutdown::Shutdown;
use millrace_proto::ingest_client::IngestClient;
use millrace_proto::{AckStatus, DeadLetter, EnrichedEvent, Event, EventAck, PublishBatchRequest};
use prost::Message as _;
use tonic::transport::Channel;

/// Where the services read their pipeline file when `MILLRACE_PIPELINE` is unset.
const DEFAULT_PIPELINE: &str = "examples/flights/pipeline.toml";
/// The stages that write to the DLQ, by the subject token they write under.
const STAGES: [&str; 5] = ["ingest", "enrich", "feature-state", "inference", "monitor"];
/// The reason given to a DLQ message that is no readable `DeadLetter`.
const UNREADABLE: &str = "unreadable";
/// How long a re-drive keeps retrying records ingest could not store yet.
const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Connection {
    /// NATS server; NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_CREDS and NATS_TLS_* as for the services.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// The pipeline file, for the stream names ([streams]); the default names without one.
    #[arg(long, global = true, env = "MILLRACE_PIPELINE")]
    pipeline: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum DlqAction {
    /// One line per record, oldest first: sequence, time, stage, reason, event id, message.
    List {
        #[command(flatten)]
        select: Selection,
        /// Show at most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// One record whole, its payload decoded when it is an Event or EnrichedEvent.
    Show { sequence: u64 },
    /// Records per stage and reason, with the oldest and newest of each.
    Stats {
        #[command(flatten)]
        select: Selection,
    },
    /// Send records back through ingest and report, per record, what happened.
    Redrive(RedriveArgs),
}

/// Which records a command is about.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selection {
    /// Only the records this stage refused.
    #[arg(long, value_parser = STAGES)]
    stage: Option<String>,
    /// Only records with this reason; a trailing `*` matches a prefix (`filter:*`).
    #[arg(long)]
    reason: Option<String>,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.stage.as_ref().is_none_or(|s| *s == letter.stage)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| reason_matches(r, &letter.reason))
    }

    fn is_empty(&self) -> bool {
        self.stage.is_none() && self.reason.is_none()
    }
}

fn reason_matches(pattern: &str, reason: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => reason.starts_with(prefix),
        None => pattern == reason,
    }
}

#[derive(clap::Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    select: Selection,
    /// Only these DLQ sequences (with --stage/--reason: those of them that match).
    #[arg(long = "sequence", value_name = "N", num_args = 1..)]
    sequences: Vec<u64>,
    /// Every record in the DLQ (otherwise name them with --stage, --reason or --sequence).
    #[arg(long)]
    all: bool,
    /// Ingest's gRPC API.
    #[arg(
        long,
        env = "MILLRACE_INGEST_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    ingest: String,
    /// Delete the records re-driven ACCEPTED or DUPLICATE from the DLQ.
    #[arg(long)]
    purge: bool,
    /// Say how each record would go back, send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Records per PublishBatch call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

pub async fn run(connection: Connection, action: DlqAction) -> anyhow::Result<()> {
    let dlq = DeadLetters::connect(&connection).await?;
    match action {
        DlqAction::List { select, limit } => {
            let letters = dlq.read(&select).await?;
            for letter in letters.iter().take(limit) {
                println!("{}", list_line(letter));
            }
            let shown = letters.len().min(limit);
            if shown < letters.len() {
                println!(
                    "{shown} of {} (raise --limit for the rest)",
                    records(letters.len())
                );
            } else {
                println!("{}", records(letters.len()));
            }
        }
        DlqAction::Show { sequence } => print!("{}", show(&dlq.get(sequence).await?)),
        DlqAction::Stats { select } => {
            let letters = dlq.read(&select).await?;
            for ((stage, reason), t) in tally(&letters) {
                println!(
                    "{stage}\t{reason}\t{}\t{}\t{}",
                    t.records,
                    utc(t.oldest_us),
                    utc(t.newest_us)
                );
            }
            println!("{} in {}", records(letters.len()), dlq.name);
        }
        DlqAction::Redrive(args) => redrive(&dlq, args).await?,
    }
    Ok(())
}

/// One record of the DLQ: its stream sequence and the dead letter.
#[derive(Debug, Clone)]
pub struct Letter {
    pub sequence: u64,
    pub letter: DeadLetter,
}

impl Letter {
    /// Reads a DLQ message. One that is no `DeadLetter` becomes a letter with reason
    /// `unreadable` and the message's bytes, so it is listed rather than hidden.
    fn read(
        sequence: u64,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Self {
        let stage = subject.strip_prefix("dlq.").unwrap_or(subject);
        let unreadable = |why: String| DeadLetter {
            stage: stage.to_string(),
            reason: UNREADABLE.into(),
            message: format!("DLQ message {sequence} on {subject}: {why}"),
            payload: payload.to_vec(),
            ..Default::default()
        };
        let letter = if batch::is_batch(headers) {
            unreadable(
                "packs several records (Millrace-Batch); dead letters are one per message".into(),
            )
        } else {
            match DeadLetter::decode(payload) {
                Ok(mut letter) => {
                    if letter.stage.is_empty() {
                        letter.stage = stage.to_string();
                    }
                    letter
                }
                Err(e) => unreadable(format!("not a millrace.v1.DeadLetter: {e}")),
            }
        };
        Self { sequence, letter }
    }
}

/// The DLQ stream of one NATS server, and the EVENTS stream beside it.
pub struct DeadLetters {
    bus: Bus,
    name: String,
    events: String,
}

impl DeadLetters {
    async fn connect(connection: &Connection) -> anyhow::Result<Self> {
        let streams = stream_names(connection.pipeline.as_deref())?;
        // The services' own reading of NATS_*, without their other variables.
        let mut settings = ServiceEnv::from_lookup(Service::Ingest, |name| {
            name.starts_with("NATS_")
                .then(|| std::env::var(name).ok())
                .flatten()
        })?
        .nats;
        settings.url.clone_from(&connection.nats);
        // A shutdown that has already fired makes `Bus::connect` report the first
        // failure instead of retrying until the server answers: a command fails fast.
        let (shutdown, fire) = Shutdown::manual();
        fire.trigger();
        // Its error names the server and the cause.
        let bus = Bus::connect(&settings, "millrace-dlq", streams, &shutdown).await?;
        Ok(Self {
            name: bus.stream_name(StreamKind::Dlq).to_string(),
            events: bus.stream_name(StreamKind::Events).to_string(),
            bus,
        })
    }

    fn js(&self) -> &jetstream::Context {
        self.bus.jetstream()
    }

    async fn stream(&self) -> anyhow::Result<jetstream::stream::Stream> {
        self.js().get_stream(&self.name).await.with_context(|| {
            format!(
                "opening stream {} (no stage has run against this NATS yet, or the pipeline file names the DLQ otherwise)",
                self.name
            )
        })
    }

    /// Every record `select` matches, in sequence order, read with an ordered consumer
    /// (ephemeral, unacknowledged: it leaves nothing behind on the stream).
    async fn read(&self, select: &Selection) -> anyhow::Result<Vec<Letter>> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                filter_subject: select
                    .stage
                    .as_deref()
                    .map(subject::dlq)
                    .unwrap_or_default(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading stream {}", self.name))?;
        let mut letters = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(letters);
        }
        let mut messages = consumer
            .messages()
            .await
            .with_context(|| format!("reading stream {}", self.name))?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .with_context(|| format!("stream {} stopped delivering for 30 s", self.name))?;
            let Some(message) = next else { break };
            let message = message.with_context(|| format!("reading stream {}", self.name))?;
            let info = message.info().map_err(anyhow::Error::msg)?;
            let (sequence, left) = (info.stream_sequence, info.pending);
            let letter = Letter::read(
                sequence,
                message.subject.as_str(),
                message.headers.as_ref(),
                &message.payload,
            );
            if select.matches(&letter.letter) {
                letters.push(letter);
            }
            if left == 0 {
                break;
            }
        }
        Ok(letters)
    }

    /// The record at `sequence`.
    async fn get(&self, sequence: u64) -> anyhow::Result<Letter> {
        let stream = self.stream().await?;
        match stream.get_raw_message(sequence).await {
            Ok(m) => Ok(Letter::read(
                m.sequence,
                m.subject.as_str(),
                Some(&m.headers),
                &m.payload,
            )),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => bail!(
                "{} holds no record at sequence {sequence} (purged, or never there)",
                self.name
            ),
            Err(e) => Err(e).with_context(|| format!("reading {} sequence {sequence}", self.name)),
        }
    }

    /// The records a re-drive is about: the named sequences, or every record, that
    /// `select` matches.
    async fn select(&self, select: &Selection, sequences: &[u64]) -> anyhow::Result<Vec<Letter>> {
        if sequences.is_empty() {
            return self.read(select).await;
        }
        let mut sequences = sequences.to_vec();
        sequences.sort_unstable();
        sequences.dedup();
        let mut letters = Vec::with_capacity(sequences.len());
        for sequence in sequences {
            let letter = self.get(sequence).await?;
            if select.matches(&letter.letter) {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    /// How long JetStream remembers a message id: the longer of the DLQ's and EVENTS'
    /// duplicate windows.
    async fn duplicate_window(&self) -> anyhow::Result<Duration> {
        let dlq = self.stream().await?.cached_info().config.duplicate_window;
        let events = match self.js().get_stream(&self.events).await {
            Ok(stream) => stream.cached_info().config.duplicate_window,
            Err(_) => Duration::ZERO,
        };
        Ok(dlq.max(events))
    }

    /// The event EVENTS holds at `sequence`.
    async fn stored_event(&self, sequence: u64) -> anyhow::Result<Event> {
        let stream = self
            .js()
            .get_stream(&self.events)
            .await
            .with_context(|| format!("opening stream {}", self.events))?;
        let message = stream
            .get_raw_message(sequence)
            .await
            .with_context(|| format!("reading {} sequence {sequence}", self.events))?;
        Event::decode(message.payload)
            .with_context(|| format!("{} sequence {sequence} is not an Event", self.events))
    }

    async fn delete(&self, sequence: u64) -> anyhow::Result<()> {
        let deleted = self
            .stream()
            .await?
            .delete_message(sequence)
            .await
            .with_context(|| format!("deleting {} sequence {sequence}", self.name))?;
        anyhow::ensure!(deleted, "{} did not delete sequence {sequence}", self.name);
        Ok(())
    }
}

/// The stream names from the pipeline file: `path`, else the services' default file
/// when it is there, else the default names.
fn stream_names(path: Option<&Path>) -> anyhow::Result<StreamSettings> {
    let path = match path {
        Some(path) => path,
        None if Path::new(DEFAULT_PIPELINE).is_file() => Path::new(DEFAULT_PIPELINE),
        None => return Ok(StreamSettings::default()),
    };
    let pipeline = Pipeline::load(path)
        .with_context(|| format!("reading the stream names from {}", path.display()))?;
    Ok(pipeline.streams)
}

// ---- re-drive --------------------------------------------------------------

/// How a record goes back into ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Door {
    /// `PublishBatch`, the record as one of `encoded_events`.
    Grpc,
    /// A request on `ingest.<type>`, answered on the reply subject.
    Subject { subject: String, json: bool },
}

impl Door {
    fn describe(&self) -> String {
        match self {
            Door::Grpc => "ingest PublishBatch".into(),
            Door::Subject {
                subject,
                json: true,
            } => format!("{subject} as JSON"),
            Door::Subject { subject, .. } => subject.clone(),
        }
    }
}

/// What can be done with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send `body` to ingest through `door`. `stored_before`: ingest stored this very
    /// event before a later stage refused it.
    Ingest {
        door: Door,
        body: Vec<u8>,
        stored_before: bool,
    },
    /// It cannot go back through ingest: `code` in one word, `why` for people.
    Never { code: &'static str, why: String },
}

/// Decides how `letter` can be re-driven from what its stage keeps in the payload.
pub fn plan(letter: &DeadLetter) -> Plan {
    let stage = letter.stage.as_str();
    match (stage, letter.reason.as_str()) {
        (_, "malformed" | UNREADABLE) => Plan::Never {
            code: "malformed",
            why: format!(
                "{stage} could not read these {} bytes as a record; the producer must send it again",
                letter.payload.len()
            ),
        },
        ("feature-state", "late") => Plan::Never {
            code: "late",
            why: "its event time is behind feature-state's watermark and would be again: \
                  only events within [feature_state] allowed_lateness count"
                .into(),
        },
        ("ingest", _) => from_producer(letter),
        ("enrich", _) => match Event::decode(letter.payload.as_slice()) {
            Ok(event) if event.event_id.is_empty() => no_event_id(),
            Ok(_) => Plan::Ingest {
                door: Door::Grpc,
                body: letter.payload.clone(),
                stored_before: true,
            },
            Err(e) => not_an_event(&e),
        },
        (stage, _) => Plan::Never {
            code: "not_an_event",
            why: format!("{stage} keeps what it refused in its own form, not as an Event ingest takes"),
        },
    }
}

/// An ingest reject: the producer's bytes, protobuf or JSON.
fn from_producer(letter: &DeadLetter) -> Plan {
    let by_subject = |json: bool| -> Plan {
        if !is_subject_token(&letter.event_type) {
            return Plan::Never {
                code: "no_event_type",
                why: format!(
                    "it names no event type ingest has a subject for ({:?})",
                    letter.event_type
                ),
            };
        }
        Plan::Ingest {
            door: Door::Subject {
                subject: format!("ingest.{}", letter.event_type),
                json,
            },
            body: letter.payload.clone(),
            stored_before: false,
        }
    };
    if is_json_object(&letter.payload) {
        if letter.event_id.is_empty() {
            return no_event_id();
        }
        return by_subject(true);
    }
    match Event::decode(letter.payload.as_slice()) {
        Err(e) => not_an_event(&e),
        Ok(event) if event.event_id.is_empty() => no_event_id(),
        // It came on `ingest.<type>`, which named its type.
        Ok(event) if event.r#type.is_empty() => by_subject(false),
        Ok(_) => Plan::Ingest {
            door: Door::Grpc,
            body: letter.payload.clone(),
            stored_before: false,
        },
    }
}

fn no_event_id() -> Plan {
    Plan::Never {
        code: "no_event_id",
        why: "it has no event_id, so a re-drive could not be told from a new event; \
              the producer must send it again with one"
            .into(),
    }
}

fn not_an_event(e: &prost::DecodeError) -> Plan {
    Plan::Never {
        code: "not_an_event",
        why: format!("the payload is not a millrace.v1.Event: {e}"),
    }
}

fn is_subject_token(text: &str) -> bool {
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

fn is_json_object(payload: &[u8]) -> bool {
    payload.trim_ascii_start().first() == Some(&b'{')
        && serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| v.is_object())
}

/// Until when (µs) ingest still remembers the id of an event it stored before a later
/// stage refused it at `refused_us`; `None` once it has forgotten.
fn remembered_until(refused_us: i64, window: Duration, now_us: i64) -> Option<i64> {
    let until = window_end(refused_us, window);
    (now_us < until).then_some(until)
}

fn window_end(from_us: i64, window: Duration) -> i64 {
    from_us.saturating_add(i64::try_from(window.as_micros()).unwrap_or(i64::MAX))
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ingest stored it, at this sequence of EVENTS (LABELS for a label event).
    Accepted { stream_sequence: u64 },
    /// Ingest had stored its event id already (an earlier re-drive, or the producer's retry).
    Duplicate { stream_sequence: u64 },
    /// Ingest refused it again.
    Rejected { code: String, message: String },
    /// It cannot be re-driven through ingest.
    NotRedrivable { code: String, why: String },
    /// Not re-driven this time; a later re-drive can.
    NotYet { code: String, why: String },
    /// `--dry-run`: it would go through this door.
    WouldSend { door: String },
}

impl Outcome {
    /// The answer ingest gave, as an outcome. `unavailable` means "not stored, send it
    /// again": not a verdict on the record.
    pub fn from_ack(status: AckStatus, code: &str, message: &str, stream_sequence: u64) -> Self {
        match status {
            AckStatus::Accepted => Self::Accepted { stream_sequence },
            AckStatus::Duplicate => Self::Duplicate { stream_sequence },
            AckStatus::Rejected if code == "unavailable" || code == "resource_exhausted" => {
                Self::NotYet {
                    code: code.into(),
                    why: message.into(),
                }
            }
            AckStatus::Rejected => Self::Rejected {
                code: code.into(),
                message: message.into(),
            },
            AckStatus::Unspecified => Self::NotYet {
                code: "unanswered".into(),
                why: format!("ingest answered without a status ({code} {message})"),
            },
        }
    }

    fn from_event_ack(ack: &EventAck) -> Self {
        let status = AckStatus::try_from(ack.status).unwrap_or(AckStatus::Unspecified);
        Self::from_ack(status, &ack.code, &ack.message, ack.stream_sequence)
    }

    /// The JSON answer of ingest's NATS path (`{"status": "accepted", …}`).
    fn from_json_ack(body: &[u8]) -> Self {
        let Ok(ack) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self::NotYet {
                code: "unanswered".into(),
                why: format!(
                    "ingest's answer is not JSON: {}",
                    String::from_utf8_lossy(body)
                ),
            };
        };
        let text = |k: &str| ack[k].as_str().unwrap_or_default().to_string();
        let status = match text("status").as_str() {
            "accepted" => AckStatus::Accepted,
            "duplicate" => AckStatus::Duplicate,
            "rejected" => AckStatus::Rejected,
            _ => AckStatus::Unspecified,
        };
        let sequence = ack["stream_sequence"].as_u64().unwrap_or_default();
        Self::from_ack(status, &text("code"), &text("message"), sequence)
    }

    fn is_transient(&self) -> bool {
        matches!(self, Self::NotYet { code, .. } if code == "unavailable" || code == "resource_exhausted")
    }

    /// The event is in the pipeline now, so the record may leave the DLQ.
    pub fn purgeable(&self) -> bool {
        matches!(self, Self::Accepted { .. } | Self::Duplicate { .. })
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "ACCEPTED",
            Self::Duplicate { .. } => "DUPLICATE",
            Self::Rejected { .. } => "REJECTED",
            Self::NotRedrivable { .. } => "NOT_REDRIVABLE",
            Self::NotYet { .. } => "NOT_YET",
            Self::WouldSend { .. } => "WOULD_SEND",
        }
    }

    /// `sequence  event_id  OUTCOME  code  detail`, tab-separated.
    pub fn line(&self, sequence: u64, event_id: &str) -> String {
        let (code, detail) = match self {
            Self::Accepted { stream_sequence } => {
                ("-", format!("stored at stream sequence {stream_sequence}"))
            }
            Self::Duplicate { stream_sequence } => (
                "-",
                format!("already stored at stream sequence {stream_sequence}"),
            ),
            Self::Rejected { code, message } => (code.as_str(), message.clone()),
            Self::NotRedrivable { code, why } | Self::NotYet { code, why } => {
                (code.as_str(), why.clone())
            }
            Self::WouldSend { door } => ("-", format!("via {door}")),
        };
        format!(
            "{sequence}\t{}\t{}\t{code}\t{}",
            or_dash(event_id),
            self.label(),
            one_line(&detail)
        )
    }
}

/// Per outcome label, how many records ended there.
fn summary(outcomes: &[Outcome]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.label()).or_default() += 1;
    }
    let parts: Vec<String> = [
        "ACCEPTED",
        "DUPLICATE",
        "REJECTED",
        "NOT_REDRIVABLE",
        "NOT_YET",
        "WOULD_SEND",
    ]
    .iter()
    .filter_map(|l| counts.get(l).map(|n| format!("{n} {}", l.to_lowercase())))
    .collect();
    format!("{}: {}", records(outcomes.len()), parts.join(", "))
}

async fn redrive(dlq: &DeadLetters, args: RedriveArgs) -> anyhow::Result<()> {
    if args.select.is_empty() && args.sequences.is_empty() && !args.all {
        bail!("say which records to re-drive: --stage, --reason, --sequence or --all");
    }
    let letters = dlq.select(&args.select, &args.sequences).await?;
    if letters.is_empty() {
        println!("no records in {} match", dlq.name);
        return Ok(());
    }
    let window = dlq.duplicate_window().await?;
    let now = millrace_chassis::time::now_us();

    let mut outcomes: Vec<Outcome> = Vec::with_capacity(letters.len());
    // Records whose event ingest stored before a later stage refused it.
    let mut stored_before = vec![false; letters.len()];
    let mut by_grpc: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut by_subject: Vec<(usize, String, bool, Vec<u8>)> = Vec::new();
    for (i, l) in letters.iter().enumerate() {
        let outcome = match plan(&l.letter) {
            Plan::Never { code, why } => Outcome::NotRedrivable {
                code: code.into(),
                why,
            },
            Plan::Ingest {
                door,
                body,
                stored_before: before,
            } => {
                stored_before[i] = before;
                let remembered = if before {
                    remembered_until(l.letter.time_us, window, now)
                } else {
                    None
                };
                match (remembered, door) {
                    (Some(until), _) => still_remembered(&l.letter, until, window),
                    (None, door) if args.dry_run => Outcome::WouldSend {
                        door: door.describe(),
                    },
                    (None, Door::Grpc) => {
                        by_grpc.push((i, body));
                        unanswered(&args.ingest)
                    }
                    (None, Door::Subject { subject, json }) => {
                        by_subject.push((i, subject, json, body));
                        unanswered(&args.ingest)
                    }
                }
            }
        };
        outcomes.push(outcome);
    }

    if !by_grpc.is_empty() {
        let mut client = IngestClient::connect(args.ingest.clone())
            .await
            .with_context(|| format!("connecting to ingest at {}", args.ingest))?;
        for chunk in by_grpc.chunks(args.batch.max(1)) {
            publish_batch(&mut client, chunk, &mut outcomes).await;
        }
    }
    for (i, subject, json, body) in by_subject {
        outcomes[i] = request_on_subject(dlq.bus.client(), &subject, json, body).await;
    }
    // A DUPLICATE for an event ingest stored before a later stage refused it may be
    // that very copy, still in the duplicate window: then nothing was re-driven.
    for ((l, outcome), before) in letters.iter().zip(outcomes.iter_mut()).zip(stored_before) {
        let Outcome::Duplicate { stream_sequence } = *outcome else {
            continue;
        };
        if !before {
            continue;
        }
        *outcome = match dlq.stored_event(stream_sequence).await {
            Ok(copy) if copy.ingest_time_us > l.letter.time_us => continue,
            Ok(_) => still_remembered(&l.letter, window_end(l.letter.time_us, window), window),
            Err(e) => Outcome::NotYet {
                code: "duplicate_window".into(),
                why: format!(
                    "ingest deduplicated event {} against {} sequence {stream_sequence}, which \
                     could not be read to tell whether it is the copy {} refused: {e:#}",
                    l.letter.event_id, dlq.events, l.letter.stage
                ),
            },
        };
    }

    for (l, outcome) in letters.iter().zip(&outcomes) {
        println!("{}", outcome.line(l.sequence, &l.letter.event_id));
    }
    let mut footer = summary(&outcomes);
    let purgeable: Vec<u64> = letters
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.purgeable())
        .map(|(l, _)| l.sequence)
        .collect();
    if args.purge {
        let mut purged = 0;
        for sequence in &purgeable {
            match dlq.delete(*sequence).await {
                Ok(()) => purged += 1,
                Err(e) => eprintln!("could not purge DLQ sequence {sequence}: {e:#}"),
            }
        }
        let _ = write!(footer, "; purged {purged} from {}", dlq.name);
    } else if !purgeable.is_empty() {
        let _ = write!(
            footer,
            "; the {} re-driven stay in {} (--purge deletes them; re-driven again after the {}s duplicate window they would be stored again)",
            purgeable.len(),
            dlq.name,
            window.as_secs()
        );
    }
    println!("{footer}");
    Ok(())
}

/// A record queued for ingest, until its answer arrives.
fn unanswered(ingest: &str) -> Outcome {
    Outcome::NotYet {
        code: "unavailable".into(),
        why: format!("no answer from ingest at {ingest}"),
    }
}

fn still_remembered(letter: &DeadLetter, until_us: i64, window: Duration) -> Outcome {
    Outcome::NotYet {
        code: "duplicate_window".into(),
        why: format!(
            "ingest stored event {} before {} refused it and deduplicates its id until {} \
             (the {}s duplicate window); re-drive it after that",
            letter.event_id,
            letter.stage,
            utc(until_us),
            window.as_secs()
        ),
    }
}

/// Sends `chunk` (indexes into `outcomes`, bytes) with `PublishBatch`, resending what
/// ingest could not store yet for up to [`RETRY_FOR`]; records the outcome of each.
async fn publish_batch(
    client: &mut IngestClient<Channel>,
    chunk: &[(usize, Vec<u8>)],
    outcomes: &mut [Outcome],
) {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut delay = Duration::from_millis(50);
    let mut pending: Vec<&(usize, Vec<u8>)> = chunk.iter().collect();
    while !pending.is_empty() {
        let request = PublishBatchRequest {
            events: vec![],
            encoded_events: pending.iter().map(|(_, body)| body.clone()).collect(),
        };
        let mut retry = Vec::new();
        match client.publish_batch(request).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                for (index, record) in pending.iter().enumerate() {
                    let ack = answer.acks.iter().find(|a| a.index as usize == index);
                    let outcome = match ack {
                        Some(ack) => Outcome::from_event_ack(ack),
                        None => Outcome::NotYet {
                            code: "unanswered".into(),
                            why: "ingest's answer has no ack for it".into(),
                        },
                    };
                    if outcome.is_transient() {
                        retry.push(*record);
                    }
                    outcomes[record.0] = outcome;
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::DeadlineExceeded
                ) =>
            {
                for record in &pending {
                    outcomes[record.0] = Outcome::NotYet {
                        code: "unavailable".into(),
                        why: format!("ingest: {}", status.message()),
                    };
                }
                retry = pending;
            }
            Err(status) => {
                for record in &pending {
                    outcomes[record.0] = Outcome::NotYet {
                        code: "batch_refused".into(),
                        why: format!(
                            "ingest refused the batch of {} records ({:?}: {}); try a smaller --batch",
                            pending.len(),
                            status.code(),
                            status.message()
                        ),
                    };
                }
                return;
            }
        }
        if retry.is_empty() || tokio::time::Instant::now() + delay >= deadline {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        pending = retry;
    }
}

/// Sends one record on `ingest.<type>` and reads ingest's answer (JSON for JSON).
async fn request_on_subject(
    client: &async_nats::Client,
    subject: &str,
    json: bool,
    body: Vec<u8>,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut delay = Duration::from_millis(50);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        if json {
            headers.insert("Content-Type", "application/json");
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(body.clone().into())
            .timeout(Some(Duration::from_secs(20)));
        let outcome = match client.send_request(subject.to_string(), request).await {
            Ok(answer) if json => Outcome::from_json_ack(&answer.payload),
            Ok(answer) => match EventAck::decode(answer.payload) {
                Ok(ack) => Outcome::from_event_ack(&ack),
                Err(e) => Outcome::NotYet {
                    code: "unanswered".into(),
                    why: format!("ingest's answer on {subject} is not an EventAck: {e}"),
                },
            },
            Err(e) => Outcome::NotYet {
                code: "unavailable".into(),
                why: format!("no answer on {subject}: {e}"),
            },
        };
        if !outcome.is_transient() || tokio::time::Instant::now() + delay >= deadline {
            return outcome;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

// ---- for people ------------------------------------------------------------

/// `sequence  time  stage  reason  event_id  message`, tab-separated.
fn list_line(l: &Letter) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        l.sequence,
        utc(l.letter.time_us),
        l.letter.stage,
        l.letter.reason,
        or_dash(&l.letter.event_id),
        one_line(&l.letter.message)
    )
}

/// Per (stage, reason): how many records, the oldest and the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    records: u64,
    oldest_us: i64,
    newest_us: i64,
}

fn tally(letters: &[Letter]) -> BTreeMap<(String, String), Tally> {
    let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for l in letters {
        let t = l.letter.time_us;
        out.entry((l.letter.stage.clone(), l.letter.reason.clone()))
            .and_modify(|e| {
                e.records += 1;
                e.oldest_us = e.oldest_us.min(t);
                e.newest_us = e.newest_us.max(t);
            })
            .or_insert(Tally {
                records: 1,
                oldest_us: t,
                newest_us: t,
            });
    }
    out
}

/// The whole record, for `dlq show`.
fn show(l: &Letter) -> String {
    let d = &l.letter;
    let redrive = match plan(d) {
        Plan::Ingest { door, .. } => format!("via {}", door.describe()),
        Plan::Never { code, why } => format!("not re-drivable ({code}): {why}"),
    };
    let mut out = String::new();
    for (name, value) in [
        ("sequence", l.sequence.to_string()),
        ("stage", d.stage.clone()),
        ("reason", d.reason.clone()),
        ("event_id", or_dash(&d.event_id).to_string()),
        ("event_type", or_dash(&d.event_type).to_string()),
        ("time", format!("{} ({} µs)", utc(d.time_us), d.time_us)),
        ("message", d.message.clone()),
        ("redrive", redrive),
    ] {
        let _ = writeln!(out, "{name:<11}{value}");
    }
    let _ = write!(out, "payload    {}", render_payload(d));
    out
}

/// The payload as what its stage keeps there: an Event, an EnrichedEvent or the
/// producer's JSON, pretty-printed; hex for anything else.
fn render_payload(d: &DeadLetter) -> String {
    let bytes = d.payload.as_slice();
    let size = bytes.len();
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    let decoded = match (d.stage.as_str(), d.reason.as_str()) {
        (_, "malformed" | UNREADABLE) => None,
        ("feature-state", "late") => Some(
            EnrichedEvent::decode(bytes)
                .map(|e| format!("EnrichedEvent, {size} bytes\n{}", pretty(enriched_json(&e))))
                .map_err(|e| format!("not an EnrichedEvent: {e}")),
        ),
        ("ingest", _) if is_json_object(bytes) => Some(
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map(|v| format!("JSON, {size} bytes\n{}", pretty(v)))
                .map_err(|e| e.to_string()),
        ),
        ("ingest" | "enrich", _) => Some(
            Event::decode(bytes)
                .map(|e| format!("Event, {size} bytes\n{}", pretty(event_json(&e))))
                .map_err(|e| format!("not an Event: {e}")),
        ),
        _ => None,
    };
    match decoded {
        Some(Ok(text)) => text + "\n",
        Some(Err(why)) => format!("{size} bytes ({why})\n{}", hexdump(bytes, 4096)),
        None => format!("{size} bytes\n{}", hexdump(bytes, 4096)),
    }
}

fn event_json(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "event_id": e.event_id,
        "type": e.r#type,
        "schema_version": e.schema_version,
        "key": e.key,
        "event_time_us": e.event_time_us,
        "event_time": utc(e.event_time_us),
        "ingest_time_us": e.ingest_time_us,
        "partition": e.partition,
        "fields": fields_json(&e.fields),
    })
}

fn enriched_json(e: &EnrichedEvent) -> serde_json::Value {
    serde_json::json!({
        "event_id": e.event_id,
        "event": e.event.as_ref().map(event_json),
        "joined": fields_json(&e.joined),
        "enrich_time_us": e.enrich_time_us,
    })
}

/// Values by their type: `12` is an int, `12.0` a double, `"12"` a string.
fn fields_json<'a>(
    fields: impl IntoIterator<Item = (&'a String, &'a millrace_proto::Value)>,
) -> serde_json::Value {
    use millrace_proto::value::Kind;
    let map: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .map(|(name, v)| {
            let value = match &v.kind {
                None => serde_json::Value::Null,
                Some(Kind::DoubleValue(d)) => serde_json::json!(d),
                Some(Kind::IntValue(i)) => serde_json::json!(i),
                Some(Kind::StringValue(s)) => serde_json::json!(s),
                Some(Kind::BoolValue(b)) => serde_json::json!(b),
                Some(Kind::TimestampUs(t)) => serde_json::json!({ "timestamp_us": t }),
            };
            (name.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// `offset  hex bytes  |ascii|`, 16 bytes a line, at most `max` bytes.
fn hexdump(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for (n, line) in bytes[..bytes.len().min(max)].chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "{:08x}  {:<47}  |{ascii}|", n * 16, hex.join(" "));
    }
    if bytes.len() > max {
        let _ = writeln!(out, "... {} more bytes", bytes.len() - max);
    }
    out
}

/// Microseconds since the epoch as `2013-01-01T10:00:00.000Z`.
fn utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let millis = us.rem_euclid(1_000_000) / 1000;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Text on one line: tabs and line breaks become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn records(n: usize) -> String {
    if n == 1 {
        "1 record".into()
    } else {
        format!("{n} records")
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::Value;

    fn order(id: &str) -> Event {
        Event {
            event_id: id.into(),
            r#type: "order_placed".into(),
            fields: [("amount".to_string(), Value::double(12.5))]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn letter(stage: &str, reason: &str, payload: Vec<u8>) -> DeadLetter {
        DeadLetter {
            stage: stage.into(),
            reason: reason.into(),
            event_id: "o-1".into(),
            event_type: "order_placed".into(),
            payload,
            time_us: 1_000_000,
            ..Default::default()
        }
    }

    fn never_code(p: &Plan) -> Option<&'static str> {
        match p {
            Plan::Never { code, .. } => Some(code),
            Plan::Ingest { .. } => None,
        }
    }

    #[test]
    fn an_ingest_reject_goes_back_to_publish_batch_as_the_producers_bytes() {
        let bytes = order("o-1").encode_to_vec();
        assert_eq!(
            plan(&letter("ingest", "unknown_field", bytes.clone())),
            Plan::Ingest {
                door: Door::Grpc,
                body: bytes,
                stored_before: false
            }
        );
    }

    #[test]
    fn an_event_without_type_goes_back_on_the_subject_that_named_it() {
        let mut e = order("o-1");
        e.r#type.clear();
        let plan = plan(&letter("ingest", "missing_field", e.encode_to_vec()));
        assert!(
            matches!(
                plan,
                Plan::Ingest { door: Door::Subject { ref subject, json: false }, .. } if subject == "ingest.order_placed"
            ),
            "{plan:?}"
        );
    }

    #[test]
    fn a_json_reject_goes_back_on_the_subject_as_json() {
        let body = br#" {"event_id":"o-1","fields":{"amount":"lots"}}"#.to_vec();
        let plan = plan(&letter("ingest", "wrong_type", body.clone()));
        assert_eq!(
            plan,
            Plan::Ingest {
                door: Door::Subject {
                    subject: "ingest.order_placed".into(),
                    json: true
                },
                body,
                stored_before: false
            }
        );
    }

    #[test]
    fn records_that_cannot_go_back_through_ingest_say_why() {
        let enriched = EnrichedEvent {
            event_id: "o-1".into(),
            event: Some(order("o-1")),
            ..Default::default()
        };
        let mut no_type = letter("ingest", "unknown_type", {
            let mut e = order("o-1");
            e.r#type.clear();
            e.encode_to_vec()
        });
        no_type.event_type.clear();
        let cases = [
            (
                letter("ingest", "malformed", b"\x0a\xffjunk".to_vec()),
                "malformed",
            ),
            (letter("enrich", "malformed", vec![1, 2, 3]), "malformed"),
            (letter("ingest", UNREADABLE, vec![]), "malformed"),
            (
                letter("feature-state", "late", enriched.encode_to_vec()),
                "late",
            ),
            (
                letter("ingest", "missing_event_id", order("").encode_to_vec()),
                "no_event_id",
            ),
            (
                letter("enrich", "filter:x", order("").encode_to_vec()),
                "no_event_id",
            ),
            (
                letter("ingest", "unknown_type", b"\x0a\xff".to_vec()),
                "not_an_event",
            ),
            (letter("inference", "odd", vec![]), "not_an_event"),
            (no_type, "no_event_type"),
        ];
        for (l, code) in cases {
            assert_eq!(
                never_code(&plan(&l)),
                Some(code),
                "{} {}",
                l.stage,
                l.reason
            );
        }
    }

    #[test]
    fn an_enrich_refusal_is_an_event_ingest_stored_before() {
        let bytes = order("o-1").encode_to_vec();
        assert_eq!(
            plan(&letter("enrich", "filter:big", bytes.clone())),
            Plan::Ingest {
                door: Door::Grpc,
                body: bytes,
                stored_before: true
            }
        );
    }

    #[test]
    fn ingest_remembers_an_id_for_the_duplicate_window_after_the_refusal() {
        let w = Duration::from_secs(30);
        assert_eq!(remembered_until(1_000_000, w, 1_000_000), Some(31_000_000));
        assert_eq!(remembered_until(1_000_000, w, 30_999_999), Some(31_000_000));
        assert_eq!(remembered_until(1_000_000, w, 31_000_000), None);
        assert_eq!(remembered_until(i64::MAX - 1, w, 0), Some(i64::MAX));
    }

    #[test]
    fn acks_map_to_outcomes_and_only_stored_ones_are_purgeable() {
        let cases = [
            (
                AckStatus::Accepted,
                "",
                Outcome::Accepted { stream_sequence: 7 },
                true,
            ),
            (
                AckStatus::Duplicate,
                "",
                Outcome::Duplicate { stream_sequence: 7 },
                true,
            ),
            (
                AckStatus::Rejected,
                "missing_field",
                Outcome::Rejected {
                    code: "missing_field".into(),
                    message: "m".into(),
                },
                false,
            ),
            (
                AckStatus::Rejected,
                "unavailable",
                Outcome::NotYet {
                    code: "unavailable".into(),
                    why: "m".into(),
                },
                false,
            ),
        ];
        for (status, code, expected, purgeable) in cases {
            let outcome = Outcome::from_ack(status, code, "m", 7);
            assert_eq!(outcome, expected);
            assert_eq!(outcome.purgeable(), purgeable, "{outcome:?}");
        }
        assert!(Outcome::from_ack(AckStatus::Rejected, "unavailable", "", 0).is_transient());
        assert!(!Outcome::NotRedrivable {
            code: "late".into(),
            why: String::new()
        }
        .purgeable());
    }

    #[test]
    fn json_acks_read_like_protobuf_ones() {
        let ack = br#"{"event_id":"o-1","status":"duplicate","code":"","message":"","stream_sequence":12}"#;
        assert_eq!(
            Outcome::from_json_ack(ack),
            Outcome::Duplicate {
                stream_sequence: 12
            }
        );
        let ack = br#"{"event_id":"o-1","status":"rejected","code":"wrong_type","message":"amount","stream_sequence":0}"#;
        assert_eq!(
            Outcome::from_json_ack(ack),
            Outcome::Rejected {
                code: "wrong_type".into(),
                message: "amount".into()
            }
        );
        assert!(matches!(
            Outcome::from_json_ack(b"nope"),
            Outcome::NotYet { ref code, .. } if code == "unanswered"
        ));
    }

    #[test]
    fn outcome_lines_have_five_tab_separated_columns() {
        let lines = [
            Outcome::Accepted { stream_sequence: 3 }.line(9, "o-1"),
            Outcome::Rejected {
                code: "missing_field".into(),
                message: "event o-1:\trequired field `amount`\nis missing".into(),
            }
            .line(10, ""),
        ];
        assert_eq!(lines[0], "9\to-1\tACCEPTED\t-\tstored at stream sequence 3");
        assert_eq!(
            lines[1],
            "10\t-\tREJECTED\tmissing_field\tevent o-1: required field `amount` is missing"
        );
    }

    #[test]
    fn the_summary_counts_each_outcome() {
        let outcomes = [
            Outcome::Accepted { stream_sequence: 1 },
            Outcome::Accepted { stream_sequence: 2 },
            Outcome::NotRedrivable {
                code: "late".into(),
                why: String::new(),
            },
        ];
        assert_eq!(
            summary(&outcomes),
            "3 records: 2 accepted, 1 not_redrivable"
        );
    }

    #[test]
    fn selections_match_stage_and_reason_or_a_reason_prefix() {
        let l = letter("enrich", "filter:no_tailnum", vec![]);
        let select = |stage: Option<&str>, reason: Option<&str>| Selection {
            stage: stage.map(String::from),
            reason: reason.map(String::from),
        };
        assert!(select(None, None).matches(&l));
        assert!(select(Some("enrich"), Some("filter:*")).matches(&l));
        assert!(select(None, Some("filter:no_tailnum")).matches(&l));
        assert!(!select(None, Some("filter:")).matches(&l));
        assert!(!select(Some("ingest"), None).matches(&l));
        assert!(!select(None, Some("late")).matches(&l));
    }

    #[test]
    fn the_tally_counts_per_stage_and_reason_with_oldest_and_newest() {
        let at = |sequence: u64, reason: &str, time_us: i64| Letter {
            sequence,
            letter: DeadLetter {
                time_us,
                ..letter("ingest", reason, vec![])
            },
        };
        let t = tally(&[at(1, "a", 5), at(2, "b", 1), at(3, "a", 2)]);
        let a = t[&("ingest".to_string(), "a".to_string())];
        assert_eq!((a.records, a.oldest_us, a.newest_us), (2, 2, 5));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_357_034_400_000_000), "2013-01-01T10:00:00.000Z");
        assert_eq!(utc(951_782_400_123_456), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
        for text in ["2013-03-01T00:00:00Z", "2024-12-31T23:59:59Z"] {
            let us = crate::flights::parse_utc(text).expect("parses");
            assert_eq!(utc(us), text.replace('Z', ".000Z"));
        }
    }

    #[test]
    fn unreadable_payloads_print_as_hex() {
        let dump = hexdump(b"\x0a\xffnot protobuf, not at all", 4096);
        assert_eq!(
            dump.lines().next(),
            Some("00000000  0a ff 6e 6f 74 20 70 72 6f 74 6f 62 75 66 2c 20  |..not protobuf, |")
        );
        assert_eq!(dump.lines().count(), 2);
        assert!(hexdump(&[0; 40], 16).ends_with("... 24 more bytes\n"));
    }

    #[test]
    fn payloads_render_as_what_their_stage_keeps() {
        let shown = render_payload(&letter(
            "enrich",
            "filter:big",
            order("o-1").encode_to_vec(),
        ));
        assert!(shown.starts_with("Event, "), "{shown}");
        assert!(shown.contains("\"amount\": 12.5"), "{shown}");
        let enriched = EnrichedEvent {
            event_id: "o-1".into(),
            event: Some(order("o-1")),
            joined: [("plane_seats".to_string(), Value::int(150))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let shown = render_payload(&letter("feature-state", "late", enriched.encode_to_vec()));
        assert!(shown.starts_with("EnrichedEvent, "), "{shown}");
        assert!(shown.contains("\"plane_seats\": 150"), "{shown}");
        let shown = render_payload(&letter("ingest", "malformed", b"\x0a\xff".to_vec()));
        assert!(shown.starts_with("2 bytes\n00000000  0a ff"), "{shown}");
    }

    #[test]
    fn dlq_messages_that_are_no_dead_letter_are_listed_as_unreadable() {
        let l = Letter::read(4, "dlq.enrich", None, b"\x7f");
        assert_eq!(l.letter.reason, UNREADABLE);
        assert_eq!(l.letter.stage, "enrich");
        assert!(
            l.letter.message.contains("DLQ message 4"),
            "{}",
            l.letter.message
        );
        assert_eq!(never_code(&plan(&l.letter)), Some("malformed"));
    }
}
