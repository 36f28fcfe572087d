//! `index.html`: one page, its style inline, the charts as PNG files beside
//! it; no script and nothing fetched, so it opens from a disk without a network.

use std::fmt::Write as _;

use super::sections::{Report, Table};

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}\
h1{font-size:1.6em;margin-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em}dl.facts dt{font-weight:600}dl.facts dd{margin:0}\
nav a{margin-right:1em}\
img{max-width:100%;height:auto;border:1px solid #eee;margin:.8em 0;display:block}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;margin:.8em 0 1.6em;font-size:.85em}\
caption{text-align:left;font-weight:600;padding:.3em 0}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap}\
td.thin{color:#999}td.high{color:#b00;font-weight:600}td.top{font-weight:700}\
p.note{color:#555}";

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a cell holds a figure (right-aligned, like the numbers it is
/// compared with): it starts with a digit, maybe after a bracket or a sign.
fn numeric(text: &str) -> bool {
    text.trim_start_matches(['(', '-', '−'])
        .starts_with(|c: char| c.is_ascii_digit())
}

pub fn render(report: &Report) -> String {
    let mut html = String::new();
    let title = escape(&report.title);
    // Writing to a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<dl class=\"facts\">\n"
    );
    for (what, value) in &report.facts {
        let _ = writeln!(html, "<dt>{}</dt><dd>{}</dd>", escape(what), escape(value));
    }
    html.push_str("</dl>\n<nav>");
    for s in &report.sections {
        let _ = write!(html, "<a href=\"#{}\">{}</a>", s.id, escape(&s.title));
    }
    html.push_str("</nav>\n");
    for s in &report.sections {
        let _ = writeln!(
            html,
            "<section id=\"{}\">\n<h2>{}</h2>",
            s.id,
            escape(&s.title)
        );
        for p in &s.text {
            let _ = writeln!(html, "<p class=\"note\">{}</p>", escape(p));
        }
        for c in &s.charts {
            let _ = writeln!(
                html,
                "<img src=\"{}\" alt=\"{}\" width=\"1100\" height=\"480\">",
                escape(&c.file),
                escape(&c.title)
            );
        }
        for t in &s.tables {
            table(&mut html, t);
        }
        html.push_str("</section>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn table(html: &mut String, t: &Table) {
    let _ = write!(
        html,
        "<div class=\"scroll\"><table>\n<caption>{}</caption>\n<thead><tr>",
        escape(&t.caption)
    );
    for h in &t.head {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    if t.rows.is_empty() {
        let _ = writeln!(
            html,
            "<tr><td colspan=\"{}\">none</td></tr>",
            t.head.len().max(1)
        );
    }
    for row in &t.rows {
        html.push_str("<tr>");
        for cell in row {
            let class = match (numeric(&cell.text), cell.class) {
                (true, Some(class)) => format!(" class=\"num {class}\""),
                (true, None) => " class=\"num\"".to_string(),
                (false, Some(class)) => format!(" class=\"{class}\""),
                (false, None) => String::new(),
            };
            let _ = write!(html, "<td{class}>{}</td>", escape(&cell.text));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table></div>\n");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use millrace_proto::{Alert, AlertState, ListModelsResponse, ModelVersion, PeriodFigures};

    use super::*;
    use crate::report::gather::{Gathered, Tally};
    use crate::report::sections::{build, Settings};
    use crate::report::stats::{FeatureKind, Month};

    const JAN_1_2013_US: i64 = 1_356_998_400_000_000;
    const DAY_US: i64 = 86_400_000_000;

    fn figures(period: &str, examples: u64, auc: f64) -> PeriodFigures {
        PeriodFigures {
            period: period.into(),
            examples,
            positives: examples / 5,
            roc_auc: auc,
            log_loss: 0.5,
        }
    }

    fn settings() -> Settings {
        Settings {
            pipeline_name: "flights".into(),
            pipeline_file: "examples/flights/pipeline.toml".into(),
            pipeline_version: "1".into(),
            min_examples: 200,
            top_features: 6,
            bins: 10,
            max_categories: 50,
            psi_moderate: 0.1,
            psi_significant: 0.2,
            feature_kinds: BTreeMap::from([
                ("hour".to_string(), FeatureKind::Categorical),
                ("month".to_string(), FeatureKind::Ignore),
            ]),
            written_us: JAN_1_2013_US + 400 * DAY_US,
        }
    }

    /// A small replay: three months, two versions and a retrained one.
    fn gathered() -> Gathered {
        let mut g = Gathered {
            models: ListModelsResponse {
                active: "r2013-02-01".into(),
                served_monthly: vec![
                    figures("2013-01", 900, 0.61),
                    figures("2013-02", 800, 0.70),
                    figures("2013-03", 150, 0.9), // thin
                ],
                versions: vec![
                    ModelVersion {
                        model: "flight_delay".into(),
                        version: "1".into(),
                        kind: "logistic".into(),
                        monthly: vec![figures("2013-01", 900, 0.61)],
                        ..Default::default()
                    },
                    ModelVersion {
                        model: "flight_delay".into(),
                        version: "online".into(),
                        monthly: vec![figures("2013-01", 900, 0.65), figures("2013-02", 800, 0.66)],
                        ..Default::default()
                    },
                    ModelVersion {
                        model: "flight_delay".into(),
                        version: "r2013-02-01".into(),
                        role: "active".into(),
                        description: "retrained at the 2013-02-01 boundary <on> flights".into(),
                        training_rows: 24_000,
                        metrics: [("fit_seconds".to_string(), 3.25)].into(),
                        notes: vec!["promoted on the same 1000 labelled flights".into()],
                        monthly: vec![figures("2013-02", 800, 0.70)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            events_stored: Some(58_751),
            labels_stored: Some(27_000),
            ..Default::default()
        };
        for day in 0..75 {
            let t = JAN_1_2013_US + day * DAY_US;
            g.event_time_us = Some(g.event_time_us.map_or((t, t), |(lo, _)| (lo, t)));
            for i in 0..20 {
                let m = Month::of_us(t);
                g.vectors += 1;
                let x = f64::from(i) + if day > 31 { 30.0 } else { 0.0 };
                g.features.add(m, "origin_delay_mean_1h", x);
                g.features.add(m, "hour", f64::from(i % 24));
                g.features.add(m, "month", f64::from(m.month));
            }
        }
        for i in 0..50 {
            let t = 1_700_000_000_000_000 + i * 20_000;
            g.throughput.record(t, t - 1_500);
        }
        g.alerts = vec![Alert {
            alert_id: "feature_drift::::origin_delay_mean_1h#1".into(),
            kind: "drift".into(),
            state: AlertState::Firing as i32,
            feature: "origin_delay_mean_1h".into(),
            metric: "psi".into(),
            value: 0.31,
            threshold: 0.2,
            time_us: JAN_1_2013_US + 40 * DAY_US,
            message: "psi of feature origin_delay_mean_1h is 0.31 > 0.2".into(),
            ..Default::default()
        }];
        g.alerts_total = 1;
        g.dead_letters.insert(
            ("feature-state".into(), "late".into()),
            Tally {
                records: 3,
                oldest_us: JAN_1_2013_US,
                newest_us: JAN_1_2013_US + DAY_US,
            },
        );
        g.dead_letters.insert(
            ("enrich".into(), "filter:no_tailnum".into()),
            Tally {
                records: 2_512,
                oldest_us: JAN_1_2013_US,
                newest_us: JAN_1_2013_US,
            },
        );
        g
    }

    #[test]
    fn the_page_has_every_section_image_and_figure_escaped() {
        let report = build(&gathered(), &settings());
        let html = render(&report);
        for id in ["quality", "delay", "drift", "throughput", "dlq"] {
            assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
            assert!(html.contains(&format!("href=\"#{id}\"")), "{id}");
        }
        let files: Vec<&str> = report.charts().map(|c| c.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "quality_roc_auc.png",
                "quality_log_loss.png",
                "delay_rate.png",
                "drift_psi.png",
                "throughput.png",
                "latency.png"
            ]
        );
        for file in files {
            assert!(html.contains(&format!("<img src=\"{file}\"")), "{file}");
        }
        // No script, nothing fetched.
        assert!(!html.contains("<script"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        // Header facts.
        assert!(html.contains("58,751 in EVENTS"));
        assert!(html.contains("2013-01-01 00:00:00 to 2013-03-16 00:00:00"));
        // Escaped text from the registry.
        assert!(html.contains("&lt;on&gt; flights"));
        // The thin month is bracketed, the promotion recorded, the late events counted.
        assert!(html.contains("<td class=\"num thin\">(0.900)</td>"));
        assert!(html.contains("retrained, promoted"));
        assert!(html.contains("Late events: 3"));
        assert!(html.contains("filter:no_tailnum"));
        // The drifting feature is top and its alert listed; the ignored one is not there.
        assert!(html.contains("<td class=\"top\">origin_delay_mean_1h</td>"));
        assert!(html.contains("feature_drift"));
        assert!(!html.contains("<td>month</td>") && !html.contains("<td class=\"top\">month</td>"));
    }

    #[test]
    fn the_charts_leave_thin_months_out_and_mark_promotions_and_alerts() {
        let report = build(&gathered(), &settings());
        let chart = |file: &str| {
            report
                .charts()
                .find(|c| c.file == file)
                .expect("the chart")
                .clone()
        };
        let auc = chart("quality_roc_auc.png");
        let served = &auc.lines[0];
        // January and February; March (150 flights) left out.
        assert_eq!(served.segments, vec![vec![(0.0, 0.61), (1.0, 0.70)]]);
        // r2013-02-01 promoted: marked at the start of February.
        assert_eq!(auc.verticals, vec![(0.5, "r2013-02-01".to_string())]);
        let delay = chart("delay_rate.png");
        assert_eq!(
            delay.lines[0].segments,
            vec![vec![(0.0, 20.0), (1.0, 20.0)]]
        );
        let drift = chart("drift_psi.png");
        let names: Vec<&str> = drift.lines.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["origin_delay_mean_1h", "hour"]);
        // The alert fired in February, on the charted feature.
        assert_eq!(drift.markers.len(), 1);
        assert_eq!(drift.markers[0].0, 1.0);
        let throughput = chart("throughput.png");
        let total: f64 = throughput.lines[0]
            .segments
            .iter()
            .flatten()
            .map(|p| p.1)
            .sum();
        assert_eq!(total, 50.0);
    }

    #[test]
    fn an_empty_suite_gives_a_page_that_says_so() {
        let html = render(&build(&Gathered::default(), &settings()));
        assert!(html.contains("No labelled predictions yet"));
        assert!(html.contains("No predictions yet."));
        assert!(!html.contains("<img"));
    }
}
