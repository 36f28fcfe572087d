//! What monitor's tests and benchmark need besides the pipeline: messages published
//! straight to a stream as the stage upstream would have written them (a deterministic
//! `Nats-Msg-Id` each; one record, or a `millrace.v1.Batch` of records marked with
//! `Millrace-Batch` as enrich, feature-state and inference write them), monitor's JSON health, `promtool check metrics`, pausing a
//! process to slow a stage down, and a seeded normal distribution for drift.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::http::http_get;

/// One message for [`publish_raw`].
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub subject: String,
    pub msg_id: String,
    /// Headers besides `Nats-Msg-Id` (a batch's `Millrace-Batch`).
    pub headers: Vec<(&'static str, String)>,
    pub payload: Bytes,
}

impl RawMessage {
    pub fn new(
        subject: impl Into<String>,
        msg_id: impl Into<String>,
        message: &impl prost::Message,
    ) -> Self {
        Self {
            subject: subject.into(),
            msg_id: msg_id.into(),
            headers: Vec::new(),
            payload: Bytes::from(message.encode_to_vec()),
        }
    }

    /// A `millrace.v1.Batch` of `(record, traceparent)` items (an empty traceparent: no
    /// trace), marked `Millrace-Batch: <records>` as the stages publish their outputs.
    pub fn batch<M: prost::Message>(
        subject: impl Into<String>,
        msg_id: impl Into<String>,
        records: &[(M, String)],
    ) -> Self {
        let batch = millrace_proto::Batch {
            items: records
                .iter()
                .map(|(record, traceparent)| millrace_proto::BatchItem {
                    payload: Bytes::from(record.encode_to_vec()),
                    traceparent: traceparent.clone(),
                })
                .collect(),
        };
        Self {
            subject: subject.into(),
            msg_id: msg_id.into(),
            headers: vec![(crate::nats::BATCH_HEADER, records.len().to_string())],
            payload: Bytes::from(prost::Message::encode_to_vec(&batch)),
        }
    }

    /// The records the message holds: a batch's items, or 1.
    pub fn records(&self) -> u64 {
        self.headers
            .iter()
            .find(|(k, _)| *k == crate::nats::BATCH_HEADER)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1)
    }
}

/// Publishes `messages` in order, up to 512 awaiting their ack at once, and requires every
/// one to be stored (a duplicate id counts as stored). Answers how many were new.
pub async fn publish_raw(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = RawMessage>,
) -> Result<u64> {
    const IN_FLIGHT: usize = 512;
    let mut pending: VecDeque<(String, PublishAckFuture)> = VecDeque::new();
    let mut stored = 0u64;
    let mut settle = |ack: Result<jetstream::publish::PublishAck, _>, id: &str| -> Result<()> {
        let ack: jetstream::publish::PublishAck =
            ack.map_err(|e: async_nats::jetstream::context::PublishError| {
                anyhow::anyhow!("message {id} was not stored: {e}")
            })?;
        if !ack.duplicate {
            stored += 1;
        }
        Ok(())
    };
    for m in messages {
        if pending.len() >= IN_FLIGHT {
            if let Some((id, ack)) = pending.pop_front() {
                settle(ack.await, &id)?;
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.msg_id.as_str());
        for (name, value) in &m.headers {
            headers.insert(*name, value.as_str());
        }
        let ack = js
            .publish_with_headers(m.subject.clone(), headers, m.payload)
            .await
            .with_context(|| format!("publishing {} to {}", m.msg_id, m.subject))?;
        pending.push_back((m.msg_id, ack));
    }
    while let Some((id, ack)) = pending.pop_front() {
        settle(ack.await, &id)?;
    }
    Ok(stored)
}

/// Creates `name` over `<prefix>.>` the way the services provision their streams (file
/// storage, S2, 10-minute dedup window, atomic batches), so a test or bench can fill it before any
/// service runs; a service provisioning it later finds it as it wants it.
pub async fn create_stream(js: &jetstream::Context, name: &str, prefix: &str) -> Result<()> {
    js.create_or_update_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(600),
        // As the services provision it by default (`streams.compressed`).
        compression: Some(match prefix {
            "enriched" | "features" => stream::Compression::None,
            _ => stream::Compression::S2,
        }),
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {name}"))?;
    Ok(())
}

/// `GET /v1/model-health[?model=…]` from monitor, parsed.
pub async fn model_health_json(
    http_addr: SocketAddr,
    model: Option<&str>,
) -> Result<serde_json::Value> {
    let path = match model {
        Some(m) => format!("/v1/model-health?model={m}"),
        None => "/v1/model-health".to_string(),
    };
    let response = http_get(http_addr, &path).await?;
    ensure!(
        response.status == 200,
        "GET {path} answered {}: {}",
        response.status,
        response.body
    );
    serde_json::from_str(&response.body)
        .with_context(|| format!("GET {path}: not JSON: {}", response.body))
}

/// `promtool check metrics` with `text` on stdin: whether it passed, and what it said.
/// Fails when promtool is not installed (Debian's `prometheus` package has it).
pub async fn promtool_check(text: &str) -> Result<(bool, String)> {
    let promtool = which("promtool").context(
        "promtool not found on PATH: install Debian's `prometheus` package (scripts/install-deps.sh does)",
    )?;
    let mut child = tokio::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning promtool")?;
    let mut stdin = child.stdin.take().context("promtool stdin")?;
    stdin
        .write_all(text.as_bytes())
        .await
        .context("writing to promtool")?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .context("waiting for promtool")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), report))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Sends `signal` (`STOP`, `CONT`, …) to `pid` through `kill(1)` (the workspace denies
/// the `unsafe` that `libc::kill` needs). SIGSTOP freezes a stage as a stall would.
pub async fn signal_process(pid: u32, signal: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await
        .with_context(|| format!("running `kill -{signal} {pid}`"))?;
    if !status.success() {
        bail!("`kill -{signal} {pid}` failed with {status}");
    }
    Ok(())
}

/// A seeded source of normally distributed values (xorshift64* and Box–Muller): the
/// same seed gives the same values on every machine, so a drift test is deterministic.
#[derive(Debug, Clone)]
pub struct Gaussian {
    state: u64,
    spare: Option<f64>,
}

impl Gaussian {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.max(1),
            spare: None,
        }
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A value of N(`mean`, `sd`²).
    pub fn sample(&mut self, mean: f64, sd: f64) -> f64 {
        if let Some(z) = self.spare.take() {
            return mean + sd * z;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * theta.sin());
        mean + sd * r * theta.cos()
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`: (VmRSS, VmHWM) in MiB.
pub fn process_memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable {line:?}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time a process has used, user plus system, in seconds (from `/proc/<pid>/stat`).
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat field {}", i + 3))
    };
    // The kernel reports in clock ticks of USER_HZ, 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_message_holds_its_records_as_the_stages_pack_them() {
        let records: Vec<(millrace_proto::Label, String)> = (0..3)
            .map(|i| {
                let label = millrace_proto::Label {
                    event_id: format!("l{i}"),
                    ..Default::default()
                };
                (
                    label,
                    if i == 1 {
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()
                    } else {
                        String::new()
                    },
                )
            })
            .collect();
        let m = RawMessage::batch("labels.x", "t:labels.x:0", &records);
        assert_eq!(m.records(), 3);
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &m.headers {
            headers.insert(*k, v.as_str());
        }
        let payloads = crate::nats::records(Some(&headers), m.payload.clone()).expect("a batch");
        let ids: Vec<String> = payloads
            .into_iter()
            .map(|p| {
                <millrace_proto::Label as prost::Message>::decode(p)
                    .expect("a label")
                    .event_id
            })
            .collect();
        assert_eq!(ids, ["l0", "l1", "l2"]);
        let single = RawMessage::new("labels.x", "one", &records[0].0);
        assert_eq!((single.records(), single.headers.len()), (1, 0));
    }

    #[test]
    fn gaussian_is_seeded_and_roughly_normal() {
        let mut a = Gaussian::new(7);
        let mut b = Gaussian::new(7);
        let xs: Vec<f64> = (0..20_000).map(|_| a.sample(10.0, 2.0)).collect();
        let ys: Vec<f64> = (0..20_000).map(|_| b.sample(10.0, 2.0)).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 10.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "sd {}", var.sqrt());
    }
}
