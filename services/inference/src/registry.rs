//! The model registry, in sled: every registered version of every model (its
//! artifact: parameters and metadata), and per model which version is active,
//! which were active before it (for rollback) and which one runs in shadow.
//!
//! The version [`ONLINE_VERSION`] is the live online learner: it is never
//! stored here (the serving actor owns and snapshots it) but it can be
//! promoted or shadowed like any other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scorer::{ArtifactError, ModelArtifact};

/// The version name of the live online learner.
pub const ONLINE_VERSION: &str = "online";

/// Which versions of a model serve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointers {
    pub active: String,
    /// Previously active versions, most recent last.
    pub history: Vec<String>,
    pub shadow: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model registry at {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error("model {model} has no version `{version}`")]
    UnknownVersion { model: String, version: String },
    #[error("model {model} version `{version}` is already registered with other parameters")]
    VersionExists { model: String, version: String },
    #[error("model {model}: version `{version}` is reserved for the online learner")]
    Reserved { model: String, version: String },
    #[error("model {model}: nothing to roll back to (no earlier active version)")]
    NothingToRollBack { model: String },
    #[error("model {model}: `{version}` is the active version; it cannot also be its own shadow")]
    ShadowIsActive { model: String, version: String },
    #[error("model {model}: {source}")]
    Artifact {
        model: String,
        #[source]
        source: ArtifactError,
    },
}

#[derive(Clone)]
pub struct Registry {
    db: sled::Db,
    versions: sled::Tree,
    pointers: sled::Tree,
    /// Per version, what happened to it and why (a retrained version's trial).
    notes: sled::Tree,
    path: PathBuf,
}

fn version_key(model: &str, version: &str) -> Vec<u8> {
    let mut key = model.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(version.as_bytes());
    key
}

/// A stored version: the artifact and when it was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub artifact: ModelArtifact,
    pub registered_us: i64,
}

impl Registry {
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join("registry");
        let store = |e: sled::Error| RegistryError::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        let db = millrace_chassis::snapshot::open_sled(&path).map_err(store)?;
        let versions = db.open_tree("versions").map_err(store)?;
        let pointers = db.open_tree("pointers").map_err(store)?;
        let notes = db.open_tree("notes").map_err(store)?;
        Ok(Self {
            db,
            versions,
            pointers,
            notes,
            path,
        })
    }

    fn store_err(&self, message: impl std::fmt::Display) -> RegistryError {
        RegistryError::Store {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Registers the pipeline's model if it is not yet known and makes it
    /// active when the model has no active version; answers the pointers.
    /// A registered version never changes: when the pipeline file's model
    /// differs from the version of the same name already registered, the
    /// registered one is kept and a warning says to bump `[model].version`.
    pub fn seed(&self, artifact: &ModelArtifact) -> Result<Pointers, RegistryError> {
        let model = &artifact.meta.name;
        match self.get(model, &artifact.meta.version)? {
            None => {
                self.register(artifact.clone())?;
            }
            Some(existing)
                if existing.artifact.spec != artifact.spec
                    || existing.artifact.meta.inputs != artifact.meta.inputs
                    || existing.artifact.meta.threshold != artifact.meta.threshold =>
            {
                tracing::warn!(
                    model = %model,
                    version = %artifact.meta.version,
                    "the pipeline file's [model] differs from the registered version of the same name; \
                     the registered one is kept (bump [model].version to register the change)"
                );
            }
            Some(_) => {}
        }
        match self.pointers(model)? {
            Some(p) => Ok(p),
            None => self.promote(model, &artifact.meta.version),
        }
    }

    /// Stores a new version. Registering the same artifact again is a no-op;
    /// the same version with other parameters is refused.
    pub fn register(&self, mut artifact: ModelArtifact) -> Result<Registered, RegistryError> {
        let (model, version) = (artifact.meta.name.clone(), artifact.meta.version.clone());
        if version == ONLINE_VERSION {
            return Err(RegistryError::Reserved { model, version });
        }
        artifact.load().map_err(|source| RegistryError::Artifact {
            model: model.clone(),
            source,
        })?;
        if let Some(existing) = self.get(&model, &version)? {
            let mut same = artifact.clone();
            same.meta.created_us = existing.artifact.meta.created_us;
            if same == existing.artifact {
                return Ok(existing);
            }
            return Err(RegistryError::VersionExists { model, version });
        }
        let now = millrace_chassis::time::now_us();
        if artifact.meta.created_us == 0 {
            artifact.meta.created_us = now;
        }
        let registered = Registered {
            artifact,
            registered_us: now,
        };
        let bytes = serde_json::to_vec(&registered).map_err(|e| self.store_err(e))?;
        self.versions
            .insert(version_key(&model, &version), bytes)
            .map_err(|e| self.store_err(e))?;
        self.flush()?;
        Ok(registered)
    }

    /// Adds a line to what the registry says of a version; the same line twice
    /// (a replay deciding again) is kept once.
    pub fn note(&self, model: &str, version: &str, line: &str) -> Result<(), RegistryError> {
        let mut lines = self.notes(model, version)?;
        if lines.iter().any(|l| l == line) {
            return Ok(());
        }
        lines.push(line.to_string());
        let bytes = serde_json::to_vec(&lines).map_err(|e| self.store_err(e))?;
        self.notes
            .insert(version_key(model, version), bytes)
            .map_err(|e| self.store_err(e))?;
        self.flush()
    }

    /// What the registry says of a version, oldest first.
    pub fn notes(&self, model: &str, version: &str) -> Result<Vec<String>, RegistryError> {
        match self
            .notes
            .get(version_key(model, version))
            .map_err(|e| self.store_err(e))?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| self.store_err(format!("notes of {model}/{version}: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    pub fn get(&self, model: &str, version: &str) -> Result<Option<Registered>, RegistryError> {
        let Some(bytes) = self
            .versions
            .get(version_key(model, version))
            .map_err(|e| self.store_err(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.store_err(format!("version {model}/{version} is unreadable: {e}")))
    }

    /// Every stored version of `model`, in registration order.
    pub fn list(&self, model: &str) -> Result<Vec<Registered>, RegistryError> {
        let mut prefix = model.as_bytes().to_vec();
        prefix.push(0);
        let mut all = Vec::new();
        for item in self.versions.scan_prefix(prefix) {
            let (_, bytes) = item.map_err(|e| self.store_err(e))?;
            let r: Registered = serde_json::from_slice(&bytes)
                .map_err(|e| self.store_err(format!("a version of {model} is unreadable: {e}")))?;
            all.push(r);
        }
        all.sort_by_key(|r| r.registered_us);
        Ok(all)
    }

    /// Every model with pointers.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        self.pointers
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(|e| self.store_err(e))
            })
            .collect()
    }

    pub fn pointers(&self, model: &str) -> Result<Option<Pointers>, RegistryError> {
        let Some(bytes) = self.pointers.get(model).map_err(|e| self.store_err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.store_err(format!("pointers of {model} are unreadable: {e}")))
    }

    fn exists(&self, model: &str, version: &str) -> Result<bool, RegistryError> {
        Ok(version == ONLINE_VERSION || self.get(model, version)?.is_some())
    }

    fn write_pointers(&self, model: &str, p: &Pointers) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(p).map_err(|e| self.store_err(e))?;
        self.pointers
            .insert(model, bytes)
            .map_err(|e| self.store_err(e))?;
        self.flush()
    }

    fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush().map(|_| ()).map_err(|e| self.store_err(e))
    }

    /// Makes `version` active; the previous active version can be rolled back to.
    pub fn promote(&self, model: &str, version: &str) -> Result<Pointers, RegistryError> {
        if !self.exists(model, version)? {
            return Err(RegistryError::UnknownVersion {
                model: model.into(),
                version: version.into(),
            });
        }
        let mut p = self.pointers(model)?.unwrap_or_default();
        if p.active == version {
            return Ok(p);
        }
        if !p.active.is_empty() {
            let previous = std::mem::take(&mut p.active);
            p.history.push(previous);
        }
        p.active = version.to_string();
        if p.shadow.as_deref() == Some(version) {
            p.shadow = None;
        }
        self.write_pointers(model, &p)?;
        Ok(p)
    }

    /// Makes the previously active version active again.
    pub fn rollback(&self, model: &str) -> Result<Pointers, RegistryError> {
        let mut p = self.pointers(model)?.unwrap_or_default();
        let Some(previous) = p.history.pop() else {
            return Err(RegistryError::NothingToRollBack {
                model: model.into(),
            });
        };
        p.active = previous;
        if p.shadow.as_deref() == Some(p.active.as_str()) {
            p.shadow = None;
        }
        self.write_pointers(model, &p)?;
        Ok(p)
    }

    /// Runs `version` in shadow (scored and recorded, not served); `None` stops it.
    pub fn set_shadow(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Pointers, RegistryError> {
        let mut p = self.pointers(model)?.unwrap_or_default();
        if let Some(v) = version {
            if !self.exists(model, v)? {
                return Err(RegistryError::UnknownVersion {
                    model: model.into(),
                    version: v.into(),
                });
            }
            if p.active == v {
                return Err(RegistryError::ShadowIsActive {
                    model: model.into(),
                    version: v.into(),
                });
            }
        }
        p.shadow = version.map(str::to_string);
        self.write_pointers(model, &p)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::{ModelMeta, ModelSpec};

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

    #[test]
    fn register_promote_rollback_and_shadow() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path()).unwrap();
        let p = r.seed(&artifact("1", 1.0)).unwrap();
        assert_eq!(p.active, "1");
        r.register(artifact("2", 2.0)).unwrap();
        r.register(artifact("2", 2.0))
            .expect("the same artifact again is fine");
        assert!(matches!(
            r.register(artifact("2", 3.0)),
            Err(RegistryError::VersionExists { .. })
        ));
        assert!(matches!(
            r.register(artifact(ONLINE_VERSION, 3.0)),
            Err(RegistryError::Reserved { .. })
        ));

        let p = r.set_shadow("orders", Some("2")).unwrap();
        assert_eq!(p.shadow.as_deref(), Some("2"));
        assert!(matches!(
            r.set_shadow("orders", Some("1")),
            Err(RegistryError::ShadowIsActive { .. })
        ));
        let p = r.promote("orders", "2").unwrap();
        assert_eq!(
            (p.active.as_str(), p.shadow.as_deref()),
            ("2", None),
            "a promoted shadow stops shadowing"
        );
        let p = r.promote("orders", ONLINE_VERSION).unwrap();
        assert_eq!(p.history, ["1", "2"]);
        assert!(matches!(
            r.promote("orders", "9"),
            Err(RegistryError::UnknownVersion { .. })
        ));
        assert_eq!(r.rollback("orders").unwrap().active, "2");
        assert_eq!(r.rollback("orders").unwrap().active, "1");
        assert!(matches!(
            r.rollback("orders"),
            Err(RegistryError::NothingToRollBack { .. })
        ));
        let versions: Vec<String> = r
            .list("orders")
            .unwrap()
            .into_iter()
            .map(|v| v.artifact.meta.version)
            .collect();
        assert_eq!(versions, ["1", "2"]);
        assert_eq!(r.models().unwrap(), ["orders"]);

        // Everything survives a reopen; seeding again changes nothing.
        drop(r);
        let r = Registry::open(dir.path()).unwrap();
        assert_eq!(r.seed(&artifact("1", 1.0)).unwrap().active, "1");
        assert_eq!(
            r.get("orders", "2").unwrap().unwrap().artifact.spec,
            artifact("2", 2.0).spec
        );
    }
}
