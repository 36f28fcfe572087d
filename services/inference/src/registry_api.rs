//! `millrace.v1.ModelRegistry` over gRPC: a thin adapter onto the [`Catalog`]
//! (which writes the registry, then swaps what is served).

use std::sync::Arc;
use std::time::Instant;

use millrace_proto::model_registry_server::ModelRegistry;
use millrace_proto::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, ModelRoles, ModelVersion,
    PeriodFigures, PromoteModelRequest, RegisterModelRequest, RollbackModelRequest,
    SetShadowRequest,
};
use tonic::{Request, Response, Status};

use crate::api_metrics::ApiMetrics;
use crate::catalog::{Catalog, CatalogError, Served};
use crate::registry::{Registered, RegistryError, ONLINE_VERSION};
use crate::scorer::{LoadedModel, ModelArtifact, ModelMeta};
use crate::serving::SERVED;

/// Largest artifact `RegisterModel` takes (forests of many deep trees get big).
pub const MAX_ARTIFACT_BYTES: usize = 64 * 1024 * 1024;

pub struct RegistryService {
    catalog: Arc<Catalog>,
    api: ApiMetrics,
}

impl RegistryService {
    pub fn new(catalog: Arc<Catalog>, api: ApiMetrics) -> Self {
        Self { catalog, api }
    }

    fn check_model(&self, model: &str) -> Result<(), Status> {
        if model.is_empty() || model == self.catalog.model() {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "model `{model}` is not served here; this server serves `{}`",
                self.catalog.model()
            )))
        }
    }

    fn version(&self, served: &Served, meta: &ModelMeta, kind: &str) -> ModelVersion {
        let role = if served.active.version() == meta.version {
            "active"
        } else if served
            .shadow
            .as_ref()
            .is_some_and(|s| s.version() == meta.version)
        {
            "shadow"
        } else {
            ""
        };
        let progress = self.catalog.progress(&meta.version).unwrap_or_default();
        ModelVersion {
            model: meta.name.clone(),
            version: meta.version.clone(),
            kind: kind.to_string(),
            inputs: meta.inputs.clone(),
            threshold: meta.threshold,
            description: meta.description.clone(),
            created_us: meta.created_us,
            trained_from_us: meta.trained_from_us,
            trained_to_us: meta.trained_to_us,
            training_rows: meta.training_rows,
            metrics: meta.metrics.clone().into_iter().collect(),
            role: role.into(),
            progressive_examples: progress.examples,
            progressive_roc_auc: progress.roc_auc,
            progressive_log_loss: progress.log_loss,
            progressive_brier: progress.brier,
            training_inputs: meta.training.as_ref().map_or_else(Default::default, |t| {
                t.inputs
                    .iter()
                    .map(|(k, d)| (k.clone(), d.to_proto()))
                    .collect()
            }),
            training_scores: meta
                .training
                .as_ref()
                .and_then(|t| t.scores.as_ref())
                .map(|d| d.to_proto()),
            notes: self
                .catalog
                .registry()
                .notes(&meta.name, &meta.version)
                .unwrap_or_default(),
            monthly: self.monthly_figures(&meta.version),
        }
    }

    fn monthly_figures(&self, version: &str) -> Vec<PeriodFigures> {
        self.catalog
            .monthly(version)
            .into_iter()
            .map(|(period, p)| PeriodFigures {
                period,
                examples: p.examples,
                positives: p.positives,
                roc_auc: p.roc_auc,
                log_loss: p.log_loss,
            })
            .collect()
    }

    fn loaded(&self, served: &Served, model: &LoadedModel) -> ModelVersion {
        self.version(served, &model.meta, model.kind())
    }

    fn roles(served: &Served) -> ModelRoles {
        ModelRoles {
            model: served.model.clone(),
            active: served.pointers.active.clone(),
            shadow: served.pointers.shadow.clone().unwrap_or_default(),
            history: served.pointers.history.clone(),
        }
    }

    fn timed<T>(
        &self,
        method: &str,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.api.record(method, self.catalog.model(), code, started);
        result.map(Response::new)
    }

    fn register_now(&self, req: RegisterModelRequest) -> Result<ModelVersion, Status> {
        let registered: Registered = if !req.snapshot_online_as.is_empty() {
            self.catalog
                .snapshot_online(&req.snapshot_online_as, &req.description)
                .map_err(status)?
        } else {
            let mut artifact = ModelArtifact::from_json(&req.artifact).map_err(|e| {
                status(CatalogError::Registry(RegistryError::Artifact {
                    model: self.catalog.model().into(),
                    source: e,
                }))
            })?;
            self.check_model(&artifact.meta.name)?;
            if !req.description.is_empty() {
                artifact.meta.description = req.description.clone();
            }
            self.catalog
                .register(artifact, req.promote)
                .map_err(status)?
        };
        if req.promote && !req.snapshot_online_as.is_empty() {
            self.catalog
                .promote(&req.snapshot_online_as)
                .map_err(status)?;
        }
        let served = self.catalog.load();
        Ok(self.version(
            &served,
            &registered.artifact.meta,
            registered.artifact.kind(),
        ))
    }
}

/// The status a catalog error answers with.
fn status(e: CatalogError) -> Status {
    let message = e.to_string();
    match e {
        CatalogError::Registry(r) => match r {
            RegistryError::UnknownVersion { .. } => Status::not_found(message),
            RegistryError::VersionExists { .. } => Status::already_exists(message),
            RegistryError::Reserved { .. } | RegistryError::Artifact { .. } => {
                Status::invalid_argument(message)
            }
            RegistryError::NothingToRollBack { .. } | RegistryError::ShadowIsActive { .. } => {
                Status::failed_precondition(message)
            }
            RegistryError::Store { .. } => Status::internal(message),
        },
        CatalogError::Unservable { .. } => Status::failed_precondition(message),
        CatalogError::NoOnlineLearner { .. } => Status::failed_precondition(message),
    }
}

#[tonic::async_trait]
impl ModelRegistry for RegistryService {
    async fn register_model(
        &self,
        request: Request<RegisterModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let started = Instant::now();
        let result = self.register_now(request.into_inner());
        self.timed("RegisterModel", started, result)
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let started = Instant::now();
        let result = (|| {
            self.check_model(&request.get_ref().model)?;
            let served = self.catalog.load();
            let mut versions: Vec<ModelVersion> = self
                .catalog
                .registry()
                .list(self.catalog.model())
                .map_err(|e| status(e.into()))?
                .iter()
                .map(|r| self.version(&served, &r.artifact.meta, r.artifact.kind()))
                .collect();
            if let Some(online) = served.versions.get(ONLINE_VERSION) {
                versions.push(self.loaded(&served, online));
            }
            let roles = Self::roles(&served);
            Ok(ListModelsResponse {
                versions,
                active: roles.active,
                shadow: roles.shadow,
                history: roles.history,
                served_monthly: self.monthly_figures(SERVED),
            })
        })();
        self.timed("ListModels", started, result)
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ModelVersion>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = (|| {
            self.check_model(&req.model)?;
            let served = self.catalog.load();
            let model = served
                .resolve(self.catalog.model(), &req.version)
                .map_err(|e| Status::not_found(e.to_string()))?;
            // Stored versions answer with their full metadata (metrics, training range).
            match self
                .catalog
                .registry()
                .get(self.catalog.model(), model.version())
                .map_err(|e| status(e.into()))?
            {
                Some(r) => Ok(self.version(&served, &r.artifact.meta, r.artifact.kind())),
                None => Ok(self.loaded(&served, model)),
            }
        })();
        self.timed("GetModel", started, result)
    }

    async fn promote_model(
        &self,
        request: Request<PromoteModelRequest>,
    ) -> Result<Response<ModelRoles>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = self
            .check_model(&req.model)
            .and_then(|()| self.catalog.promote(&req.version).map_err(status))
            .map(|s| Self::roles(&s));
        self.timed("PromoteModel", started, result)
    }

    async fn rollback_model(
        &self,
        request: Request<RollbackModelRequest>,
    ) -> Result<Response<ModelRoles>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = self
            .check_model(&req.model)
            .and_then(|()| self.catalog.rollback().map_err(status))
            .map(|s| Self::roles(&s));
        self.timed("RollbackModel", started, result)
    }

    async fn set_shadow(
        &self,
        request: Request<SetShadowRequest>,
    ) -> Result<Response<ModelRoles>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let version = (!req.version.is_empty()).then_some(req.version.as_str());
        let result = self
            .check_model(&req.model)
            .and_then(|()| self.catalog.set_shadow(version).map_err(status))
            .map(|s| Self::roles(&s));
        self.timed("SetShadow", started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::{ModelDef, ModelInput};
    use millrace_chassis::metrics::Metrics;

    fn service(dir: &std::path::Path) -> RegistryService {
        let def = ModelDef {
            name: "orders".into(),
            version: "1".into(),
            threshold: 0.5,
            intercept: 0.0,
            inputs: vec![ModelInput {
                name: "count".into(),
                weight: 1.0,
            }],
            online: Default::default(),
            retrain: Default::default(),
        };
        let catalog = Catalog::open(
            crate::registry::Registry::open(dir).unwrap(),
            &ModelArtifact::from_def(&def),
            None,
        )
        .unwrap();
        RegistryService::new(Arc::new(catalog), ApiMetrics::new(&Metrics::new()))
    }

    type Answer = Result<Response<ModelRoles>, Status>;

    #[tokio::test]
    async fn registry_calls_answer_with_the_status_a_client_can_act_on() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let mut artifact = ModelArtifact::from_def(&ModelDef {
            name: "orders".into(),
            version: "2".into(),
            threshold: 0.5,
            intercept: 1.0,
            inputs: vec![ModelInput {
                name: "count".into(),
                weight: 2.0,
            }],
            online: Default::default(),
            retrain: Default::default(),
        });
        artifact.meta.metrics.insert("holdout_roc_auc".into(), 0.81);
        let register = |artifact: &ModelArtifact, promote: bool| RegisterModelRequest {
            artifact: artifact.to_json().unwrap(),
            promote,
            ..Default::default()
        };
        let v = svc
            .register_model(Request::new(register(&artifact, true)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (v.version.as_str(), v.role.as_str(), v.kind.as_str()),
            ("2", "active", "logistic")
        );
        assert_eq!(v.metrics["holdout_roc_auc"], 0.81);

        let mut changed = artifact.clone();
        changed.spec = crate::scorer::ModelSpec::Logistic {
            intercept: 0.0,
            weights: vec![3.0],
        };
        let cases: Vec<(&str, Answer, tonic::Code)> = vec![
            (
                "promote an unknown version",
                svc.promote_model(Request::new(PromoteModelRequest {
                    model: String::new(),
                    version: "9".into(),
                }))
                .await,
                tonic::Code::NotFound,
            ),
            (
                "shadow the active version",
                svc.set_shadow(Request::new(SetShadowRequest {
                    model: "orders".into(),
                    version: "2".into(),
                }))
                .await,
                tonic::Code::FailedPrecondition,
            ),
            (
                "promote the online learner when there is none",
                svc.promote_model(Request::new(PromoteModelRequest {
                    model: String::new(),
                    version: ONLINE_VERSION.into(),
                }))
                .await,
                tonic::Code::FailedPrecondition,
            ),
            (
                "a model this server does not serve",
                svc.rollback_model(Request::new(RollbackModelRequest {
                    model: "churn".into(),
                }))
                .await,
                tonic::Code::NotFound,
            ),
        ];
        for (rule, got, code) in cases {
            assert_eq!(got.map(|_| ()).unwrap_err().code(), code, "{rule}");
        }
        let err = svc
            .register_model(Request::new(register(&changed, false)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{}", err.message());
        let err = svc
            .register_model(Request::new(RegisterModelRequest {
                artifact: b"{not json".to_vec(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );

        let roles = svc
            .rollback_model(Request::new(RollbackModelRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((roles.active.as_str(), roles.history.len()), ("1", 0));
        let err = svc
            .rollback_model(Request::new(RollbackModelRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "nothing left to roll back to"
        );
        let list = svc
            .list_models(Request::new(ListModelsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        let versions: Vec<(&str, &str)> = list
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.role.as_str()))
            .collect();
        assert_eq!(versions, [("1", "active"), ("2", "")]);
        let got = svc
            .get_model(Request::new(GetModelRequest {
                model: String::new(),
                version: "2".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.metrics["holdout_roc_auc"], 0.81);
    }
}
