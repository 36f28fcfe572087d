//! millrace-inference: scores every feature vector from FEATURES with the
//! active model and publishes the prediction; learns online from LABELS;
//! serves the same models over the Open Inference Protocol V2, a `Score` call
//! that fetches online features itself, and a model registry.
//!
//! # Layout
//! - [`scorer`]: the `Scorer` trait every model kind implements, the stored
//!   `ModelArtifact` and the `LoadedModel` ready to score. The kinds:
//!   [`model`] (fixed-weight logistic regression), [`online`] (SGD learner),
//!   [`forest`] (smartcore random forest as a probability).
//! - [`registry`]: versions, promote, rollback and shadow, in sled.
//! - [`catalog`]: what is served, swapped atomically (`ArcSwap`) on every change.
//! - [`join`]: the bounded, TTL'd store where labels meet their feature vectors.
//! - [`evaluation`]: ROC AUC, log loss, Brier, reliability; exact and progressive.
//! - [`serving`]: the `ModelServer` actor: vectors and labels in, predictions
//!   out, the learner and the join snapshotted with both stream sequences.
//! - [`oip`], [`score`], [`registry_api`]: the gRPC adapters; [`api_metrics`] what they count.
//! - [`batch`]: smartcore training for `millrace train`.

pub mod api_metrics;
pub mod batch;
pub mod catalog;
pub mod evaluation;
pub mod forest;
pub mod join;
pub mod model;
pub mod oip;
pub mod online;
pub mod registry;
pub mod registry_api;
pub mod score;
pub mod scorer;
pub mod serving;
