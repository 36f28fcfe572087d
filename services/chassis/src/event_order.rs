//! Puts the records of several streams in event-time order before a stage
//! applies them, so that what a stage computes from two streams (a join, a
//! learner, a metric) is what a live run would compute, whatever the speed of
//! the replay.
//!
//! Streams do not keep pace with each other: LABELS is written by ingest as
//! the events come, FEATURES only after enrich and feature-state have turned
//! the same events into vectors, so on a fast replay labels arrive hours of
//! event time ahead of the flights they label. [`EventOrder`] holds each
//! stream's records in a queue and lets the earliest go only once no other
//! stream can still bring something earlier: that stream has a record
//! waiting, or has shown a later event time, or is known to have nothing more
//! ([`Arrival`] says how that is known). Each stream is taken in its own
//! order, so a record that is late within its stream goes when it reaches the
//! head of its queue.
//!
//! The queues are state: the stage's snapshot records a stream as applied up
//! to the last message delivered, so whatever is still held must be in the
//! snapshot for a restart to lose nothing. Wall-clock time enters only as a
//! silence of every stream ([`EventOrder::tick`]), which on a replay happens
//! only at its end: a pause of the stage itself (a long fit, a snapshot)
//! delivers nothing and counts as no silence.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a stream's silence is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Written straight by ingest in event-time order (LABELS): once its
    /// consumer has caught up (or before it delivered anything), nothing
    /// earlier than what is waiting elsewhere can still come.
    Direct,
    /// Derived by upstream stages that lag behind ingest (FEATURES,
    /// PREDICTIONS): caught up only means the stages before are slow, so only
    /// its event times say how far it has got, or a silence of [`IDLE`].
    Derived,
    /// Not ordered against the others: its records go as they come.
    Unordered,
}

/// A silence of every stream after which held records go: what lets the last
/// records of a replay go. The stage's heartbeat ticks [`IDLE_TICKS`] times
/// in it ([`EventOrder::tick`]).
pub const IDLE: Duration = Duration::from_secs(5);

/// Heartbeats without any record that make an [`IDLE`] silence.
pub const IDLE_TICKS: u32 = 5;

/// How often the stage hands an idle actor an empty batch to tick with.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Records held at most, over all queues; past it the earliest goes anyway
/// (counted in [`EventOrder::forced`]), so a stream that stopped cannot make
/// the others grow without bound.
pub const MAX_HELD: usize = 1 << 20;

/// A record waiting, with its event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Held<T> {
    time_us: i64,
    item: T,
}

/// One partition of a source: in event-time order within itself, which the
/// source as a whole is not (a stage writes a piece's records one batch per
/// partition, so one partition's batch can run days ahead of the next's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
struct Lane<T> {
    id: u32,
    queue: VecDeque<Held<T>>,
    /// The latest event time delivered.
    newest_us: i64,
}

impl<T> Lane<T> {
    /// Whether it can no longer bring a record earlier than `time_us`.
    fn passed(&self, time_us: i64) -> bool {
        self.newest_us >= time_us || self.queue.front().is_some_and(|h| h.time_us >= time_us)
    }
}

/// The event-time order of a stage's sources (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct EventOrder<T> {
    /// Per source, its lanes (partitions) as they appeared.
    lanes: Vec<Vec<Lane<T>>>,
    /// Records let go early by [`MAX_HELD`].
    pub forced: u64,
    #[serde(skip)]
    arrivals: Vec<Arrival>,
    /// Per source: the server had nothing more for the consumer after its
    /// last message (true before any: see [`Arrival::Direct`]).
    #[serde(skip)]
    caught_up: Vec<bool>,
    /// Heartbeats since the last record of any source.
    #[serde(skip)]
    silent_ticks: u32,
}

impl<T> Default for EventOrder<T> {
    fn default() -> Self {
        Self {
            lanes: Vec::new(),
            forced: 0,
            arrivals: Vec::new(),
            caught_up: Vec::new(),
            silent_ticks: 0,
        }
    }
}

impl<T: PartialEq> PartialEq for EventOrder<T> {
    fn eq(&self, other: &Self) -> bool {
        self.lanes == other.lanes && self.forced == other.forced
    }
}

impl<T> EventOrder<T> {
    /// An order over these sources (by index, as the stage reads them).
    pub fn new(arrivals: Vec<Arrival>) -> Self {
        Self::default().with_arrivals(arrivals)
    }

    /// Sets how each source arrives: for a new order, or one restored from a
    /// snapshot (which keeps only the lanes).
    pub fn with_arrivals(mut self, arrivals: Vec<Arrival>) -> Self {
        let n = arrivals.len();
        self.lanes.resize_with(n, Vec::new);
        self.caught_up = vec![true; n];
        self.arrivals = arrivals;
        self
    }

    /// Records held, over all sources.
    pub fn held(&self) -> usize {
        (0..self.lanes.len()).map(|s| self.held_from(s)).sum()
    }

    /// Records held from one source.
    pub fn held_from(&self, source: usize) -> usize {
        self.lanes
            .get(source)
            .map_or(0, |lanes| lanes.iter().map(|l| l.queue.len()).sum())
    }

    /// Takes a delivered record of partition `lane`; `pending` is what the
    /// server still had for the consumer after its message. An unordered
    /// source's record comes straight back.
    pub fn push(
        &mut self,
        source: usize,
        lane: u32,
        time_us: i64,
        pending: u64,
        item: T,
    ) -> Option<T> {
        self.silent_ticks = 0;
        let Some(lanes) = self.lanes.get_mut(source) else {
            return Some(item);
        };
        self.caught_up[source] = pending == 0;
        if self.arrivals[source] == Arrival::Unordered {
            return Some(item);
        }
        let at = match lanes.iter().position(|l| l.id == lane) {
            Some(at) => at,
            None => {
                lanes.push(Lane {
                    id: lane,
                    queue: VecDeque::new(),
                    newest_us: i64::MIN,
                });
                lanes.len() - 1
            }
        };
        let l = &mut lanes[at];
        l.newest_us = l.newest_us.max(time_us);
        l.queue.push_back(Held { time_us, item });
        None
    }

    /// A heartbeat of the stage, handed over when no record came for a
    /// while: [`IDLE_TICKS`] in a row let everything held go.
    pub fn tick(&mut self) {
        self.silent_ticks = self.silent_ticks.saturating_add(1);
    }

    /// The next record in event-time order, if no lane of any source can
    /// still bring an earlier one. Equal times go in source order.
    pub fn pop(&mut self) -> Option<T> {
        let (time_us, source, lane) = self
            .lanes
            .iter()
            .enumerate()
            .flat_map(|(s, lanes)| {
                lanes
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, l)| l.queue.front().map(|h| (h.time_us, s, i)))
            })
            .min()?;
        let force = self.held() > MAX_HELD;
        let silence = self.silent_ticks >= IDLE_TICKS;
        if !force && !silence && !self.all_passed(source, lane, time_us) {
            return None;
        }
        self.forced += u64::from(force);
        self.lanes[source][lane].queue.pop_front().map(|h| h.item)
    }

    /// Whether every lane but `(source, lane)` can no longer bring a record
    /// earlier than `time_us`. A caught-up Direct source has nothing coming.
    fn all_passed(&self, source: usize, lane: usize, time_us: i64) -> bool {
        self.lanes.iter().enumerate().all(|(b, lanes)| {
            // A Derived source that delivered nothing yet has not passed anything.
            let others_passed = (b == source || !lanes.is_empty())
                && lanes
                    .iter()
                    .enumerate()
                    .all(|(i, l)| (b == source && i == lane) || l.passed(time_us));
            others_passed
                || match self.arrivals[b] {
                    Arrival::Unordered => true,
                    Arrival::Direct => b != source && self.caught_up[b],
                    Arrival::Derived => false,
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEATURES: usize = 0;
    const LABELS: usize = 1;

    fn order() -> EventOrder<&'static str> {
        EventOrder::new(vec![Arrival::Derived, Arrival::Direct])
    }

    fn drain(o: &mut EventOrder<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| o.pop()).collect()
    }

    #[test]
    fn labels_ahead_of_their_vectors_wait_for_the_vectors_event_time() {
        let mut o = order();
        // The labels of a fast replay, hours ahead.
        assert_eq!(o.push(LABELS, 0, 100, 5, "label@100"), None);
        assert_eq!(o.push(LABELS, 0, 300, 0, "label@300"), None);
        assert!(drain(&mut o).is_empty(), "no vector seen yet");
        o.push(FEATURES, 0, 50, 9, "vector@50");
        o.push(FEATURES, 0, 200, 9, "vector@200");
        assert_eq!(
            drain(&mut o),
            ["vector@50", "label@100", "vector@200"],
            "label@300 waits: FEATURES may still bring something before it"
        );
        o.push(FEATURES, 0, 300, 9, "vector@300");
        assert_eq!(
            drain(&mut o),
            ["vector@300", "label@300"],
            "equal times go in source order: scored before learned"
        );
    }

    #[test]
    fn a_vector_goes_at_once_when_labels_are_caught_up_but_not_while_they_lag() {
        let mut o = order();
        o.push(LABELS, 0, 10, 0, "label@10");
        o.push(FEATURES, 0, 5, 0, "vector@5");
        assert_eq!(drain(&mut o), ["vector@5"]);
        o.push(FEATURES, 0, 20, 0, "vector@20");
        assert_eq!(
            drain(&mut o),
            ["label@10", "vector@20"],
            "LABELS has nothing more"
        );
        o.push(LABELS, 0, 21, 3, "label@21");
        o.push(FEATURES, 0, 30, 0, "vector@30");
        assert_eq!(
            drain(&mut o),
            ["label@21"],
            "three more labels are stored: one may come before 30"
        );
        o.push(LABELS, 0, 25, 0, "label@25");
        assert_eq!(drain(&mut o), ["label@25", "vector@30"]);
    }

    #[test]
    fn only_a_silence_of_every_stream_lets_what_waits_on_a_derived_stream_go() {
        let mut o = order();
        o.push(FEATURES, 0, 10, 0, "vector@10");
        o.push(LABELS, 0, 50, 0, "label@50");
        assert_eq!(drain(&mut o), ["vector@10"]);
        for _ in 1..IDLE_TICKS {
            o.tick();
        }
        assert!(drain(&mut o).is_empty(), "FEATURES merely caught up");
        o.push(LABELS, 0, 60, 0, "label@60");
        o.tick();
        assert!(drain(&mut o).is_empty(), "a record ends the silence");
        for _ in 0..IDLE_TICKS {
            o.tick();
        }
        assert_eq!(drain(&mut o), ["label@50", "label@60"]);
    }

    #[test]
    fn a_partition_running_ahead_does_not_let_a_label_pass_another_partitions_vector() {
        let mut o = order();
        o.push(FEATURES, 1, 50, 9, "p1@50");
        // One piece of FEATURES: partition 0's batch, days ahead, then partition 1's.
        o.push(FEATURES, 0, 100, 9, "p0@100");
        o.push(FEATURES, 0, 400, 9, "p0@400");
        o.push(LABELS, 0, 150, 0, "label@150");
        assert_eq!(
            drain(&mut o),
            ["p1@50"],
            "partition 1 may still bring something before 100"
        );
        o.push(FEATURES, 1, 120, 9, "p1@120");
        o.push(FEATURES, 1, 300, 9, "p1@300");
        assert_eq!(drain(&mut o), ["p0@100", "p1@120", "label@150", "p1@300"]);
        o.push(FEATURES, 1, 500, 9, "p1@500");
        assert_eq!(drain(&mut o), ["p0@400"]);
    }

    #[test]
    fn a_direct_source_not_heard_from_yet_holds_nothing() {
        let mut o = order();
        o.push(FEATURES, 0, 10, 0, "vector@10");
        assert_eq!(drain(&mut o), ["vector@10"]);
    }

    #[test]
    fn an_unordered_source_passes_straight_through() {
        let mut o = EventOrder::new(vec![Arrival::Derived, Arrival::Direct, Arrival::Unordered]);
        assert_eq!(o.push(2, 0, 999, 7, "drift"), Some("drift"));
        o.push(0, 0, 1, 0, "prediction@1");
        o.push(1, 0, 2, 0, "label@2");
        assert_eq!(
            drain(&mut o),
            ["prediction@1"],
            "the unordered source is not waited for; the derived one is"
        );
    }

    #[test]
    fn the_queues_survive_a_snapshot_and_restart() {
        let mut o = order();
        o.push(LABELS, 0, 100, 0, "label@100");
        o.push(FEATURES, 0, 10, 4, "vector@10");
        assert_eq!(drain(&mut o), ["vector@10"]);
        let bytes = postcard::to_allocvec(&o).expect("encode");
        let restored: EventOrder<String> = postcard::from_bytes(&bytes).expect("decode");
        let mut restored = restored.with_arrivals(vec![Arrival::Derived, Arrival::Direct]);
        assert_eq!(restored.held_from(LABELS), 1);
        restored.push(FEATURES, 0, 150, 4, "vector@150".into());
        assert_eq!(restored.pop().as_deref(), Some("label@100"));
    }

    #[test]
    fn past_the_bound_the_earliest_goes_anyway() {
        let mut o: EventOrder<u32> = EventOrder::new(vec![Arrival::Derived, Arrival::Direct]);
        for i in 0..=MAX_HELD as u32 {
            o.push(LABELS, 0, i64::from(i), 1, i);
        }
        assert_eq!(o.pop(), Some(0));
        assert_eq!(o.forced, 1);
        assert_eq!(o.pop(), None, "back within the bound");
    }
}
