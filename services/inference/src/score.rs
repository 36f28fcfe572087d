//! `millrace.v1.Inference/Score`: score one event by its entities. Inference
//! asks feature-state (`GetOnlineFeatures`, one call for all the event's
//! entities) for the latest value of every feature the model reads, adds the
//! event's own numeric fields, and scores the row with the same
//! [`LoadedModel`] code the stream and OIP use.
//!
//! The features are the entity's latest values *before* this event (the event
//! has not gone through the pipeline); the streamed vector of the same event,
//! assembled after feature-state applied it, counts the event itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use millrace_chassis::config::FeatureDef;
use millrace_chassis::telemetry;
use millrace_proto::feature_state_client::FeatureStateClient;
use millrace_proto::inference_server::Inference;
use millrace_proto::{
    value::Kind, FeatureStatus, GetOnlineFeaturesRequest, ScoreRequest, ScoreResponse, Value,
};
use opentelemetry::trace::SpanKind;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::api_metrics::ApiMetrics;
use crate::catalog::Catalog;
use crate::scorer::LoadedModel;

/// Where feature-state listens unless `MILLRACE_FEATURE_STATE_URL` says otherwise.
pub const DEFAULT_FEATURE_STATE_URL: &str = "http://127.0.0.1:50053";

pub struct ScoreService {
    catalog: Arc<Catalog>,
    features: Vec<FeatureDef>,
    feature_state: FeatureStateClient<Channel>,
    url: String,
    api: ApiMetrics,
}

impl ScoreService {
    /// `url` is feature-state's gRPC address; the connection is made on first use
    /// and re-made as needed, so inference starts whether or not feature-state is up.
    pub fn new(
        catalog: Arc<Catalog>,
        features: Vec<FeatureDef>,
        url: &str,
        api: ApiMetrics,
    ) -> Result<Self, String> {
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| format!("MILLRACE_FEATURE_STATE_URL `{url}` is not a URL: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        Ok(Self {
            catalog,
            features,
            feature_state: FeatureStateClient::new(channel),
            url: url.to_string(),
            api,
        })
    }

    /// The entity key of a feature for this request: `entities[field]`, else the event's field.
    fn entity_key(req: &ScoreRequest, field: &str) -> Option<String> {
        if let Some(key) = req.entities.get(field) {
            return Some(key.clone());
        }
        match req.fields.get(field)?.kind.as_ref()? {
            Kind::StringValue(s) => Some(s.clone()),
            Kind::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    }

    async fn score_now(&self, req: ScoreRequest) -> Result<ScoreResponse, Status> {
        let served = self.catalog.load();
        let name = if req.model.is_empty() {
            self.catalog.model()
        } else {
            &req.model
        };
        let model: &Arc<LoadedModel> = served
            .resolve(name, &req.model_version)
            .map_err(|e| Status::not_found(e.to_string()))?;

        // Which features the model reads, and of which entity.
        let wanted: Vec<(&FeatureDef, String)> = self
            .features
            .iter()
            .filter(|f| model.inputs().contains(&f.name))
            .filter_map(|f| Self::entity_key(&req, &f.entity).map(|key| (f, key)))
            .collect();
        let mut online: BTreeMap<(String, String), f64> = BTreeMap::new();
        if !wanted.is_empty() {
            let entity_keys: BTreeSet<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
            let names: BTreeSet<String> = wanted.iter().map(|(f, _)| f.name.clone()).collect();
            let answer = self
                .feature_state
                .clone()
                .get_online_features(GetOnlineFeaturesRequest {
                    entity_keys: entity_keys.into_iter().collect(),
                    features: names.into_iter().collect(),
                })
                .await
                .map_err(|s| {
                    Status::unavailable(format!(
                        "fetching online features from feature-state at {}: {}",
                        self.url,
                        s.message()
                    ))
                })?
                .into_inner();
            for entity in answer.entities {
                for v in entity.values {
                    if v.status() == FeatureStatus::Present {
                        if let Some(x) = v.value.as_ref().and_then(Value::as_f64) {
                            online.insert((entity.entity_key.clone(), v.name), x);
                        }
                    }
                }
            }
        }
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (f, key) in &wanted {
            if let Some(&x) = online.get(&(key.clone(), f.name.clone())) {
                names.push(f.name.clone());
                values.push(x);
            }
        }
        for (field, value) in &req.fields {
            if let Some(x) = value.as_f64() {
                names.push(field.clone());
                values.push(x);
            }
        }
        let (row, missing) = model.row_of(&names, &values);
        let score = model.score_row(&row);
        Ok(ScoreResponse {
            event_id: req.event_id,
            model: model.name().to_string(),
            model_version: model.version().to_string(),
            score,
            predicted_positive: model.is_positive(score),
            names: model.inputs().to_vec(),
            values: row,
            missing: missing.into_iter().map(str::to_string).collect(),
        })
    }
}

#[tonic::async_trait]
impl Inference for ScoreService {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let started = Instant::now();
        let parent = telemetry::context_from_grpc(request.metadata());
        let req = request.into_inner();
        let _span =
            telemetry::event_span("inference.score", SpanKind::Server, &parent, &req.event_id);
        let model_label = if req.model.is_empty() || req.model == self.catalog.model() {
            self.catalog.model().to_string()
        } else {
            "unknown".to_string()
        };
        let result = self.score_now(req).await;
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.api.record("Score", &model_label, code, started);
        result.map(Response::new)
    }
}
