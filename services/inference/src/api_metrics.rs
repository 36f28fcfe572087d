//! What every gRPC method of inference counts: calls by method, model and
//! status code, and the time each took (without transport).

use std::time::Instant;

use millrace_chassis::metrics::{latency_buckets, Metrics};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec};

#[derive(Clone)]
pub struct ApiMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl ApiMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            requests: metrics.counter_vec(
                "inference_grpc_requests_total",
                "gRPC calls answered, by method, model and status code (`ok` or the error).",
                &["method", "model", "code"],
            ),
            seconds: metrics.register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "inference_grpc_request_seconds",
                        "Time to answer one gRPC call, without transport, by method.",
                    )
                    .buckets(latency_buckets()),
                    &["method"],
                )
                .unwrap_or_else(|e| panic!("metric inference_grpc_request_seconds: {e}")),
            ),
        }
    }

    /// The counter of one (method, model, code), to resolve once for a hot path.
    pub fn requests_with(&self, labels: &[&str; 3]) -> prometheus::IntCounter {
        self.requests.with_label_values(labels)
    }

    pub fn seconds_with(&self, method: &str) -> prometheus::Histogram {
        self.seconds.with_label_values(&[method])
    }

    /// Records one call that started at `started`.
    pub fn record(&self, method: &str, model: &str, code: tonic::Code, started: Instant) {
        self.seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .with_label_values(&[method, model, code_label(code)])
            .inc();
    }
}

pub fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::NotFound => "not_found",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}
