//! The Open Inference Protocol V2 over gRPC (KServe's and Triton's
//! `GRPCInferenceService`), so stock clients can score rows with the active
//! model.
//!
//! The model takes one input tensor, `features`: FP32 or FP64, shape
//! `[batch, n]` (or `[n]` for one row) with the columns in the order of the
//! pipeline's `[model].inputs`, values either typed in `contents` or
//! little-endian in `raw_input_contents`. It answers one output tensor,
//! `probability`: FP32, shape `[batch, 1]`, raw when the request was raw.
//! Requests are checked in [`parse_infer`] and scored by the same
//! [`LoadedModel`] as the stream, without a hop through the actor. Each call
//! loads the catalog's current [`Served`] view once, so a model swap never
//! fails a request in flight.

use std::sync::Arc;
use std::time::Instant;

use millrace_chassis::http::Readiness;
use millrace_chassis::metrics::{latency_buckets, Metrics};
use millrace_chassis::telemetry;
use millrace_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use millrace_proto::inference::model_infer_request::InferInputTensor;
use millrace_proto::inference::model_infer_response::InferOutputTensor;
use millrace_proto::inference::model_metadata_response::TensorMetadata;
use millrace_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use opentelemetry::trace::{SpanKind, TraceContextExt};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use tonic::{Request, Response, Status};

use crate::api_metrics::{code_label, ApiMetrics};

use crate::catalog::{Catalog, ResolveError, Served};
use crate::scorer::LoadedModel;

/// The one input tensor the model takes.
pub const INPUT: &str = "features";
/// The one output tensor it answers.
pub const OUTPUT: &str = "probability";
/// What `ModelMetadata` reports as the platform.
pub const PLATFORM: &str = "millrace-logistic";

/// Why a request cannot be answered; each names what was asked and what would do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OipError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("output `{asked}` does not exist; model `{model}` answers one output, `{OUTPUT}`")]
    UnknownOutput { model: String, asked: String },
    #[error("model `{model}` takes exactly one input tensor, `{INPUT}`; the request has {got}")]
    InputCount { model: String, got: usize },
    #[error("input `{got}` does not exist; model `{model}` takes one input, `{INPUT}`")]
    InputName { model: String, got: String },
    #[error("input `{INPUT}`: datatype `{got}` is not supported; send FP32 or FP64")]
    Datatype { got: String },
    #[error("input `{INPUT}`: shape {shape:?} is not [batch, {columns}] or [{columns}]: {reason}")]
    Shape {
        shape: Vec<i64>,
        columns: usize,
        reason: String,
    },
    #[error(
        "input `{INPUT}`: shape {shape:?} has {got} columns, model `{model}` takes {want} ({})",
        inputs.join(", ")
    )]
    Columns {
        model: String,
        shape: Vec<i64>,
        got: usize,
        want: usize,
        inputs: Vec<String>,
    },
    #[error(
        "input `{INPUT}`: values are in both `contents` and `raw_input_contents`; send them in one"
    )]
    BothContents,
    #[error(
        "input `{INPUT}`: no values; send them in `contents.{field}` or in `raw_input_contents`"
    )]
    NoContents { field: &'static str },
    #[error("raw_input_contents has {got} entries; it needs exactly one, for input `{INPUT}`")]
    RawCount { got: usize },
    #[error(
        "input `{INPUT}`: shape {shape:?} of {datatype} needs {want} bytes in raw_input_contents, got {got}"
    )]
    RawLength {
        shape: Vec<i64>,
        datatype: &'static str,
        want: usize,
        got: usize,
    },
    #[error("input `{INPUT}`: datatype {datatype} carries its values in `contents.{want}`, but `contents.{got}` is set")]
    ContentsField {
        datatype: &'static str,
        want: &'static str,
        got: &'static str,
    },
    #[error("input `{INPUT}`: shape {shape:?} needs {want} values, `contents.{field}` has {got}")]
    ValueCount {
        shape: Vec<i64>,
        field: &'static str,
        want: usize,
        got: usize,
    },
    #[error(
        "input `{INPUT}`: row {row}, column {column} (`{name}`) is {value}; values must be finite"
    )]
    NotFinite {
        row: usize,
        column: usize,
        name: String,
        value: f64,
    },
}

impl OipError {
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Resolve(_) => tonic::Code::NotFound,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

impl From<OipError> for Status {
    fn from(e: OipError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

/// The version `name`/`version` address (an empty version means the active one).
pub fn check_model<'s>(
    served: &'s Served,
    name: &str,
    version: &str,
) -> Result<&'s Arc<LoadedModel>, OipError> {
    Ok(served.resolve(name, version)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datatype {
    Fp32,
    Fp64,
}

impl Datatype {
    fn parse(s: &str) -> Result<Self, OipError> {
        match s {
            "FP32" => Ok(Self::Fp32),
            "FP64" => Ok(Self::Fp64),
            other => Err(OipError::Datatype {
                got: other.to_string(),
            }),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
        }
    }

    fn contents_field(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32_contents",
            Self::Fp64 => "fp64_contents",
        }
    }

    fn byte_size(self) -> usize {
        match self {
            Self::Fp32 => 4,
            Self::Fp64 => 8,
        }
    }
}

/// A checked request: `rows` rows of the model's width, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct InferBatch {
    pub rows: usize,
    pub values: Vec<f64>,
    /// The values came as raw bytes, so the answer goes back as raw bytes.
    pub raw: bool,
}

/// Checks a `ModelInferRequest` against the model and reads its rows.
pub fn parse_infer(model: &LoadedModel, req: &ModelInferRequest) -> Result<InferBatch, OipError> {
    if let Some(out) = req.outputs.iter().find(|o| o.name != OUTPUT) {
        return Err(OipError::UnknownOutput {
            model: model.name().to_string(),
            asked: out.name.clone(),
        });
    }
    let [input] = req.inputs.as_slice() else {
        return Err(OipError::InputCount {
            model: model.name().to_string(),
            got: req.inputs.len(),
        });
    };
    if input.name != INPUT {
        return Err(OipError::InputName {
            model: model.name().to_string(),
            got: input.name.clone(),
        });
    }
    let datatype = Datatype::parse(&input.datatype)?;
    let rows = rows_of(model, &input.shape)?;
    let columns = model.inputs().len();
    // A shape whose element count overflows cannot match any values that fit in a message.
    let count = rows.checked_mul(columns).ok_or_else(|| OipError::Shape {
        shape: input.shape.clone(),
        columns,
        reason: "too many rows".into(),
    })?;
    let typed = input
        .contents
        .as_ref()
        .filter(|c| !filled_fields(c).is_empty());
    let values = match (req.raw_input_contents.as_slice(), typed) {
        ([], None) if count == 0 => Vec::new(),
        ([], None) => {
            return Err(OipError::NoContents {
                field: datatype.contents_field(),
            })
        }
        ([_, ..], Some(_)) => return Err(OipError::BothContents),
        ([bytes], None) => raw_values(input, datatype, bytes, count)?,
        (raw, None) => return Err(OipError::RawCount { got: raw.len() }),
        ([], Some(contents)) => typed_values(input, datatype, contents, count)?,
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(OipError::NotFinite {
            row: i / columns,
            column: i % columns,
            name: model.inputs()[i % columns].clone(),
            value: values[i],
        });
    }
    Ok(InferBatch {
        rows,
        values,
        raw: !req.raw_input_contents.is_empty(),
    })
}

/// The batch size a shape names: `[batch, n]`, or `[n]` for a single row.
fn rows_of(model: &LoadedModel, shape: &[i64]) -> Result<usize, OipError> {
    let want = model.inputs().len();
    let bad = |reason: &str| OipError::Shape {
        shape: shape.to_vec(),
        columns: want,
        reason: reason.into(),
    };
    if shape.iter().any(|&d| d < 0) {
        return Err(bad("dimensions must not be negative"));
    }
    let dim = |d: i64| usize::try_from(d).map_err(|_| bad("a dimension is too large"));
    let (rows, got) = match *shape {
        [n] => (1, dim(n)?),
        [batch, n] => (dim(batch)?, dim(n)?),
        _ => {
            return Err(bad(&format!(
                "it has {} dimensions, 1 or 2 are accepted",
                shape.len()
            )))
        }
    };
    if got != want {
        return Err(OipError::Columns {
            model: model.name().to_string(),
            shape: shape.to_vec(),
            got,
            want,
            inputs: model.inputs().to_vec(),
        });
    }
    Ok(rows)
}

/// The fields of `contents` that hold values, by their proto names.
fn filled_fields(c: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(name, _)| name)
    .collect()
}

/// Values from the typed field that matches the datatype; any other filled field is an error.
fn typed_values(
    input: &InferInputTensor,
    datatype: Datatype,
    contents: &InferTensorContents,
    count: usize,
) -> Result<Vec<f64>, OipError> {
    let want = datatype.contents_field();
    if let Some(got) = filled_fields(contents).into_iter().find(|f| *f != want) {
        return Err(OipError::ContentsField {
            datatype: datatype.name(),
            want,
            got,
        });
    }
    let values: Vec<f64> = match datatype {
        Datatype::Fp32 => contents
            .fp32_contents
            .iter()
            .map(|&x| f64::from(x))
            .collect(),
        Datatype::Fp64 => contents.fp64_contents.clone(),
    };
    if values.len() != count {
        return Err(OipError::ValueCount {
            shape: input.shape.clone(),
            field: want,
            want: count,
            got: values.len(),
        });
    }
    Ok(values)
}

/// Little-endian values from raw bytes, after checking their length.
fn raw_values(
    input: &InferInputTensor,
    datatype: Datatype,
    bytes: &[u8],
    count: usize,
) -> Result<Vec<f64>, OipError> {
    let want = count.checked_mul(datatype.byte_size());
    if want != Some(bytes.len()) {
        return Err(OipError::RawLength {
            shape: input.shape.clone(),
            datatype: datatype.name(),
            want: want.unwrap_or(usize::MAX),
            got: bytes.len(),
        });
    }
    Ok(match datatype {
        Datatype::Fp32 => bytes
            .chunks_exact(4)
            .map(|b| {
                let mut le = [0; 4];
                le.copy_from_slice(b);
                f64::from(f32::from_le_bytes(le))
            })
            .collect(),
        Datatype::Fp64 => bytes
            .chunks_exact(8)
            .map(|b| {
                let mut le = [0; 8];
                le.copy_from_slice(b);
                f64::from_le_bytes(le)
            })
            .collect(),
    })
}

/// Scores a checked batch and shapes the answer as the request asked.
pub fn infer(model: &LoadedModel, id: String, batch: &InferBatch) -> ModelInferResponse {
    let mut probabilities = Vec::with_capacity(batch.rows);
    model.score_rows(&batch.values, &mut probabilities);
    let scores: Vec<f32> = probabilities.into_iter().map(|p| p as f32).collect();
    let (contents, raw_output_contents) = if batch.raw {
        (
            None,
            vec![scores.iter().flat_map(|s| s.to_le_bytes()).collect()],
        )
    } else {
        (
            Some(InferTensorContents {
                fp32_contents: scores,
                ..Default::default()
            }),
            Vec::new(),
        )
    };
    ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        id,
        parameters: Default::default(),
        outputs: vec![InferOutputTensor {
            name: OUTPUT.into(),
            datatype: "FP32".into(),
            shape: vec![i64::try_from(batch.rows).unwrap_or(i64::MAX), 1],
            parameters: Default::default(),
            contents,
        }],
        raw_output_contents,
    }
}

/// What `ModelMetadata` says about the model.
pub fn metadata(served: &Served, model: &LoadedModel) -> ModelMetadataResponse {
    let width = i64::try_from(model.inputs().len()).unwrap_or(i64::MAX);
    ModelMetadataResponse {
        name: model.name().to_string(),
        versions: served.version_names(),
        platform: format!("millrace-{}", model.kind()),
        inputs: vec![TensorMetadata {
            name: INPUT.into(),
            datatype: "FP32".into(),
            shape: vec![-1, width],
        }],
        outputs: vec![TensorMetadata {
            name: OUTPUT.into(),
            datatype: "FP32".into(),
            shape: vec![-1, 1],
        }],
    }
}

struct InferMetrics {
    requests: IntCounterVec,
    ok: IntCounter,
    rows: IntCounter,
    seconds: Histogram,
    /// `ModelInfer` answered OK for the served model, in the per-method metrics.
    ok_served: IntCounter,
    ok_served_seconds: Histogram,
}

/// The `GRPCInferenceService` of the catalog's models.
pub struct OpenInference {
    catalog: Arc<Catalog>,
    readiness: Readiness,
    metrics: InferMetrics,
    api: ApiMetrics,
}

impl OpenInference {
    pub fn new(catalog: Arc<Catalog>, readiness: Readiness, metrics: &Metrics) -> Self {
        let api = ApiMetrics::new(metrics);
        let requests = metrics.counter_vec(
            "inference_oip_infer_requests_total",
            "OIP ModelInfer calls answered, by gRPC status code.",
            &["code"],
        );
        let metrics = InferMetrics {
            ok_served: api.requests_with(&["ModelInfer", catalog.model(), "ok"]),
            ok_served_seconds: api.seconds_with("ModelInfer"),
            ok: requests.with_label_values(&["ok"]),
            requests,
            rows: metrics.counter(
                "inference_oip_infer_rows_total",
                "Rows scored through OIP ModelInfer.",
            ),
            seconds: metrics.histogram(
                "inference_oip_infer_seconds",
                "Time to check and score one OIP ModelInfer call, without transport.",
                latency_buckets(),
            ),
        };
        Self {
            catalog,
            readiness,
            api,
            metrics,
        }
    }

    /// The per-method metrics, to share with the other gRPC services.
    pub fn api_metrics(&self) -> ApiMetrics {
        self.api.clone()
    }

    fn model_infer_now(&self, req: ModelInferRequest) -> Result<ModelInferResponse, OipError> {
        let served = self.catalog.load();
        let model = check_model(&served, &req.model_name, &req.model_version)?;
        let batch = parse_infer(model, &req)?;
        self.metrics.rows.inc_by(batch.rows as u64);
        Ok(infer(model, req.id, &batch))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for OpenInference {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.readiness.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(ModelReadyResponse {
            ready: self.catalog.load().resolve(&req.name, &req.version).is_ok(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "millrace".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = request.into_inner();
        let served = self.catalog.load();
        let model = check_model(&served, &req.name, &req.version)?;
        Ok(Response::new(metadata(&served, model)))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let parent = telemetry::context_from_grpc(request.metadata());
        let req = request.into_inner();
        // Ends when dropped at the end of the call.
        let span =
            telemetry::event_span("inference.model_infer", SpanKind::Server, &parent, &req.id);
        let model_name = req.model_name.clone();
        let result = self.model_infer_now(req);
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let code = result
            .as_ref()
            .map_or_else(OipError::code, |_| tonic::Code::Ok);
        // Unknown names are not used as label values: a caller could mint unbounded series.
        let model_label = if model_name == self.catalog.model() {
            model_name.as_str()
        } else {
            "unknown"
        };
        if code == tonic::Code::Ok && model_label == self.catalog.model() {
            // The hot path: label values resolved once, not per request.
            self.metrics.ok_served.inc();
            self.metrics
                .ok_served_seconds
                .observe(started.elapsed().as_secs_f64());
        } else {
            self.api.record("ModelInfer", model_label, code, started);
        }
        match result {
            Ok(response) => {
                self.metrics.ok.inc();
                Ok(Response::new(response))
            }
            Err(e) => {
                let status = Status::from(e);
                self.metrics
                    .requests
                    .with_label_values(&[code_label(status.code())])
                    .inc();
                span.span().set_status(opentelemetry::trace::Status::error(
                    status.message().to_string(),
                ));
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::{ModelDef, ModelInput};
    use millrace_proto::inference::model_infer_request::InferRequestedOutputTensor;

    fn catalog() -> Arc<Catalog> {
        let def = ModelDef {
            name: "orders".into(),
            version: "v1".into(),
            threshold: 0.5,
            intercept: -1.0,
            inputs: vec![
                ModelInput {
                    name: "count".into(),
                    weight: 0.5,
                },
                ModelInput {
                    name: "amount".into(),
                    weight: 0.02,
                },
            ],
            online: Default::default(),
            retrain: Default::default(),
        };
        // The directory lives as long as the test process.
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let registry = crate::registry::Registry::open(dir.path()).unwrap();
        let artifact = crate::scorer::ModelArtifact::from_def(&def);
        Arc::new(Catalog::open(registry, &artifact, None).unwrap())
    }

    fn model() -> Arc<LoadedModel> {
        catalog().load().active.clone()
    }

    fn service() -> OpenInference {
        OpenInference::new(catalog(), Readiness::new(None), &Metrics::new())
    }

    /// Rows (2, 50) → z = 1 and (0, 0) → z = -1, hand-computed.
    const P1: f32 = 0.731_058_6;
    const P2: f32 = 0.268_941_43;
    const ROWS: [f64; 4] = [2.0, 50.0, 0.0, 0.0];

    fn tensor(
        datatype: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: INPUT.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    fn fp32(values: &[f64]) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp32_contents: values.iter().map(|&v| v as f32).collect(),
            ..Default::default()
        })
    }

    fn fp64(values: &[f64]) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp64_contents: values.to_vec(),
            ..Default::default()
        })
    }

    fn raw32(values: &[f64]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect()
    }

    fn raw64(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|&v| v.to_le_bytes()).collect()
    }

    fn request(input: InferInputTensor, raw: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "orders".into(),
            model_version: String::new(),
            id: "req-1".into(),
            inputs: vec![input],
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    enum Want {
        Typed(Vec<f32>, Vec<i64>),
        Raw(Vec<f32>, Vec<i64>),
        Fails(tonic::Code, &'static str),
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[tokio::test]
    async fn model_infer_answers_each_kind_of_request() {
        let with = |f: fn(&mut ModelInferRequest), req: ModelInferRequest| {
            let mut req = req;
            f(&mut req);
            req
        };
        let base = || request(tensor("FP32", &[2, 2], fp32(&ROWS)), vec![]);
        let cases: Vec<(&str, ModelInferRequest, Want)> = vec![
            (
                "fp32 contents answer in contents",
                base(),
                Want::Typed(vec![P1, P2], vec![2, 1]),
            ),
            (
                "fp64 contents answer in contents",
                request(tensor("FP64", &[2, 2], fp64(&ROWS)), vec![]),
                Want::Typed(vec![P1, P2], vec![2, 1]),
            ),
            (
                "raw fp32 bytes answer in raw bytes",
                request(tensor("FP32", &[2, 2], None), vec![raw32(&ROWS)]),
                Want::Raw(vec![P1, P2], vec![2, 1]),
            ),
            (
                "raw fp64 bytes answer in raw bytes",
                request(tensor("FP64", &[2, 2], None), vec![raw64(&ROWS)]),
                Want::Raw(vec![P1, P2], vec![2, 1]),
            ),
            (
                "a one-dimensional shape is one row",
                request(tensor("FP32", &[2], fp32(&ROWS[..2])), vec![]),
                Want::Typed(vec![P1], vec![1, 1]),
            ),
            (
                "an explicit version that matches is served",
                with(|r| r.model_version = "v1".into(), base()),
                Want::Typed(vec![P1, P2], vec![2, 1]),
            ),
            (
                "asking for the probability output is fine",
                with(
                    |r| {
                        r.outputs = vec![InferRequestedOutputTensor {
                            name: OUTPUT.into(),
                            ..Default::default()
                        }]
                    },
                    base(),
                ),
                Want::Typed(vec![P1, P2], vec![2, 1]),
            ),
            (
                "an empty batch gets an empty answer",
                request(tensor("FP32", &[0, 2], None), vec![]),
                Want::Typed(vec![], vec![0, 1]),
            ),
            (
                "wrong raw byte length names expected and got",
                request(tensor("FP32", &[2, 2], None), vec![raw32(&ROWS[..3])]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "needs 16 bytes in raw_input_contents, got 12",
                ),
            ),
            (
                "fp64 bytes under an FP32 datatype have the wrong length",
                request(tensor("FP32", &[2, 2], None), vec![raw64(&ROWS)]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "needs 16 bytes in raw_input_contents, got 32",
                ),
            ),
            (
                "wrong column count names the model's inputs",
                request(tensor("FP32", &[1, 3], fp32(&[1.0, 2.0, 3.0])), vec![]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "has 3 columns, model `orders` takes 2 (count, amount)",
                ),
            ),
            (
                "three dimensions are refused",
                request(tensor("FP32", &[1, 1, 2], fp32(&ROWS[..2])), vec![]),
                Want::Fails(tonic::Code::InvalidArgument, "it has 3 dimensions"),
            ),
            (
                "negative dimensions are refused",
                request(tensor("FP32", &[-1, 2], fp32(&ROWS)), vec![]),
                Want::Fails(tonic::Code::InvalidArgument, "must not be negative"),
            ),
            (
                "too few values for the shape",
                request(tensor("FP32", &[2, 2], fp32(&ROWS[..2])), vec![]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "needs 4 values, `contents.fp32_contents` has 2",
                ),
            ),
            (
                "an unsupported datatype",
                request(tensor("INT64", &[2, 2], None), vec![]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "datatype `INT64` is not supported; send FP32 or FP64",
                ),
            ),
            (
                "values in the field of another datatype",
                request(tensor("FP32", &[2, 2], fp64(&ROWS)), vec![]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "FP32 carries its values in `contents.fp32_contents`",
                ),
            ),
            (
                "an unknown model is not found, naming what exists",
                with(|r| r.model_name = "churn".into(), base()),
                Want::Fails(
                    tonic::Code::NotFound,
                    "model `churn` is not served here; this server serves `orders`",
                ),
            ),
            (
                "an unknown version is not found, naming what exists",
                with(|r| r.model_version = "v9".into(), base()),
                Want::Fails(
                    tonic::Code::NotFound,
                    "no version `v9`; the version served is `v1`",
                ),
            ),
            (
                "NaN names its row and column",
                request(
                    tensor("FP32", &[2, 2], fp32(&[2.0, 50.0, 0.0, f64::NAN])),
                    vec![],
                ),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "row 1, column 1 (`amount`) is NaN",
                ),
            ),
            (
                "infinity in raw bytes is refused too",
                request(
                    tensor("FP64", &[1, 2], None),
                    vec![raw64(&[f64::INFINITY, 0.0])],
                ),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "row 0, column 0 (`count`) is inf",
                ),
            ),
            (
                "values in both contents and raw bytes",
                request(tensor("FP32", &[2, 2], fp32(&ROWS)), vec![raw32(&ROWS)]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "both `contents` and `raw_input_contents`",
                ),
            ),
            (
                "no values at all",
                request(tensor("FP32", &[2, 2], None), vec![]),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "no values; send them in `contents.fp32_contents`",
                ),
            ),
            (
                "raw contents for more than one input",
                request(
                    tensor("FP32", &[2, 2], None),
                    vec![raw32(&ROWS), raw32(&ROWS)],
                ),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "raw_input_contents has 2 entries",
                ),
            ),
            (
                "an input with another name",
                request(
                    InferInputTensor {
                        name: "x".into(),
                        ..tensor("FP32", &[2, 2], fp32(&ROWS))
                    },
                    vec![],
                ),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "input `x` does not exist; model `orders` takes one input, `features`",
                ),
            ),
            (
                "two inputs",
                with(|r| r.inputs.push(r.inputs[0].clone()), base()),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "exactly one input tensor, `features`; the request has 2",
                ),
            ),
            (
                "an unknown requested output",
                with(
                    |r| {
                        r.outputs = vec![InferRequestedOutputTensor {
                            name: "logit".into(),
                            ..Default::default()
                        }]
                    },
                    base(),
                ),
                Want::Fails(
                    tonic::Code::InvalidArgument,
                    "output `logit` does not exist",
                ),
            ),
        ];
        let svc = service();
        for (rule, req, want) in cases {
            let got = svc.model_infer(Request::new(req)).await;
            match (want, got) {
                (Want::Typed(scores, shape), Ok(resp)) => {
                    let resp = resp.into_inner();
                    assert_eq!(
                        (
                            resp.model_name.as_str(),
                            resp.model_version.as_str(),
                            resp.id.as_str()
                        ),
                        ("orders", "v1", "req-1"),
                        "{rule}"
                    );
                    let [out] = resp.outputs.as_slice() else {
                        panic!("{rule}: one output, got {:?}", resp.outputs)
                    };
                    assert_eq!(
                        (out.name.as_str(), out.datatype.as_str(), &out.shape),
                        (OUTPUT, "FP32", &shape),
                        "{rule}"
                    );
                    assert!(
                        resp.raw_output_contents.is_empty(),
                        "{rule}: typed request, raw answer"
                    );
                    let got = &out.contents.as_ref().unwrap().fp32_contents;
                    assert!(close(got, &scores), "{rule}: got {got:?}, want {scores:?}");
                }
                (Want::Raw(scores, shape), Ok(resp)) => {
                    let resp = resp.into_inner();
                    let [out] = resp.outputs.as_slice() else {
                        panic!("{rule}: one output, got {:?}", resp.outputs)
                    };
                    assert_eq!(
                        (out.name.as_str(), out.datatype.as_str(), &out.shape),
                        (OUTPUT, "FP32", &shape),
                        "{rule}"
                    );
                    assert!(out.contents.is_none(), "{rule}: raw request, typed answer");
                    let [bytes] = resp.raw_output_contents.as_slice() else {
                        panic!("{rule}: one raw output")
                    };
                    let got: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    assert!(close(&got, &scores), "{rule}: got {got:?}, want {scores:?}");
                }
                (Want::Fails(code, message), Err(status)) => {
                    assert_eq!(status.code(), code, "{rule}: {}", status.message());
                    assert!(
                        status.message().contains(message),
                        "{rule}: `{}` lacks `{message}`",
                        status.message()
                    );
                }
                (_, Ok(resp)) => panic!("{rule}: expected an error, got {resp:?}"),
                (_, Err(status)) => panic!("{rule}: unexpected error {status:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_explicit_version_is_scored_by_that_version_and_a_promote_switches_the_default() {
        let catalog = catalog();
        let mut v2 = crate::scorer::ModelArtifact::from_def(&ModelDef {
            name: "orders".into(),
            version: "v2".into(),
            threshold: 0.5,
            intercept: 0.0,
            inputs: vec![
                ModelInput {
                    name: "count".into(),
                    weight: 0.0,
                },
                ModelInput {
                    name: "amount".into(),
                    weight: 0.0,
                },
            ],
            online: Default::default(),
            retrain: Default::default(),
        });
        v2.meta.description = "a coin".into();
        catalog.register(v2, false).unwrap();
        let svc = OpenInference::new(catalog.clone(), Readiness::new(None), &Metrics::new());
        let ask = |version: &str| {
            let mut r = request(tensor("FP32", &[1, 2], fp32(&ROWS[..2])), vec![]);
            r.model_version = version.into();
            r
        };
        let answer = |r: ModelInferResponse| {
            (
                r.model_version.clone(),
                r.outputs[0].contents.as_ref().unwrap().fp32_contents[0],
            )
        };
        let got = answer(
            svc.model_infer(Request::new(ask("")))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got, ("v1".to_string(), P1));
        let got = answer(
            svc.model_infer(Request::new(ask("v2")))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got, ("v2".to_string(), 0.5));
        catalog.promote("v2").unwrap();
        let got = answer(
            svc.model_infer(Request::new(ask("")))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(
            got,
            ("v2".to_string(), 0.5),
            "the default follows the promote"
        );
        let meta = svc
            .model_metadata(Request::new(ModelMetadataRequest {
                name: "orders".into(),
                version: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.versions, ["v2", "v1"], "the active version first");
    }

    #[tokio::test]
    async fn model_ready_and_metadata_follow_name_and_version() {
        let svc = service();
        let ready = |name: &str, version: &str| ModelReadyRequest {
            name: name.into(),
            version: version.into(),
        };
        let cases = [
            ("orders", "", true),
            ("orders", "v1", true),
            ("orders", "v2", false),
            ("churn", "", false),
        ];
        for (name, version, want) in cases {
            let got = svc
                .model_ready(Request::new(ready(name, version)))
                .await
                .unwrap()
                .into_inner()
                .ready;
            assert_eq!(got, want, "{name}/{version}");
        }

        let meta = |name: &str, version: &str| ModelMetadataRequest {
            name: name.into(),
            version: version.into(),
        };
        let m = svc
            .model_metadata(Request::new(meta("orders", "v1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (m.name.as_str(), m.versions.as_slice(), m.platform.as_str()),
            ("orders", &["v1".to_string()][..], PLATFORM)
        );
        assert_eq!(
            m.inputs,
            [TensorMetadata {
                name: INPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, 2]
            }]
        );
        assert_eq!(
            m.outputs,
            [TensorMetadata {
                name: OUTPUT.into(),
                datatype: "FP32".into(),
                shape: vec![-1, 1]
            }]
        );
        for (name, version) in [("churn", ""), ("orders", "v2")] {
            let err = svc
                .model_metadata(Request::new(meta(name, version)))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::NotFound,
                "{name}/{version}: {}",
                err.message()
            );
        }
    }

    #[tokio::test]
    async fn server_live_ready_and_metadata() {
        let readiness = Readiness::new(None);
        let svc = OpenInference::new(catalog(), readiness.clone(), &Metrics::new());
        assert!(
            svc.server_live(Request::new(ServerLiveRequest {}))
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            !svc.server_ready(Request::new(ServerReadyRequest {}))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        readiness.set_started();
        assert!(
            svc.server_ready(Request::new(ServerReadyRequest {}))
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let meta = svc
            .server_metadata(Request::new(ServerMetadataRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            meta,
            ServerMetadataResponse {
                name: "millrace".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: vec![]
            }
        );
    }

    #[test]
    fn the_grpc_path_scores_like_the_stream_path() {
        let m = model();
        let rows = [[2.0, 50.0], [0.0, 0.0], [3.5, -12.25]];
        for row in rows {
            let vector = millrace_proto::FeatureVector {
                names: vec!["amount".into(), "count".into()],
                values: vec![row[1], row[0]],
                ..Default::default()
            };
            let batch = InferBatch {
                rows: 1,
                values: row.to_vec(),
                raw: false,
            };
            let resp = infer(&m, String::new(), &batch);
            let grpc = resp.outputs[0].contents.as_ref().unwrap().fp32_contents[0];
            assert_eq!(grpc, m.score_vector(&vector).score as f32, "{row:?}");
        }
    }
}
