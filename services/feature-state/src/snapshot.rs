//! What feature-state hands the stage loop to snapshot: its whole state as one
//! byte string, encoded straight from the tables (no copy of the state is
//! made), which the chassis stores with the stream sequence.
//!
//! Layout: `b"MRFS"`, format version (u8), a postcard header (watermarks,
//! partition count, the entity kinds with their features' names and
//! fingerprints), then per partition and entity kind one block: row count
//! (u64 LE), key block (length u64 LE, then each entity's key and newest event
//! time), and per feature a column block (length u64 LE, then each row's newest
//! update time and window state, postcard, and for windows that keep recent
//! events each row's list of them: a block written before they were kept
//! ends with the states, and its rows restore with none). Blocks carry their
//! lengths so a restore can skip what it no longer declares.
//!
//! A record of changes (`b"MRFC"`) has the same layout over only the rows
//! updated since the previous snapshot, and before each block's keys the
//! entities freed since then (a block: length u64 LE, then postcard keys). The
//! chassis keeps it in a chain after the last whole state; restoring applies
//! the chain in order, each change replacing its entity's row whole. A whole
//! state starts a new chain once the changes reach half its size or
//! [`MAX_CHANGE_RECORDS`] records.
//!
//! Restoring is forgiving about the pipeline file and strict about bytes: a
//! feature restores only into a feature of the same name whose definition did
//! not change (same fingerprint); others start empty and are logged (the stream
//! is not replayed to backfill them). Entities move to the partition their key
//! hashes to now, so the partition count may change. Bytes that do not decode
//! are an error naming what failed.

use std::collections::HashMap;

use millrace_chassis::stage::{Part, Taken};
use serde::{Deserialize, Serialize};

use crate::store::FeatureStore;
use crate::watermark::Watermarks;

const MAGIC: &[u8; 4] = b"MRFS";
const CHANGES_MAGIC: &[u8; 4] = b"MRFC";
const VERSION: u8 = 1;

/// A chain's changes may add up to this share of its whole state before the
/// next snapshot is whole again, so a restore reads at most 1.5× the state.
const CHANGES_PER_WHOLE: f64 = 0.5;
/// And a chain holds at most this many records of changes, so that a quiet
/// stream's small changes do not pile up files for a restore to read.
pub(crate) const MAX_CHANGE_RECORDS: usize = 256;

/// What the stored chain holds, to choose the next snapshot's part.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChainSize {
    /// Bytes of the chain's whole state; `None` before the first.
    whole: Option<usize>,
    /// Bytes of the changes stored after it, and how many records they are.
    changes: usize,
    records: usize,
}

/// How long a whole sweep takes: a sweep walks every row, so with many
/// entities it is spread over [`SWEEP_SLICES`] snapshots at least a tenth of
/// that apart.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Snapshots a whole sweep is spread over.
pub const SWEEP_SLICES: usize = 10;

/// The magic that starts a record of `part`.
fn magic(part: Part) -> &'static [u8; 4] {
    match part {
        Part::Whole => MAGIC,
        Part::Changes => CHANGES_MAGIC,
    }
}

/// Bytes per entity a first snapshot reserves room for (the bench's ten
/// features take about 250).
const FIRST_GUESS_BYTES_PER_ROW: usize = 512;

/// Postcard's output appended to a `Vec` as slices and bytes: its
/// `to_extend` goes through `Extend`, one iterator per value written.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Serializes `value` onto the end of `out`: every part of a snapshot record is written this way.
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(out))
}

/// The encoded state; empty means a fresh start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedState(pub Vec<u8>);

impl Serialize for EncodedState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for EncodedState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = EncodedState;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("feature-state bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<EncodedState, E> {
                Ok(EncodedState(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<EncodedState, E> {
                Ok(EncodedState(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("feature-state snapshot: {0}")]
    Format(String),
    #[error("feature-state snapshot: {what}: {source}")]
    Decode {
        what: String,
        source: postcard::Error,
    },
    #[error("feature-state snapshot: encoding {what}: {source}")]
    Encode {
        what: String,
        source: postcard::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Header {
    watermarks: Watermarks,
    partitions: u32,
    kinds: Vec<KindHeader>,
}

#[derive(Serialize, Deserialize)]
struct KindHeader {
    name: String,
    /// (feature name, fingerprint), in column order.
    columns: Vec<(String, u64)>,
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub entities: usize,
    /// Features that start empty: new, or changed since the snapshot.
    pub started_empty: Vec<String>,
    /// Features of the snapshot no longer declared.
    pub dropped: Vec<String>,
}

impl FeatureStore {
    /// Encodes what changed since the last snapshot, or the whole state when
    /// there is none yet or the changes stored after it have grown to
    /// [`CHANGES_PER_WHOLE`] of it. Sweeps a slice of the state first when
    /// one is due (expired entities out, windows trimmed, memory measured): a
    /// sweep changes no value, only memory and the gauges.
    pub fn snapshot(&mut self) -> Result<Taken<EncodedState>, SnapshotError> {
        self.sweep_slice_if_due();
        let chain = &mut self.chain;
        let taken = match chain.whole {
            Some(whole)
                if (chain.changes as f64) < whole as f64 * CHANGES_PER_WHOLE
                    && chain.records < MAX_CHANGE_RECORDS =>
            {
                let state = self.encode_part(Part::Changes)?;
                self.chain.changes += state.0.len();
                self.chain.records += 1;
                Taken::changes(state)
            }
            _ => {
                let state = self.encode_part(Part::Whole)?;
                self.chain = ChainSize {
                    whole: Some(state.0.len()),
                    changes: 0,
                    records: 0,
                };
                Taken::whole(state)
            }
        };
        for partition in &mut self.partitions {
            for table in &mut partition.tables {
                table.forget_changes();
            }
        }
        Ok(taken)
    }

    /// Encodes the whole state as it is.
    pub fn encode(&mut self) -> Result<EncodedState, SnapshotError> {
        self.encode_part(Part::Whole)
    }

    fn encode_part(&mut self, part: Part) -> Result<EncodedState, SnapshotError> {
        let rows: Vec<Vec<Vec<usize>>> = self
            .partitions
            .iter()
            .map(|p| {
                p.tables
                    .iter()
                    .map(|table| match part {
                        Part::Whole => table.live_rows(),
                        Part::Changes => table.changed_rows(),
                    })
                    .collect()
            })
            .collect();
        let row_count: usize = rows.iter().flatten().map(Vec::len).sum();
        // Sized from the last snapshot, with room for windows that filled
        // since: growing by doubling copied the record again and again, and
        // capacity never written to costs no memory, only address space.
        let per_row = match self.snapshot_bytes_per_row {
            0 => FIRST_GUESS_BYTES_PER_ROW,
            known => known,
        };
        let expected = row_count * per_row;
        let mut out = Vec::with_capacity(expected + expected / 2 + 4096);
        out.extend_from_slice(magic(part));
        out.push(VERSION);
        let header = Header {
            watermarks: self.watermarks.clone(),
            partitions: self.spec.partitions,
            kinds: self
                .kinds
                .iter()
                .enumerate()
                .map(|(k, kind)| KindHeader {
                    name: kind.name().to_string(),
                    columns: self
                        .features
                        .iter()
                        .filter(|f| f.kind == k)
                        .map(|f| (f.def.name.clone(), f.fingerprint))
                        .collect(),
                })
                .collect(),
        };
        append(&header, &mut out).map_err(|source| SnapshotError::Encode {
            what: "header".into(),
            source,
        })?;
        for (partition, rows) in self.partitions.iter().zip(&rows) {
            for (table, rows) in partition.tables.iter().zip(rows) {
                let keys = table.keys_of(rows);
                out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
                if part == Part::Changes {
                    let block = begin_block(&mut out);
                    for key in table.removed() {
                        append(key, &mut out).map_err(|source| SnapshotError::Encode {
                            what: format!("removed entity {key}"),
                            source,
                        })?;
                    }
                    end_block(&mut out, block);
                }
                let block = begin_block(&mut out);
                for (key, seen) in &keys {
                    append(&(key, seen), &mut out).map_err(|source| SnapshotError::Encode {
                        what: format!("entity {key}"),
                        source,
                    })?;
                }
                end_block(&mut out, block);
                for (c, column) in table.columns().iter().enumerate() {
                    let block = begin_block(&mut out);
                    column
                        .encode_rows(rows, &mut out)
                        .map_err(|source| SnapshotError::Encode {
                            what: format!("column {c}"),
                            source,
                        })?;
                    end_block(&mut out, block);
                }
            }
        }
        if let Some(per_row) = out.len().checked_div(row_count) {
            self.snapshot_bytes_per_row = per_row;
        }
        Ok(EncodedState(out))
    }

    /// The store for `spec` with the state a chain of snapshots encodes: a
    /// whole state, then records of changes (a fresh store for none).
    pub fn restore(mut self, chain: &[EncodedState]) -> Result<(Self, Restored), SnapshotError> {
        let mut restored = Restored::default();
        let Some((whole, changes)) = chain.split_first() else {
            return Ok((self, restored));
        };
        if whole.0.is_empty() && changes.is_empty() {
            return Ok((self, restored));
        }
        restored = self.apply_record(&whole.0, Part::Whole)?;
        for (i, record) in changes.iter().enumerate() {
            self.apply_record(&record.0, Part::Changes)
                .map_err(|e| SnapshotError::Format(format!("record {} of changes: {e}", i + 1)))?;
        }
        self.chain = ChainSize {
            whole: Some(whole.0.len()),
            changes: changes.iter().map(|c| c.0.len()).sum(),
            records: changes.len(),
        };
        restored.entities = self
            .partitions
            .iter()
            .flat_map(|p| &p.tables)
            .map(|t| t.len())
            .sum();
        self.sweep();
        Ok((self, restored))
    }

    /// Applies one record of a chain: what it restored and what it left out.
    fn apply_record(&mut self, bytes: &[u8], part: Part) -> Result<Restored, SnapshotError> {
        let mut restored = Restored::default();
        let rest = bytes.strip_prefix(magic(part).as_slice()).ok_or_else(|| {
            SnapshotError::Format(format!("not feature-state {part:?} bytes (bad magic)"))
        })?;
        let (&version, rest) = rest
            .split_first()
            .ok_or_else(|| SnapshotError::Format("truncated before the version".into()))?;
        if version != VERSION {
            return Err(SnapshotError::Format(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let (header, mut input) =
            postcard::take_from_bytes::<Header>(rest).map_err(|source| SnapshotError::Decode {
                what: "header".into(),
                source,
            })?;
        self.watermarks = header
            .watermarks
            .with_lateness(self.spec.settings.allowed_lateness.as_micros());

        // For each kind of the snapshot: the current kind and, per column, the current column.
        let mut placement: Vec<Option<(usize, Vec<Option<usize>>)>> = Vec::new();
        let mut kept = HashMap::new();
        for kind in &header.kinds {
            let current = self.kinds.iter().position(|k| k.name() == kind.name);
            let columns = kind
                .columns
                .iter()
                .map(|(name, fp)| {
                    let target = current.and_then(|k| {
                        self.features
                            .iter()
                            .find(|f| f.kind == k && &f.def.name == name && f.fingerprint == *fp)
                    });
                    match target {
                        Some(f) => {
                            kept.insert(f.def.name.clone(), ());
                            Some(f.column)
                        }
                        None => {
                            restored.dropped.push(name.clone());
                            None
                        }
                    }
                })
                .collect();
            placement.push(current.map(|k| (k, columns)));
        }
        restored.started_empty = self
            .features
            .iter()
            .filter(|f| !kept.contains_key(&f.def.name))
            .map(|f| f.def.name.clone())
            .collect();
        restored
            .dropped
            .retain(|name| !self.features.iter().any(|f| &f.def.name == name));

        for p in 0..header.partitions {
            for (k, place) in placement.iter().enumerate() {
                let what = || format!("partition {p}, entity kind {}", header.kinds[k].name);
                let (rows, mut rest) = take_u64(input).ok_or_else(|| {
                    SnapshotError::Format(format!("{}: truncated row count", what()))
                })?;
                let mut removed: &[u8] = &[];
                if part == Part::Changes {
                    (removed, rest) = take_block(rest).ok_or_else(|| {
                        SnapshotError::Format(format!("{}: truncated removals", what()))
                    })?;
                }
                let (keys, rest) = take_block(rest)
                    .ok_or_else(|| SnapshotError::Format(format!("{}: truncated keys", what())))?;
                input = rest;
                let Some((kind, columns)) = place else {
                    for _ in &header.kinds[k].columns {
                        let (_, rest) = take_block(input).ok_or_else(|| {
                            SnapshotError::Format(format!("{}: truncated column", what()))
                        })?;
                        input = rest;
                    }
                    continue;
                };
                while !removed.is_empty() {
                    let (key, rest) =
                        postcard::take_from_bytes::<&str>(removed).map_err(|source| {
                            SnapshotError::Decode {
                                what: format!("{}: removed entity", what()),
                                source,
                            }
                        })?;
                    removed = rest;
                    let partition = self.partition_of_key(key);
                    self.partitions[partition].tables[*kind].remove(key);
                }
                let rows = usize::try_from(rows)
                    .map_err(|_| SnapshotError::Format(format!("{}: row count", what())))?;
                let mut targets = Vec::with_capacity(rows.min(keys.len()));
                let mut keys = keys;
                for _ in 0..rows {
                    let ((key, seen), rest) = postcard::take_from_bytes::<(&str, i64)>(keys)
                        .map_err(|source| SnapshotError::Decode {
                            what: format!("{}: entity key", what()),
                            source,
                        })?;
                    keys = rest;
                    let partition = self.partition_of_key(key);
                    let table = &mut self.partitions[partition].tables[*kind];
                    if targets.is_empty() {
                        table.reserve(rows / self.spec.partitions.max(1) as usize);
                    }
                    targets.push((partition, table.restore(key, seen)));
                }
                for (c, column) in columns.iter().enumerate() {
                    let (mut block, rest) = take_block(input).ok_or_else(|| {
                        SnapshotError::Format(format!("{}: truncated column", what()))
                    })?;
                    input = rest;
                    let Some(column) = column else { continue };
                    let decode_error = |source| SnapshotError::Decode {
                        what: format!("{}: feature {}", what(), header.kinds[k].columns[c].0),
                        source,
                    };
                    for &(partition, row) in &targets {
                        let table = &mut self.partitions[partition].tables[*kind];
                        block = table.columns_mut()[*column]
                            .decode_row(row, block)
                            .map_err(decode_error)?;
                    }
                    // Recent events follow the states; a block from before they
                    // were kept ends with the states.
                    let recent = (!block.is_empty()).then_some(block);
                    for &(partition, row) in &targets {
                        let table = &mut self.partitions[partition].tables[*kind];
                        let rest = table.columns_mut()[*column]
                            .decode_recent(row, recent.map(|_| block))
                            .map_err(decode_error)?;
                        if recent.is_some() {
                            block = rest;
                        }
                    }
                }
            }
        }
        if !input.is_empty() {
            return Err(SnapshotError::Format(format!(
                "{} bytes left over after the last block",
                input.len()
            )));
        }
        Ok(restored)
    }
}

fn begin_block(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 8]);
    out.len()
}

fn end_block(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u64;
    out[start - 8..start].copy_from_slice(&len.to_le_bytes());
}

fn take_u64(input: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = input.split_at_checked(8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    Some((u64::from_le_bytes(b), rest))
}

fn take_block(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_u64(input)?;
    rest.split_at_checked(usize::try_from(len).ok()?)
}
