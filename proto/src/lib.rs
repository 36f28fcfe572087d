//! The contracts of millrace, generated from `proto/*.proto`.
//!
//! - [`v1`]: the pipeline's own messages and the ingest, feature-state and monitor APIs.
//! - [`inference`]: the Open Inference Protocol V2 (KServe's `grpc_predict_v2.proto`).
//! - [`wire`] and [`view`]: records read in place, for the stages that read every
//!   record of a stream.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("millrace.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

pub use v1::*;

pub mod view;
pub mod wire;

impl v1::Value {
    pub fn double(v: f64) -> Self {
        Self {
            kind: Some(v1::value::Kind::DoubleValue(v)),
        }
    }
    pub fn int(v: i64) -> Self {
        Self {
            kind: Some(v1::value::Kind::IntValue(v)),
        }
    }
    pub fn string(v: impl Into<String>) -> Self {
        Self {
            kind: Some(v1::value::Kind::StringValue(v.into())),
        }
    }
    pub fn bool(v: bool) -> Self {
        Self {
            kind: Some(v1::value::Kind::BoolValue(v)),
        }
    }
    pub fn timestamp_us(v: i64) -> Self {
        Self {
            kind: Some(v1::value::Kind::TimestampUs(v)),
        }
    }

    /// The value as a number when it has a numeric reading (bools as 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        view::ValueRef::of(self)?.as_f64()
    }

    /// The value printed as a key (strings as they are, the rest by `Display`);
    /// `None` for null. Ingest keys events and enrich keys reference rows by it.
    pub fn key_text(&self) -> Option<String> {
        view::ValueRef::of(self).map(view::ValueRef::key_text)
    }

    /// The type name used in schemas and error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Some(v1::value::Kind::DoubleValue(_)) => "double",
            Some(v1::value::Kind::IntValue(_)) => "int",
            Some(v1::value::Kind::StringValue(_)) => "string",
            Some(v1::value::Kind::BoolValue(_)) => "bool",
            Some(v1::value::Kind::TimestampUs(_)) => "timestamp",
            None => "null",
        }
    }
}
