use std::path::PathBuf;

/// Everything chassis can fail at, named by what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ChassisError {
    #[error("reading pipeline file {path}: {source}")]
    PipelineRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing pipeline file {path}: {message}")]
    PipelineParse { path: PathBuf, message: String },
    #[error("pipeline file {path}: {message}")]
    PipelineInvalid { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("connecting to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("provisioning JetStream {what}: {message}")]
    Provision { what: String, message: String },
    #[error("publishing to {subject}: {message}")]
    Publish { subject: String, message: String },
    #[error("publishing to {subject}: {bytes} bytes is over the server's max_payload; retrying cannot help")]
    TooLarge { subject: String, bytes: usize },
    #[error("consuming {stream}/{consumer}: {message}")]
    Consume {
        stream: String,
        consumer: String,
        message: String,
    },
    #[error("snapshot store at {path}: {message}")]
    SnapshotStore { path: PathBuf, message: String },
    #[error("snapshot {key}: {message}")]
    SnapshotCorrupt { key: String, message: String },
    #[error("snapshot {key}: encoding state: {message}")]
    SnapshotEncode { key: String, message: String },
    #[error("actor {actor} stopped: {message}")]
    ActorGone {
        actor: &'static str,
        message: String,
    },
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("gRPC server on {addr}: {message}")]
    Grpc { addr: String, message: String },
    #[error("http server on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
}
