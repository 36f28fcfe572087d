//! Windows: which of an entity's events a feature summarises, as of a time `t`.
//!
//! One [`Window`] per file. Each keeps, per entity, the aggregation states its
//! reads need: lifetime one state; tumbling, hopping and sliding windows one
//! state per bucket of event time (sparse: only buckets that saw events);
//! session windows one state per session. Boundaries are aligned to the Unix
//! epoch.
//!
//! A read at `t` is strictly as of `t`: an event stamped after `t` never
//! counts, even when it was applied before the read (the stream is out of
//! order, or another partition runs ahead). That is what keeps a flight scored
//! at `t` from seeing a departure that had not happened by `t`. Tumbling and
//! hopping windows get it from their shape (they read only windows closed by
//! `t`). Lifetime, sliding and session windows keep the entity's recent events
//! as they came ([`Recent`]: those a later read may still have to leave out,
//! i.e. stamped after the floor, which no read goes below) beside their state,
//! and read them up to `t`: lifetime and session windows fold an event into
//! their state once the floor passes it; a sliding window keeps every event in
//! its buckets as well and reads the bucket holding `t` from its recent events
//! only when that bucket holds an event stamped after `t`.
//!
//! | window | value as of `t` |
//! |---|---|
//! | lifetime | every event since the entity appeared, up to `t` |
//! | tumbling(size) | the last complete window `[b−size, b)`, `b = ⌊t/size⌋·size` |
//! | hopping(size, hop) | the last complete window `[b−size, b)`, `b = ⌊t/hop⌋·hop` |
//! | sliding(size, g) | the `size/g` buckets of width `g` up to and including `t`'s, that one up to `t` |
//! | session(gap) | the session open at `t` among the events up to `t`: events less than `gap` apart, the last within `gap` before `t` |
//!
//! State is trimmed by [`Window::evict`] against a floor no later add or read
//! goes below (the lowest partition watermark), so trimming never changes a value.
//! (The first events of a partition that had seen none can lie below it: the
//! floor leaves out partitions without events, so that an idle one does not hold
//! every window's memory. Read at such a time, a window may hold events it
//! settled or trimmed by a floor later than that time.)

mod buckets;
mod hopping;
mod lifetime;
mod session;
mod sliding;
mod tumbling;

pub use buckets::Buckets;
pub use hopping::Hopping;
pub use lifetime::Lifetime;
pub use session::{Session, Sessions};
pub use sliding::Sliding;
pub use tumbling::Tumbling;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::aggregate::{AggState, Aggregator, Observation, Reading};

/// What a window keeps per entity must be plain data the store can snapshot.
pub trait WindowState: Default + Clone + Serialize + DeserializeOwned + Send + 'static {}
impl<T: Default + Clone + Serialize + DeserializeOwned + Send + 'static> WindowState for T {}

pub trait Window: Send + 'static {
    type State<S: AggState>: WindowState;

    /// What it keeps per entity beside the state to read as of a time (see
    /// the module doc): the entity's [`Recent`] events, or nothing (`()`).
    type Kept: Kept;

    /// Adds an event.
    fn add<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut Self::State<A::State>,
        kept: &mut Self::Kept,
        obs: &Observation,
    );
    /// The value as of `at_us`: the events stamped at or before it only.
    fn read<A: Aggregator>(
        &self,
        agg: &A,
        state: &Self::State<A::State>,
        kept: &Self::Kept,
        at_us: i64,
    ) -> Reading;
    /// Drops what no add or read at or after `floor_us` can reach, and settles
    /// the recent events no read at or after it can leave out.
    fn evict<A: Aggregator>(
        &self,
        agg: &A,
        state: &mut Self::State<A::State>,
        kept: &mut Self::Kept,
        floor_us: i64,
    );
    /// Heap bytes the state holds beyond its own size.
    fn heap_bytes<A: Aggregator>(&self, agg: &A, state: &Self::State<A::State>) -> usize;
}

/// What a window keeps per entity beside its state: plain data too, snapshotted
/// after the states ([`crate::column`]).
pub trait Kept: WindowState {
    /// Heap bytes it holds beyond its own size.
    fn heap_bytes(&self) -> usize;
}

/// Windows that read only windows closed by the read time keep nothing.
impl Kept for () {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Kept for Recent {
    fn heap_bytes(&self) -> usize {
        Recent::heap_bytes(self)
    }
}

/// An entity's recent events as they came, in event-time order (equal times
/// in arrival order): what lets a window leave out of a read at `t` what was
/// applied before it but stamped after `t`. Snapshotted as the sequence of
/// its events.
///
/// One event is held in place: most entities have at most one event newer
/// than the floor, and a heap buffer each cost an allocation per event. The
/// events the floor has passed leave in batches ([`Recent::take_settled`],
/// [`Recent::forget_settled`]): a busy entity's list is not shifted at every event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Recent {
    events: SmallVec<[Observation; 1]>,
}

impl Recent {
    pub fn insert(&mut self, obs: &Observation) {
        // Events mostly come in time order: then this is a push.
        match self.events.last() {
            Some(last) if last.time_us > obs.time_us => {
                let at = self.events.partition_point(|o| o.time_us <= obs.time_us);
                self.events.insert(at, *obs);
            }
            _ => self.events.push(*obs),
        }
    }

    /// How many events are stamped at or before `t`.
    fn count_through(&self, t: i64) -> usize {
        self.events.partition_point(|o| o.time_us <= t)
    }

    /// The events stamped at or before `t`.
    pub fn through(&self, t: i64) -> impl Iterator<Item = &Observation> {
        self.events[..self.count_through(t)].iter()
    }

    /// The earliest event stamped after `t`.
    pub fn first_after(&self, t: i64) -> Option<&Observation> {
        self.events.get(self.count_through(t))
    }

    /// Removes the events stamped at or before `t` and hands them over, in order.
    pub fn take_through(&mut self, t: i64) -> impl Iterator<Item = Observation> + '_ {
        let end = self.count_through(t);
        self.events.drain(..end)
    }

    /// [`Recent::take_through`] once the events it would take are all the list
    /// holds or a quarter of it, nothing before; those it leaves are still
    /// read as any recent event is.
    pub fn take_settled(&mut self, t: i64) -> impl Iterator<Item = Observation> + '_ {
        let mut end = self.count_through(t);
        if end < self.events.len() && end * 4 < self.events.len() {
            end = 0;
        }
        self.events.drain(..end)
    }

    /// Forgets the events stamped before `t`, on the terms of [`Recent::take_settled`].
    pub fn forget_settled(&mut self, t: i64) {
        let mut end = self.events.partition_point(|o| o.time_us < t);
        if end < self.events.len() && end * 4 < self.events.len() {
            end = 0;
        }
        self.events.drain(..end);
    }

    /// Gives a heap buffer back once what is left fits in place (an entity gone quiet).
    pub fn shrink(&mut self) {
        if self.events.spilled() && self.events.len() <= 1 {
            self.events.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        match self.events.spilled() {
            true => self.events.capacity() * std::mem::size_of::<Observation>(),
            false => 0,
        }
    }
}

/// `⌊t / width⌋`, also for times before 1970.
pub(crate) fn bucket_of(t: i64, width: i64) -> i64 {
    t.div_euclid(width)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::aggregate::{testing::assert_reading, Count, Sum};

    /// A window's state and what it keeps beside it for one aggregation, fed in arrival order.
    pub struct Fed<W: Window, A: Aggregator> {
        pub state: W::State<A::State>,
        pub recent: W::Kept,
    }

    impl<W: Window, A: Aggregator> Fed<W, A> {
        pub fn new(window: &W, agg: &A, events: &[(i64, f64)]) -> Self {
            let mut fed = Self {
                state: Default::default(),
                recent: Default::default(),
            };
            for &(t, v) in events {
                fed.add(window, agg, &Observation::at(t, v));
            }
            fed
        }

        pub fn add(&mut self, window: &W, agg: &A, obs: &Observation) {
            window.add(agg, &mut self.state, &mut self.recent, obs);
        }

        pub fn read(&self, window: &W, agg: &A, at: i64) -> Reading {
            window.read(agg, &self.state, &self.recent, at)
        }

        pub fn evict(&mut self, window: &W, agg: &A, floor: i64) {
            window.evict(agg, &mut self.state, &mut self.recent, floor);
        }
    }

    /// Adds events `(time, value)` in the order given and reads the sum (and count) at `at`.
    pub fn sum_at<W: Window>(window: &W, events: &[(i64, f64)], at: i64) -> (Reading, Reading) {
        (
            Fed::new(window, &Sum, events).read(window, &Sum, at),
            Fed::new(window, &Count, events).read(window, &Count, at),
        )
    }

    /// Name, events (time, value) in arrival order, read time, expected sum and count.
    pub type Case<'a> = (&'a str, &'a [(i64, f64)], i64, f64, i64);

    /// Each case: events (time, value) in arrival order, the read time, the expected sum
    /// and count. Also checks that evicting at the read time changes no value, and that
    /// the value is what the events stamped up to the read time alone give.
    pub fn check_table<W: Window>(window: &W, cases: &[Case]) {
        for &(name, events, at, sum, count) in cases {
            let (s, c) = sum_at(window, events, at);
            assert_reading(s, Reading::Double(sum), &format!("{name}: sum"));
            assert_eq!(c, Reading::Int(count), "{name}: count");
            let mut sums = Fed::new(window, &Sum, events);
            sums.evict(window, &Sum, at);
            assert_reading(
                sums.read(window, &Sum, at),
                Reading::Double(sum),
                &format!("{name}: after evicting at the read time"),
            );
            let known: Vec<(i64, f64)> = events.iter().copied().filter(|e| e.0 <= at).collect();
            assert_reading(
                Fed::new(window, &Sum, &known).read(window, &Sum, at),
                Reading::Double(sum),
                &format!("{name}: the events stamped up to the read time alone"),
            );
        }
    }

    /// A small deterministic generator for the as-of property below.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n.max(1)
        }
    }

    /// Streams out of order by up to `lateness` (what the watermark lets in),
    /// with reads at the time of events as they arrive and evictions at the
    /// floor as the store does them: every read equals a read of a state fed
    /// only the events stamped up to it, whatever arrived before.
    pub fn check_as_of<W: Window>(window: &W, lateness: i64) {
        for seed in 1..=40u64 {
            let mut rng = Lcg(seed);
            let mut arrivals: Vec<(i64, f64)> = Vec::new();
            let mut t = 0i64;
            for _ in 0..60 {
                t += rng.below(7) as i64;
                let jitter = rng.below(lateness as u64 + 1) as i64;
                arrivals.push((t - jitter, rng.below(100) as f64));
            }
            let mut sums = Fed::new(window, &Sum, &[]);
            let mut counts = Fed::new(window, &Count, &[]);
            let mut newest = i64::MIN;
            for (i, &(at, v)) in arrivals.iter().enumerate() {
                sums.add(window, &Sum, &Observation::at(at, v));
                counts.add(window, &Count, &Observation::at(at, v));
                newest = newest.max(at);
                let floor = newest - lateness;
                sums.evict(window, &Sum, floor);
                counts.evict(window, &Count, floor);
                let known: Vec<(i64, f64)> = arrivals[..=i]
                    .iter()
                    .copied()
                    .filter(|e| e.0 <= at)
                    .collect();
                let what = format!("seed {seed}, read {i} at {at}");
                assert_reading(
                    sums.read(window, &Sum, at),
                    Fed::new(window, &Sum, &known).read(window, &Sum, at),
                    &format!("{what}: sum"),
                );
                assert_eq!(
                    counts.read(window, &Count, at),
                    Fed::new(window, &Count, &known).read(window, &Count, at),
                    "{what}: count"
                );
            }
        }
    }

    #[test]
    fn recent_events_stay_in_time_order_and_leave_from_the_front() {
        let mut r = Recent::default();
        for t in [5, 3, 9, 5, 1] {
            r.insert(&Observation::at(t, t as f64));
        }
        let times = |r: &Recent| r.through(i64::MAX).map(|o| o.time_us).collect::<Vec<_>>();
        assert_eq!(times(&r), vec![1, 3, 5, 5, 9]);
        assert_eq!(r.through(5).count(), 4);
        assert_eq!(r.first_after(5).map(|o| o.time_us), Some(9));
        assert_eq!(r.first_after(9), None);
        let taken: Vec<i64> = r.take_through(3).map(|o| o.time_us).collect();
        assert_eq!(taken, vec![1, 3]);
        // Two of three settled: they go; then one of five waits for more.
        assert_eq!(r.take_settled(5).count(), 2);
        r.insert(&Observation::at(10, 0.0));
        r.insert(&Observation::at(11, 0.0));
        r.insert(&Observation::at(12, 0.0));
        r.insert(&Observation::at(13, 0.0));
        r.forget_settled(10);
        assert_eq!(times(&r), vec![9, 10, 11, 12, 13], "one of five waits");
        assert!(r.heap_bytes() > 0);
        r.forget_settled(20);
        r.shrink();
        assert_eq!((r.len(), r.heap_bytes()), (0, 0));
        let bytes = postcard::to_stdvec(&r).expect("encode");
        assert_eq!(bytes, vec![0], "an empty list is one byte in a snapshot");
        r.insert(&Observation::at(1, 2.0));
        assert_eq!(r.heap_bytes(), 0, "one event is held in place");
    }
}
