//! A feature's storage: one window state per row of its entity table, behind
//! one object-safe trait, so a table holds features of every aggregation and
//! window while each feature's code is compiled for its own pair.

use millrace_chassis::config::{Aggregation, FeatureDef, FeatureStateSettings, WindowDef};
use prometheus::IntCounter;

use crate::aggregate::{
    Aggregator, Count, DistinctCount, Last, Max, Mean, Min, Observation, Reading, SinceLast,
    Stddev, Sum,
};
use crate::window::{Hopping, Kept as _, Lifetime, Session, Sliding, Tumbling, Window};

pub trait Column: Send {
    /// Appends `n` rows holding no events.
    fn push_rows(&mut self, n: usize);
    fn add(&mut self, row: usize, obs: &Observation);
    fn read(&self, row: usize, at_us: i64) -> Reading;
    /// Starts loading the row's state into the cache (see [`crate::prefetch`]).
    fn prefetch(&self, row: usize);
    /// What an entity with no row reads as (0 for counts and sums, empty otherwise).
    fn read_absent(&self) -> Reading;
    /// Event time of the newest event added to the row (`i64::MIN` when none).
    fn updated_us(&self, row: usize) -> i64;
    /// Drops window state no add or read at or after `floor_us` can reach.
    fn evict(&mut self, row: usize, floor_us: i64);
    /// Empties the row, releasing its memory.
    fn reset(&mut self, row: usize);
    /// Trims every row of `rows` to `floor_us` (see [`Column::evict`]) and returns the
    /// bytes they take (inline size plus heap): one call per column for a sweep.
    fn evict_and_measure(&mut self, rows: &[usize], floor_us: i64) -> usize;
    /// Appends the rows' states, in the order given, then (for a window that
    /// keeps them) the rows' recent events in the same order.
    fn encode_rows(&self, rows: &[usize], out: &mut Vec<u8>) -> Result<(), postcard::Error>;
    /// Replaces the row with one decoded from the front of `input`; returns the rest.
    fn decode_row<'a>(&mut self, row: usize, input: &'a [u8]) -> Result<&'a [u8], postcard::Error>;
    /// Replaces the row's recent events with those at the front of `input`
    /// (what follows the rows' states in the column's block, row by row);
    /// returns the rest. `None`, for a block written before windows kept
    /// recent events: the row has none, its state holding every event.
    fn decode_recent<'a>(
        &mut self,
        row: usize,
        input: Option<&'a [u8]>,
    ) -> Result<&'a [u8], postcard::Error>;
}

/// One row of a column: the window's state and what it keeps beside it,
/// together: an update touches both, so they share their cache lines.
type Row<A, W> = (
    <W as Window>::State<<A as Aggregator>::State>,
    <W as Window>::Kept,
);

pub struct FeatureColumn<A: Aggregator, W: Window> {
    agg: A,
    window: W,
    rows: Vec<Row<A, W>>,
    updated: Vec<i64>,
}

impl<A: Aggregator, W: Window> FeatureColumn<A, W> {
    pub fn new(agg: A, window: W) -> Self {
        Self {
            agg,
            window,
            rows: Vec::new(),
            updated: Vec::new(),
        }
    }
}

impl<A: Aggregator, W: Window> Column for FeatureColumn<A, W> {
    fn push_rows(&mut self, n: usize) {
        self.rows.resize_with(self.rows.len() + n, Default::default);
        self.updated.resize(self.updated.len() + n, i64::MIN);
    }

    fn add(&mut self, row: usize, obs: &Observation) {
        let (state, kept) = &mut self.rows[row];
        self.window.add(&self.agg, state, kept, obs);
        let updated = &mut self.updated[row];
        *updated = (*updated).max(obs.time_us);
    }

    fn read(&self, row: usize, at_us: i64) -> Reading {
        let (state, kept) = &self.rows[row];
        self.window.read(&self.agg, state, kept, at_us)
    }

    fn read_absent(&self) -> Reading {
        self.agg.read(&A::State::default(), i64::MIN)
    }

    fn prefetch(&self, row: usize) {
        if let (Some(state), Some(updated)) = (self.rows.get(row), self.updated.get(row)) {
            crate::prefetch::prefetch(state);
            crate::prefetch::prefetch(updated);
        }
    }

    fn updated_us(&self, row: usize) -> i64 {
        self.updated[row]
    }

    fn evict(&mut self, row: usize, floor_us: i64) {
        let (state, kept) = &mut self.rows[row];
        self.window.evict(&self.agg, state, kept, floor_us);
    }

    fn reset(&mut self, row: usize) {
        self.rows[row] = Default::default();
        self.updated[row] = i64::MIN;
    }

    fn evict_and_measure(&mut self, rows: &[usize], floor_us: i64) -> usize {
        let inline = std::mem::size_of::<Row<A, W>>() + std::mem::size_of::<i64>();
        let mut bytes = 0;
        for &row in rows {
            let (state, kept) = &mut self.rows[row];
            self.window.evict(&self.agg, state, kept, floor_us);
            bytes += inline + self.window.heap_bytes(&self.agg, state) + kept.heap_bytes();
        }
        bytes
    }

    fn encode_rows(&self, rows: &[usize], out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        for &row in rows {
            crate::snapshot::append(&(self.updated[row], &self.rows[row].0), out)?;
        }
        // What the window keeps (nothing, for a window that keeps none) after the states.
        for &row in rows {
            crate::snapshot::append(&self.rows[row].1, out)?;
        }
        Ok(())
    }

    fn decode_row<'a>(&mut self, row: usize, input: &'a [u8]) -> Result<&'a [u8], postcard::Error> {
        let ((updated, state), rest) =
            postcard::take_from_bytes::<(i64, W::State<A::State>)>(input)?;
        self.rows[row].0 = state;
        self.updated[row] = updated;
        Ok(rest)
    }

    fn decode_recent<'a>(
        &mut self,
        row: usize,
        input: Option<&'a [u8]>,
    ) -> Result<&'a [u8], postcard::Error> {
        let kept = &mut self.rows[row].1;
        match input {
            None => {
                *kept = Default::default();
                Ok(&[])
            }
            Some(input) => {
                let (decoded, rest) = postcard::take_from_bytes::<W::Kept>(input)?;
                *kept = decoded;
                Ok(rest)
            }
        }
    }
}

/// The column a feature definition asks for. `saturated` counts `distinct_count`
/// values refused at the bound.
pub fn column_for(
    def: &FeatureDef,
    settings: &FeatureStateSettings,
    saturated: &IntCounter,
) -> Box<dyn Column> {
    match def.window {
        WindowDef::Lifetime => with_window(def, settings, saturated, Lifetime),
        WindowDef::Tumbling { size } => {
            with_window(def, settings, saturated, Tumbling::new(size.as_micros()))
        }
        WindowDef::Hopping { size, hop } => with_window(
            def,
            settings,
            saturated,
            Hopping::new(size.as_micros(), hop.as_micros()),
        ),
        WindowDef::Sliding { size, granularity } => with_window(
            def,
            settings,
            saturated,
            Sliding::new(size.as_micros(), granularity.as_micros()),
        ),
        WindowDef::Session { gap } => {
            with_window(def, settings, saturated, Session::new(gap.as_micros()))
        }
    }
}

fn with_window<W: Window>(
    def: &FeatureDef,
    settings: &FeatureStateSettings,
    saturated: &IntCounter,
    window: W,
) -> Box<dyn Column> {
    match def.aggregation {
        Aggregation::Count => Box::new(FeatureColumn::new(Count, window)),
        Aggregation::Sum => Box::new(FeatureColumn::new(Sum, window)),
        Aggregation::Mean => Box::new(FeatureColumn::new(Mean, window)),
        Aggregation::Min => Box::new(FeatureColumn::new(Min, window)),
        Aggregation::Max => Box::new(FeatureColumn::new(Max, window)),
        Aggregation::Stddev => Box::new(FeatureColumn::new(Stddev, window)),
        Aggregation::Last => Box::new(FeatureColumn::new(Last, window)),
        Aggregation::SinceLast => Box::new(FeatureColumn::new(SinceLast, window)),
        Aggregation::DistinctCount => Box::new(FeatureColumn::new(
            DistinctCount::new(def.distinct_bound(settings), saturated.clone()),
            window,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    /// Two rows of a lifetime sum: row 0 with events at minutes 10, 20 and 40
    /// (the floor at 30 settles the first two), row 1 empty.
    fn filled() -> FeatureColumn<Sum, Lifetime> {
        let mut c = FeatureColumn::new(Sum, Lifetime);
        c.push_rows(2);
        for (minute, value) in [(10, 1.0), (40, 4.0), (20, 2.0)] {
            c.add(0, &Observation::at(minute * MIN, value));
        }
        c.evict(0, 30 * MIN);
        c
    }

    fn decoded(block: &[u8], with_recent: bool) -> FeatureColumn<Sum, Lifetime> {
        let mut c = FeatureColumn::new(Sum, Lifetime);
        c.push_rows(2);
        let mut rest = block;
        for row in 0..2 {
            rest = c.decode_row(row, rest).expect("a row");
        }
        let recent = with_recent.then_some(rest);
        for row in 0..2 {
            let left = c.decode_recent(row, recent.map(|_| rest)).expect("recent");
            if recent.is_some() {
                rest = left;
            }
        }
        assert!(rest.is_empty() || !with_recent, "the block is read whole");
        c
    }

    #[test]
    fn rows_restore_with_their_recent_events() {
        let c = filled();
        let mut block = Vec::new();
        c.encode_rows(&[0, 1], &mut block).expect("encode");
        let restored = decoded(&block, true);
        for minute in [30, 39, 40, 99] {
            assert_eq!(
                restored.read(0, minute * MIN),
                c.read(0, minute * MIN),
                "minute {minute}"
            );
        }
        assert_eq!(
            restored.read(0, 35 * MIN),
            Reading::Double(3.0),
            "40 is not in yet"
        );
        assert_eq!(restored.updated_us(0), 40 * MIN);
        assert_eq!(restored.read(1, 99 * MIN), Reading::Double(0.0));
    }

    #[test]
    fn a_block_from_before_recent_events_restores_its_states_alone() {
        // What a build that kept no recent events wrote: each row's time and state.
        let c = filled();
        let mut block = Vec::new();
        for row in 0..2 {
            crate::snapshot::append(&(c.updated[row], &c.rows[row].0), &mut block).expect("encode");
        }
        let restored = decoded(&block, false);
        // Its state then held every event; here that is the settled part.
        assert_eq!(restored.read(0, 99 * MIN), Reading::Double(3.0));
        assert_eq!(restored.read(1, 99 * MIN), Reading::Double(0.0));
        // Tumbling windows keep nothing: their blocks are what they always were.
        let mut t = FeatureColumn::new(Count, Tumbling::new(10 * MIN));
        t.push_rows(1);
        t.add(0, &Observation::at(MIN, 0.0));
        let (mut new, mut old) = (Vec::new(), Vec::new());
        t.encode_rows(&[0], &mut new).expect("encode");
        crate::snapshot::append(&(t.updated[0], &t.rows[0].0), &mut old).expect("encode");
        assert_eq!(new, old);
    }
}
