//! Continuous training (`[model.retrain]`): the examples the label join
//! produced, a gradient-boosted fit at every period boundary of event time,
//! and the trial that decides whether the new version takes over.
//!
//! Everything is driven by event time, never the wall clock, so a replay at
//! any speed trains the same versions on the same rows and promotes them at
//! the same flights:
//!
//! - the boundaries are multiples of the period since the Unix epoch;
//! - a fit at boundary `T` reads the examples whose labels were applied
//!   before the first record at or after `T` (records come in event-time
//!   order, see `serving`), and runs on a thread of its own;
//! - its version serves from `T + ready_after`: a record past that moment
//!   waits for the fit to finish ([`Retraining::due`]), however fast the
//!   replay, and the version goes into shadow;
//! - after `shadow_labels` labelled flights scored by both, the shadow is
//!   promoted when its log loss on those flights beats the active version's.
//!
//! This module keeps the state and makes the decisions; `serving` applies
//! them to the catalog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use millrace_chassis::config::RetrainSettings;
use serde::{Deserialize, Serialize};

use crate::evaluation::Progressive;
use crate::gbdt::{self, GbdtModel, GbdtParams};
use crate::scorer::{ModelArtifact, ModelMeta, ModelSpec};

/// Why retraining cannot run as configured.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("[model.retrain] {0}")]
    Settings(String),
    #[error("retraining {version}: {message}")]
    Fit { version: String, message: String },
}

/// A fit started at a boundary whose version does not serve yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitting {
    pub version: String,
    pub boundary_us: i64,
    pub serve_from_us: i64,
    /// It trains on the first `rows` examples kept (a restart fits them again).
    pub rows: usize,
}

/// A new version in shadow, scored beside the active one on the same flights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    pub against: String,
    pub active: Progressive,
    pub shadow: Progressive,
}

/// What became of one retrained version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub version: String,
    pub boundary_us: i64,
    pub rows: usize,
    pub fit_seconds: f64,
    /// Set when its trial ended.
    pub promoted: Option<bool>,
    pub reason: String,
}

/// The examples and the retraining state inference snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retraining {
    /// The inputs every example holds, in order.
    pub inputs: Vec<String>,
    /// Row-major, `inputs.len()` per example; NaN is missing.
    values: Vec<f32>,
    labels: Vec<f32>,
    label_times_us: Vec<i64>,
    next_boundary_us: Option<i64>,
    pub fitting: Option<Fitting>,
    pub trial: Option<Trial>,
    pub outcomes: Vec<Outcome>,
}

/// What the serving actor must do to the catalog.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Register this artifact and put it in shadow.
    Shadow(Box<ModelArtifact>),
    /// The trial ended: promote `version` (or just drop the shadow), saying why.
    Decide {
        version: String,
        promote: bool,
        reason: String,
    },
}

/// A fit running on its own thread.
pub struct Job {
    version: String,
    handle: std::thread::JoinHandle<(Result<GbdtModel, String>, Duration)>,
}

impl Retraining {
    pub fn new(inputs: Vec<String>) -> Self {
        Self {
            inputs,
            ..Self::default()
        }
    }

    pub fn examples(&self) -> usize {
        self.labels.len()
    }

    /// Bytes the kept examples take.
    pub fn example_bytes(&self) -> usize {
        self.values.len() * 4 + self.labels.len() * 4 + self.label_times_us.len() * 8
    }

    /// Keeps a joined example: the retrain inputs of its vector, its label
    /// and the label's event time.
    pub fn keep(&mut self, features: &[f32], label: f64, label_time_us: i64) {
        if features.len() != self.inputs.len() {
            return;
        }
        self.values.extend_from_slice(features);
        self.labels.push(label as f32);
        self.label_times_us.push(label_time_us);
    }

    /// Records what the active and the shadow version said of a labelled
    /// flight; answers the decision once the trial has seen enough.
    pub fn judge(
        &mut self,
        served: &(String, f64),
        shadow: Option<&(String, f64)>,
        label: f64,
        settings: &RetrainSettings,
    ) -> Option<Step> {
        let trial = self.trial.as_mut()?;
        let (version, score) = shadow?;
        if *version != trial.version || served.0 != trial.against {
            return None;
        }
        trial.active.record(served.1, label);
        trial.shadow.record(*score, label);
        if trial.shadow.examples < settings.shadow_labels {
            return None;
        }
        let trial = self.trial.take()?;
        let (ours, theirs) = (trial.shadow.log_loss(), trial.active.log_loss());
        let promote = ours < theirs;
        let reason = format!(
            "{} on the same {} labelled flights: log loss {ours:.4} against {theirs:.4} of {}, ROC AUC {:.4} against {:.4}",
            if promote { "promoted" } else { "kept in reserve" },
            trial.shadow.examples,
            trial.against,
            trial.shadow.roc_auc(),
            trial.active.roc_auc(),
        );
        if let Some(o) = self
            .outcomes
            .iter_mut()
            .rev()
            .find(|o| o.version == trial.version)
        {
            o.promoted = Some(promote);
            o.reason.clone_from(&reason);
        }
        Some(Step::Decide {
            version: trial.version,
            promote,
            reason,
        })
    }

    /// Called before a record of event time `t` is applied: starts a fit at
    /// a boundary `t` has reached, and answers whether a fit's version must
    /// serve before this record ([`Self::install`]).
    pub fn due(&mut self, t: i64, settings: &RetrainSettings, job: &mut Option<Job>) -> bool {
        let period = secs_us(settings.period_secs).max(1);
        let next = *self
            .next_boundary_us
            .get_or_insert_with(|| t.div_euclid(period) * period + period);
        if t >= next && self.fitting.is_none() {
            // Boundaries a silence skipped are not fitted one by one.
            let boundary = t.div_euclid(period) * period;
            self.next_boundary_us = Some(boundary + period);
            self.start(boundary, settings, job);
        } else if t >= next {
            self.next_boundary_us = Some(t.div_euclid(period) * period + period);
        }
        self.fitting.as_ref().is_some_and(|f| t >= f.serve_from_us)
    }

    fn start(&mut self, boundary_us: i64, settings: &RetrainSettings, job: &mut Option<Job>) {
        if settings.window_secs > 0 {
            let from = boundary_us.saturating_sub(secs_us(settings.window_secs));
            let drop = self.label_times_us.partition_point(|&t| t < from);
            self.values.drain(..drop * self.inputs.len());
            self.labels.drain(..drop);
            self.label_times_us.drain(..drop);
        }
        if self.examples() < settings.min_examples.max(1) {
            tracing::info!(
                examples = self.examples(),
                min_examples = settings.min_examples,
                boundary = %utc_date(boundary_us),
                "retraining: too few labelled examples at this boundary"
            );
            return;
        }
        let fitting = Fitting {
            version: format!("r{}", utc_date(boundary_us)),
            boundary_us,
            serve_from_us: boundary_us.saturating_add(secs_us(settings.ready_after_secs)),
            rows: self.examples(),
        };
        *job = Some(self.spawn(&fitting, settings));
        self.fitting = Some(fitting);
    }

    fn spawn(&self, fitting: &Fitting, settings: &RetrainSettings) -> Job {
        let (rows, labels) = self.rows(fitting.rows);
        let inputs = self.inputs.clone();
        let params = params(settings);
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let fitted = params
                .and_then(|p| gbdt::fit(&inputs, &rows, &labels, &p).map_err(|e| e.to_string()));
            (fitted, started.elapsed())
        });
        tracing::info!(version = %fitting.version, rows = fitting.rows, "retraining started");
        Job {
            version: fitting.version.clone(),
            handle,
        }
    }

    fn rows(&self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let w = self.inputs.len();
        let rows = self.values[..n * w].iter().map(|&v| f64::from(v)).collect();
        let labels = self.labels[..n].iter().map(|&v| f64::from(v)).collect();
        (rows, labels)
    }

    /// Waits for the fit that must serve now (fitting it again after a
    /// restart lost its thread) and answers its artifact, to go into shadow.
    pub fn install(
        &mut self,
        job: &mut Option<Job>,
        settings: &RetrainSettings,
        model: &str,
        threshold: f64,
        active: &str,
    ) -> Result<Option<Step>, RetrainError> {
        let Some(fitting) = self.fitting.take() else {
            return Ok(None);
        };
        let job = match job.take() {
            Some(j) if j.version == fitting.version => j,
            _ => self.spawn(&fitting, settings),
        };
        let (fitted, took) = job
            .handle
            .join()
            .unwrap_or_else(|_| (Err("the fit panicked".into()), Duration::ZERO));
        let gbdt = fitted.map_err(|message| RetrainError::Fit {
            version: fitting.version.clone(),
            message,
        })?;
        let (from, to) = (
            self.label_times_us.first().copied().unwrap_or(0),
            self.label_times_us[..fitting.rows]
                .last()
                .copied()
                .unwrap_or(0),
        );
        let fit_seconds = took.as_secs_f64();
        let description = format!(
            "retrained at the {} boundary on the {} flights labelled by then",
            utc_date(fitting.boundary_us),
            fitting.rows
        );
        tracing::info!(version = %fitting.version, rows = fitting.rows, fit_seconds, "retrained; in shadow");
        self.outcomes.push(Outcome {
            version: fitting.version.clone(),
            boundary_us: fitting.boundary_us,
            rows: fitting.rows,
            fit_seconds,
            promoted: None,
            reason: String::new(),
        });
        self.trial = Some(Trial {
            version: fitting.version.clone(),
            against: active.to_string(),
            active: Progressive::default(),
            shadow: Progressive::default(),
        });
        let artifact = ModelArtifact {
            meta: ModelMeta {
                name: model.to_string(),
                version: fitting.version.clone(),
                inputs: self.inputs.clone(),
                threshold,
                description,
                trained_from_us: from,
                trained_to_us: to,
                training_rows: fitting.rows as u64,
                metrics: BTreeMap::from([("fit_seconds".to_string(), fit_seconds)]),
                ..Default::default()
            },
            spec: ModelSpec::Gbdt(gbdt.with_threshold(threshold)),
        };
        Ok(Some(Step::Shadow(Box::new(artifact))))
    }
}

/// The trainer's parameters from `[model.retrain.params]`.
pub fn params(settings: &RetrainSettings) -> Result<GbdtParams, String> {
    toml::Value::Table(settings.params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
}

/// Checks `[model.retrain]` before the service starts.
pub fn check(settings: &RetrainSettings) -> Result<(), RetrainError> {
    let bad = |m: &str| Err(RetrainError::Settings(m.to_string()));
    if settings.period_secs == 0 {
        return bad("period_secs must be at least 1");
    }
    if settings.shadow_labels == 0 {
        return bad("shadow_labels must be at least 1");
    }
    params(settings).map_err(|e| RetrainError::Settings(format!("params: {e}")))?;
    Ok(())
}

fn secs_us(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD` of a UTC time (days to civil date, after Howard Hinnant).
pub fn utc_date(us: i64) -> String {
    let z = us.div_euclid(86_400_000_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn settings() -> RetrainSettings {
        let mut params = toml::Table::new();
        params.insert("rounds".into(), toml::Value::Integer(20));
        params.insert("threads".into(), toml::Value::Integer(1));
        RetrainSettings {
            enabled: true,
            period_secs: 86_400,
            min_examples: 100,
            ready_after_secs: 3_600,
            shadow_labels: 50,
            inputs: vec!["x".into()],
            params,
            ..RetrainSettings::default()
        }
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        // 2013-02-01T00:00:00Z and the microsecond before it.
        assert_eq!(utc_date(1_359_676_800_000_000), "2013-02-01");
        assert_eq!(utc_date(1_359_676_800_000_000 - 1), "2013-01-31");
        assert_eq!(utc_date(951_782_400_000_000), "2000-02-29");
    }

    /// A day of examples where x > 0.5 is positive.
    fn feed(r: &mut Retraining, day: i64, n: usize) {
        for i in 0..n {
            let x = (i * 37 % 100) as f32 / 100.0;
            let t = day * DAY + i as i64 * (DAY / n as i64);
            r.keep(&[x], f64::from(u8::from(x > 0.5)), t);
        }
    }

    #[test]
    fn a_boundary_starts_a_fit_that_serves_after_ready_after_in_shadow() {
        let s = settings();
        let mut r = Retraining::new(vec!["x".into()]);
        let mut job = None;
        assert!(
            !r.due(10 * DAY + 5, &s, &mut job),
            "the first record sets the clock"
        );
        feed(&mut r, 10, 500);
        assert!(
            !r.due(11 * DAY, &s, &mut job),
            "boundary reached: the fit starts"
        );
        let f = r.fitting.clone().expect("fitting");
        assert_eq!((f.version.as_str(), f.rows), ("r1970-01-12", 500));
        feed(&mut r, 11, 10);
        assert!(!r.due(11 * DAY + 1, &s, &mut job), "not before ready_after");
        assert!(r.due(11 * DAY + 3_600_000_000, &s, &mut job));
        let step = r.install(&mut job, &s, "m", 0.5, "v1").expect("fit");
        let Some(Step::Shadow(artifact)) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            artifact.meta.training_rows, 500,
            "only what was labelled by the boundary"
        );
        assert_eq!(artifact.meta.version, "r1970-01-12");
        assert!(r.fitting.is_none());
        assert_eq!(r.trial.as_ref().map(|t| t.against.as_str()), Some("v1"));
    }

    #[test]
    fn a_restart_fits_the_same_rows_again() {
        let s = settings();
        let mut r = Retraining::new(vec!["x".into()]);
        let mut job = None;
        r.due(10 * DAY, &s, &mut job);
        feed(&mut r, 10, 300);
        r.due(11 * DAY, &s, &mut job);
        feed(&mut r, 11, 300);
        let mut restarted: Retraining =
            postcard::from_bytes(&postcard::to_allocvec(&r).expect("encode")).expect("decode");
        let mut lost = None;
        let a = r.install(&mut job, &s, "m", 0.5, "v1").expect("fit");
        let b = restarted
            .install(&mut lost, &s, "m", 0.5, "v1")
            .expect("fit");
        let (Some(Step::Shadow(a)), Some(Step::Shadow(b))) = (a, b) else {
            panic!("both install")
        };
        assert_eq!(a.spec, b.spec);
        assert_eq!(b.meta.training_rows, 300);
    }

    #[test]
    fn too_few_examples_skip_the_boundary() {
        let s = settings();
        let mut r = Retraining::new(vec!["x".into()]);
        let mut job = None;
        r.due(10 * DAY, &s, &mut job);
        feed(&mut r, 10, 20);
        r.due(11 * DAY, &s, &mut job);
        assert!(r.fitting.is_none() && job.is_none());
    }

    #[test]
    fn the_shadow_is_promoted_only_when_its_log_loss_beats_the_active_one() {
        let s = settings();
        let mut r = Retraining::new(vec!["x".into()]);
        r.trial = Some(Trial {
            version: "r2".into(),
            against: "v1".into(),
            active: Progressive::default(),
            shadow: Progressive::default(),
        });
        let mut decision = None;
        for i in 0..60 {
            let y = f64::from(i % 2);
            let served = ("v1".to_string(), 0.5);
            let shadow = ("r2".to_string(), if y > 0.5 { 0.8 } else { 0.2 });
            if let Some(d) = r.judge(&served, Some(&shadow), y, &s) {
                decision = Some((i, d));
                break;
            }
        }
        let Some((
            i,
            Step::Decide {
                version,
                promote,
                reason,
            },
        )) = decision
        else {
            panic!("no decision")
        };
        assert_eq!((i, version.as_str(), promote), (49, "r2", true));
        assert!(reason.contains("log loss"), "{reason}");
        assert!(r.trial.is_none());
    }
}
