//! One service binary under test: spawned with the environment every millrace service
//! reads, logging into the test's directory, and stopped the way a test asks (SIGKILL as
//! a crash, SIGTERM as an orderly shutdown).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::http::http_get;
use crate::{free_addr, log_tail};

/// The five services, in dataflow order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Ingest,
    Enrich,
    FeatureState,
    Inference,
    Monitor,
}

impl Service {
    /// Dataflow order: each reads what the one before it writes.
    pub const ALL: [Service; 5] = [
        Service::Ingest,
        Service::Enrich,
        Service::FeatureState,
        Service::Inference,
        Service::Monitor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Enrich => "enrich",
            Self::FeatureState => "feature-state",
            Self::Inference => "inference",
            Self::Monitor => "monitor",
        }
    }

    /// The binary's name, which is also the OpenTelemetry `service.name` it reports.
    pub fn binary(self) -> String {
        format!("millrace-{}", self.name())
    }
}

/// Where the service binaries are: `MILLRACE_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`,
/// else the workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MILLRACE_BIN_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("debug");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// What a service needs from the test around it.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub nats_url: String,
    pub pipeline_path: PathBuf,
    /// The test's directory: the service's data dir and log go below it.
    pub dir: PathBuf,
    /// `http://127.0.0.1:<port>` of an OTLP/gRPC trace receiver, if the test wants spans.
    pub otlp_endpoint: Option<String>,
}

/// A running (or stopped, between kill and restart) service process. Killed on drop; when
/// dropped during a panic it prints the tail of its log, so a failed test shows why.
pub struct ServiceProcess {
    service: Service,
    program: PathBuf,
    env: Vec<(String, String)>,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ServiceProcess {
    /// Spawns the service (without waiting for it: see [`Self::wait_ready`]).
    pub fn spawn(service: Service, settings: &ServiceSettings) -> Result<Self> {
        let mut process = Self::unstarted(service, settings)?;
        process.launch()?;
        Ok(process)
    }

    /// A process set up but not started, so its environment can be changed
    /// first ([`Self::set_env`]); [`Self::start`] starts it.
    pub fn unstarted(service: Service, settings: &ServiceSettings) -> Result<Self> {
        let program = bin_dir().join(service.binary());
        if !program.is_file() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first (or point MILLRACE_BIN_DIR at the binaries)",
                program.display()
            );
        }
        let http_addr = free_addr()?;
        let grpc_addr = free_addr()?;
        let data_dir = settings.dir.join("data").join(service.name());
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut env = vec![
            ("NATS_URL".to_string(), settings.nats_url.clone()),
            (
                "MILLRACE_PIPELINE".into(),
                settings.pipeline_path.display().to_string(),
            ),
            ("MILLRACE_DATA_DIR".into(), data_dir.display().to_string()),
            ("MILLRACE_HTTP_ADDR".into(), http_addr.to_string()),
            ("MILLRACE_GRPC_ADDR".into(), grpc_addr.to_string()),
            ("MILLRACE_SNAPSHOT_INTERVAL_MS".into(), "200".into()),
            ("RUST_LOG".into(), "info".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        if let Some(endpoint) = &settings.otlp_endpoint {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
            env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
            env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
        }
        let process = Self {
            service,
            program,
            env,
            http_addr,
            grpc_addr,
            data_dir,
            log_path: settings.dir.join(format!("{}.log", service.name())),
            child: None,
            starts: 0,
        };
        Ok(process)
    }

    pub fn start(&mut self) -> Result<()> {
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        let (stdout, stderr) = open_log(
            &self.log_path,
            &format!("{} (start #{})", self.service.binary(), self.starts),
        )?;
        let mut command = Command::new(&self.program);
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        if !self
            .env
            .iter()
            .any(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT")
        {
            // A developer's own collector settings must not leak into the test.
            for var in [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ] {
                command.env_remove(var);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// Sets (or replaces) an environment variable for the next start (see [`Self::restart`]).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// `http://127.0.0.1:<grpc port>`, what a tonic client connects to.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Polls `GET /readyz` until it answers 200 (60 s at most); fails at once if the
    /// process exits meanwhile, with the tail of its log.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        let mut delay = Duration::from_millis(50);
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!(
                    "{} is not running (killed and not restarted)",
                    self.service.binary()
                );
            };
            if let Some(status) = child.try_wait().context("polling the process")? {
                bail!(
                    "{} exited with {status} before it was ready; log tail:\n{}",
                    self.service.binary(),
                    self.log_tail(40)
                );
            }
            let last = match http_get(self.http_addr, "/readyz").await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("{} {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {limit:?} (last /readyz: {last}); log tail:\n{}",
                    self.service.binary(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_millis(500));
        }
    }

    /// SIGKILL, as a crash would: no drain, no snapshot. Waits until the process is gone.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.service.binary());
        };
        child
            .start_kill()
            .with_context(|| format!("SIGKILL to {}", self.service.binary()))?;
        child
            .wait()
            .await
            .with_context(|| format!("waiting for {} to die", self.service.binary()))?;
        Ok(())
    }

    /// SIGTERM, and waits (30 s at most) for the process to finish its shutdown; returns
    /// how it exited. A process that does not stop in time is killed and that is an error.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.service.binary());
        };
        let pid = child.id().context("the process has no pid")?;
        send_sigterm(pid).await?;
        match wait_exit(&mut child, Duration::from_secs(30)).await? {
            Some(status) => Ok(status),
            None => {
                child.start_kill().context("SIGKILL after SIGTERM")?;
                child.wait().await.context("waiting after SIGKILL")?;
                bail!(
                    "{} did not exit within 30 s of SIGTERM; killed it. Log tail:\n{}",
                    self.service.binary(),
                    self.log_tail(40)
                )
            }
        }
    }

    /// Starts the process again with the same environment, ports and data dir, and waits
    /// until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!(
                "{} is still running; kill or terminate it first",
                self.service.binary()
            );
        }
        self.launch()?;
        self.wait_ready().await
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log tail ({}) ----\n{}",
                self.service.binary(),
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        // kill_on_drop(true) ends the process.
    }
}

/// Opens `path` for appending (restarts keep the earlier output) and returns handles for a
/// child's stdout and stderr, after writing a line that marks where this start begins.
pub(crate) fn open_log(path: &Path, what: &str) -> Result<(File, File)> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))?;
    writeln!(file, "==== harness: starting {what} ====")
        .with_context(|| format!("writing log {}", path.display()))?;
    let stderr = file
        .try_clone()
        .with_context(|| format!("duplicating log handle {}", path.display()))?;
    Ok((file, stderr))
}

/// SIGTERM through `kill(1)`: the workspace denies `unsafe`, which `libc::kill` needs.
pub(crate) async fn send_sigterm(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .context("running `kill -TERM`")?;
    if !status.success() {
        bail!("`kill -TERM {pid}` failed with {status}");
    }
    Ok(())
}

/// Waits up to `limit` for `child` to exit; `None` if it is still running.
pub(crate) async fn wait_exit(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => Ok(Some(status.context("waiting for the process")?)),
        Err(_) => Ok(None),
    }
}
