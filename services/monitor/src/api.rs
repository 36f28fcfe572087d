//! Model health for callers: `GetModelHealth` over gRPC and the same answer as
//! JSON at `GET /v1/model-health[?model=NAME]`, for dashboards and `curl`.
//! Both are thin adapters onto the `HealthBoard` actor; an empty or absent
//! model means every model, and an unknown model is an empty list, not an error.
//! The JSON carries every figure of the [`HealthReport`] (quality, drift,
//! latency, the join); the gRPC message carries the prediction stats and the
//! alerts firing, which is what its fields hold.

use actix::Addr;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use millrace_proto::monitor_server::Monitor;
use millrace_proto::{Alert, AlertState, GetModelHealthRequest, GetModelHealthResponse};
use serde::Serialize;
use tonic::{Request, Status};

use crate::health::{HealthBoard, ModelHealthQuery};
use crate::report::{FeatureReport, HealthReport, JoinReport, ModelReport};

/// The HTTP path of the JSON view.
pub const MODEL_HEALTH_PATH: &str = "/v1/model-health";

/// The gRPC `Monitor` service.
pub struct ModelHealthApi {
    pub board: Addr<HealthBoard>,
}

#[tonic::async_trait]
impl Monitor for ModelHealthApi {
    async fn get_model_health(
        &self,
        request: Request<GetModelHealthRequest>,
    ) -> Result<tonic::Response<GetModelHealthResponse>, Status> {
        let model = Some(request.into_inner().model).filter(|m| !m.is_empty());
        let report = self
            .board
            .send(ModelHealthQuery { model })
            .await
            .map_err(|e| Status::unavailable(format!("the health board is not running: {e}")))?;
        Ok(tonic::Response::new(report.to_proto()))
    }
}

/// The routes monitor adds to the chassis HTTP server.
pub fn http_routes(board: Addr<HealthBoard>) -> Router {
    Router::new()
        .route(MODEL_HEALTH_PATH, get(model_health))
        .with_state(board)
}

async fn model_health(
    State(board): State<Addr<HealthBoard>>,
    RawQuery(query): RawQuery,
) -> Response {
    let model = match model_param(query.as_deref().unwrap_or("")) {
        Ok(model) => model.filter(|m| !m.is_empty()),
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{MODEL_HEALTH_PATH}: {message}\n"),
            )
                .into_response()
        }
    };
    let report = match board.send(ModelHealthQuery { model }).await {
        Ok(report) => report,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the health board is not running: {e}\n"),
            )
                .into_response()
        }
    };
    match serde_json::to_vec(&HealthReportJson::from(&report)) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding model health as JSON: {e}\n"),
        )
            .into_response(),
    }
}

/// The `model` parameter of a query string, percent-decoded; the last one wins.
fn model_param(query: &str) -> Result<Option<String>, String> {
    let mut model = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "model" {
            model = Some(
                percent_decode(value).map_err(|e| format!("query parameter model={value}: {e}"))?,
            );
        }
    }
    Ok(model)
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(b) = input.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [input.next(), input.next()];
                let digit = |d: Option<u8>| d.and_then(|d| char::from(d).to_digit(16));
                match (digit(hex[0]), digit(hex[1])) {
                    // Two hex digits make one byte, below 256.
                    (Some(hi), Some(lo)) => bytes.push((hi * 16 + lo) as u8),
                    _ => return Err("a % not followed by two hex digits".into()),
                }
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 once decoded".into())
}

/// The JSON shape: each model version's fields of `GetModelHealthResponse`
/// first, then every other figure of the report.
#[derive(Serialize)]
struct HealthReportJson<'a> {
    models: &'a [ModelReport],
    features: &'a [FeatureReport],
    join: &'a JoinReport,
    throughput: &'a std::collections::BTreeMap<String, Option<f64>>,
    firing: Vec<AlertJson<'a>>,
}

impl<'a> From<&'a HealthReport> for HealthReportJson<'a> {
    fn from(r: &'a HealthReport) -> Self {
        Self {
            models: &r.models,
            features: &r.features,
            join: &r.join,
            throughput: &r.throughput,
            firing: r.firing.iter().map(AlertJson::from).collect(),
        }
    }
}

#[derive(Serialize)]
struct AlertJson<'a> {
    alert_id: &'a str,
    kind: &'a str,
    /// `firing`, `resolved` or `unspecified`.
    state: &'static str,
    model: &'a str,
    model_version: &'a str,
    feature: &'a str,
    metric: &'a str,
    value: f64,
    threshold: f64,
    time_us: i64,
    message: &'a str,
    event_id: &'a str,
}

impl<'a> From<&'a Alert> for AlertJson<'a> {
    fn from(a: &'a Alert) -> Self {
        let state = match AlertState::try_from(a.state) {
            Ok(AlertState::Firing) => "firing",
            Ok(AlertState::Resolved) => "resolved",
            Ok(AlertState::Unspecified) | Err(_) => "unspecified",
        };
        Self {
            alert_id: &a.alert_id,
            kind: &a.kind,
            state,
            model: &a.model,
            model_version: &a.model_version,
            feature: &a.feature,
            metric: &a.metric,
            value: a.value,
            threshold: a.threshold,
            time_us: a.time_us,
            message: &a.message,
            event_id: &a.event_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::MonitorState;
    use crate::metrics::MonitorMetrics;
    use actix::Actor;
    use millrace_chassis::metrics::Metrics;
    use millrace_proto::Prediction;

    #[test]
    fn model_param_is_found_and_percent_decoded() {
        // (name, query string, the model found or a fragment of the error)
        type Expected = Result<Option<&'static str>, &'static str>;
        let cases: [(&str, &str, Expected); 7] = [
            ("no_query", "", Ok(None)),
            ("other_parameters_only", "verbose=1", Ok(None)),
            ("plain", "model=fraud", Ok(Some("fraud"))),
            ("empty_value", "model=", Ok(Some(""))),
            (
                "encoded_and_plus",
                "x=1&model=flight%2Fdelay+v2",
                Ok(Some("flight/delay v2")),
            ),
            ("utf8_bytes", "model=caf%C3%A9", Ok(Some("café"))),
            ("broken_escape", "model=a%2", Err("two hex digits")),
        ];
        for (name, query, expected) in cases {
            match (model_param(query), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got.as_deref(), want, "{name}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
            }
        }
    }

    fn board() -> Addr<HealthBoard> {
        let mut b = HealthBoard::with_defaults(
            MonitorState::default(),
            MonitorMetrics::new(&Metrics::new()),
        );
        for (id, model, score) in [
            ("a", "fraud", 0.5),
            ("b", "fraud", 1.0),
            ("c", "delay", 0.0),
        ] {
            b.observe(
                &Prediction {
                    event_id: id.into(),
                    model: model.into(),
                    model_version: "1".into(),
                    score,
                    predict_time_us: 7,
                    ..Default::default()
                },
                &opentelemetry::Context::new(),
            );
        }
        b.start()
    }

    async fn get_json(
        board: Addr<HealthBoard>,
        query: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let response = model_health(State(board), RawQuery(query.map(String::from))).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[actix_rt::test]
    async fn http_view_answers_one_model_all_models_or_none() {
        let board = board();
        let (status, all) = get_json(board.clone(), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(all["models"].as_array().unwrap().len(), 2);
        assert_eq!(all["firing"], serde_json::json!([]));

        let (_, fraud) = get_json(board.clone(), Some("model=fraud")).await;
        let models = fraud["models"].as_array().unwrap();
        assert_eq!(models.len(), 1);
        // The fields GetModelHealth has always had, then the figures the report adds.
        let expected = serde_json::json!({
            "model": "fraud", "model_version": "1", "predictions": 2, "predicted_positive": 0,
            "mean_score": 0.75, "last_prediction_time_us": 7
        });
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(&models[0][field], value, "{field}");
        }
        assert_eq!(models[0]["labelled"], 0);
        assert_eq!(
            models[0]["quality"]["labels"]["accuracy"],
            serde_json::Value::Null
        );
        assert_eq!(models[0]["quality"]["time"]["labelled"], 0);
        assert!(models[0]["latency"]["event_to_prediction_seconds"].is_object());
        assert_eq!(
            fraud["join"]["waiting_predictions"], 0,
            "no label_key: nothing waits"
        );
        let (status, unknown) = get_json(board.clone(), Some("model=nope")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(unknown["models"], serde_json::json!([]));
        let (status, _) = get_json(board, Some("model=%zz")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[actix_rt::test]
    async fn grpc_treats_an_empty_model_as_all_and_an_unknown_one_as_none() {
        let api = ModelHealthApi { board: board() };
        let ask = |model: &str| {
            Request::new(GetModelHealthRequest {
                model: model.into(),
            })
        };
        let all = api.get_model_health(ask("")).await.unwrap().into_inner();
        assert_eq!(
            all.models
                .iter()
                .map(|m| m.model.as_str())
                .collect::<Vec<_>>(),
            ["delay", "fraud"]
        );
        let unknown = api
            .get_model_health(ask("nope"))
            .await
            .unwrap()
            .into_inner();
        assert!(unknown.models.is_empty());
    }
}
