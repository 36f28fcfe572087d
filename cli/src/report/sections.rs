//! What the report says, from what was gathered: per section its text, the
//! charts to draw and the tables to show, as plain data that [`super::page`]
//! renders and [`super::chart`] draws. Sections 1 and 3 have modules of their
//! own ([`super::quality`], [`super::drift`]); the smaller ones are here.

use std::collections::BTreeMap;

use millrace_proto::PeriodFigures;

use super::chart::{color, Chart, Line, XAxis};
use super::gather::Gathered;
use super::stats::{self, FeatureKind, Month, MonthAxis};

/// Runs of predictions are split at pauses longer than this.
const RUN_GAP_SECS: i64 = 60;

/// How the figures are made, from the command line and the pipeline file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline_name: String,
    pub pipeline_file: String,
    /// The version the pipeline file declares: the hand-set starting model.
    pub pipeline_version: String,
    pub min_examples: u64,
    pub top_features: usize,
    pub bins: usize,
    pub max_categories: usize,
    pub psi_moderate: f64,
    pub psi_significant: f64,
    /// Per feature, how monitor bins it (or ignores it); unlisted ones are numeric.
    pub feature_kinds: BTreeMap<String, FeatureKind>,
    pub written_us: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub text: String,
    /// A CSS class of the page: `thin` (too few examples to chart), `high`, `top`.
    pub class: Option<&'static str>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            class: None,
        }
    }

    pub fn with(text: impl Into<String>, class: &'static str) -> Self {
        Self {
            text: text.into(),
            class: Some(class),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub caption: String,
    pub head: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, Default)]
pub struct Section {
    pub id: &'static str,
    pub title: String,
    /// Paragraphs, plain text.
    pub text: Vec<String>,
    pub charts: Vec<Chart>,
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    /// (what, value) lines of the header.
    pub facts: Vec<(String, String)>,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn charts(&self) -> impl Iterator<Item = &Chart> {
        self.sections.iter().flat_map(|s| s.charts.iter())
    }
}

pub fn build(g: &Gathered, s: &Settings) -> Report {
    Report {
        title: format!("millrace report: {}", s.pipeline_name),
        facts: facts(g, s),
        sections: vec![
            super::quality::section(g, s),
            delay_rate(g, s),
            super::drift::section(g, s),
            throughput(g),
            dead_letters(g),
        ],
    }
}

fn facts(g: &Gathered, s: &Settings) -> Vec<(String, String)> {
    let count = |n: Option<u64>| n.map_or_else(|| "no stream".into(), thousands);
    let mut facts = vec![
        (
            "pipeline".into(),
            format!("{} ({})", s.pipeline_name, s.pipeline_file),
        ),
        (
            "model".into(),
            format!(
                "{} — active version {}",
                g.models
                    .versions
                    .first()
                    .map_or("(none registered)", |v| v.model.as_str()),
                or_dash(&g.models.active)
            ),
        ),
        (
            "events stored".into(),
            format!(
                "{} in EVENTS, {} labels in LABELS",
                count(g.events_stored),
                count(g.labels_stored)
            ),
        ),
        (
            "period replayed".into(),
            match g.event_time_us {
                Some((lo, hi)) => format!(
                    "{} to {} (event time of the {} feature vectors)",
                    utc(lo),
                    utc(hi),
                    thousands(g.vectors)
                ),
                None => "nothing scored yet".into(),
            },
        ),
        ("predictions".into(), thousands(g.throughput.predictions())),
        ("written".into(), format!("{} UTC", utc(s.written_us))),
    ];
    for note in &g.skipped {
        facts.push(("skipped".into(), note.clone()));
    }
    if !g.missing_streams.is_empty() {
        facts.push((
            "streams not found".into(),
            format!("{} (read as empty)", g.missing_streams.join(", ")),
        ));
    }
    facts
}

pub fn month_axis<'a>(figures: impl Iterator<Item = &'a PeriodFigures>) -> Option<MonthAxis> {
    MonthAxis::spanning(figures.filter_map(|f| Month::parse(&f.period)))
}

/// The months a chart spans: those with enough examples to be drawn (the
/// table keeps the others, bracketed), else all.
pub fn chart_axis<'a>(
    figures: impl Iterator<Item = &'a PeriodFigures> + Clone,
    min_examples: u64,
) -> Option<MonthAxis> {
    month_axis(figures.clone().filter(|f| f.examples >= min_examples))
        .or_else(|| month_axis(figures))
}

// ---- 2. delay rate -------------------------------------------------------------------

fn delay_rate(g: &Gathered, s: &Settings) -> Section {
    let served = &g.models.served_monthly;
    let mut section = Section {
        id: "delay",
        title: "2. Delay rate by month".into(),
        text: vec![
            "Flights whose label is positive (the pipeline's label rule, e.g. departed 15 \
             minutes late or more) among the labelled flights that were served a prediction, \
             by month of the label's event time."
                .into(),
        ],
        ..Section::default()
    };
    let rate = |f: &PeriodFigures| {
        if f.examples == 0 {
            f64::NAN
        } else {
            100.0 * f.positives as f64 / f.examples as f64
        }
    };
    let Some(axis) = chart_axis(served.iter(), s.min_examples) else {
        section.text.push("No labelled predictions yet.".into());
        return section;
    };
    let points = served
        .iter()
        .filter_map(|f| Month::parse(&f.period).map(|m| (m, f.examples, rate(f))));
    let segments = stats::segments(&axis, points, s.min_examples);
    section.charts.push(Chart {
        file: "delay_rate.png".into(),
        title: "Delayed flights by month".into(),
        x: Some(XAxis::Months(axis)),
        y_label: "% of labelled flights".into(),
        lines: vec![Line {
            width: 3,
            ..Line::new("delayed (label positive)", color(3), segments)
        }],
        ..Chart::default()
    });
    let mut months: Vec<&PeriodFigures> = served.iter().collect();
    months.sort_by(|a, b| a.period.cmp(&b.period));
    section.tables.push(Table {
        caption: "Labelled flights and delays by month".into(),
        head: ["month", "labelled flights", "delayed", "delay rate"]
            .map(String::from)
            .to_vec(),
        rows: months
            .into_iter()
            .map(|f| {
                let thin = f.examples < s.min_examples;
                let rate = format!("{:.1}%", rate(f));
                vec![
                    Cell::plain(&f.period),
                    Cell::plain(thousands(f.examples)),
                    Cell::plain(thousands(f.positives)),
                    if thin {
                        Cell::with(format!("({rate})"), "thin")
                    } else {
                        Cell::plain(rate)
                    },
                ]
            })
            .collect(),
    });
    section
}

// ---- 4. throughput -------------------------------------------------------------------------

fn throughput(g: &Gathered) -> Section {
    let runs = g.throughput.runs(RUN_GAP_SECS);
    let mut section = Section {
        id: "throughput",
        title: "4. Throughput and latency".into(),
        text: vec![format!(
            "From PREDICTIONS: predictions per wall-clock second of their predict time, and \
             the latency from ingest (the event stored) to the prediction, its median and 99th \
             percentile per second. Predictions with pauses of at most {RUN_GAP_SECS} s between \
             them form a run (a replay, say); the charts show the latest run."
        )],
        ..Section::default()
    };
    let Some(last) = runs.last() else {
        section.text.push("No predictions yet.".into());
        return section;
    };
    let x_label = format!("seconds since {} UTC", utc(last.start_us));
    let point = |f: fn(&stats::Second) -> f64| -> Vec<Vec<(f64, f64)>> {
        let points: Vec<(f64, f64)> = last
            .by_second
            .iter()
            .map(|s| (s.offset as f64, f(s)))
            .collect();
        // Idle seconds have no latency: break the line there.
        points
            .split(|p| !p.1.is_finite())
            .filter(|run| !run.is_empty())
            .map(<[(f64, f64)]>::to_vec)
            .collect()
    };
    section.charts.push(Chart {
        file: "throughput.png".into(),
        title: format!(
            "Predictions per second — latest run, {} predictions in {} s",
            thousands(last.predictions),
            last.seconds_spanned
        ),
        x: Some(XAxis::Linear {
            label: x_label.clone(),
        }),
        y_label: "predictions per second".into(),
        lines: vec![Line::new(
            "predictions / s",
            color(0),
            point(|s| s.predictions as f64),
        )],
        ..Chart::default()
    });
    section.charts.push(Chart {
        file: "latency.png".into(),
        title: "Ingest to prediction latency — latest run".into(),
        x: Some(XAxis::Linear { label: x_label }),
        y_label: "milliseconds".into(),
        lines: vec![
            Line::new("p50", color(2), point(|s| s.p50_ms)),
            Line::new("p99", color(3), point(|s| s.p99_ms)),
        ],
        ..Chart::default()
    });
    section.tables.push(Table {
        caption: "Runs of predictions".into(),
        head: [
            "started (UTC)",
            "seconds",
            "predictions",
            "mean / s",
            "peak / s",
            "p50 (ms)",
            "p99 (ms)",
        ]
        .map(String::from)
        .to_vec(),
        rows: runs
            .iter()
            .map(|r| {
                vec![
                    Cell::plain(utc(r.start_us)),
                    Cell::plain(r.seconds_spanned.to_string()),
                    Cell::plain(thousands(r.predictions)),
                    Cell::plain(thousands(r.predictions / r.seconds_spanned.max(1) as u64)),
                    Cell::plain(thousands(r.peak_per_second)),
                    Cell::plain(format!("{:.1}", r.p50_ms)),
                    Cell::plain(format!("{:.1}", r.p99_ms)),
                ]
            })
            .collect(),
    });
    section
}

// ---- 5. dead letters -------------------------------------------------------------------------

fn dead_letters(g: &Gathered) -> Section {
    let late = g
        .dead_letters
        .get(&("feature-state".to_string(), "late".to_string()))
        .map_or(0, |t| t.records);
    let total: u64 = g.dead_letters.values().map(|t| t.records).sum();
    Section {
        id: "dlq",
        title: "5. Dead letters and late events".into(),
        text: vec![
            format!(
                "{} records in the DLQ, by the stage that refused them and why (`millrace dlq \
                 stats` lists the same; times are when they were refused). filter:<rule> are \
                 the records enrich's filters dropped as noise.",
                thousands(total)
            ),
            format!(
                "Late events: {} — events older than feature-state's watermark (the newest \
                 event time of their partition minus [feature_state] allowed_lateness), sent \
                 to the DLQ with reason \"late\" instead of being applied. feature-state also \
                 counts them since it started as feature_state_late_events_total on its \
                 /metrics (port 8083).",
                thousands(late)
            ),
        ],
        tables: vec![Table {
            caption: "Dead letters by stage and reason".into(),
            head: ["stage", "reason", "records", "oldest", "newest"]
                .map(String::from)
                .to_vec(),
            rows: g
                .dead_letters
                .iter()
                .map(|((stage, reason), t)| {
                    let reason = if stage == "feature-state" && reason == "late" {
                        Cell::with(reason, "high")
                    } else {
                        Cell::plain(reason)
                    };
                    vec![
                        Cell::plain(stage),
                        reason,
                        Cell::plain(thousands(t.records)),
                        Cell::plain(utc(t.oldest_us)),
                        Cell::plain(utc(t.newest_us)),
                    ]
                })
                .collect(),
        }],
        ..Section::default()
    }
}

// ---- formatting ------------------------------------------------------------------------------

/// A version as people name it: `v1` for a number, `online` or `r2013-03-01` as they are.
pub fn version_label(version: &str) -> String {
    if version.starts_with(|c: char| c.is_ascii_digit()) {
        format!("v{version}")
    } else {
        version.to_string()
    }
}

pub fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub fn figure(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".into()
    }
}

pub fn figure_if(defined: bool, v: f64) -> String {
    if defined {
        format!("{v:.4}")
    } else {
        String::new()
    }
}

/// 1234567 as 1,234,567.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of a UTC time in microseconds.
pub fn utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000).rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        millrace_inference::retrain::utc_date(us),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
