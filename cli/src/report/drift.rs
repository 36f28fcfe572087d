//! Section 3: PSI by month of the features that move most, against the
//! first month (FEATURES), and the alerts monitor published (ALERTS).

use std::collections::BTreeMap;

use millrace_proto::AlertState;

use super::chart::{color, Chart, Line, XAxis};
use super::gather::Gathered;
use super::sections::{thousands, utc, version_label, Cell, Section, Settings, Table};
use super::stats::{self, DriftBins, FeatureKind, Month, MonthAxis};

/// Alerts listed one by one; the summary counts them all.
const ALERTS_LISTED: usize = 50;

pub fn section(g: &Gathered, s: &Settings) -> Section {
    let mut section = Section {
        id: "drift",
        title: "3. Feature drift by month, and the alerts that fired".into(),
        ..Section::default()
    };
    let kind = |name: &str| {
        s.feature_kinds
            .get(name)
            .copied()
            .unwrap_or(FeatureKind::Numeric)
    };
    let figures = stats::drift(
        &g.features,
        kind,
        DriftBins {
            bins: s.bins,
            max_categories: s.max_categories,
            min_values: s.min_examples,
        },
    );
    match &figures {
        Some(d) => {
            section.text.push(format!(
                "PSI of each month's feature values (FEATURES, by month of the vector's event \
                 time) against {}'s: {} quantile bins of {} for numeric features, one bin per \
                 category for categorical ones, a bin for missing values, empty bins counted \
                 as 0.0001, as monitor does. The chart shows the {} features whose monthly PSI \
                 varies most (variance over the months, {} included) among the {} that \
                 monitor watches (the pipeline's [monitor.drift.features] ignores the others); \
                 the table has them all. Months with fewer than {} values have no figure. \
                 Monitor's own alerts compare a sliding window with its reference window \
                 (the first vectors it saw), so they need not fire in the months this table \
                 shows highest; the triangles mark drift alerts that fired for a charted \
                 feature, in the month of the event that tipped them.",
                d.reference.label(),
                s.bins,
                d.reference.label(),
                s.top_features.min(d.features.len()),
                d.reference.label(),
                d.features.len(),
                s.min_examples
            ));
            drift_figures(&mut section, g, s, d);
        }
        None => section.text.push(format!(
            "No feature has {} values in a month yet: no drift to measure.",
            s.min_examples
        )),
    }
    alert_tables(&mut section, g);
    section
}

fn drift_figures(section: &mut Section, g: &Gathered, s: &Settings, d: &stats::Drift) {
    let Some(axis) = MonthAxis::spanning(d.features.iter().flat_map(|f| f.psi.keys().copied()))
    else {
        return;
    };
    let top: Vec<&stats::FeatureDrift> = d.features.iter().take(s.top_features).collect();
    let lines = top
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let points = f
                .psi
                .iter()
                .map(|(&m, &p)| (m, f.values.get(&m).copied().unwrap_or(0), p));
            Line::new(
                f.name.clone(),
                color(i),
                stats::segments(&axis, points, s.min_examples),
            )
        })
        .collect();
    let markers = g
        .alerts
        .iter()
        .filter(|a| a.kind == "drift" && a.state == AlertState::Firing as i32)
        .filter_map(|a| {
            let f = top.iter().find(|f| f.name == a.feature)?;
            let month = Month::of_us(a.time_us);
            let y = f.psi.get(&month).copied().unwrap_or(s.psi_significant);
            (month >= axis.first).then(|| (axis.x(month), y))
        })
        .filter(|(x, _)| *x < axis.len as f64)
        .fold(Vec::new(), |mut kept: Vec<(f64, f64)>, p| {
            // One triangle per spot: a feature's alerts of one month coincide.
            if !kept.contains(&p) {
                kept.push(p);
            }
            kept
        });
    section.charts.push(Chart {
        file: "drift_psi.png".into(),
        title: format!(
            "PSI by month against {} — the {} features that move most",
            d.reference.label(),
            top.len()
        ),
        x: Some(XAxis::Months(axis.clone())),
        y_label: "PSI".into(),
        lines,
        horizontals: vec![
            (s.psi_moderate, format!("moderate ({})", s.psi_moderate)),
            (
                s.psi_significant,
                format!("significant ({})", s.psi_significant),
            ),
        ],
        markers,
        marker_legend: "drift alert fired".into(),
        ..Chart::default()
    });
    let months = axis.months();
    let mut head = vec!["feature".to_string(), "variance".to_string()];
    head.extend(months.iter().map(|m| format!("{} {}", m.name(), m.year)));
    section.tables.push(Table {
        caption: format!("PSI by month against {}", d.reference.label()),
        head,
        rows: d
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = if i < s.top_features {
                    Cell::with(&f.name, "top")
                } else {
                    Cell::plain(&f.name)
                };
                let mut cells = vec![name, Cell::plain(format!("{:.4}", f.spread))];
                cells.extend(months.iter().map(|m| match f.psi.get(m) {
                    Some(&p) if p >= s.psi_significant => Cell::with(format!("{p:.3}"), "high"),
                    Some(&p) => Cell::plain(format!("{p:.3}")),
                    None => Cell::plain(""),
                }));
                cells
            })
            .collect(),
    });
}

/// The rule an alert came from: the first part of its id (`<rule>:<model>:…#n`).
fn rule_of(alert_id: &str) -> &str {
    alert_id.split([':', '#']).next().unwrap_or(alert_id)
}

fn subject_of(a: &millrace_proto::Alert) -> String {
    if !a.feature.is_empty() {
        a.feature.clone()
    } else if !a.model.is_empty() {
        format!("{} {}", a.model, version_label(&a.model_version))
    } else {
        "-".into()
    }
}

fn alert_tables(section: &mut Section, g: &Gathered) {
    #[derive(Default)]
    struct Summary {
        kind: String,
        metric: String,
        fired: u64,
        resolved: u64,
        first_us: Option<i64>,
        last_us: i64,
        highest: f64,
    }
    let mut summary: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for a in &g.alerts {
        let e = summary
            .entry((rule_of(&a.alert_id).to_string(), subject_of(a)))
            .or_default();
        e.kind.clone_from(&a.kind);
        e.metric.clone_from(&a.metric);
        if a.state == AlertState::Firing as i32 {
            e.fired += 1;
            e.first_us = Some(e.first_us.map_or(a.time_us, |t| t.min(a.time_us)));
            e.last_us = e.last_us.max(a.time_us);
            e.highest = if e.fired == 1 {
                a.value
            } else {
                e.highest.max(a.value)
            };
        } else if a.state == AlertState::Resolved as i32 {
            e.resolved += 1;
        }
    }
    let mut text = format!(
        "{} alert transitions in ALERTS (monitor's, firing and resolved; times are event times).",
        thousands(g.alerts_total)
    );
    if g.alerts_total > g.alerts.len() as u64 {
        text.push_str(&format!(
            " The first {} are counted below.",
            thousands(g.alerts.len() as u64)
        ));
    }
    section.text.push(text);
    section.tables.push(Table {
        caption: "Alerts by rule and subject".into(),
        head: [
            "rule",
            "kind",
            "metric",
            "feature or version",
            "fired",
            "resolved",
            "first fired",
            "last fired",
            "value when fired (max)",
        ]
        .map(String::from)
        .to_vec(),
        rows: summary
            .into_iter()
            .map(|((rule, subject), e)| {
                vec![
                    Cell::plain(rule),
                    Cell::plain(e.kind),
                    Cell::plain(e.metric),
                    Cell::plain(subject),
                    Cell::plain(thousands(e.fired)),
                    Cell::plain(thousands(e.resolved)),
                    Cell::plain(e.first_us.map_or_else(String::new, utc)),
                    Cell::plain(if e.fired > 0 {
                        utc(e.last_us)
                    } else {
                        String::new()
                    }),
                    Cell::plain(if e.fired > 0 {
                        format!("{:.4}", e.highest)
                    } else {
                        String::new()
                    }),
                ]
            })
            .collect(),
    });
    section.tables.push(Table {
        caption: if g.alerts.len() > ALERTS_LISTED {
            format!("The first {ALERTS_LISTED} alert transitions")
        } else {
            "Every alert transition".into()
        },
        head: [
            "event time",
            "rule",
            "state",
            "feature or version",
            "value",
            "threshold",
            "message",
        ]
        .map(String::from)
        .to_vec(),
        rows: g
            .alerts
            .iter()
            .take(ALERTS_LISTED)
            .map(|a| {
                let state = match AlertState::try_from(a.state) {
                    Ok(AlertState::Firing) => Cell::with("firing", "high"),
                    Ok(AlertState::Resolved) => Cell::plain("resolved"),
                    _ => Cell::plain("?"),
                };
                vec![
                    Cell::plain(utc(a.time_us)),
                    Cell::plain(rule_of(&a.alert_id)),
                    state,
                    Cell::plain(subject_of(a)),
                    Cell::plain(format!("{:.4}", a.value)),
                    Cell::plain(format!("{:.4}", a.threshold)),
                    Cell::plain(&a.message),
                ]
            })
            .collect(),
    });
}
