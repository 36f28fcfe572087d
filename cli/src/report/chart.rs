//! The report's charts: every one is a [`Chart`] (lines over months or
//! seconds, with markers), drawn by plotters into an RGB buffer and written as
//! a PNG. Text uses the font in `cli/assets`, compiled in, so the charts draw
//! the same on a machine without any fonts or font libraries.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::stats::MonthAxis;

/// Roboto Regular cut down to Latin-1 and a few symbols (cli/assets/README.md).
const FONT: &[u8] = include_bytes!("../../assets/Roboto-Regular-subset.ttf");
const FAMILY: &str = "sans-serif";

/// Text sizes are even: plotters' ab_glyph text puts each glyph at half the
/// size plus its top, truncated, so an odd size sets tall and short letters a
/// pixel apart.
const TITLE_SIZE: u32 = 22;
const TEXT_SIZE: u32 = 14;
const SMALL_SIZE: u32 = 12;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 480;
/// Lines with at most this many points show each one as a dot.
const MARKED_POINTS: usize = 40;
/// The legend's column, right of the plot.
const LEGEND_WIDTH: u32 = 270;

/// Tableau's ten colours: told apart by most eyes, printable.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

#[derive(Debug, Clone)]
pub enum XAxis {
    Months(MonthAxis),
    /// Plain numbers, e.g. seconds since a run began.
    Linear {
        label: String,
    },
}

/// One named line, possibly broken in runs.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub color: RGBColor,
    pub width: u32,
    pub dashed: bool,
    pub segments: Vec<Vec<(f64, f64)>>,
    /// Listed in the legend (lines of a crowd share one entry, see [`Chart::notes`]).
    pub legend: bool,
}

impl Line {
    pub fn new(name: impl Into<String>, color: RGBColor, segments: Vec<Vec<(f64, f64)>>) -> Self {
        Self {
            name: name.into(),
            color,
            width: 2,
            dashed: false,
            segments,
            legend: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// File name in the report directory.
    pub file: String,
    pub title: String,
    pub x: Option<XAxis>,
    pub y_label: String,
    /// Fixed bounds; else the data's, padded.
    pub y_range: Option<(f64, f64)>,
    pub lines: Vec<Line>,
    /// Vertical lines with a label at the top (promotions).
    pub verticals: Vec<(f64, String)>,
    /// Horizontal dashed lines with a label (thresholds).
    pub horizontals: Vec<(f64, String)>,
    /// Triangles (alerts that fired), with the legend entry they share.
    pub markers: Vec<(f64, f64)>,
    pub marker_legend: String,
    /// Extra legend lines, plain text.
    pub notes: Vec<String>,
}

impl Chart {
    fn y_bounds(&self) -> (f64, f64) {
        if let Some(r) = self.y_range {
            return r;
        }
        let ys = self
            .lines
            .iter()
            .flat_map(|l| l.segments.iter().flatten().map(|p| p.1))
            .chain(self.horizontals.iter().map(|h| h.0))
            .chain(self.markers.iter().map(|m| m.1))
            .filter(|y| y.is_finite());
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        if lo > hi {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-3);
        let lo = if lo >= 0.0 {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        (lo, hi + pad)
    }

    fn x_bounds(&self) -> (f64, f64) {
        if let Some(XAxis::Months(axis)) = &self.x {
            return (-0.5, axis.len as f64 - 0.5);
        }
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.segments.iter().flatten().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo > hi {
            (0.0, 1.0)
        } else if lo == hi {
            (lo - 1.0, hi + 1.0)
        } else {
            (lo, hi)
        }
    }
}

/// A tick label: as many decimals as the axis' span needs, thousands grouped.
fn number(v: f64, span: f64) -> String {
    let decimals = match span.abs() {
        s if s >= 10.0 => 0,
        s if s >= 1.0 => 1,
        s if s >= 0.1 => 2,
        _ => 3,
    };
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut out = String::new();
    if v < 0.0 && text.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        out.push('−');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Makes the embedded font plotters' sans-serif, once per process.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| anyhow!("the font compiled into millrace (cli/assets) does not parse"))
}

/// Draws `chart` and writes it to `dir/<chart.file>` as a PNG.
pub fn write_png(chart: &Chart, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(&chart.file);
    let rgb = draw(chart).with_context(|| format!("drawing {}", chart.file))?;
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .with_context(|| format!("writing {}", path.display()))
}

/// The chart as RGB pixels, row by row.
fn draw(chart: &Chart) -> anyhow::Result<Vec<u8>> {
    font()?;
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&chart.title, (FAMILY, TITLE_SIZE))?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        draw_plot(chart, &plot)?;
        draw_legend(chart, &legend)?;
        root.present()?;
    }
    Ok(buf)
}

fn draw_plot(chart: &Chart, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()> {
    let (x0, x1) = chart.x_bounds();
    let (y0, y1) = chart.y_bounds();
    let mut ctx = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let months = match &chart.x {
        Some(XAxis::Months(axis)) => Some(axis.clone()),
        _ => None,
    };
    let label_month = |x: &f64| {
        months
            .as_ref()
            .and_then(|a| a.month_at(*x).map(|m| (a, m)))
            .map_or_else(String::new, |(a, m)| {
                if a.len <= 12 || m.month == 1 {
                    format!("{} {}", m.name(), m.year % 100)
                } else {
                    m.name().to_string()
                }
            })
    };
    let x_desc = match &chart.x {
        Some(XAxis::Linear { label }) => label.clone(),
        _ => String::new(),
    };
    let y_label = |y: &f64| number(*y, y1 - y0);
    let x_label = |x: &f64| number(*x, x1 - x0);
    let mut mesh = ctx.configure_mesh();
    mesh.y_desc(chart.y_label.as_str())
        .x_desc(x_desc)
        .label_style((FAMILY, TEXT_SIZE))
        .axis_desc_style((FAMILY, TEXT_SIZE))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .y_label_formatter(&y_label);
    match &months {
        Some(axis) => mesh.x_labels(axis.len + 1).x_label_formatter(&label_month),
        None => mesh.x_label_formatter(&x_label),
    };
    mesh.draw()?;

    for (y, _) in &chart.horizontals {
        ctx.draw_series(DashedLineSeries::new(
            [(x0, *y), (x1, *y)],
            6,
            4,
            RGBColor(120, 120, 120).stroke_width(1),
        ))?;
    }
    // Labels alternate between the left and the right end, so that close
    // thresholds (PSI 0.1 and 0.2 on a scale to 8) do not print over each other.
    for (i, (y, label)) in chart.horizontals.iter().enumerate() {
        let (x, h) = if i % 2 == 0 {
            (x0, HPos::Left)
        } else {
            (x1, HPos::Right)
        };
        ctx.draw_series(std::iter::once(Text::new(
            label.clone(),
            (x, *y),
            TextStyle::from((FAMILY, SMALL_SIZE))
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(h, VPos::Bottom)),
        )))?;
    }
    for line in &chart.lines {
        let style = line.color.stroke_width(line.width);
        let points: usize = line.segments.iter().map(Vec::len).sum();
        for segment in &line.segments {
            if line.dashed {
                ctx.draw_series(DashedLineSeries::new(segment.iter().copied(), 7, 4, style))?;
            } else {
                ctx.draw_series(LineSeries::new(segment.iter().copied(), style))?;
            }
            // Few points: each one shown, a lone one (a month between thin ones) too.
            if segment.len() == 1 || points <= MARKED_POINTS {
                let radius = line.width + 1;
                ctx.draw_series(
                    segment
                        .iter()
                        .map(|&p| Circle::new(p, radius, style.filled())),
                )?;
            }
        }
    }
    for (x, label) in &chart.verticals {
        let style = RGBColor(30, 30, 30).stroke_width(1);
        ctx.draw_series(DashedLineSeries::new([(*x, y0), (*x, y1)], 4, 3, style))?;
        // A few pixels right of the line and below the top, clear of both.
        ctx.draw_series(std::iter::once(
            EmptyElement::at((*x, y1))
                + Text::new(
                    label.clone(),
                    (4, 3),
                    TextStyle::from((FAMILY, SMALL_SIZE))
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                ),
        ))?;
    }
    ctx.draw_series(
        chart
            .markers
            .iter()
            .map(|&p| TriangleMarker::new(p, 7, RGBColor(200, 0, 0).filled())),
    )?;
    Ok(())
}

fn draw_legend(chart: &Chart, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()> {
    let text = TextStyle::from((FAMILY, TEXT_SIZE)).color(&BLACK);
    let mut y = 24;
    let step = 19;
    let max_entries = ((HEIGHT as i32 - 40) / step) as usize;
    for (entries, line) in chart.lines.iter().filter(|l| l.legend).enumerate() {
        if entries + 1 >= max_entries {
            area.draw(&Text::new("…", (8, y), text.clone()))?;
            y += step;
            break;
        }
        let style = line.color.stroke_width(line.width.max(2));
        if line.dashed {
            area.draw(&DashedPathElement::new(
                [(8, y + 7), (36, y + 7)],
                5,
                3,
                style,
            ))?;
        } else {
            area.draw(&PathElement::new(vec![(8, y + 7), (36, y + 7)], style))?;
        }
        area.draw(&Text::new(line.name.clone(), (44, y), text.clone()))?;
        y += step;
    }
    if !chart.verticals.is_empty() {
        let style = RGBColor(30, 30, 30).stroke_width(1);
        area.draw(&DashedPathElement::new(
            [(22, y), (22, y + 14)],
            4,
            3,
            style,
        ))?;
        area.draw(&Text::new("promoted", (44, y), text.clone()))?;
        y += step;
    }
    if !chart.markers.is_empty() {
        area.draw(&TriangleMarker::new(
            (22, y + 7),
            7,
            RGBColor(200, 0, 0).filled(),
        ))?;
        area.draw(&Text::new(
            chart.marker_legend.clone(),
            (44, y),
            text.clone(),
        ))?;
        y += step;
    }
    let small = TextStyle::from((FAMILY, SMALL_SIZE)).color(&RGBColor(70, 70, 70));
    for note in &chart.notes {
        area.draw(&Text::new(note.clone(), (8, y), small.clone()))?;
        y += step - 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::Month;

    #[test]
    fn a_chart_is_written_as_a_png_of_its_size() {
        let dir = std::env::temp_dir().join(format!("millrace-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let axis = MonthAxis::spanning([
            Month::parse("2013-01").expect("month"),
            Month::parse("2013-12").expect("month"),
        ])
        .expect("an axis");
        let chart = Chart {
            file: "test.png".into(),
            title: "ROC AUC by month — test".into(),
            x: Some(XAxis::Months(axis.clone())),
            y_label: "ROC AUC".into(),
            lines: vec![
                Line::new("served", color(0), vec![vec![(0.0, 0.7), (1.0, 0.72)]]),
                Line {
                    dashed: true,
                    ..Line::new("online", color(1), vec![vec![(3.0, 0.6)]])
                },
            ],
            verticals: vec![(
                axis.x_of_date("2013-03-01").expect("a date"),
                "r2013-03-01".into(),
            )],
            horizontals: vec![(0.65, "0.65".into())],
            markers: vec![(1.0, 0.72)],
            marker_legend: "alert fired".into(),
            notes: vec!["a note".into()],
            ..Chart::default()
        };
        write_png(&chart, &dir).expect("written");
        let bytes = std::fs::read(dir.join("test.png")).expect("read back");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, after the length and the type.
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            WIDTH
        );
        assert_eq!(
            u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
            HEIGHT
        );
        // Something was drawn: not every pixel is white.
        let pixels = draw(&chart).expect("drawn");
        assert!(pixels.iter().any(|&b| b != 255));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tick_labels_fit_the_span() {
        assert_eq!(number(14000.0, 14000.0), "14,000");
        assert_eq!(number(0.125, 0.05), "0.125");
        assert_eq!(number(0.62, 0.5), "0.62");
        assert_eq!(number(-1234.6, 5000.0), "−1,235");
        assert_eq!(number(-0.0001, 0.5), "0.00");
        assert_eq!(number(12.5, 5.0), "12.5");
        assert_eq!(number(32.0, 18.0), "32");
    }

    #[test]
    fn an_empty_chart_still_draws() {
        let chart = Chart {
            file: "empty.png".into(),
            title: "nothing yet".into(),
            ..Chart::default()
        };
        assert_eq!(
            draw(&chart).expect("drawn").len(),
            (WIDTH * HEIGHT * 3) as usize
        );
    }
}
