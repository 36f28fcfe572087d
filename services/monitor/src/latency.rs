//! Latency and throughput from the timestamps the messages carry: per model
//! version, the last N event→prediction and ingest→prediction lags (their
//! quantiles feed the alert rules; Prometheus gets full histograms), and per
//! stage the events per second measured on that stage's own clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::keyed::Keyed;
use crate::stats::ModelVersion;

/// Seconds from `from_us` to `to_us`, clamped at 0 (clocks of different
/// machines disagree); `None` when either time was never set.
pub fn lag_seconds(from_us: i64, to_us: i64) -> Option<f64> {
    (from_us > 0 && to_us > 0).then(|| to_us.saturating_sub(from_us).max(0) as f64 / 1e6)
}

/// The last N values of one lag.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyWindow {
    values: VecDeque<f64>,
}

impl LatencyWindow {
    pub fn push(&mut self, seconds: f64, capacity: usize) {
        self.values.push_back(seconds);
        while self.values.len() > capacity.max(1) {
            self.values.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Nearest-rank quantiles (the smallest value with at least q of the window
    /// at or below it), one per `q`; `None` for an empty window.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        let mut sorted = Vec::new();
        self.sort_into(&mut sorted);
        qs.iter().map(|q| quantile_of_sorted(&sorted, *q)).collect()
    }

    /// The window's values, ascending, into `sorted` (a buffer kept between calls).
    pub fn sort_into(&self, sorted: &mut Vec<f64>) {
        sorted.clear();
        sorted.extend(self.values.iter().copied());
        sorted.sort_unstable_by(f64::total_cmp);
    }
}

/// The nearest-rank `q` quantile of ascending values; `None` when there are none.
pub fn quantile_of_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // ceil(q·n) as a 1-based rank, kept inside 1..=n.
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The two lags of one model version.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionLatency {
    pub event_to_prediction: LatencyWindow,
    pub ingest_to_prediction: LatencyWindow,
    pub predictions: u64,
}

/// How many of the last complete seconds a rate is averaged over.
pub const RATE_SPAN_SECS: i64 = 10;

/// Events per second on one stage's clock: a count per second of its
/// timestamps, over the last [`RATE_SPAN_SECS`] complete seconds before the
/// newest one seen (the newest is still filling).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateMeter {
    /// (second, events), ascending, covering at most the span plus the newest second.
    seconds: VecDeque<(i64, u64)>,
    /// The first second ever recorded: a meter younger than the span averages over its age.
    first: Option<i64>,
}

impl RateMeter {
    pub fn record(&mut self, time_us: i64) {
        if time_us <= 0 {
            return;
        }
        let second = time_us.div_euclid(1_000_000);
        // Nearly every event lands in the newest second.
        if let Some((newest, n)) = self.seconds.back_mut() {
            if *newest == second {
                *n += 1;
                return;
            }
        }
        let first = *self.first.get_or_insert(second);
        self.first = Some(first.min(second));
        let newest = self.seconds.back().map_or(second, |(s, _)| *s).max(second);
        if second < newest - RATE_SPAN_SECS {
            return;
        }
        match self.seconds.binary_search_by_key(&second, |(s, _)| *s) {
            Ok(i) => self.seconds[i].1 += 1,
            Err(i) => self.seconds.insert(i, (second, 1)),
        }
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s < newest - RATE_SPAN_SECS)
        {
            self.seconds.pop_front();
        }
    }

    /// Events per second over the complete seconds seen (at most the span);
    /// `None` before a first second is complete.
    pub fn per_second(&self) -> Option<f64> {
        let (newest, _) = self.seconds.back()?;
        let span = (newest - self.first?).min(RATE_SPAN_SECS);
        if span <= 0 {
            return None;
        }
        let events: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s < *newest && *s >= newest - span)
            .map(|(_, n)| n)
            .sum();
        Some(events as f64 / span as f64)
    }
}

/// Latency per model version and throughput per stage.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyBook {
    pub versions: Keyed<ModelVersion, VersionLatency>,
    /// Keyed by stage name ("ingest", "feature-state", "inference", "labels").
    pub stages: Keyed<String, RateMeter>,
}

impl LatencyBook {
    /// The position of a stage's meter (see [`Keyed`]), adding it on first sight.
    pub fn stage_position(&mut self, stage: &str) -> usize {
        self.stages
            .position_or_insert(stage, str::to_string, RateMeter::default)
    }

    pub fn record_stage(&mut self, stage: &str, time_us: i64) {
        let at = self.stage_position(stage);
        self.record_stage_at(at, time_us);
    }

    pub fn record_stage_at(&mut self, position: usize, time_us: i64) {
        if let Some(meter) = self.stages.at_mut(position) {
            meter.record(time_us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_clamped_at_zero_and_skipped_when_a_time_is_missing() {
        let cases = [
            ("forward", 1_000_000, 3_500_000, Some(2.5)),
            ("clock_skew_clamps_to_zero", 5_000_000, 3_000_000, Some(0.0)),
            ("unset_source_time", 0, 3_000_000, None),
            ("unset_prediction_time", 1_000_000, 0, None),
        ];
        for (name, from, to, expected) in cases {
            assert_eq!(lag_seconds(from, to), expected, "{name}");
        }
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut w = LatencyWindow::default();
        for v in [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0] {
            w.push(v, 10);
        }
        // ceil(q × 10)-th smallest
        assert_eq!(
            w.quantiles(&[0.0, 0.5, 0.95, 0.99, 1.0]),
            [Some(1.0), Some(5.0), Some(10.0), Some(10.0), Some(10.0)]
        );
        w.push(0.5, 10); // pushes out the oldest (5.0)
        assert_eq!(w.quantiles(&[0.5]), [Some(4.0)]);
        assert_eq!(LatencyWindow::default().quantiles(&[0.5]), [None]);
    }

    #[test]
    fn rate_counts_complete_seconds_on_the_stage_clock() {
        let mut m = RateMeter::default();
        let s = |sec: i64, frac: i64| sec * 1_000_000 + frac;
        assert_eq!(m.per_second(), None);
        for i in 0..30 {
            m.record(s(100, i)); // 30 events in second 100
        }
        assert_eq!(m.per_second(), None, "no complete second yet");
        for i in 0..10 {
            m.record(s(101, i));
        }
        m.record(s(102, 0));
        // complete seconds 100 and 101: 40 events over 2 s
        assert_eq!(m.per_second(), Some(20.0));
        m.record(s(120, 0)); // 20 s later: 100..109 fell out of the span
        assert_eq!(m.per_second(), Some(0.0));
        m.record(s(50, 0)); // far too old: ignored
        assert_eq!(m.per_second(), Some(0.0));
    }
}
