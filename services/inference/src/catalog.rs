//! The models being served, swapped atomically.
//!
//! [`Catalog`] holds an `ArcSwap<Served>`: every request (OIP, `Score`) and
//! every stream batch loads the current [`Served`] once and scores with it to
//! the end, so a promote, rollback or shadow change never fails or mixes
//! models within a request in flight; the next request sees the new models.
//! Changes go through the [`Registry`] first (sled), then the catalog is
//! rebuilt from it and swapped in.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::online::OnlineLogistic;
use crate::registry::{Pointers, Registered, Registry, RegistryError, ONLINE_VERSION};
use crate::scorer::{LoadedModel, ModelArtifact, ModelMeta, ModelSpec};
use crate::serving::ProgressSummary;

/// One consistent view of a model's versions and roles.
#[derive(Debug, Clone)]
pub struct Served {
    pub model: String,
    pub active: Arc<LoadedModel>,
    pub shadow: Option<Arc<LoadedModel>>,
    /// Every version that can be addressed explicitly, the live learner included.
    pub versions: BTreeMap<String, Arc<LoadedModel>>,
    pub pointers: Pointers,
}

/// Why a model or version cannot be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "model `{asked}` is not served here; this server serves `{served}` (version `{version}`)"
    )]
    UnknownModel {
        asked: String,
        served: String,
        version: String,
    },
    #[error("model `{model}` has no version `{asked}`; the version served is `{served}` (versions: {})", known.join(", "))]
    UnknownVersion {
        model: String,
        asked: String,
        served: String,
        known: Vec<String>,
    },
}

impl Served {
    /// The version `name`/`version` addresses: the active one when `version` is empty.
    pub fn resolve(&self, name: &str, version: &str) -> Result<&Arc<LoadedModel>, ResolveError> {
        if name != self.model {
            return Err(ResolveError::UnknownModel {
                asked: name.into(),
                served: self.model.clone(),
                version: self.active.version().into(),
            });
        }
        if version.is_empty() || version == self.active.version() {
            return Ok(&self.active);
        }
        self.versions
            .get(version)
            .ok_or_else(|| ResolveError::UnknownVersion {
                model: name.into(),
                asked: version.into(),
                served: self.active.version().into(),
                known: self.versions.keys().cloned().collect(),
            })
    }

    /// Every version name, active first.
    pub fn version_names(&self) -> Vec<String> {
        let mut names = vec![self.active.version().to_string()];
        names.extend(
            self.versions
                .keys()
                .filter(|v| *v != self.active.version())
                .cloned(),
        );
        names
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("model {model} version {version} cannot be served: {message}")]
    Unservable {
        model: String,
        version: String,
        message: String,
    },
    #[error("model {model}: the online learner is not enabled (the pipeline needs a [label] rule and [model.online] enabled)")]
    NoOnlineLearner { model: String },
}

pub struct Catalog {
    registry: Registry,
    model: String,
    served: ArcSwap<Served>,
    /// Serialises changes (registry write + rebuild + swap) against each other.
    changing: std::sync::Mutex<()>,
    /// Progressive validation by version, as the serving actor last reported it.
    progress: std::sync::RwLock<BTreeMap<String, ProgressSummary>>,
    /// The same by version and calendar month (`YYYY-MM`) of the label's event time.
    monthly: std::sync::RwLock<BTreeMap<String, BTreeMap<String, ProgressSummary>>>,
}

impl Catalog {
    /// Seeds the registry with the pipeline's model and serves what it says.
    pub fn open(
        registry: Registry,
        pipeline_model: &ModelArtifact,
        online: Option<&OnlineLogistic>,
    ) -> Result<Self, CatalogError> {
        let model = pipeline_model.meta.name.clone();
        registry.seed(pipeline_model)?;
        let online = online.map(|o| Arc::new(online_model(&model, o)));
        let served = match build(&registry, &model, online.clone(), None) {
            Ok(served) => served,
            // E.g. the live learner was active and the pipeline no longer has one.
            Err(e @ CatalogError::Unservable { .. }) => {
                tracing::warn!(
                    "{e}; serving the pipeline's model version {} instead",
                    pipeline_model.meta.version
                );
                let pointers = registry.pointers(&model)?.unwrap_or_default();
                registry.set_shadow(&model, None)?;
                if pointers.active != pipeline_model.meta.version {
                    registry.promote(&model, &pipeline_model.meta.version)?;
                }
                build(&registry, &model, online, None)?
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            registry,
            model,
            served: ArcSwap::from_pointee(served),
            changing: std::sync::Mutex::new(()),
            progress: Default::default(),
            monthly: Default::default(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current view; hold it for the whole request.
    pub fn load(&self) -> Arc<Served> {
        self.served.load_full()
    }

    pub fn set_progress(&self, progress: BTreeMap<String, ProgressSummary>) {
        *self
            .progress
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = progress;
    }

    pub fn set_monthly(&self, version: &str, month: &str, summary: ProgressSummary) {
        self.monthly
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(version.to_string())
            .or_default()
            .insert(month.to_string(), summary);
    }

    /// A version's progressive metrics by month, in order.
    pub fn monthly(&self, version: &str) -> Vec<(String, ProgressSummary)> {
        self.monthly
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(version)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    pub fn progress(&self, version: &str) -> Option<ProgressSummary> {
        self.progress
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(version)
            .copied()
    }

    /// Replaces the live learner's parameters (after the actor learned).
    pub fn publish_online(&self, learner: &OnlineLogistic) {
        let fresh = Arc::new(online_model(&self.model, learner));
        self.served.rcu(|current| {
            let mut next = Served::clone(current);
            if next.active.version() == ONLINE_VERSION {
                next.active = fresh.clone();
            }
            if next
                .shadow
                .as_ref()
                .is_some_and(|s| s.version() == ONLINE_VERSION)
            {
                next.shadow = Some(fresh.clone());
            }
            next.versions.insert(ONLINE_VERSION.into(), fresh.clone());
            next
        });
    }

    fn change(
        &self,
        write: impl FnOnce(&Registry) -> Result<Pointers, RegistryError>,
    ) -> Result<Arc<Served>, CatalogError> {
        let _guard = self
            .changing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.load();
        let online = current.versions.get(ONLINE_VERSION).cloned();
        write(&self.registry)?;
        let next = Arc::new(build(&self.registry, &self.model, online, Some(&current))?);
        self.served.store(next.clone());
        Ok(next)
    }

    pub fn register(
        &self,
        artifact: ModelArtifact,
        promote: bool,
    ) -> Result<Registered, CatalogError> {
        let version = artifact.meta.version.clone();
        let registered = self.registry.register(artifact)?;
        if promote {
            self.change(|r| r.promote(&self.model, &version))?;
        } else {
            self.change(|r| Ok(r.pointers(&self.model)?.unwrap_or_default()))?;
        }
        Ok(registered)
    }

    /// Registers the live learner's current parameters as `version`.
    pub fn snapshot_online(
        &self,
        version: &str,
        description: &str,
    ) -> Result<Registered, CatalogError> {
        let served = self.load();
        let Some(live) = served.versions.get(ONLINE_VERSION) else {
            return Err(CatalogError::NoOnlineLearner {
                model: self.model.clone(),
            });
        };
        let learner = live.online().ok_or_else(|| CatalogError::NoOnlineLearner {
            model: self.model.clone(),
        })?;
        let mut meta = live.meta.clone();
        meta.version = version.to_string();
        meta.description = description.to_string();
        meta.training_rows = learner.updates();
        self.register(
            ModelArtifact {
                meta,
                spec: ModelSpec::Online(learner.clone()),
            },
            false,
        )
    }

    /// Refuses to point at the online learner when there is none.
    fn require_servable(&self, version: &str) -> Result<(), CatalogError> {
        if version == ONLINE_VERSION && !self.load().versions.contains_key(ONLINE_VERSION) {
            return Err(CatalogError::NoOnlineLearner {
                model: self.model.clone(),
            });
        }
        Ok(())
    }

    /// Records why something happened to a version (see [`Registry::note`]).
    pub fn note(&self, version: &str, line: &str) -> Result<(), CatalogError> {
        Ok(self.registry.note(&self.model, version, line)?)
    }

    pub fn promote(&self, version: &str) -> Result<Arc<Served>, CatalogError> {
        self.require_servable(version)?;
        self.change(|r| r.promote(&self.model, version))
    }

    pub fn rollback(&self) -> Result<Arc<Served>, CatalogError> {
        self.change(|r| r.rollback(&self.model))
    }

    pub fn set_shadow(&self, version: Option<&str>) -> Result<Arc<Served>, CatalogError> {
        if let Some(v) = version {
            self.require_servable(v)?;
        }
        self.change(|r| r.set_shadow(&self.model, version))
    }
}

/// The live learner as a servable version.
fn online_model(model: &str, learner: &OnlineLogistic) -> LoadedModel {
    use crate::scorer::Scorer;
    LoadedModel::with_online(
        ModelMeta {
            name: model.to_string(),
            version: ONLINE_VERSION.into(),
            inputs: learner.inputs().to_vec(),
            threshold: learner.threshold(),
            description: "the online learner, as of its latest update".into(),
            training_rows: learner.updates(),
            ..Default::default()
        },
        learner.clone(),
    )
}

/// Loads every registered version (reusing those `current` already loaded:
/// versions never change once registered) and resolves the pointers.
fn build(
    registry: &Registry,
    model: &str,
    online: Option<Arc<LoadedModel>>,
    current: Option<&Served>,
) -> Result<Served, CatalogError> {
    let pointers = registry.pointers(model)?.unwrap_or_default();
    let mut versions = BTreeMap::new();
    for registered in registry.list(model)? {
        let version = registered.artifact.meta.version.clone();
        let reused = current.and_then(|c| c.versions.get(&version)).cloned();
        let loaded = match reused {
            Some(l) => l,
            None => Arc::new(
                registered
                    .artifact
                    .load()
                    .map_err(|e| CatalogError::Unservable {
                        model: model.into(),
                        version: version.clone(),
                        message: e.to_string(),
                    })?,
            ),
        };
        versions.insert(version, loaded);
    }
    if let Some(o) = online {
        versions.insert(ONLINE_VERSION.into(), o);
    }
    let lookup = |v: &str| {
        versions
            .get(v)
            .cloned()
            .ok_or_else(|| CatalogError::Unservable {
                model: model.into(),
                version: v.into(),
                message: "it is not registered (or the online learner is disabled)".into(),
            })
    };
    let active = lookup(&pointers.active)?;
    let shadow = pointers.shadow.as_deref().map(lookup).transpose()?;
    Ok(Served {
        model: model.into(),
        active,
        shadow,
        versions,
        pointers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::Schedule;
    use crate::scorer::ModelSpec;

    fn artifact(version: &str, w: f64) -> ModelArtifact {
        ModelArtifact {
            meta: ModelMeta {
                name: "orders".into(),
                version: version.into(),
                inputs: vec!["count".into()],
                threshold: 0.5,
                ..Default::default()
            },
            spec: ModelSpec::Logistic {
                intercept: 0.0,
                weights: vec![w],
            },
        }
    }

    fn learner() -> OnlineLogistic {
        OnlineLogistic::new(
            vec!["count".into()],
            0.5,
            Schedule {
                learning_rate: 0.1,
                decay: 0.0,
                power: 0.5,
                min_learning_rate: 0.1,
                l2: 0.0,
            },
        )
    }

    /// Many threads score while versions are promoted, rolled back and shadowed:
    /// no request fails, and each scores with exactly one version's weights.
    #[test]
    fn swaps_under_concurrent_requests_never_fail_or_mix_versions() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(
            Catalog::open(
                Registry::open(dir.path()).unwrap(),
                &artifact("1", 1.0),
                Some(&learner()),
            )
            .unwrap(),
        );
        catalog.register(artifact("2", 2.0), false).unwrap();
        catalog.register(artifact("3", 3.0), false).unwrap();
        let want = |v: &str| match v {
            "1" => crate::model::sigmoid(1.0),
            "2" => crate::model::sigmoid(2.0),
            "3" => crate::model::sigmoid(3.0),
            _ => f64::NAN,
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (catalog, stop) = (catalog.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = std::collections::BTreeSet::new();
                    let mut requests = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let served = catalog.load();
                        let model = served
                            .resolve("orders", "")
                            .expect("the active model resolves");
                        let score = model.score_row(&[1.0]);
                        assert_eq!(
                            score,
                            want(model.version()),
                            "a request scores with one version"
                        );
                        if let Some(shadow) = &served.shadow {
                            assert_ne!(shadow.version(), model.version());
                            assert_eq!(shadow.score_row(&[1.0]), want(shadow.version()));
                        }
                        seen.insert(model.version().to_string());
                        requests += 1;
                    }
                    (seen, requests)
                })
            })
            .collect();
        for round in 0..50 {
            catalog
                .promote(if round % 2 == 0 { "2" } else { "3" })
                .unwrap();
            catalog.set_shadow(Some("1")).unwrap();
            catalog.rollback().unwrap();
            catalog.set_shadow(None).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = std::collections::BTreeSet::new();
        for r in readers {
            let (seen, requests) = r.join().expect("no reader panicked");
            assert!(requests > 0);
            all.extend(seen);
        }
        assert!(
            all.contains("1"),
            "readers saw the versions change: {all:?}"
        );
    }

    #[test]
    fn the_online_learner_can_be_promoted_and_follows_its_updates() {
        let dir = tempfile::tempdir().unwrap();
        let mut live = learner();
        let catalog = Catalog::open(
            Registry::open(dir.path()).unwrap(),
            &artifact("1", 1.0),
            Some(&live),
        )
        .unwrap();
        let served = catalog.promote(ONLINE_VERSION).unwrap();
        assert_eq!(served.active.version(), ONLINE_VERSION);
        assert_eq!(served.active.score_row(&[1.0]), 0.5, "an untrained learner");
        for _ in 0..10 {
            live.learn(&[1.0], 1.0);
        }
        catalog.publish_online(&live);
        let now = catalog.load();
        assert_eq!(now.active.score_row(&[1.0]), live.predict(&[1.0]));
        assert_eq!(
            served.active.score_row(&[1.0]),
            0.5,
            "a request in flight keeps its view"
        );
        let snap = catalog.snapshot_online("frozen-1", "test").unwrap();
        assert_eq!(snap.artifact.meta.training_rows, 10);
        let frozen = catalog
            .load()
            .resolve("orders", "frozen-1")
            .unwrap()
            .clone();
        assert_eq!(frozen.score_row(&[1.0]), live.predict(&[1.0]));
        assert_eq!(catalog.rollback().unwrap().active.version(), "1");
    }

    #[test]
    fn an_active_learner_that_is_gone_falls_back_to_the_pipeline_model() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(
            Registry::open(dir.path()).unwrap(),
            &artifact("1", 1.0),
            Some(&learner()),
        )
        .unwrap();
        catalog.promote(ONLINE_VERSION).unwrap();
        drop(catalog);
        let catalog = Catalog::open(
            Registry::open(dir.path()).unwrap(),
            &artifact("1", 1.0),
            None,
        )
        .unwrap();
        assert_eq!(catalog.load().active.version(), "1");
    }

    #[test]
    fn without_a_learner_online_cannot_be_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(
            Registry::open(dir.path()).unwrap(),
            &artifact("1", 1.0),
            None,
        )
        .unwrap();
        assert!(matches!(
            catalog.promote(ONLINE_VERSION),
            Err(CatalogError::NoOnlineLearner { .. })
        ));
    }
}
