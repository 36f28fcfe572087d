//! millrace-monitor: reads PREDICTIONS, LABELS and FEATURES; joins predictions
//! with their late labels, keeps per model version quality, score drift and
//! latency, per feature drift against a reference window, publishes alerts to
//! ALERTS, exports it all as Prometheus metrics and answers `GetModelHealth`
//! (gRPC, and JSON at `/v1/model-health`).
//!
//! # Layout
//! - [`input`]: the three streams read through one stage, and why that is exactly-once.
//! - [`health`]: the `HealthBoard` actor owning the state all three streams feed.
//! - [`stats`]: per model version prediction stats (counts, positives, mean score).
//! - [`keyed`]: the maps the ledgers keep per model version and feature, reached by position.
//! - [`join`]: predictions meet their labels (bounded, TTL in event time).
//! - [`quality`]: accuracy, precision, recall, ROC AUC, log loss, Brier, calibration over windows.
//! - [`drift`]: reference vs window per feature and per model score: [`drift::psi`], [`drift::ks`].
//! - [`latency`]: event→prediction and ingest→prediction windows, per-stage throughput.
//! - [`training`]: a model version's training distribution as its drift reference, fetched from the registry.
//! - [`alerts`]: rules from `[[monitor.alerts]]`, hysteresis, deterministic alert ids.
//! - [`metrics`]: the Prometheus view; [`report`]: the health answer; [`api`]: gRPC and HTTP.
//! - `main.rs` (the binary) wires config, NATS, the actor, the stage loop, gRPC and HTTP.

pub mod alerts;
pub mod api;
pub mod drift;
pub mod health;
pub mod input;
pub mod join;
pub mod keyed;
pub mod latency;
pub mod metrics;
pub mod quality;
pub mod report;
pub mod stats;
pub mod training;
