//! Section 1: ROC AUC and log loss by month of every version inference
//! knows (`ListModels`), the served figures first, promotions marked.

use millrace_inference::registry::ONLINE_VERSION;
use millrace_proto::{ModelVersion, PeriodFigures};

use super::chart::{color, Chart, Line, XAxis};
use super::gather::Gathered;
use super::sections::{
    chart_axis, figure, figure_if, month_axis, or_dash, thousands, version_label, Cell, Section,
    Settings, Table,
};
use super::stats::{self, Month};

/// Beyond this many retrained versions their lines share one legend entry.
const RETRAINED_IN_LEGEND: usize = 6;

/// What a line of the quality charts is.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Served,
    Online,
    Pipeline,
    Registered,
    Retrained {
        boundary: String,
        promoted: Option<bool>,
    },
}

struct Row<'a> {
    label: String,
    what: String,
    kind: Kind,
    monthly: &'a [PeriodFigures],
    version: Option<&'a ModelVersion>,
}

fn retrained_boundary(version: &str) -> Option<String> {
    let date = version.strip_prefix('r')?;
    let ok = date.len() == 10
        && Month::parse(date).is_some()
        && date.get(8..10).is_some_and(|d| d.parse::<u8>().is_ok());
    ok.then(|| date.to_string())
}

/// The trial's outcome, from the note inference wrote when it ended.
fn decision(notes: &[String]) -> Option<bool> {
    notes.iter().rev().find_map(|n| {
        if n.starts_with("promoted") {
            Some(true)
        } else if n.starts_with("kept in reserve") {
            Some(false)
        } else {
            None
        }
    })
}

fn rows<'a>(g: &'a Gathered, s: &Settings) -> Vec<Row<'a>> {
    let mut rows = vec![Row {
        label: "served".into(),
        what: "whichever version was active".into(),
        kind: Kind::Served,
        monthly: &g.models.served_monthly,
        version: None,
    }];
    let mut versions: Vec<&ModelVersion> = g.models.versions.iter().collect();
    let order = |v: &ModelVersion| match v.version.as_str() {
        ONLINE_VERSION => 0,
        x if x == s.pipeline_version => 1,
        x if retrained_boundary(x).is_some() => 3,
        _ => 2,
    };
    versions.sort_by(|a, b| {
        order(a)
            .cmp(&order(b))
            .then(a.created_us.cmp(&b.created_us))
            .then(a.version.cmp(&b.version))
    });
    for v in versions {
        let (kind, what) = match v.version.as_str() {
            ONLINE_VERSION => (Kind::Online, "online learner".to_string()),
            x if x == s.pipeline_version => (Kind::Pipeline, "pipeline file, hand-set".to_string()),
            x => match retrained_boundary(x) {
                Some(boundary) => {
                    let promoted = decision(&v.notes);
                    let what = match promoted {
                        Some(true) => "retrained, promoted",
                        Some(false) => "retrained, kept in reserve",
                        None => "retrained, on trial",
                    };
                    (Kind::Retrained { boundary, promoted }, what.to_string())
                }
                None => (Kind::Registered, format!("registered ({})", v.kind)),
            },
        };
        let label = version_label(&v.version);
        rows.push(Row {
            label,
            what,
            kind,
            monthly: &v.monthly,
            version: Some(v),
        });
    }
    rows
}

pub fn section(g: &Gathered, s: &Settings) -> Section {
    let rows = rows(g, s);
    let all = || rows.iter().flat_map(|r| r.monthly.iter());
    let axis = chart_axis(all(), s.min_examples);
    let mut section = Section {
        id: "quality",
        title: "1. Model quality by month".into(),
        text: vec![format!(
            "Progressive validation by month of the label's event time: each labelled flight \
             is scored by every version before any of them learns from it (inference's \
             ListModels). \"served\" is whatever version was active when the flight was \
             scored. Months with fewer than {} labelled flights are left out of the lines \
             and shown in brackets in the tables. Retrained versions are named after the \
             boundary they were fitted at; a promoted one is marked on the charts at its \
             boundary.",
            s.min_examples
        )],
        ..Section::default()
    };
    let Some(axis) = axis else {
        section
            .text
            .push("No labelled predictions yet: nothing to chart.".into());
        return section;
    };
    let retrained = rows
        .iter()
        .filter(|r| matches!(r.kind, Kind::Retrained { .. }))
        .count();
    let lines = |metric: fn(&PeriodFigures) -> f64| -> Vec<Line> {
        let mut palette = [0, 2, 3, 4, 5, 6, 8, 9].into_iter().cycle();
        rows.iter()
            .map(|r| {
                let points = r
                    .monthly
                    .iter()
                    .filter_map(|f| Month::parse(&f.period).map(|m| (m, f.examples, metric(f))));
                let segments = stats::segments(&axis, points, s.min_examples);
                let name = format!("{} ({})", r.label, r.what);
                match &r.kind {
                    Kind::Served => Line {
                        width: 4,
                        ..Line::new(
                            "served (active version)",
                            plotters::style::RGBColor(20, 20, 20),
                            segments,
                        )
                    },
                    Kind::Online => Line {
                        dashed: true,
                        ..Line::new("online learner", color(1), segments)
                    },
                    Kind::Pipeline => Line {
                        dashed: true,
                        ..Line::new(name, color(7), segments)
                    },
                    Kind::Registered => {
                        Line::new(name, color(palette.next().unwrap_or(0)), segments)
                    }
                    Kind::Retrained { promoted, .. } => Line {
                        width: 1 + u32::from(*promoted == Some(true)),
                        legend: retrained <= RETRAINED_IN_LEGEND,
                        ..Line::new(
                            r.label.clone(),
                            color(palette.next().unwrap_or(0)),
                            segments,
                        )
                    },
                }
            })
            .collect()
    };
    let promotions: Vec<(f64, String)> = rows
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Retrained {
                boundary,
                promoted: Some(true),
            } => Some((axis.x_of_date(boundary)?, r.label.clone())),
            _ => None,
        })
        .collect();
    let notes = if retrained > RETRAINED_IN_LEGEND {
        vec![
            format!("{retrained} retrained versions,"),
            "one thin line each".into(),
        ]
    } else {
        Vec::new()
    };
    section.charts.push(Chart {
        file: "quality_roc_auc.png".into(),
        title: "ROC AUC by month".into(),
        x: Some(XAxis::Months(axis.clone())),
        y_label: "ROC AUC".into(),
        lines: lines(|f| f.roc_auc),
        verticals: promotions.clone(),
        notes: notes.clone(),
        ..Chart::default()
    });
    section.charts.push(Chart {
        file: "quality_log_loss.png".into(),
        title: "Log loss by month (lower is better)".into(),
        x: Some(XAxis::Months(axis.clone())),
        y_label: "log loss".into(),
        lines: lines(|f| f.log_loss),
        verticals: promotions,
        notes,
        ..Chart::default()
    });
    let months = month_axis(all()).map_or_else(Vec::new, |a| a.months());
    let by_month = |metric: fn(&PeriodFigures) -> f64, caption: &str| {
        let mut head = vec!["version".to_string(), "what".to_string()];
        head.extend(months.iter().map(|m| format!("{} {}", m.name(), m.year)));
        let rows = rows
            .iter()
            .map(|r| {
                let mut cells = vec![Cell::plain(&r.label), Cell::plain(&r.what)];
                cells.extend(months.iter().map(|m| {
                    r.monthly
                        .iter()
                        .find(|f| Month::parse(&f.period) == Some(*m))
                        .map_or_else(
                            || Cell::plain(""),
                            |f| {
                                let v = figure(metric(f));
                                if f.examples < s.min_examples {
                                    Cell::with(format!("({v})"), "thin")
                                } else {
                                    Cell::plain(v)
                                }
                            },
                        )
                }));
                cells
            })
            .collect();
        Table {
            caption: caption.into(),
            head,
            rows,
        }
    };
    section
        .tables
        .push(by_month(|f| f.roc_auc, "ROC AUC by month"));
    section
        .tables
        .push(by_month(|f| f.log_loss, "Log loss by month"));
    section.tables.push(versions_table(&rows));
    section
}

fn versions_table(rows: &[Row<'_>]) -> Table {
    let head = [
        "version",
        "what",
        "role",
        "labelled flights",
        "ROC AUC",
        "log loss",
        "trained on",
        "fit (s)",
        "description and notes",
    ];
    let rows = rows
        .iter()
        .map(|r| {
            let examples: u64 = r.monthly.iter().map(|f| f.examples).sum();
            let (role, auc, loss, trained, fit, about) = match r.version {
                Some(v) => (
                    or_dash(&v.role).to_string(),
                    figure_if(v.progressive_examples > 0, v.progressive_roc_auc),
                    figure_if(v.progressive_examples > 0, v.progressive_log_loss),
                    if v.training_rows > 0 {
                        format!("{} rows", thousands(v.training_rows))
                    } else {
                        String::new()
                    },
                    v.metrics
                        .get("fit_seconds")
                        .map_or_else(String::new, |s| format!("{s:.1}")),
                    std::iter::once(v.description.as_str())
                        .chain(v.notes.iter().map(String::as_str))
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                        .join(" — "),
                ),
                None => Default::default(),
            };
            vec![
                Cell::plain(&r.label),
                Cell::plain(&r.what),
                Cell::plain(role),
                Cell::plain(thousands(examples)),
                Cell::plain(auc),
                Cell::plain(loss),
                Cell::plain(trained),
                Cell::plain(fit),
                Cell::plain(about),
            ]
        })
        .collect();
    Table {
        caption: "Versions (ROC AUC and log loss over every labelled flight each scored)".into(),
        head: head.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use millrace_proto::{ListModelsResponse, PeriodFigures};

    use super::*;
    use crate::report::stats::FeatureKind;

    fn settings() -> Settings {
        Settings {
            pipeline_name: "flights".into(),
            pipeline_file: "pipeline.toml".into(),
            pipeline_version: "1".into(),
            min_examples: 200,
            top_features: 6,
            bins: 10,
            max_categories: 50,
            psi_moderate: 0.1,
            psi_significant: 0.2,
            feature_kinds: [("month".to_string(), FeatureKind::Ignore)].into(),
            written_us: 0,
        }
    }

    #[test]
    fn retrained_versions_are_read_from_their_name_and_notes() {
        assert_eq!(retrained_boundary("r2013-03-01"), Some("2013-03-01".into()));
        assert_eq!(retrained_boundary("r2013-03"), None);
        assert_eq!(retrained_boundary("release"), None);
        let notes = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(decision(&notes(&["promoted on the same 1000"])), Some(true));
        assert_eq!(
            decision(&notes(&["promoted on …", "kept in reserve on …"])),
            Some(false)
        );
        assert_eq!(decision(&notes(&["registered by hand"])), None);
    }

    #[test]
    fn many_retrained_versions_share_one_legend_entry() {
        let month = |m: u32| PeriodFigures {
            period: format!("2013-{m:02}"),
            examples: 1000,
            positives: 200,
            roc_auc: 0.7,
            log_loss: 0.45,
        };
        let versions = (1..=8)
            .map(|m| ModelVersion {
                version: format!("r2013-{m:02}-01"),
                notes: vec!["promoted on the same 1000 labelled flights".into()],
                monthly: vec![month(m)],
                ..Default::default()
            })
            .collect();
        let g = Gathered {
            models: ListModelsResponse {
                versions,
                served_monthly: (1..=8).map(month).collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = section(&g, &settings());
        let auc = &s.charts[0];
        assert_eq!(auc.lines.len(), 9);
        assert_eq!(auc.lines.iter().filter(|l| l.legend).count(), 1);
        assert_eq!(auc.notes[0], "8 retrained versions,");
        // Every promotion marked, at the start of its month.
        let xs: Vec<f64> = auc.verticals.iter().map(|v| v.0).collect();
        assert_eq!(xs, [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]);
    }
}
