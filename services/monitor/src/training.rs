//! The training reference: under `reference = "training"` a model version's
//! score, and the features it reads, drift against the data it was trained
//! on, as `millrace train` records it in the version's metadata.
//!
//! Monitor asks inference's `ModelRegistry` (`GetModel`) the first time this
//! process meets a version whose reference is not yet its training data. The
//! call runs in a task beside the stage, never in it: the board (which starts
//! the task when some model wants it) sends the version down a channel,
//! [`fetch_training`] answers with a
//! [`TrainingMetadata`] message. Until then, and for good when the metadata has
//! no distribution or inference cannot be reached, the reference is the first
//! `reference_events` values (logged, and shown by
//! `millrace_monitor_score_drift_reference` and the health report). A feature
//! takes the first training distribution that arrives for it.
//!
//! When the training reference arrives, the window starts over against it, so
//! which values that first window holds depends on when the answer came, not
//! on the streams alone. The installed reference is snapshotted: a restart
//! keeps it and asks nothing.

use std::time::Duration;

use actix::{Addr, Message};
use millrace_proto::model_registry_client::ModelRegistryClient;
use millrace_proto::{GetModelRequest, ValueDistribution};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::drift::{DriftSpec, Reference, ReferenceSource, Steps};
use crate::health::HealthBoard;
use crate::stats::ModelVersion;

/// Where inference serves `ModelRegistry` unless `MILLRACE_INFERENCE_URL` says otherwise.
pub const DEFAULT_INFERENCE_URL: &str = "http://127.0.0.1:50054";

/// `MILLRACE_INFERENCE_URL`, else [`DEFAULT_INFERENCE_URL`].
pub fn inference_url() -> String {
    std::env::var("MILLRACE_INFERENCE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_INFERENCE_URL.into())
}

/// Tries per version while inference is unreachable: about a minute in all.
const ATTEMPTS: u32 = 12;
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(8);

/// A version's registry entry, or why there is none (`Ok(None)`: not registered).
pub struct TrainingMetadata {
    pub version: ModelVersion,
    pub answer: Result<Option<millrace_proto::ModelVersion>, String>,
}

impl Message for TrainingMetadata {
    type Result = ();
}

/// The drift reference a training distribution describes, binned by `spec`.
pub fn reference(
    d: &ValueDistribution,
    spec: &DriftSpec,
    source: ReferenceSource,
) -> Result<Reference, String> {
    let steps = Steps::new(d.values.clone(), d.at_or_below.clone())?;
    if steps.size() == 0 {
        return Err("the distribution holds no values".into());
    }
    if steps.size() != d.count {
        return Err(format!(
            "the counts reach {} of {} values",
            steps.size(),
            d.count
        ));
    }
    Ok(Reference::from_steps(steps, spec, source))
}

/// Answers each requested version's metadata to the board, until the board hangs up.
pub async fn fetch_training(
    url: String,
    mut requests: UnboundedReceiver<ModelVersion>,
    board: Addr<HealthBoard>,
) {
    while let Some(version) = requests.recv().await {
        let answer = fetch_one(&url, &version).await;
        board.do_send(TrainingMetadata { version, answer });
    }
}

async fn fetch_one(
    url: &str,
    version: &ModelVersion,
) -> Result<Option<millrace_proto::ModelVersion>, String> {
    let mut delay = FIRST_RETRY;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match try_fetch(url, version).await {
            Ok(found) => return Ok(found),
            Err(e) => last = e,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LONGEST_RETRY);
    }
    Err(last)
}

async fn try_fetch(
    url: &str,
    version: &ModelVersion,
) -> Result<Option<millrace_proto::ModelVersion>, String> {
    let mut client = ModelRegistryClient::connect(url.to_string())
        .await
        .map_err(|e| format!("connecting to inference at {url}: {e}"))?;
    let request = GetModelRequest {
        model: version.model.clone(),
        version: version.version.clone(),
    };
    match client.get_model(request).await {
        Ok(answer) => Ok(Some(answer.into_inner())),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(format!(
            "GetModel {} v{} at {url}: {}",
            version.model,
            version.version,
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use millrace_chassis::config::FeatureKind;

    use super::*;
    use crate::drift::{psi, Binning, Current, DriftStatistic, DriftTracker};

    fn spec(kind: FeatureKind, bins: usize) -> DriftSpec {
        DriftSpec {
            kind,
            bins,
            max_categories: 2,
            reference_events: 4,
            window_events: 4,
            evaluate_every: 4,
        }
    }

    fn training() -> ReferenceSource {
        ReferenceSource::Training {
            model: "fraud".into(),
            version: "2".into(),
        }
    }

    fn distribution(values: &[f64], at_or_below: &[u64], count: u64) -> ValueDistribution {
        ValueDistribution {
            count,
            values: values.to_vec(),
            at_or_below: at_or_below.to_vec(),
        }
    }

    /// A training distribution bins as the same values observed first would.
    #[test]
    fn a_training_distribution_bins_as_its_values_would() {
        // 10 values: 1 ×2, 2 ×3, 3 ×1, 4 ×4.
        let d = distribution(&[1.0, 2.0, 3.0, 4.0], &[2, 5, 6, 10], 10);
        let raw = vec![1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0];
        for kind in [FeatureKind::Numeric, FeatureKind::Categorical] {
            let s = spec(kind, 4);
            let r = reference(&d, &s, training()).expect("valid");
            let mut first = Reference::freeze(raw.clone(), &s);
            first.source = training();
            assert_eq!(r, first, "{kind:?}");
        }
        // Edges at sorted[⌊k·10/4⌋] = sorted[2], [5], [7] = 2, 3, 4; counts 2 | 3 | 1 | 4.
        let r = reference(&d, &spec(FeatureKind::Numeric, 4), training()).expect("valid");
        assert_eq!(
            r.binning,
            Binning::Quantiles {
                edges: vec![2.0, 3.0, 4.0]
            }
        );
        assert_eq!(r.counts, [2, 3, 1, 4]);
        // Categories keep the two most frequent (4 and 2): 2 → 3, 4 → 4, others 3.
        let c = reference(&d, &spec(FeatureKind::Categorical, 4), training()).expect("valid");
        assert_eq!(c.counts, [3, 4, 3]);
    }

    #[test]
    fn psi_against_a_training_reference_matches_the_hand_value() {
        // Training: half the values 0, half 10 → bins [<10] and [≥10] at .5/.5.
        let d = distribution(&[0.0, 10.0], &[50, 100], 100);
        let s = spec(FeatureKind::Numeric, 2);
        let mut t = DriftTracker::default();
        t.install(reference(&d, &s, training()).expect("valid"));
        assert_eq!(t.source(), &training());
        // No first values are needed: the first full window is measured.
        let mut last = None;
        for v in [0.0, 10.0, 10.0, 10.0] {
            last = t.observe(v, &s);
        }
        let f = last.expect("measured at the 4th value");
        let want = (0.25 - 0.5) * (0.25f64 / 0.5).ln() + (0.75 - 0.5) * (0.75f64 / 0.5).ln();
        let got = f.psi.expect("psi");
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // KS: F_train(0) = .5, F_window(0) = .25.
        assert_eq!(f.ks, Some(0.25));
        let r = reference(&d, &s, training()).expect("valid");
        let current = Current {
            len: 2,
            bucket_counts: &[0, 1, 0, 1, 0],
            counts: &[1, 1],
        };
        assert_eq!(psi::Psi.measure(&r, &current), Some(0.0));
    }

    #[test]
    fn installing_a_reference_restarts_the_window() {
        let s = spec(FeatureKind::Numeric, 2);
        let mut t = DriftTracker::default();
        for v in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] {
            t.observe(v, &s);
        }
        assert_eq!((t.reference_size(), t.window_size()), (4, 2));
        assert_eq!(t.source(), &ReferenceSource::FirstEvents);
        let d = distribution(&[0.0, 10.0], &[50, 100], 100);
        t.install(reference(&d, &s, training()).expect("valid"));
        assert_eq!((t.reference_size(), t.window_size()), (100, 0));
        assert_eq!(t.observed, 6, "values seen stay counted");
    }

    #[test]
    fn malformed_distributions_are_refused_with_the_reason() {
        let s = spec(FeatureKind::Numeric, 4);
        let cases: [(&str, ValueDistribution, &str); 5] = [
            (
                "lengths",
                distribution(&[1.0, 2.0], &[1], 1),
                "2 values but 1",
            ),
            (
                "descending",
                distribution(&[2.0, 1.0], &[1, 2], 2),
                "not strictly ascending",
            ),
            ("nan", distribution(&[f64::NAN], &[1], 1), "not finite"),
            (
                "counts_fall",
                distribution(&[1.0, 2.0], &[2, 2], 2),
                "cumulative counts",
            ),
            ("count", distribution(&[1.0], &[3], 4), "reach 3 of 4"),
        ];
        for (name, d, reason) in cases {
            let err = reference(&d, &s, training()).expect_err(name);
            assert!(err.contains(reason), "{name}: {err}");
        }
        let empty = reference(&ValueDistribution::default(), &s, training());
        assert!(empty.is_err());
    }
}
