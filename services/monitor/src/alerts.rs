//! Alert rules from `[[monitor.alerts]]`, evaluated where their figures are
//! computed, each one per series (rule × model version × feature).
//!
//! A series fires once `value <op> threshold` has held for `for_events`
//! events and `for_secs` of event time (counted from the first evaluation
//! that saw it hold), and resolves once the value has gone back past the
//! threshold by `hysteresis` (for `>`: at `value <= threshold − hysteresis`).
//! Between the two it stays firing, so a value hovering at the threshold
//! raises one alert, not a storm. An undefined value (an empty window) changes
//! nothing: it neither fires, nor resolves, nor keeps a `for` running.
//!
//! Every transition is an [`Alert`] with a deterministic id:
//! `<rule>:<model>:<version>:<feature>#<incident>` (empty parts left out), and
//! the message id adds the state. The series state lives in the snapshot, so a
//! replay after a crash numbers incidents the same way and JetStream drops the
//! transitions it already stored.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use millrace_chassis::config::{
    AlertRule, Comparison, MonitorMetric, MonitorSettings, QualityWindow,
};
use millrace_proto::{Alert, AlertState};
use serde::{Deserialize, Serialize};

use crate::keyed::Keyed;

/// Which figures a metric reads, and so where its rules are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    FeatureDrift,
    ScoreDrift,
    Quality,
    Latency,
}

impl Family {
    pub fn of(metric: MonitorMetric) -> Self {
        use MonitorMetric::*;
        match metric {
            Psi | Ks => Self::FeatureDrift,
            ScorePsi | ScoreKs => Self::ScoreDrift,
            Accuracy
            | Precision
            | Recall
            | RocAuc
            | LogLoss
            | Brier
            | CalibrationError
            | PredictedPositiveRate
            | LabelPositiveRate => Self::Quality,
            EventToPredictionSeconds | IngestToPredictionSeconds => Self::Latency,
        }
    }

    /// The alert's `kind`, also its subject suffix (`alerts.<kind>`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::FeatureDrift | Self::ScoreDrift => "drift",
            Self::Quality => "quality",
            Self::Latency => "latency",
        }
    }
}

/// The metric's name as the pipeline file spells it.
pub fn metric_name(metric: MonitorMetric) -> &'static str {
    use MonitorMetric::*;
    match metric {
        Psi => "psi",
        Ks => "ks",
        ScorePsi => "score_psi",
        ScoreKs => "score_ks",
        Accuracy => "accuracy",
        Precision => "precision",
        Recall => "recall",
        RocAuc => "roc_auc",
        LogLoss => "log_loss",
        Brier => "brier",
        CalibrationError => "calibration_error",
        PredictedPositiveRate => "predicted_positive_rate",
        LabelPositiveRate => "label_positive_rate",
        EventToPredictionSeconds => "event_to_prediction_seconds",
        IngestToPredictionSeconds => "ingest_to_prediction_seconds",
    }
}

pub fn symbol(op: Comparison) -> &'static str {
    match op {
        Comparison::Greater => ">",
        Comparison::GreaterOrEqual => ">=",
        Comparison::Less => "<",
        Comparison::LessOrEqual => "<=",
        Comparison::Equal => "==",
    }
}

/// A rule as monitor runs it, checked once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub metric: MonitorMetric,
    pub family: Family,
    pub op: Comparison,
    /// `None` only for drift metrics: the feature's (or the score's) significant level.
    pub threshold: Option<f64>,
    pub window: QualityWindow,
    pub quantile: f64,
    pub model: Option<String>,
    pub feature: Option<String>,
    pub for_events: u64,
    pub for_us: i64,
    pub hysteresis: f64,
}

impl Rule {
    pub fn kind(&self) -> &'static str {
        self.family.kind()
    }

    fn applies_to(&self, scope: &Scope) -> bool {
        self.family == scope.family
            && self.model.as_deref().is_none_or(|m| m == scope.model)
            && self.feature.as_deref().is_none_or(|f| f == scope.feature)
    }

    /// Whether the value is back on the quiet side of the threshold, past the hysteresis.
    fn cleared(&self, value: f64, threshold: f64) -> bool {
        let h = self.hysteresis;
        match self.op {
            Comparison::Greater | Comparison::GreaterOrEqual => {
                !self.op.holds(value, threshold - h)
            }
            Comparison::Less | Comparison::LessOrEqual => !self.op.holds(value, threshold + h),
            Comparison::Equal => (value - threshold).abs() > h,
        }
    }

    fn clear_level(&self, threshold: f64) -> String {
        let h = self.hysteresis;
        match self.op {
            Comparison::Greater => format!("<= {}", threshold - h),
            Comparison::GreaterOrEqual => format!("< {}", threshold - h),
            Comparison::Less => format!(">= {}", threshold + h),
            Comparison::LessOrEqual => format!("> {}", threshold + h),
            Comparison::Equal => format!("further than {h} from {threshold}"),
        }
    }
}

/// Checks the `[monitor]` section; answers the rules to run or what is wrong.
pub fn check(settings: &MonitorSettings) -> Result<Vec<Rule>, String> {
    let positive = [
        (
            "monitor.join.max_pending_predictions",
            settings.join.max_pending_predictions as u64,
        ),
        (
            "monitor.join.max_pending_labels",
            settings.join.max_pending_labels as u64,
        ),
        (
            "monitor.quality.window_labels",
            settings.quality.window_labels as u64,
        ),
        ("monitor.quality.window_secs", settings.quality.window_secs),
        (
            "monitor.quality.max_window_samples",
            settings.quality.max_window_samples as u64,
        ),
        (
            "monitor.quality.calibration_bins",
            settings.quality.calibration_bins as u64,
        ),
        (
            "monitor.quality.evaluate_every",
            settings.quality.evaluate_every,
        ),
        (
            "monitor.drift.reference_events",
            settings.drift.reference_events as u64,
        ),
        (
            "monitor.drift.window_events",
            settings.drift.window_events as u64,
        ),
        ("monitor.drift.bins", settings.drift.bins as u64),
        (
            "monitor.drift.max_categories",
            settings.drift.max_categories as u64,
        ),
        (
            "monitor.drift.evaluate_every",
            settings.drift.evaluate_every,
        ),
        (
            "monitor.latency.window_predictions",
            settings.latency.window_predictions as u64,
        ),
        (
            "monitor.latency.evaluate_every",
            settings.latency.evaluate_every,
        ),
    ];
    for (name, value) in positive {
        if value == 0 {
            return Err(format!("{name} must be at least 1"));
        }
    }
    let d = &settings.drift;
    let level = |name: &str, moderate: f64, significant: f64| {
        if !(moderate.is_finite()
            && significant.is_finite()
            && 0.0 <= moderate
            && moderate <= significant)
        {
            return Err(format!(
                "{name}: psi_moderate ({moderate}) and psi_significant ({significant}) must be finite with 0 <= moderate <= significant"
            ));
        }
        Ok(())
    };
    level("monitor.drift", d.psi_moderate, d.psi_significant)?;
    for (feature, f) in &d.features {
        level(
            &format!("monitor.drift.features.{feature}"),
            f.psi_moderate.unwrap_or(d.psi_moderate),
            f.psi_significant.unwrap_or(d.psi_significant),
        )?;
        if f.bins == Some(0) || f.bins == Some(1) {
            return Err(format!(
                "monitor.drift.features.{feature}.bins must be at least 2"
            ));
        }
    }
    if d.bins < 2 {
        return Err("monitor.drift.bins must be at least 2".into());
    }
    let mut names = BTreeSet::new();
    settings
        .alerts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("monitor.alerts[{i}] ({})", r.name);
            if !names.insert(r.name.as_str()) {
                return Err(format!("{at}: another rule has the same name"));
            }
            rule(r).map_err(|e| format!("{at}: {e}"))
        })
        .collect()
}

fn rule(r: &AlertRule) -> Result<Rule, String> {
    if r.name.is_empty()
        || !r
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("name must be letters, digits, `_` or `-`: it goes into alert ids".into());
    }
    let family = Family::of(r.metric);
    let metric = metric_name(r.metric);
    match (r.threshold, family) {
        (Some(t), _) if !t.is_finite() => return Err(format!("threshold {t} is not a number")),
        (None, Family::Quality | Family::Latency) => {
            return Err(format!("metric {metric} needs a threshold"));
        }
        _ => {}
    }
    if !(r.hysteresis.is_finite() && r.hysteresis >= 0.0) {
        return Err(format!("hysteresis {} must be 0 or more", r.hysteresis));
    }
    if r.feature.is_some() && family != Family::FeatureDrift {
        return Err(format!("feature applies to psi and ks, not to {metric}"));
    }
    if r.window != QualityWindow::default() && family != Family::Quality {
        return Err(format!(
            "window applies to quality metrics, not to {metric}"
        ));
    }
    let quantile = match (r.quantile, family) {
        (None, _) => 0.95,
        (Some(q), Family::Latency) if q > 0.0 && q <= 1.0 => q,
        (Some(q), Family::Latency) => return Err(format!("quantile {q} must be in (0, 1]")),
        (Some(_), _) => {
            return Err(format!(
                "quantile applies to latency metrics, not to {metric}"
            ))
        }
    };
    Ok(Rule {
        name: r.name.clone(),
        metric: r.metric,
        family,
        op: r.op,
        threshold: r.threshold,
        window: r.window,
        quantile,
        model: r.model.clone(),
        feature: r.feature.clone(),
        for_events: r.for_events,
        for_us: i64::try_from(r.for_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
        hysteresis: r.hysteresis,
    })
}

/// Where an evaluation happens: which series it touches and at which event.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    pub family: Family,
    pub model: &'a str,
    pub version: &'a str,
    pub feature: &'a str,
    /// Events this series has seen (labelled predictions, values, predictions).
    pub position: u64,
    pub time_us: i64,
    pub event_id: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    pub rule: String,
    pub model: String,
    pub version: String,
    pub feature: String,
}

/// A series looked up by the parts of its key, without copying them.
trait SeriesParts {
    fn parts(&self) -> (&str, &str, &str, &str);
}

impl SeriesParts for SeriesKey {
    fn parts(&self) -> (&str, &str, &str, &str) {
        (&self.rule, &self.model, &self.version, &self.feature)
    }
}

impl SeriesParts for (&str, &str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str, &str) {
        *self
    }
}

impl<'a> Borrow<dyn SeriesParts + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn SeriesParts + 'a) {
        self
    }
}

/// The order of `SeriesKey`'s derived `Ord`: field by field.
impl Ord for dyn SeriesParts + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl PartialOrd for dyn SeriesParts + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn SeriesParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SeriesParts + '_ {}

impl SeriesKey {
    fn of(parts: (&str, &str, &str, &str)) -> Self {
        Self {
            rule: parts.0.to_string(),
            model: parts.1.to_string(),
            version: parts.2.to_string(),
            feature: parts.3.to_string(),
        }
    }

    fn alert_id(&self, incident: u64) -> String {
        let parts: Vec<&str> = [&self.rule, &self.model, &self.version, &self.feature]
            .into_iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        format!("{}#{incident}", parts.join(":"))
    }
}

/// What a series remembers of the transition that made it fire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub value: f64,
    pub threshold: f64,
    pub time_us: i64,
    pub event_id: String,
    pub message: String,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub incidents: u64,
    pub firing: Option<Fired>,
    /// (position, event time) of the first evaluation of the current hold.
    pub holding_since: Option<(u64, i64)>,
    pub last_value: Option<f64>,
}

/// A figure handed to the rules, with how to describe where it came from.
pub struct Reading<'a> {
    pub value: Option<f64>,
    /// Used when the rule has no threshold of its own (drift).
    pub default_threshold: Option<f64>,
    /// e.g. "over the last 500 values against the first 1000".
    pub window: Cow<'a, str>,
}

/// A transition to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub alert: Alert,
    pub msg_id: String,
}

/// Every series' state; snapshotted (as a map in key order).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    pub series: Keyed<SeriesKey, Series>,
}

impl AlertBook {
    /// Evaluates every rule that applies to `scope`; `read` answers the figure
    /// each rule watches. Answers the transitions, in rule order.
    pub fn evaluate<'a>(
        &mut self,
        rules: &[Rule],
        scope: &Scope,
        read: impl FnMut(&Rule) -> Reading<'a>,
    ) -> Vec<Transition> {
        self.evaluate_at(rules, scope, &mut Vec::new(), read)
    }

    /// [`AlertBook::evaluate`], remembering in `positions[i]` where the series of
    /// rule `i` for this scope lies, so a caller that keeps `positions` per scope
    /// finds its series without a search next time.
    pub fn evaluate_at<'a>(
        &mut self,
        rules: &[Rule],
        scope: &Scope,
        positions: &mut Vec<Option<usize>>,
        mut read: impl FnMut(&Rule) -> Reading<'a>,
    ) -> Vec<Transition> {
        if positions.len() < rules.len() {
            positions.resize(rules.len(), None);
        }
        let mut out = Vec::new();
        for (i, rule) in rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.applies_to(scope))
        {
            let reading = read(rule);
            let Some(threshold) = rule.threshold.or(reading.default_threshold) else {
                continue;
            };
            // Looked up by its parts: the key is copied only for a new series.
            let parts = (
                rule.name.as_str(),
                scope.model,
                scope.version,
                scope.feature,
            );
            let probe: &dyn SeriesParts = &parts;
            let known = positions[i].or_else(|| self.series.position(probe));
            positions[i] = known;
            let Some(value) = reading.value else {
                if let Some(series) = known.and_then(|at| self.series.at_mut(at)) {
                    series.holding_since = None;
                }
                continue;
            };
            let at = match known {
                Some(at) => at,
                None => {
                    let at = self.series.position_or_insert(
                        probe,
                        |_| SeriesKey::of(parts),
                        Series::default,
                    );
                    positions[i] = Some(at);
                    at
                }
            };
            let Some(series) = self.series.at_mut(at) else {
                continue;
            };
            series.last_value = Some(value);
            if series.firing.is_none() {
                if !rule.op.holds(value, threshold) {
                    series.holding_since = None;
                    continue;
                }
                let (since_position, since_time) = *series
                    .holding_since
                    .get_or_insert((scope.position, scope.time_us));
                let held_events = scope.position.saturating_sub(since_position);
                let held_us = scope.time_us.saturating_sub(since_time);
                if held_events < rule.for_events || held_us < rule.for_us {
                    continue;
                }
                series.holding_since = None;
                series.incidents += 1;
                let message = format!(
                    "{} {value:.4} {} {threshold} {} (rule {})",
                    subject_of(rule, scope),
                    symbol(rule.op),
                    reading.window,
                    rule.name
                );
                let fired = Fired {
                    value,
                    threshold,
                    time_us: scope.time_us,
                    event_id: scope.event_id.to_string(),
                    message,
                };
                out.push(transition(
                    rule,
                    &SeriesKey::of(parts),
                    series.incidents,
                    AlertState::Firing,
                    &fired,
                ));
                series.firing = Some(fired);
            } else if rule.cleared(value, threshold) {
                let resolved = Fired {
                    value,
                    threshold,
                    time_us: scope.time_us,
                    event_id: scope.event_id.to_string(),
                    message: format!(
                        "{} back to {value:.4} ({}; resolves at {}) (rule {})",
                        subject_of(rule, scope),
                        reading.window,
                        rule.clear_level(threshold),
                        rule.name
                    ),
                };
                series.firing = None;
                out.push(transition(
                    rule,
                    &SeriesKey::of(parts),
                    series.incidents,
                    AlertState::Resolved,
                    &resolved,
                ));
            }
        }
        out
    }

    /// The alerts firing now, with each series' latest value.
    pub fn firing(&self, rules: &[Rule]) -> Vec<Alert> {
        self.series
            .iter()
            .filter_map(|(key, series)| {
                let fired = series.firing.as_ref()?;
                let rule = rules.iter().find(|r| r.name == key.rule)?;
                let mut alert =
                    transition(rule, key, series.incidents, AlertState::Firing, fired).alert;
                alert.value = series.last_value.unwrap_or(fired.value);
                Some(alert)
            })
            .collect()
    }

    /// Per rule: (firing transitions, resolved transitions, series firing now).
    pub fn totals(&self) -> BTreeMap<&str, (u64, u64, u64)> {
        let mut totals: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for (key, s) in self.series.iter() {
            let t = totals.entry(key.rule.as_str()).or_default();
            let firing = u64::from(s.firing.is_some());
            t.0 += s.incidents;
            t.1 += s.incidents - firing;
            t.2 += firing;
        }
        totals
    }

    /// Forgets series of rules no longer in the pipeline file.
    pub fn retain_rules(&mut self, rules: &[Rule]) {
        self.series
            .retain(|key, _| rules.iter().any(|r| r.name == key.rule));
    }
}

fn subject_of(rule: &Rule, scope: &Scope) -> String {
    let metric = metric_name(rule.metric);
    match rule.family {
        Family::FeatureDrift => format!("{metric} of feature {}", scope.feature),
        Family::ScoreDrift | Family::Quality | Family::Latency => {
            format!("{metric} of {} v{}", scope.model, scope.version)
        }
    }
}

fn transition(
    rule: &Rule,
    key: &SeriesKey,
    incident: u64,
    state: AlertState,
    at: &Fired,
) -> Transition {
    let alert_id = key.alert_id(incident);
    let state_name = match state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
        AlertState::Unspecified => "unspecified",
    };
    Transition {
        msg_id: format!("monitor:alert:{alert_id}:{state_name}"),
        alert: Alert {
            alert_id,
            kind: rule.kind().to_string(),
            state: state.into(),
            model: key.model.clone(),
            model_version: key.version.clone(),
            feature: key.feature.clone(),
            metric: metric_name(rule.metric).to_string(),
            value: at.value,
            threshold: at.threshold,
            time_us: at.time_us,
            message: at.message.clone(),
            event_id: at.event_id.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_rules(toml_rules: &str) -> Result<Vec<Rule>, String> {
        let text = format!(
            r#"
            [pipeline]
            name = "t"
            partitions = 1
            [model]
            name = "m"
            version = "1"
            inputs = [{{ name = "x", weight = 1.0 }}]
            {toml_rules}
            "#
        );
        let p = millrace_chassis::config::Pipeline::parse(&text, std::path::Path::new("t.toml"))
            .map_err(|e| e.to_string())?;
        check(&p.monitor)
    }

    fn rules(toml_rules: &str) -> Vec<Rule> {
        parse_rules(toml_rules).expect("rules parse and check")
    }

    fn scope(position: u64, time_us: i64) -> Scope<'static> {
        Scope {
            family: Family::FeatureDrift,
            model: "",
            version: "",
            feature: "amount",
            position,
            time_us,
            event_id: "e",
        }
    }

    fn reading(value: f64) -> Reading<'static> {
        Reading {
            value: Some(value),
            default_threshold: Some(0.2),
            window: "over the last 10 values".into(),
        }
    }

    /// Feeds `values` at positions 1, 2, …; answers (position, state) per transition.
    /// Every case runs twice: looking its series up each time, and remembering
    /// where it lies (as the board does); both must see the same transitions.
    fn run(rules: &[Rule], values: &[Option<f64>]) -> Vec<(u64, AlertState)> {
        let looked_up = run_with(rules, values, false);
        assert_eq!(run_with(rules, values, true), looked_up);
        looked_up
    }

    fn run_with(rules: &[Rule], values: &[Option<f64>], remember: bool) -> Vec<(u64, AlertState)> {
        let mut book = AlertBook::default();
        let mut positions = Vec::new();
        let mut seen = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let position = i as u64 + 1;
            let s = scope(position, position as i64 * 1_000_000);
            let read = |_: &Rule| Reading {
                value: *v,
                ..reading(0.0)
            };
            let transitions = if remember {
                book.evaluate_at(rules, &s, &mut positions, read)
            } else {
                book.evaluate(rules, &s, read)
            };
            for t in transitions {
                seen.push((position, t.alert.state()));
            }
        }
        seen
    }

    #[test]
    fn series_are_found_by_the_parts_of_their_keys() {
        let mut series: BTreeMap<SeriesKey, u32> = BTreeMap::new();
        let names = ["", "a", "ab", "b", "a:b", "z"];
        let mut all = Vec::new();
        for r in names {
            for m in names {
                for f in names {
                    all.push((r, m, "1", f));
                }
            }
        }
        for (i, parts) in all.iter().enumerate() {
            series.insert(SeriesKey::of(*parts), i as u32);
        }
        for (i, parts) in all.iter().enumerate() {
            let probe: &dyn SeriesParts = parts;
            assert_eq!(series.get(probe), Some(&(i as u32)), "{parts:?}");
        }
        let missing: &dyn SeriesParts = &("a", "a", "2", "a");
        assert_eq!(series.get(missing), None);
    }

    #[test]
    fn hysteresis_keeps_a_hovering_value_from_flapping() {
        use AlertState::{Firing, Resolved};
        let with = rules(
            r#"[[monitor.alerts]]
            name = "drift"
            metric = "psi"
            op = ">"
            hysteresis = 0.1"#,
        );
        let without = rules(
            r#"[[monitor.alerts]]
            name = "drift"
            metric = "psi"
            op = ">""#,
        );
        let hovering: Vec<Option<f64>> = [0.1, 0.21, 0.19, 0.22, 0.18, 0.21, 0.12, 0.09, 0.25]
            .into_iter()
            .map(Some)
            .collect();
        assert_eq!(
            run(&with, &hovering),
            [(2, Firing), (8, Resolved), (9, Firing)],
            "fires above 0.2, resolves only at <= 0.1"
        );
        assert_eq!(
            run(&without, &hovering),
            [
                (2, Firing),
                (3, Resolved),
                (4, Firing),
                (5, Resolved),
                (6, Firing),
                (7, Resolved),
                (9, Firing)
            ]
        );
    }

    #[test]
    fn for_events_and_for_secs_require_the_condition_to_hold() {
        use AlertState::Firing;
        let by_events = rules(
            r#"[[monitor.alerts]]
            name = "r"
            metric = "psi"
            op = ">"
            threshold = 0.5
            for_events = 2"#,
        );
        // Positions 1..: holds at 2, 3, breaks at 4, holds from 5 on.
        let values: Vec<Option<f64>> = [0.0, 0.6, 0.6, 0.1, 0.6, 0.6, 0.6]
            .into_iter()
            .map(Some)
            .collect();
        assert_eq!(run(&by_events, &values), [(7, Firing)]);
        let by_time = rules(
            r#"[[monitor.alerts]]
            name = "r"
            metric = "psi"
            op = ">"
            threshold = 0.5
            for_secs = 1"#,
        );
        // One second of event time passes between positions: 2 → 3 is enough,
        // and after the dip at 4 (which resolves it) 5 → 6 again.
        assert_eq!(
            run(&by_time, &values),
            [(3, Firing), (4, AlertState::Resolved), (6, Firing)]
        );
        // An undefined value interrupts the hold without resolving anything.
        let gap = [Some(0.6), None, Some(0.6), Some(0.6), Some(0.6)];
        assert_eq!(run(&by_events, &gap), [(5, Firing)]);
    }

    #[test]
    fn less_than_rules_resolve_above_the_threshold_plus_hysteresis() {
        use AlertState::{Firing, Resolved};
        let r = rules(
            r#"[[monitor.alerts]]
            name = "low_accuracy"
            metric = "psi"
            op = "<"
            threshold = 0.7
            hysteresis = 0.05"#,
        );
        let values: Vec<Option<f64>> = [0.8, 0.69, 0.72, 0.75, 0.6].into_iter().map(Some).collect();
        assert_eq!(run(&r, &values), [(2, Firing), (4, Resolved), (5, Firing)]);
    }

    #[test]
    fn transitions_carry_context_and_deterministic_ids() {
        let r = rules(
            r#"[[monitor.alerts]]
            name = "drift"
            metric = "psi"
            op = ">""#,
        );
        let mut book = AlertBook::default();
        let fire = book.evaluate(&r, &scope(7, 42), |_| reading(0.5));
        assert_eq!(fire.len(), 1);
        let a = &fire[0].alert;
        assert_eq!(
            (
                a.alert_id.as_str(),
                fire[0].msg_id.as_str(),
                a.kind.as_str()
            ),
            (
                "drift:amount#1",
                "monitor:alert:drift:amount#1:firing",
                "drift"
            )
        );
        assert_eq!(
            (a.feature.as_str(), a.metric.as_str(), a.value, a.threshold),
            ("amount", "psi", 0.5, 0.2)
        );
        assert_eq!((a.time_us, a.event_id.as_str()), (42, "e"));
        assert!(
            a.message.contains("over the last 10 values"),
            "{}",
            a.message
        );
        assert_eq!(book.firing(&r).len(), 1);
        let resolve = book.evaluate(&r, &scope(8, 43), |_| reading(0.1));
        assert_eq!(resolve[0].msg_id, "monitor:alert:drift:amount#1:resolved");
        assert!(book.firing(&r).is_empty());
        let again = book.evaluate(&r, &scope(9, 44), |_| reading(0.9));
        assert_eq!(again[0].alert.alert_id, "drift:amount#2");
        assert_eq!(book.totals()["drift"], (2, 1, 1));
    }

    #[test]
    fn rules_apply_only_to_their_family_model_and_feature() {
        let r = rules(
            r#"[[monitor.alerts]]
            name = "one_feature"
            metric = "psi"
            op = ">"
            feature = "hour"
            [[monitor.alerts]]
            name = "acc"
            metric = "accuracy"
            op = "<"
            threshold = 0.9
            model = "fraud""#,
        );
        let mut book = AlertBook::default();
        assert!(
            book.evaluate(&r, &scope(1, 1), |_| reading(9.0)).is_empty(),
            "amount is not hour"
        );
        let quality = |model: &'static str| Scope {
            family: Family::Quality,
            model,
            version: "1",
            feature: "",
            ..scope(1, 1)
        };
        assert!(book
            .evaluate(&r, &quality("delay"), |_| reading(0.1))
            .is_empty());
        let fired = book.evaluate(&r, &quality("fraud"), |_| reading(0.1));
        assert_eq!(fired[0].alert.alert_id, "acc:fraud:1#1");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let cases = [
            ("metric = \"accuracy\"\nop = \"<\"", "needs a threshold"),
            ("metric = \"psi\"\nop = \">\"\nhysteresis = -1.0", "hysteresis"),
            ("metric = \"accuracy\"\nop = \"<\"\nthreshold = 0.5\nfeature = \"x\"", "feature applies"),
            ("metric = \"psi\"\nop = \">\"\nwindow = \"time\"", "window applies"),
            ("metric = \"psi\"\nop = \">\"\nquantile = 0.5", "quantile applies"),
            (
                "metric = \"event_to_prediction_seconds\"\nop = \">\"\nthreshold = 1.0\nquantile = 1.5",
                "quantile 1.5",
            ),
            ("metric = \"psi\"\nop = \">\"\nnope = 1", "unknown field"),
            ("metric = \"median\"\nop = \">\"", "unknown variant"),
        ];
        for (body, expected) in cases {
            let err = parse_rules(&format!("[[monitor.alerts]]\nname = \"r\"\n{body}"))
                .expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let twice = "[[monitor.alerts]]\nname = \"r\"\nmetric = \"psi\"\nop = \">\"\n";
        let err = parse_rules(&format!("{twice}{twice}")).expect_err("duplicate");
        assert!(err.contains("same name"), "{err}");
        let err = parse_rules("[monitor.drift]\npsi_moderate = 0.3\npsi_significant = 0.2")
            .expect_err("levels");
        assert!(err.contains("psi_moderate"), "{err}");
        let err = parse_rules("[monitor.quality]\nwindow_labels = 0").expect_err("zero");
        assert!(err.contains("window_labels"), "{err}");
    }

    #[test]
    fn the_flights_pipeline_monitor_section_checks() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/flights/pipeline.toml");
        let p =
            millrace_chassis::config::Pipeline::load(&path).expect("the flights pipeline loads");
        let rules = check(&p.monitor).expect("its monitor section checks");
        assert!(rules.iter().any(|r| r.name == "feature_drift"));
        assert_eq!(p.monitor.drift.reference_events, 5000);
    }

    #[test]
    fn a_pipeline_without_a_monitor_section_gets_the_defaults() {
        let r = parse_rules("").expect("defaults check");
        assert!(r.is_empty());
    }

    #[test]
    fn book_round_trips_through_postcard_and_forgets_removed_rules() {
        let r = rules(
            r#"[[monitor.alerts]]
            name = "drift"
            metric = "psi"
            op = ">""#,
        );
        let mut book = AlertBook::default();
        book.evaluate(&r, &scope(1, 1), |_| reading(0.5));
        let back: AlertBook =
            postcard::from_bytes(&postcard::to_stdvec(&book).expect("encode")).expect("decode");
        assert_eq!(back, book);
        let mut pruned = back;
        pruned.retain_rules(&[]);
        assert!(pruned.series.is_empty());
    }
}
