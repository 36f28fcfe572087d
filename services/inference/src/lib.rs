//! millrace-inference: scores every feature vector from FEATURES with the
//! active model and publishes the prediction; learns online from LABELS;
//! serves the same models over the Open Inference Protocol V2, a `Score` call
//! that fetches online features itself, and a model registry.
//!
//! # Layout
//! - [`scorer`]: the `Scorer` trait every model kind implements, the stored
//!   `ModelArtifact` and the `LoadedModel` ready to score. The kinds:
//!   [`model`] (fixed-weight logistic regression), [`online`] (SGD learner),
//!   [`forest`] (smartcore random forest as a probability), [`gbdt`]
//!   (gradient-boosted trees, our own histogram trainer; [`gbdt::fit`] is
//!   what a retrainer calls).
//! - [`registry`]: versions, promote, rollback and shadow, in sled.
//! - [`catalog`]: what is served, swapped atomically (`ArcSwap`) on every change.
//! - [`join`]: the bounded, TTL'd store where labels meet their feature vectors.
//! - [`retrain`]: continuous training at event-time boundaries, shadow trials, promotions.
//! - [`evaluation`]: ROC AUC, log loss, Brier, reliability; exact and progressive.
//! - [`serving`]: the `ModelServer` actor: vectors and labels in, predictions
//!   out, the learner and the join snapshotted with both stream sequences.
//! - [`oip`], [`score`], [`registry_api`]: the gRPC adapters; [`api_metrics`] what they count.
//! - [`batch`]: training for `millrace train` (smartcore, and [`gbdt`]).

pub mod api_metrics;
pub mod batch;
pub mod catalog;
pub mod evaluation;
pub mod forest;
pub mod gbdt;
pub mod join;
pub mod model;
pub mod oip;
pub mod online;
pub mod registry;
pub mod registry_api;
pub mod retrain;
pub mod score;
pub mod scorer;
pub mod serving;
