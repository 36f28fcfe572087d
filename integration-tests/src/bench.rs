//! What every benchmark binary starts with: the release binaries, and a
//! runtime of two workers (the machine's cores, shared with what it measures).

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `MILLRACE_BIN_DIR`, else the workspace's `target/release` (`scripts/bench.sh` builds it).
pub fn release_bin_dir() -> PathBuf {
    match std::env::var_os("MILLRACE_BIN_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"),
    }
}

/// Runs a benchmark's `run` with the harness pointed at the release binaries.
/// `cargo bench` passes `--bench`; a filter or other flags mean nothing here.
pub fn main<F: Future<Output = Result<()>>>(run: impl FnOnce() -> F) -> Result<()> {
    // The harness spawns services from MILLRACE_BIN_DIR; set before any thread starts.
    std::env::set_var("MILLRACE_BIN_DIR", release_bin_dir());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run())
}

/// `/proc/loadavg`'s first three fields: whether others shared the machine meanwhile.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `1234567.8` as `1,234,568`: figures a reader compares at a glance.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
