//! The figures of the report, from what was gathered, with nothing read or
//! written here: calendar months, PSI by month against a reference month,
//! latency histograms per wall-clock second and the runs they form.
//!
//! Memory stays bounded however long the streams are: values are kept as
//! counts per (feature, month, value rounded to three significant digits), and
//! latencies as log-bucketed counts per second of activity.

use std::collections::BTreeMap;

/// A calendar month (UTC), ordered by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u8,
}

const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Month {
    /// `YYYY-MM`, as inference names its periods (a longer `YYYY-MM-DD` reads its month).
    pub fn parse(text: &str) -> Option<Self> {
        let year = text.get(..4)?.parse().ok()?;
        if text.get(4..5)? != "-" {
            return None;
        }
        let month: u8 = text.get(5..7)?.parse().ok()?;
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    /// The month of a UTC time in microseconds, by the calendar inference uses.
    pub fn of_us(us: i64) -> Self {
        let date = millrace_inference::retrain::utc_date(us);
        // utc_date always spells YYYY-MM-DD for the years an i64 of µs reaches.
        Self::parse(&date).unwrap_or(Self {
            year: 1970,
            month: 1,
        })
    }

    fn index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month) - 1
    }

    fn from_index(i: i64) -> Self {
        Self {
            year: i32::try_from(i.div_euclid(12)).unwrap_or(i32::MAX),
            month: u8::try_from(i.rem_euclid(12) + 1).unwrap_or(1),
        }
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    pub fn name(self) -> &'static str {
        MONTH_NAMES[usize::from(self.month.saturating_sub(1)) % 12]
    }

    fn days(self) -> u8 {
        match self.month {
            2 if self.year % 4 == 0 && (self.year % 100 != 0 || self.year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }
}

/// Consecutive months, the x axis of the monthly charts: month `i` is drawn at
/// `x = i`, covering `[i − 0.5, i + 0.5)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthAxis {
    pub first: Month,
    pub len: usize,
}

impl MonthAxis {
    /// Every month from the earliest to the latest given, gaps included, so that
    /// a month without figures keeps its place.
    pub fn spanning(months: impl IntoIterator<Item = Month>) -> Option<Self> {
        let mut months = months.into_iter();
        let first = months.next()?;
        let (lo, hi) = months.fold((first, first), |(lo, hi), m| (lo.min(m), hi.max(m)));
        let len = usize::try_from(hi.index() - lo.index() + 1).ok()?;
        Some(Self { first: lo, len })
    }

    pub fn months(&self) -> Vec<Month> {
        (0..self.len as i64)
            .map(|i| Month::from_index(self.first.index() + i))
            .collect()
    }

    pub fn x(&self, m: Month) -> f64 {
        (m.index() - self.first.index()) as f64
    }

    /// The month at a tick, when the tick is one: axis labels.
    pub fn month_at(&self, x: f64) -> Option<Month> {
        let i = x.round();
        ((x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < self.len)
            .then(|| Month::from_index(self.first.index() + i as i64))
    }

    /// Where a day (`YYYY-MM-DD`) starts on the axis: the 1st of a month at
    /// `i − 0.5`, half-way between its point and the previous month's.
    pub fn x_of_date(&self, date: &str) -> Option<f64> {
        let month = Month::parse(date)?;
        let day: u8 = date.get(8..10)?.parse().ok()?;
        (1..=month.days())
            .contains(&day)
            .then(|| self.x(month) - 0.5 + f64::from(day - 1) / f64::from(month.days()))
    }
}

/// The lines of a monthly figure: `(x, value)` runs of consecutive months,
/// leaving out months with fewer than `min_examples` examples (and undefined
/// values), so that a thin month breaks the line instead of drawing noise.
/// `points` need not be sorted.
pub fn segments(
    axis: &MonthAxis,
    points: impl IntoIterator<Item = (Month, u64, f64)>,
    min_examples: u64,
) -> Vec<Vec<(f64, f64)>> {
    let mut kept: Vec<(Month, f64)> = points
        .into_iter()
        .filter(|&(_, n, v)| n >= min_examples && v.is_finite())
        .map(|(m, _, v)| (m, v))
        .collect();
    kept.sort_by_key(|&(m, _)| m);
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut previous: Option<Month> = None;
    for (m, v) in kept {
        let follows = previous.is_some_and(|p| m.index() == p.index() + 1);
        match out.last_mut() {
            Some(line) if follows => line.push((axis.x(m), v)),
            _ => out.push(vec![(axis.x(m), v)]),
        }
        previous = Some(m);
    }
    out
}

// ---- PSI by month --------------------------------------------------------------

/// The values of one feature over one month: a count per value rounded to
/// three significant digits (exact for hours, counts below 1000 and the like),
/// and the missing ones (NaN) apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    counts: BTreeMap<i64, u64>,
    missing: u64,
}

impl Sketch {
    pub fn add(&mut self, v: f64) {
        if v.is_nan() {
            self.missing += 1;
        } else {
            *self.counts.entry(ordered_key(round3(v))).or_default() += 1;
        }
    }

    /// Values seen, missing ones included.
    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.missing
    }

    /// (value, count), ascending.
    fn values(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.counts.iter().map(|(&k, &n)| (from_ordered_key(k), n))
    }
}

fn round3(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0; // -0.0 too
    }
    if !v.is_finite() {
        return v;
    }
    // Scale by a power of ten that is exact either way (1230 = 123 · 10, not 123 / 0.1).
    let digits = 2 - v.abs().log10().floor() as i32;
    let r = if digits >= 0 {
        let s = 10f64.powi(digits);
        (v * s).round() / s
    } else {
        let s = 10f64.powi(-digits);
        (v / s).round() * s
    };
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// An `i64` that orders as the `f64` does (negative values with their
/// magnitude bits flipped), so that a BTreeMap keeps values sorted.
fn ordered_key(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    if bits < 0 {
        bits ^ i64::MAX
    } else {
        bits
    }
}

fn from_ordered_key(k: i64) -> f64 {
    f64::from_bits(if k < 0 { k ^ i64::MAX } else { k } as u64)
}

/// How values fall into bins, fixed by the reference month; a last bin
/// always holds the missing values.
#[derive(Debug, Clone, PartialEq)]
pub enum Bins {
    /// Bin `i` holds `[edges[i−1], edges[i])`, the first and last open-ended:
    /// monitor's numeric binning.
    Quantiles(Vec<f64>),
    /// One bin per value, then one for any other: monitor's categorical binning.
    Categories(Vec<f64>),
}

impl Bins {
    /// Edges at the `bins`-quantiles of the reference, without repeats and
    /// without one at its minimum (as monitor's `Binning::quantiles`).
    pub fn quantiles(reference: &Sketch, bins: usize) -> Self {
        let n = reference.total() - reference.missing;
        let mut edges: Vec<f64> = Vec::with_capacity(bins);
        let mut values = reference.values().peekable();
        let Some(&(min, _)) = values.peek() else {
            return Self::Quantiles(edges);
        };
        let mut below = 0u64; // values before the current one
        let mut current = values.next();
        for k in 1..bins.max(1) {
            let rank = (k as u128 * u128::from(n) / bins as u128) as u64;
            // The value at index `rank` in sorted order.
            while let Some((v, c)) = current {
                if below + c > rank {
                    if v > min && edges.last().is_none_or(|last| v > *last) {
                        edges.push(v);
                    }
                    break;
                }
                below += c;
                current = values.next();
            }
        }
        Self::Quantiles(edges)
    }

    /// The `max` most frequent reference values (ties to the smaller value).
    pub fn categories(reference: &Sketch, max: usize) -> Self {
        let mut by_count: Vec<(f64, u64)> = reference.values().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.total_cmp(&b.0)));
        let mut kept: Vec<f64> = by_count
            .into_iter()
            .take(max.max(1))
            .map(|(v, _)| v)
            .collect();
        kept.sort_by(f64::total_cmp);
        Self::Categories(kept)
    }

    fn len(&self) -> usize {
        match self {
            Self::Quantiles(edges) => edges.len() + 2,
            Self::Categories(values) => values.len() + 2,
        }
    }

    fn bin_of(&self, v: f64) -> usize {
        match self {
            Self::Quantiles(edges) => edges.partition_point(|e| *e <= v),
            Self::Categories(values) => values
                .binary_search_by(|c| c.total_cmp(&v))
                .unwrap_or(values.len()),
        }
    }

    pub fn counts(&self, sketch: &Sketch) -> Vec<u64> {
        let mut counts = vec![0; self.len()];
        for (v, n) in sketch.values() {
            counts[self.bin_of(v)] += n;
        }
        counts[self.len() - 1] += sketch.missing;
        counts
    }
}

/// The proportion an empty bin counts as: monitor's `EMPTY_BIN_PROPORTION`,
/// so that these figures read like its drift alerts.
const EMPTY_BIN_PROPORTION: f64 = 1e-4;

/// PSI between two histograms over the same bins, Σ (c − r)·ln(c / r) over
/// proportions floored at 1e-4; `None` when either is empty.
pub fn psi(reference: &[u64], current: &[u64]) -> Option<f64> {
    let (nr, nc) = (reference.iter().sum::<u64>(), current.iter().sum::<u64>());
    if nr == 0 || nc == 0 || reference.len() != current.len() {
        return None;
    }
    let p = |c: u64, n: u64| (c as f64 / n as f64).max(EMPTY_BIN_PROPORTION);
    Some(
        reference
            .iter()
            .zip(current)
            .map(|(&r, &c)| {
                let (r, c) = (p(r, nr), p(c, nc));
                (c - r) * (c / r).ln()
            })
            .sum(),
    )
}

/// How a feature is binned; `Ignore` is left out of the drift section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    Numeric,
    Categorical,
    Ignore,
}

/// Every feature's values, by month of the vector's event time.
#[derive(Debug, Default)]
pub struct FeatureMonths {
    index: std::collections::HashMap<String, usize>,
    features: Vec<(String, BTreeMap<Month, Sketch>)>,
}

impl FeatureMonths {
    pub fn add(&mut self, month: Month, name: &str, value: f64) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.features.push((name.to_string(), BTreeMap::new()));
                self.index.insert(name.to_string(), self.features.len() - 1);
                self.features.len() - 1
            }
        };
        self.features[i].1.entry(month).or_default().add(value);
    }
}

/// One feature's drift: its PSI each month against the reference month.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDrift {
    pub name: String,
    pub psi: BTreeMap<Month, f64>,
    /// Values each month, missing ones included.
    pub values: BTreeMap<Month, u64>,
    /// Population variance of the monthly PSI, the reference month's 0 included:
    /// how far, and how unevenly, the feature moved away from it.
    pub spread: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub reference: Month,
    /// Most varying first.
    pub features: Vec<FeatureDrift>,
}

/// Binning settings, from the pipeline's `[monitor.drift]`.
#[derive(Debug, Clone, Copy)]
pub struct DriftBins {
    pub bins: usize,
    pub max_categories: usize,
    pub min_values: u64,
}

/// PSI by month of every feature `kind` does not ignore, against the
/// earliest month with at least `min_values` values of it; months with fewer
/// values get no figure.
pub fn drift(
    months: &FeatureMonths,
    kind: impl Fn(&str) -> FeatureKind,
    settings: DriftBins,
) -> Option<Drift> {
    let mut reference_month: Option<Month> = None;
    let mut features = Vec::new();
    for (name, by_month) in &months.features {
        let kind = kind(name);
        if kind == FeatureKind::Ignore {
            continue;
        }
        let Some((&reference, sketch)) = by_month
            .iter()
            .find(|(_, s)| s.total() >= settings.min_values)
        else {
            continue;
        };
        reference_month = Some(reference_month.map_or(reference, |m| m.min(reference)));
        let bins = match kind {
            FeatureKind::Categorical => Bins::categories(sketch, settings.max_categories),
            _ => Bins::quantiles(sketch, settings.bins),
        };
        let base = bins.counts(sketch);
        let mut psi_by_month = BTreeMap::new();
        for (&m, s) in by_month {
            if s.total() >= settings.min_values {
                if let Some(p) = psi(&base, &bins.counts(s)) {
                    psi_by_month.insert(m, p);
                }
            }
        }
        let spread = variance(&psi_by_month.values().copied().collect::<Vec<_>>());
        features.push(FeatureDrift {
            name: name.clone(),
            psi: psi_by_month,
            values: by_month.iter().map(|(&m, s)| (m, s.total())).collect(),
            spread,
        });
    }
    features.sort_by(|a, b| b.spread.total_cmp(&a.spread).then(a.name.cmp(&b.name)));
    Some(Drift {
        reference: reference_month?,
        features,
    })
}

fn variance(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64
}

// ---- throughput and latency -------------------------------------------------------

/// Sub-buckets per power of two: a quantile read from the histogram is within
/// about 3% of the true one.
const SUB_BUCKETS: u64 = 16;

/// Latencies in microseconds, log-bucketed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogHistogram {
    counts: BTreeMap<u16, u64>,
    n: u64,
}

impl LogHistogram {
    pub fn record(&mut self, us: i64) {
        *self.counts.entry(bucket(us.max(0) as u64)).or_default() += 1;
        self.n += 1;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn merge(&mut self, other: &Self) {
        for (&b, &c) in &other.counts {
            *self.counts.entry(b).or_default() += c;
        }
        self.n += other.n;
    }

    /// The `q`-quantile in microseconds (the middle of its bucket).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&b, &c) in &self.counts {
            seen += c;
            if seen >= rank {
                return Some(bucket_middle(b));
            }
        }
        self.counts.keys().last().map(|&b| bucket_middle(b))
    }
}

fn bucket(v: u64) -> u16 {
    if v < SUB_BUCKETS {
        return v as u16;
    }
    let exp = u64::from(63 - v.leading_zeros()); // ≥ 4
    let sub = (v >> (exp - 4)) & (SUB_BUCKETS - 1);
    ((exp - 3) * SUB_BUCKETS + sub) as u16
}

/// The middle of a bucket's range of microseconds.
fn bucket_middle(b: u16) -> f64 {
    let b = u64::from(b);
    if b < SUB_BUCKETS {
        return b as f64;
    }
    let exp = b / SUB_BUCKETS + 3;
    let sub = b % SUB_BUCKETS;
    let width = 1u64 << (exp - 4);
    ((SUB_BUCKETS + sub) * width) as f64 + width as f64 / 2.0
}

/// Predictions by wall-clock second of their predict time, each second with
/// its ingest-to-prediction latencies.
#[derive(Debug, Default)]
pub struct Throughput {
    seconds: BTreeMap<i64, LogHistogram>,
}

/// One second of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Seconds since the run's first.
    pub offset: i64,
    pub predictions: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Predictions with no pause longer than the gap: one replay, say.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub start_us: i64,
    /// From the first second to the end of the last.
    pub seconds_spanned: i64,
    pub predictions: u64,
    pub peak_per_second: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub by_second: Vec<Second>,
}

impl Throughput {
    pub fn record(&mut self, predict_us: i64, ingest_us: i64) {
        self.seconds
            .entry(predict_us.div_euclid(1_000_000))
            .or_default()
            .record(predict_us.saturating_sub(ingest_us));
    }

    pub fn predictions(&self) -> u64 {
        self.seconds.values().map(LogHistogram::count).sum()
    }

    /// The runs, oldest first: seconds of activity with pauses of at most
    /// `gap_secs` between them (seconds without predictions inside a run count 0).
    pub fn runs(&self, gap_secs: i64) -> Vec<Run> {
        let mut groups: Vec<Vec<(i64, &LogHistogram)>> = Vec::new();
        for (&s, h) in &self.seconds {
            match groups.last_mut() {
                Some(g) if g.last().is_some_and(|&(last, _)| s - last <= gap_secs) => {
                    g.push((s, h))
                }
                _ => groups.push(vec![(s, h)]),
            }
        }
        groups
            .into_iter()
            .filter_map(|g| {
                let (start, _) = *g.first()?;
                let (end, _) = *g.last()?;
                let mut total = LogHistogram::default();
                let mut by_second = Vec::with_capacity(g.len());
                let mut filled = start;
                for (s, h) in &g {
                    for idle in filled..*s {
                        by_second.push(Second {
                            offset: idle - start,
                            predictions: 0,
                            p50_ms: f64::NAN,
                            p99_ms: f64::NAN,
                        });
                    }
                    filled = s + 1;
                    total.merge(h);
                    by_second.push(Second {
                        offset: s - start,
                        predictions: h.count(),
                        p50_ms: h.quantile(0.5).unwrap_or(f64::NAN) / 1000.0,
                        p99_ms: h.quantile(0.99).unwrap_or(f64::NAN) / 1000.0,
                    });
                }
                Some(Run {
                    start_us: start * 1_000_000,
                    seconds_spanned: end - start + 1,
                    predictions: total.count(),
                    peak_per_second: g.iter().map(|(_, h)| h.count()).max().unwrap_or(0),
                    p50_ms: total.quantile(0.5).unwrap_or(f64::NAN) / 1000.0,
                    p99_ms: total.quantile(0.99).unwrap_or(f64::NAN) / 1000.0,
                    by_second,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Month {
        Month::parse(text).expect("a month")
    }

    #[test]
    fn months_parse_order_and_span_their_gaps() {
        assert_eq!(Month::parse("2013-13"), None);
        assert_eq!(Month::parse("2013/01"), None);
        assert_eq!(m("2013-02-14"), m("2013-02"));
        assert!(m("2012-12") < m("2013-01"));
        // 2013-01-31T23:59:59Z and the next second
        assert_eq!(Month::of_us(1_359_676_799_000_000), m("2013-01"));
        assert_eq!(Month::of_us(1_359_676_800_000_000), m("2013-02"));
        let axis =
            MonthAxis::spanning([m("2013-03"), m("2012-11"), m("2013-01")]).expect("an axis");
        let labels: Vec<String> = axis.months().into_iter().map(Month::label).collect();
        assert_eq!(
            labels,
            ["2012-11", "2012-12", "2013-01", "2013-02", "2013-03"]
        );
        assert_eq!(axis.x(m("2013-01")), 2.0);
        assert_eq!(axis.month_at(2.0), Some(m("2013-01")));
        assert_eq!(axis.month_at(2.5), None);
        assert_eq!(axis.month_at(5.0), None);
        assert_eq!(axis.x_of_date("2013-01-01"), Some(1.5));
        assert_eq!(axis.x_of_date("2013-02-15"), Some(2.5 + 14.0 / 28.0));
        assert_eq!(axis.x_of_date("2013-02-30"), None);
        assert_eq!(MonthAxis::spanning([]), None);
    }

    #[test]
    fn segments_sort_months_and_break_at_small_or_undefined_ones() {
        let axis = MonthAxis::spanning([m("2013-01"), m("2013-06")]).expect("an axis");
        let points = [
            (m("2013-04"), 500, 0.4),
            (m("2013-01"), 500, 0.1),
            (m("2013-02"), 500, 0.2),
            (m("2013-03"), 199, 0.9), // too few: left out
            (m("2013-05"), 500, f64::NAN),
            (m("2013-06"), 200, 0.6),
        ];
        assert_eq!(
            segments(&axis, points, 200),
            vec![
                vec![(0.0, 0.1), (1.0, 0.2)],
                vec![(3.0, 0.4)],
                vec![(5.0, 0.6)]
            ]
        );
    }

    #[test]
    fn sketches_round_to_three_digits_and_keep_order_and_missing_values() {
        let mut s = Sketch::default();
        for v in [-2.5, 1234.0, 1236.0, 0.0, -0.0, 7.0, f64::NAN, 1e-7] {
            s.add(v);
        }
        let values: Vec<(f64, u64)> = s.values().collect();
        assert_eq!(
            values,
            vec![
                (-2.5, 1),
                (0.0, 2),
                (1e-7, 1),
                (7.0, 1),
                (1230.0, 1),
                (1240.0, 1)
            ]
        );
        assert_eq!((s.missing, s.total()), (1, 8));
    }

    #[test]
    fn quantile_bins_match_monitors_rule_and_count_every_value() {
        let mut s = Sketch::default();
        for v in 1..=10 {
            s.add(f64::from(v));
        }
        s.add(f64::NAN);
        // n = 10, 4 bins: ranks 2, 5, 7 → values 3, 6, 8.
        let bins = Bins::quantiles(&s, 4);
        assert_eq!(bins, Bins::Quantiles(vec![3.0, 6.0, 8.0]));
        assert_eq!(bins.counts(&s), vec![2, 3, 2, 3, 1]);
        // A constant reference has no edge: everything in one bin.
        let mut flat = Sketch::default();
        (0..5).for_each(|_| flat.add(1.0));
        assert_eq!(Bins::quantiles(&flat, 10), Bins::Quantiles(vec![]));
        let cats = Bins::categories(&s, 2);
        assert_eq!(cats, Bins::Categories(vec![1.0, 2.0]));
        assert_eq!(cats.counts(&s), vec![1, 1, 8, 1]);
    }

    #[test]
    fn psi_matches_hand_values() {
        let e = EMPTY_BIN_PROPORTION;
        assert_eq!(psi(&[5, 3, 2], &[10, 6, 4]), Some(0.0));
        let two = (0.25 - 0.5) * (0.25f64 / 0.5).ln() + (0.75 - 0.5) * (0.75f64 / 0.5).ln();
        assert!((psi(&[50, 50], &[25, 75]).expect("defined") - two).abs() < 1e-12);
        let floored = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (e - 0.5) * (e / 0.5).ln();
        assert!((psi(&[1, 1], &[2, 0]).expect("defined") - floored).abs() < 1e-12);
        assert_eq!(psi(&[0, 0], &[1, 1]), None);
        assert_eq!(psi(&[1], &[1, 1]), None);
    }

    #[test]
    fn drift_by_month_against_the_first_full_month_ranks_by_spread() {
        let mut months = FeatureMonths::default();
        let (jan, feb, mar, apr) = (m("2013-01"), m("2013-02"), m("2013-03"), m("2013-04"));
        for i in 0..1000 {
            let x = f64::from(i % 100);
            // steady: the same values every month
            for month in [jan, feb, mar] {
                months.add(month, "steady", x);
            }
            // shifting: moves up by 50 in March
            months.add(jan, "shifting", x);
            months.add(feb, "shifting", x);
            months.add(mar, "shifting", x + 50.0);
            months.add(jan, "month", 1.0);
            months.add(jan, "hour", f64::from(i % 24));
            months.add(feb, "hour", f64::from(i % 12));
        }
        // A month too thin to judge.
        months.add(apr, "shifting", 1e6);
        let kind = |name: &str| match name {
            "month" => FeatureKind::Ignore,
            "hour" => FeatureKind::Categorical,
            _ => FeatureKind::Numeric,
        };
        let settings = DriftBins {
            bins: 10,
            max_categories: 50,
            min_values: 200,
        };
        let d = drift(&months, kind, settings).expect("figures");
        assert_eq!(d.reference, jan);
        let names: Vec<&str> = d.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["shifting", "hour", "steady"]);
        let shifting = &d.features[0];
        assert_eq!(shifting.psi[&jan], 0.0);
        assert_eq!(shifting.psi[&feb], 0.0);
        assert!(shifting.psi[&mar] > 1.0, "{:?}", shifting.psi);
        assert!(!shifting.psi.contains_key(&apr));
        assert_eq!(shifting.values[&apr], 1);
        // Half the hours are gone in February: ln-ratio terms of 12 bins.
        assert!(d.features[1].psi[&feb] > 1.0);
        assert_eq!(d.features[2].spread, 0.0);
    }

    #[test]
    fn log_histogram_quantiles_are_close() {
        let mut h = LogHistogram::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        h.record(-5); // a clock step counts as 0
        for (q, want) in [(0.5, 5_000.0), (0.99, 9_900.0)] {
            let got = h.quantile(q).expect("values");
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(0.0), Some(0.0));
        assert_eq!(LogHistogram::default().quantile(0.5), None);
        for v in [0, 15, 16, 17, 1000, 123_456_789] {
            let mid = bucket_middle(bucket(v));
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 16.0).max(0.5),
                "{v}: {mid}"
            );
        }
    }

    #[test]
    fn throughput_splits_runs_at_pauses_and_fills_idle_seconds() {
        let mut t = Throughput::default();
        let s = 1_000_000;
        // run 1: seconds 100 and 102 (101 idle), latencies 2 ms and 10 ms
        for _ in 0..3 {
            t.record(100 * s + 10, 100 * s + 10 - 2_000);
        }
        t.record(102 * s, 102 * s - 10_000);
        // run 2 after a long pause
        t.record(500 * s, 500 * s - 1_000);
        let runs = t.runs(60);
        assert_eq!(runs.len(), 2);
        let first = &runs[0];
        assert_eq!(
            (
                first.start_us,
                first.seconds_spanned,
                first.predictions,
                first.peak_per_second
            ),
            (100 * s, 3, 4, 3)
        );
        let counts: Vec<u64> = first.by_second.iter().map(|x| x.predictions).collect();
        assert_eq!(counts, [3, 0, 1]);
        assert!((first.by_second[0].p50_ms - 2.0).abs() < 0.1);
        assert!(first.by_second[1].p50_ms.is_nan());
        assert!((first.p99_ms - 10.0).abs() < 0.4);
        assert_eq!(runs[1].predictions, 1);
        assert_eq!(t.predictions(), 5);
    }
}
