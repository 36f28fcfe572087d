//! A partition of feature state: for each entity kind (`origin`,
//! `origin+dest`, …), the table of the entities that hash to this partition,
//! one row per entity and one column per feature kept for that kind.
//!
//! Rows follow the entity's TTL in event time: an entity whose newest event is
//! more than `ttl` before the time it is touched or read at is treated as
//! absent (and restarts empty when touched); [`EntityTable::sweep`] frees such
//! rows once no later add or read could see them, so sweeping never changes a
//! value.
//!
//! A table also remembers what changed since it was last snapshotted (rows
//! updated, entities freed), so a snapshot of a large state can hold only that.

use std::hash::BuildHasher as _;

use compact_str::CompactString;
use hashbrown::HashTable;

use crate::aggregate::{Observation, Reading};
use crate::column::Column;

/// Marks a row that holds no entity.
const FREE: i64 = i64::MIN;

pub struct EntityTable {
    /// Per entity, its key's hash and its row; the key itself is in `row_keys`.
    /// With the hash in the entry, a lookup reads no other entity's key, and
    /// [`EntityTable::row_by_hash`] finds a row without reading any key.
    index: HashTable<(u64, u32)>,
    hasher: foldhash::fast::RandomState,
    /// Bytes of the keys too long to be held inline in `row_keys`.
    key_bytes: usize,
    /// Per row: the newest event time of the entity (`FREE` for a free row).
    last_seen: Vec<i64>,
    /// Per row: the entity's key (empty for a free row).
    row_keys: Vec<CompactString>,
    free: Vec<u32>,
    columns: Vec<Box<dyn Column>>,
    /// Rows updated since [`EntityTable::forget_changes`], each once, and which rows they are.
    changed: Vec<u32>,
    is_changed: Vec<bool>,
    /// Entities freed since then.
    removed: Vec<Box<str>>,
}

/// What a sweep found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub rows: usize,
    pub bytes: usize,
}

impl std::ops::AddAssign for Sweep {
    fn add_assign(&mut self, other: Self) {
        self.expired += other.expired;
        self.rows += other.rows;
        self.bytes += other.bytes;
    }
}

impl EntityTable {
    pub fn new(columns: Vec<Box<dyn Column>>) -> Self {
        Self {
            index: HashTable::new(),
            hasher: Default::default(),
            key_bytes: 0,
            last_seen: Vec::new(),
            row_keys: Vec::new(),
            free: Vec::new(),
            columns,
            changed: Vec::new(),
            is_changed: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn columns(&self) -> &[Box<dyn Column>] {
        &self.columns
    }

    pub fn columns_mut(&mut self) -> &mut [Box<dyn Column>] {
        &mut self.columns
    }

    /// The row of `key` ready for an event at `t`: created, or emptied when the
    /// entity had expired, and stamped with `t`.
    pub fn row_for_update(&mut self, key: &str, t: i64, ttl_us: i64) -> usize {
        let hash = self.hasher.hash_one(key);
        let row = match self.find(hash, key) {
            Some(row) => {
                let seen = &mut self.last_seen[row];
                if t.saturating_sub(*seen) > ttl_us {
                    *seen = t;
                    for c in &mut self.columns {
                        c.reset(row);
                    }
                } else {
                    *seen = (*seen).max(t);
                }
                row
            }
            None => self.insert(hash, key, t),
        };
        if !self.is_changed[row] {
            self.is_changed[row] = true;
            self.changed.push(row as u32);
        }
        row
    }

    /// The row holding `key`, whose hash is `hash`.
    fn find(&self, hash: u64, key: &str) -> Option<usize> {
        self.index
            .find(hash, holds(&self.row_keys, hash, key))
            .map(|&(_, row)| row as usize)
    }

    fn insert(&mut self, hash: u64, key: &str, t: i64) -> usize {
        let row = self.allocate(t);
        self.index
            .insert_unique(hash, (hash, row as u32), |&(h, _)| h);
        let key = CompactString::new(key);
        self.key_bytes += heap_bytes(&key);
        self.row_keys[row] = key;
        row
    }

    fn allocate(&mut self, t: i64) -> usize {
        if let Some(row) = self.free.pop() {
            self.last_seen[row as usize] = t;
            return row as usize;
        }
        self.last_seen.push(t);
        self.row_keys.push(CompactString::default());
        self.is_changed.push(false);
        for c in &mut self.columns {
            c.push_rows(1);
        }
        self.last_seen.len() - 1
    }

    /// Frees the entity's row, if it has one (a restore applying a removal).
    pub fn remove(&mut self, key: &str) {
        let hash = self.hasher.hash_one(key);
        let found = self
            .index
            .find_entry(hash, holds(&self.row_keys, hash, key));
        let Ok(entry) = found else {
            return;
        };
        let ((_, row), _) = entry.remove();
        self.key_bytes -= heap_bytes(&self.row_keys[row as usize]);
        self.free_row(row);
    }

    fn free_row(&mut self, row: u32) {
        let r = row as usize;
        self.last_seen[r] = FREE;
        self.row_keys[r] = CompactString::default();
        for c in &mut self.columns {
            c.reset(r);
        }
        self.free.push(row);
    }

    pub fn add(&mut self, row: usize, column: usize, obs: &Observation) {
        self.columns[column].add(row, obs);
    }

    /// The row of `key` if the entity is alive at `at`.
    pub fn live_row(&self, key: &str, at: i64, ttl_us: i64) -> Option<usize> {
        let row = self.find(self.hasher.hash_one(key), key)?;
        (at.saturating_sub(self.last_seen[row]) <= ttl_us).then_some(row)
    }

    /// The hash the index keeps for `key` (see [`EntityTable::row_by_hash`]).
    pub fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The row of the first entity whose key hashes to `hash`, without
    /// reading a key: for prefetching only (a wrong row, once in 2^64, costs
    /// a useless prefetch).
    pub fn row_by_hash(&self, hash: u64) -> Option<usize> {
        self.index
            .find(hash, |&(h, _)| h == hash)
            .map(|&(_, row)| row as usize)
    }

    /// Starts loading what an update or read of `row` touches into the cache.
    pub fn prefetch_row(&self, row: usize) {
        if let (Some(seen), Some(changed), Some(key)) = (
            self.last_seen.get(row),
            self.is_changed.get(row),
            self.row_keys.get(row),
        ) {
            crate::prefetch::prefetch(seen);
            crate::prefetch::prefetch(changed);
            crate::prefetch::prefetch(key);
        }
        for c in &self.columns {
            c.prefetch(row);
        }
    }

    pub fn read(&self, row: usize, column: usize, at: i64) -> Reading {
        self.columns[column].read(row, at)
    }

    /// Trims the row's windows to `floor`.
    pub fn evict(&mut self, row: usize, floor: i64) {
        for c in &mut self.columns {
            c.evict(row, floor);
        }
    }

    /// Frees the rows of entities last seen before `expire_before`, trims the
    /// others' windows to `floor`, and measures what is left.
    pub fn sweep(&mut self, expire_before: i64, floor: i64) -> Sweep {
        let mut sweep = self.sweep_rows(0..self.row_count(), expire_before, floor);
        sweep.bytes += self.table_bytes();
        sweep
    }

    /// Rows of the table, free ones included: the range sweeps walk.
    pub fn row_count(&self) -> usize {
        self.last_seen.len()
    }

    /// [`EntityTable::sweep`] over `rows` only, so that a large table can be
    /// swept a slice at a time; measures the rows' states, not
    /// [`EntityTable::table_bytes`].
    pub fn sweep_rows(
        &mut self,
        rows: std::ops::Range<usize>,
        expire_before: i64,
        floor: i64,
    ) -> Sweep {
        let rows = rows.start.min(self.row_count())..rows.end.min(self.row_count());
        let mut sweep = Sweep::default();
        let mut live = Vec::with_capacity(rows.len());
        for row in rows {
            let seen = self.last_seen[row];
            if seen == FREE {
                continue;
            }
            if seen >= expire_before {
                live.push(row);
                continue;
            }
            let key = std::mem::take(&mut self.row_keys[row]);
            let hash = self.hasher.hash_one(key.as_str());
            if let Ok(entry) = self.index.find_entry(hash, |&(_, r)| r as usize == row) {
                entry.remove();
            }
            self.key_bytes -= heap_bytes(&key);
            self.free_row(row as u32);
            self.removed.push(key.as_str().into());
            sweep.expired += 1;
        }
        // Column by column, rows in order: the states are read front to back.
        for c in &mut self.columns {
            sweep.bytes += c.evict_and_measure(&live, floor);
        }
        sweep.rows = live.len();
        sweep
    }

    /// What the table takes besides its rows' states: index entries (hash
    /// and row, and a control byte), per row its time, key and changed flag,
    /// and the keys too long to be inline.
    pub fn table_bytes(&self) -> usize {
        self.key_bytes
            + self.index.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.last_seen.capacity()
                * (std::mem::size_of::<i64>() + std::mem::size_of::<CompactString>() + 1)
    }

    /// Adds an entity restored from a snapshot, or replaces it when a record
    /// of changes names it again; returns its row, to decode its columns into.
    pub fn restore(&mut self, key: &str, last_seen: i64) -> usize {
        let hash = self.hasher.hash_one(key);
        match self.find(hash, key) {
            Some(row) => {
                self.last_seen[row] = last_seen;
                row
            }
            None => self.insert(hash, key, last_seen),
        }
    }

    /// The rows holding an entity, ascending (the order snapshots encode them in,
    /// so columns are read front to back).
    pub fn live_rows(&self) -> Vec<usize> {
        (0..self.last_seen.len())
            .filter(|&r| self.last_seen[r] != FREE)
            .collect()
    }

    /// The rows updated since the changes were last forgotten that still hold
    /// an entity, ascending.
    pub fn changed_rows(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self
            .changed
            .iter()
            .map(|&r| r as usize)
            .filter(|&r| self.last_seen[r] != FREE)
            .collect();
        rows.sort_unstable();
        rows
    }

    /// The entities freed since the changes were last forgotten.
    pub fn removed(&self) -> &[Box<str>] {
        &self.removed
    }

    /// Starts counting changes afresh: a snapshot now holds everything so far.
    pub fn forget_changes(&mut self) {
        for &row in &self.changed {
            self.is_changed[row as usize] = false;
        }
        self.changed.clear();
        self.removed.clear();
    }

    /// The entity and newest event time of each of `rows`.
    pub fn keys_of(&self, rows: &[usize]) -> Vec<(&str, i64)> {
        rows.iter()
            .map(|&r| (self.row_keys[r].as_str(), self.last_seen[r]))
            .collect()
    }

    pub fn reserve(&mut self, rows: usize) {
        self.index.reserve(rows, |&(h, _)| h);
        self.last_seen.reserve(rows);
        self.row_keys.reserve(rows);
        self.is_changed.reserve(rows);
    }
}

/// Whether an index entry is `key`'s, whose hash is `hash`.
fn holds<'a>(
    row_keys: &'a [CompactString],
    hash: u64,
    key: &'a str,
) -> impl Fn(&(u64, u32)) -> bool + 'a {
    move |&(h, row)| h == hash && row_keys[row as usize] == key
}

/// Heap bytes of a key (none when it is held inline).
fn heap_bytes(key: &CompactString) -> usize {
    if key.is_heap_allocated() {
        key.capacity()
    } else {
        0
    }
}

/// One partition: a table per entity kind, in the store's kind order.
pub struct PartitionState {
    pub tables: Vec<EntityTable>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;
    use crate::column::FeatureColumn;
    use crate::window::Lifetime;

    /// Name, events (key, time), the read (key, time), what it reads.
    type TtlCase<'a> = (
        &'a str,
        &'a [(&'a str, i64)],
        (&'a str, i64),
        Option<Reading>,
    );

    fn table() -> EntityTable {
        EntityTable::new(vec![Box::new(FeatureColumn::new(Count, Lifetime))])
    }

    fn touch(t: &mut EntityTable, key: &str, at: i64) {
        let row = t.row_for_update(key, at, 100);
        t.add(row, 0, &Observation::at(at, 0.0));
    }

    #[test]
    fn ttl_table() {
        // TTL 100. Each case: events (key, time), then a read of key at a time.
        let cases: [TtlCase; 6] = [
            (
                "seen_entity_counts",
                &[("a", 0), ("a", 50)],
                ("a", 60),
                Some(Reading::Int(2)),
            ),
            ("never_seen_is_absent", &[("a", 0)], ("b", 0), None),
            (
                "alive_exactly_at_ttl",
                &[("a", 0)],
                ("a", 100),
                Some(Reading::Int(1)),
            ),
            ("expired_past_ttl", &[("a", 0)], ("a", 101), None),
            (
                "touch_after_expiry_starts_empty",
                &[("a", 0), ("a", 10), ("a", 500)],
                ("a", 500),
                Some(Reading::Int(1)),
            ),
            (
                "out_of_order_touch_keeps_newest",
                &[("a", 200), ("a", 150)],
                ("a", 300),
                Some(Reading::Int(2)),
            ),
        ];
        for (name, events, (key, at), expected) in cases {
            let mut t = table();
            for &(k, time) in events {
                touch(&mut t, k, time);
            }
            let got = t.live_row(key, at, 100).map(|r| t.read(r, 0, at));
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn sweep_frees_expired_rows_for_reuse() {
        let mut t = table();
        touch(&mut t, "old", 0);
        touch(&mut t, "new", 500);
        let sweep = t.sweep(500 - 100, 400);
        assert_eq!((sweep.expired, sweep.rows), (1, 1));
        assert!(t.live_row("old", 500, 100).is_none());
        touch(&mut t, "again", 510);
        assert_eq!(t.last_seen.len(), 2, "the freed row is reused");
        let row = t.live_row("again", 510, 100).expect("alive");
        assert_eq!(
            t.read(row, 0, 510),
            Reading::Int(1),
            "a reused row starts empty"
        );
    }
}
