//! What every millrace service runs on.
//!
//! # Layout
//! - [`config`]: the pipeline TOML and the environment (`NATS_URL`, `OTEL_*`, ports, data dir).
//! - [`bus`]: the NATS connection, stream provisioning, typed publish with `Nats-Msg-Id`
//!   and `traceparent`, and durable consumers that resume where a snapshot left off.
//! - [`atomic`]: ADR-50 atomic batches: many messages to one stream under one fsync.
//! - [`event_order`]: several streams' records put in event-time order before a stage applies them.
//! - [`boot`]: the start and end every service shares (settings, NATS, snapshot store,
//!   gRPC and HTTP servers, the stage run).
//! - [`stage`]: the one loop every consuming service runs: consume, apply in an actor,
//!   publish, snapshot, ack.
//! - [`pull`]: a durable pull consumer's messages off a plain subscription, without
//!   async-nats' per-message JetStream wrapper.
//! - [`snapshot`]: actor state plus its last applied stream sequence, with a format version
//!   and a checksum, in files that sled points at.
//! - [`telemetry`]: `tracing` logs, OTLP span export, W3C trace context in NATS headers.
//! - [`metrics`], [`http`]: the Prometheus registry and the `/metrics`, `/healthz`, `/readyz` server.
//! - [`shutdown`]: SIGTERM/SIGINT as a value every task can wait on.
//! - [`partition`]: the stable key hash every stage agrees on.
//! - [`filter`]: the small expression form of filter rules and feature selections.
//! - [`runtime`]: the actix system, on one thread or one per core.

pub mod atomic;
pub mod batch;
pub mod boot;
pub mod bus;
pub mod config;
pub mod error;
pub mod event_order;
pub mod filter;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod partition;
pub mod pull;
pub mod runtime;
pub mod shutdown;
pub mod snapshot;
pub mod stage;
pub mod telemetry;
pub mod time;

pub use error::ChassisError;
