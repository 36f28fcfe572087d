//! Event time: one watermark per input partition, the newest event time seen
//! in it minus the allowed lateness. An event older than its partition's
//! watermark is late; the others advance it.
//!
//! Two times derive from them: the *floor*, the lowest watermark of the
//! partitions seen so far, below which no event will ever be applied (so
//! window state before it can go); and the *clock*, the newest event time
//! applied anywhere, at which online lookups evaluate windows. A partition
//! that never sees an event does not hold the floor back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
        match self.newest.get_mut(&partition) {
            Some(newest) => {
                let watermark_us = newest.saturating_sub(self.lateness_us);
                if time_us < watermark_us {
                    return Verdict::Late { watermark_us };
                }
                *newest = (*newest).max(time_us);
            }
            None => {
                self.newest.insert(partition, time_us);
            }
        }
        Verdict::OnTime
    }

    pub fn watermark(&self, partition: u32) -> Option<i64> {
        self.newest
            .get(&partition)
            .map(|n| n.saturating_sub(self.lateness_us))
    }

    /// No event at an earlier time will be applied again.
    pub fn floor(&self) -> i64 {
        self.newest
            .values()
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
