//! The integration-test harness: a real nats-server, the real service binaries,
//! real sockets. Each test owns its broker, its ports and its temporary
//! directories, so tests run side by side (nextest runs them in parallel).
//!
//! # Layout
//! - [`nats`]: [`NatsServer`], the pinned nats-server 2.15 on a free port with its own
//!   store, and helpers that count, read and wait on JetStream streams.
//! - [`service`]: [`ServiceProcess`], one `millrace-<name>` binary with its environment,
//!   log file and data dir; kill, terminate, restart, wait for `/readyz`.
//! - [`pipeline`]: [`Pipeline`], the five services started in dataflow order against one
//!   broker, the test pipeline file, gRPC clients, and the exactly-once check most tests
//!   end with.
//! - [`bench`]: the start every benchmark binary shares (release binaries, two workers).
//! - [`http`]: a tiny HTTP/1.1 GET, `/metrics` scraping and a Prometheus text parser.
//! - [`monitor`]: raw publishes to a stream, monitor's JSON health, `promtool`, SIGSTOP,
//!   seeded normal values and process memory, for monitor's tests and benchmark.
//! - [`otlp`]: [`OtlpReceiver`], an OTLP/gRPC trace collector that keeps every span.
//! - [`wait`]: [`wait_until`], polling with backoff instead of sleeping.
//!
//! Where the binaries come from: `MILLRACE_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
//! the workspace's `target/debug`; build them first with `cargo build --workspace --bins`.
//! Set `MILLRACE_KEEP_TEST_DIRS=1` to keep every test's directory (logs, data, stores).

pub mod bench;
pub mod http;
pub mod monitor;
pub mod nats;
pub mod otlp;
pub mod pipeline;
pub mod service;
pub mod wait;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

pub use http::{http_get, metric_value, metrics, parse_samples, HttpResponse, Sample};
pub use nats::{
    decode_all, read_stream, records, stream_message_count, stream_record_count,
    wait_for_stream_count, NatsServer, Positions, Quiet, StoredMessage, BATCH_HEADER,
};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use pipeline::{
    check_exactly_once, customer, implied_customer_orders, labelled_orders_sections, now_us, order,
    order_placed_v2_with_coupon, orders, orders_model_probability, orders_pipeline_toml,
    publish_all_accepted, string_field, Pipeline, PipelineBuilder, ORDERS_AMOUNT_WEIGHT,
    ORDERS_COUNT_WEIGHT, ORDERS_INTERCEPT,
};
pub use service::{Service, ServiceProcess};
pub use wait::{wait_until, LONG, SHORT};

/// A TCP port on 127.0.0.1 that was free a moment ago. Ports handed out by this process
/// are never handed out twice, so tests in one binary cannot collide with each other.
pub fn free_port() -> Result<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener
            .local_addr()
            .context("reading the bound port")?
            .port();
        let mut given = given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("found no free port on 127.0.0.1 in 100 tries")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// A temporary directory for one test; kept on disk when `MILLRACE_KEEP_TEST_DIRS` is set.
pub fn test_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("millrace-{prefix}-"))
        .tempdir()
        .context("creating a temporary directory")?;
    if std::env::var_os("MILLRACE_KEEP_TEST_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping test directory {}", dir.path().display());
    }
    Ok(dir)
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}
