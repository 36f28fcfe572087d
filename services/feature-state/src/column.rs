//! A feature's storage: one window state per row of its entity table, behind
//! one object-safe trait, so a table holds features of every aggregation and
//! window while each feature's code is compiled for its own pair.

use millrace_chassis::config::{Aggregation, FeatureDef, FeatureStateSettings, WindowDef};
use prometheus::IntCounter;

use crate::aggregate::{
    Aggregator, Count, DistinctCount, Last, Max, Mean, Min, Observation, Reading, Stddev, Sum,
};
use crate::window::{Hopping, Lifetime, Session, Sliding, Tumbling, Window};

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
    /// Appends the rows' states, in the order given.
    fn encode_rows(&self, rows: &[usize], out: &mut Vec<u8>) -> Result<(), postcard::Error>;
    /// Replaces the row with one decoded from the front of `input`; returns the rest.
    fn decode_row<'a>(&mut self, row: usize, input: &'a [u8]) -> Result<&'a [u8], postcard::Error>;
}

pub struct FeatureColumn<A: Aggregator, W: Window> {
    agg: A,
    window: W,
    states: Vec<W::State<A::State>>,
    updated: Vec<i64>,
}

impl<A: Aggregator, W: Window> FeatureColumn<A, W> {
    pub fn new(agg: A, window: W) -> Self {
        Self {
            agg,
            window,
            states: Vec::new(),
            updated: Vec::new(),
        }
    }
}

impl<A: Aggregator, W: Window> Column for FeatureColumn<A, W> {
    fn push_rows(&mut self, n: usize) {
        self.states
            .resize_with(self.states.len() + n, Default::default);
        self.updated.resize(self.updated.len() + n, i64::MIN);
    }

    fn add(&mut self, row: usize, obs: &Observation) {
        self.window.add(&self.agg, &mut self.states[row], obs);
        let updated = &mut self.updated[row];
        *updated = (*updated).max(obs.time_us);
    }

    fn read(&self, row: usize, at_us: i64) -> Reading {
        self.window.read(&self.agg, &self.states[row], at_us)
    }

    fn read_absent(&self) -> Reading {
        self.agg.read(&A::State::default())
    }

    fn prefetch(&self, row: usize) {
        if let (Some(state), Some(updated)) = (self.states.get(row), self.updated.get(row)) {
            crate::prefetch::prefetch(state);
            crate::prefetch::prefetch(updated);
        }
    }

    fn updated_us(&self, row: usize) -> i64 {
        self.updated[row]
    }

    fn evict(&mut self, row: usize, floor_us: i64) {
        self.window.evict(&mut self.states[row], floor_us);
    }

    fn reset(&mut self, row: usize) {
        self.states[row] = Default::default();
        self.updated[row] = i64::MIN;
    }

    fn evict_and_measure(&mut self, rows: &[usize], floor_us: i64) -> usize {
        let inline = std::mem::size_of::<W::State<A::State>>() + std::mem::size_of::<i64>();
        let mut bytes = 0;
        for &row in rows {
            let state = &mut self.states[row];
            self.window.evict(state, floor_us);
            bytes += inline + self.window.heap_bytes(&self.agg, state);
        }
        bytes
    }

    fn encode_rows(&self, rows: &[usize], out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        for &row in rows {
            crate::snapshot::append(&(self.updated[row], &self.states[row]), out)?;
        }
        Ok(())
    }

    fn decode_row<'a>(&mut self, row: usize, input: &'a [u8]) -> Result<&'a [u8], postcard::Error> {
        let ((updated, state), rest) =
            postcard::take_from_bytes::<(i64, W::State<A::State>)>(input)?;
        self.states[row] = state;
        self.updated[row] = updated;
        Ok(rest)
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
        Aggregation::DistinctCount => Box::new(FeatureColumn::new(
            DistinctCount::new(def.distinct_bound(settings), saturated.clone()),
            window,
        )),
    }
}
