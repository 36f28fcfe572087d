//! Event time: one watermark per input partition, the newest event time seen
//! in it minus the allowed lateness. An event older than its partition's
//! watermark is late; the others advance it.
//!
//! Two times derive from them: the *floor*, the lowest watermark of the
//! active partitions, below which no event will ever be applied (so window
//! state before it can go); and the *clock*, the newest event time applied
//! anywhere, at which online lookups evaluate windows.
//!
//! A partition that never sees an event does not hold the floor back, and
//! neither does one that has been silent for [`IDLE_AFTER_US`] of event time
//! while others moved on: a key that hashes to a quiet partition (the
//! flights' reference data, stamped before the year, lands in one no flight
//! uses) would otherwise pin the floor for ever, and no window would ever
//! shed a bucket. An event more than that behind the clock is judged against
//! the floor as well as its partition's watermark.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long a partition may stay silent, in event time, while others move on,
/// before it stops holding the floor back: longer than any gap a live
/// partition has between events (the flights' hourly weather per airport).
pub const IDLE_AFTER_US: i64 = 6 * 3600 * 1_000_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Watermarks {
    lateness_us: i64,
    /// Per partition: the newest event time applied.
    newest: BTreeMap<u32, i64>,
}

/// What the watermark says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    OnTime,
    /// Older than the partition's watermark: not applied.
    Late {
        watermark_us: i64,
    },
}

impl Watermarks {
    pub fn new(lateness_us: i64) -> Self {
        Self {
            lateness_us: lateness_us.max(0),
            newest: BTreeMap::new(),
        }
    }

    /// Keeps the partitions' times, with this configuration's lateness.
    pub fn with_lateness(mut self, lateness_us: i64) -> Self {
        self.lateness_us = lateness_us.max(0);
        self
    }

    /// Judges an event of `partition` at `time_us` and, when on time, advances the partition.
    pub fn observe(&mut self, partition: u32, time_us: i64) -> Verdict {
        let own = self
            .newest
            .get(&partition)
            .map_or(i64::MIN, |n| n.saturating_sub(self.lateness_us));
        // Partitions are judged on their own, except for an event so far
        // behind the clock that an idle partition could have it: state below
        // the floor may be gone.
        let behind = self
            .clock()
            .is_some_and(|clock| time_us < clock.saturating_sub(IDLE_AFTER_US));
        let watermark_us = if behind { own.max(self.floor()) } else { own };
        if time_us < watermark_us {
            return Verdict::Late { watermark_us };
        }
        let newest = self.newest.entry(partition).or_insert(time_us);
        *newest = (*newest).max(time_us);
        Verdict::OnTime
    }

    pub fn watermark(&self, partition: u32) -> Option<i64> {
        self.newest
            .get(&partition)
            .map(|n| n.saturating_sub(self.lateness_us))
    }

    /// No event at an earlier time will be applied again.
    pub fn floor(&self) -> i64 {
        let Some(clock) = self.clock() else {
            return i64::MIN;
        };
        let active_since = clock.saturating_sub(IDLE_AFTER_US);
        self.newest
            .values()
            .filter(|n| **n >= active_since)
            .min()
            .map_or(i64::MIN, |n| n.saturating_sub(self.lateness_us))
    }

    /// The newest event time applied (`None` before the first event).
    pub fn clock(&self) -> Option<i64> {
        self.newest.values().max().copied()
    }

    pub fn partitions(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.newest
            .iter()
            .map(|(p, n)| (*p, n.saturating_sub(self.lateness_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Name, arrivals (partition, time), the verdict of each.
    type Case<'a> = (&'a str, &'a [(u32, i64)], &'a [Verdict]);

    #[test]
    fn lateness_table() {
        // Lateness 10. Each case: (partition, time) arrivals, and the verdict of each.
        let on = Verdict::OnTime;
        let late = |w| Verdict::Late { watermark_us: w };
        let cases: [Case; 6] = [
            (
                "in_order_is_on_time",
                &[(0, 100), (0, 105), (0, 130)],
                &[on, on, on],
            ),
            (
                "out_of_order_within_lateness",
                &[(0, 100), (0, 91), (0, 90)],
                &[on, on, on],
            ),
            (
                "beyond_lateness_is_late",
                &[(0, 100), (0, 89)],
                &[on, late(90)],
            ),
            (
                "late_event_does_not_move_the_watermark",
                &[(0, 100), (0, 50), (0, 90)],
                &[on, late(90), on],
            ),
            (
                "watermark_follows_the_newest_time",
                &[(0, 100), (0, 200), (0, 150), (0, 190)],
                &[on, on, late(190), on],
            ),
            // Partition 1 lags far behind partition 0: each has its own watermark.
            (
                "partitions_are_independent",
                &[(0, 1000), (1, 5), (1, 0), (0, 995)],
                &[on, on, on, on],
            ),
        ];
        for (name, arrivals, verdicts) in cases {
            let mut w = Watermarks::new(10);
            let got: Vec<Verdict> = arrivals.iter().map(|&(p, t)| w.observe(p, t)).collect();
            assert_eq!(got, verdicts, "{name}");
        }
    }

    #[test]
    fn an_idle_partition_stops_holding_the_floor_and_is_judged_against_it() {
        let hour = 3600 * 1_000_000;
        let mut w = Watermarks::new(hour);
        // Reference data on partition 2, a day before the flights.
        assert_eq!(w.observe(2, 0), Verdict::OnTime);
        assert_eq!(w.observe(0, 24 * hour), Verdict::OnTime);
        assert_eq!(w.observe(1, 24 * hour + 10), Verdict::OnTime);
        // Partition 2 is 24 h behind: idle, so the floor follows the others.
        assert_eq!(w.floor(), 23 * hour);
        // A late arrival on the idle partition is judged against the floor...
        assert_eq!(
            w.observe(2, 17 * hour),
            Verdict::Late {
                watermark_us: 23 * hour
            }
        );
        // ...and an on-time one makes it active again.
        assert_eq!(w.observe(2, 24 * hour), Verdict::OnTime);
        assert_eq!(w.floor(), 23 * hour);
        // Within the idle time a quiet partition still holds the floor.
        assert_eq!(w.observe(0, 24 * hour + 5 * hour), Verdict::OnTime);
        assert_eq!(w.floor(), 23 * hour);
        // A partition first seen with an event that far behind: late too.
        assert_eq!(
            w.observe(3, 0),
            Verdict::Late {
                watermark_us: 23 * hour
            }
        );
        // Nearer the clock, a partition still keeps its own time.
        assert_eq!(w.observe(3, 24 * hour), Verdict::OnTime);
    }

    #[test]
    fn floor_is_the_lowest_watermark_and_clock_the_newest_time() {
        let mut w = Watermarks::new(10);
        assert_eq!((w.floor(), w.clock()), (i64::MIN, None));
        w.observe(0, 100);
        w.observe(3, 40);
        w.observe(0, 120);
        assert_eq!(w.floor(), 30);
        assert_eq!(w.clock(), Some(120));
        assert_eq!(w.watermark(0), Some(110));
        assert_eq!(w.watermark(1), None);
    }
}
