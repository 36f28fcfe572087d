//! Actor snapshots in sled: the state an actor hands over plus the last stream
//! sequence it had applied from each stream it reads, written as one value so
//! they can never disagree.
//!
//! Record layout (little-endian):
//! `b"MRSN"` | format version u16 | sequence count u16 | each sequence u64 |
//! payload length u64 | CRC-32 of everything after the magic except the
//! checksum itself | payload.
//! A record that fails any check is refused with the reason; it is never
//! loaded as if it were state.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ChassisError;

const MAGIC: &[u8; 4] = b"MRSN";
const FORMAT_VERSION: u16 = 2;
/// Magic, version and sequence count: enough to know how long the header is.
const PREFIX_LEN: usize = 4 + 2 + 2;

fn header_len(sequences: usize) -> usize {
    PREFIX_LEN + 8 * sequences + 8 + 4
}

/// How long [`open_sled`] waits for a lock that a dropped handle still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a sled database, waiting out a file lock that is still held by a
/// handle this process just dropped: sled's flusher thread keeps the database
/// (and its lock) alive for a moment after the last `Db` goes away, so a
/// close-and-reopen would otherwise fail at random. Another process holding
/// the lock is still refused, after [`LOCK_WAIT`].
pub fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            // sled reports the lock as `Other` with the lock error in its text.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock"))
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A loaded snapshot: the state and, per stream read, the last sequence applied to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    pub sequences: Vec<u64>,
    pub state: T,
}

#[derive(Clone)]
pub struct SnapshotStore {
    db: sled::Db,
    path: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, ChassisError> {
        let path = dir.join("snapshots");
        let db = open_sled(&path).map_err(|e| ChassisError::SnapshotStore {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { db, path })
    }

    /// Writes `state` with `sequences` (one per stream read) under `key` and waits until it is on disk.
    pub fn save<T: Serialize>(
        &self,
        key: &str,
        sequences: &[u64],
        state: &T,
    ) -> Result<usize, ChassisError> {
        let payload = postcard::to_stdvec(state).map_err(|e| ChassisError::SnapshotEncode {
            key: key.into(),
            message: e.to_string(),
        })?;
        let record =
            encode_record(sequences, &payload).ok_or_else(|| ChassisError::SnapshotEncode {
                key: key.into(),
                message: format!("{} sequences, at most {}", sequences.len(), u16::MAX),
            })?;
        let len = record.len();
        self.db
            .insert(key, record)
            .map_err(|e| self.store_error(e))?;
        self.db.flush().map_err(|e| self.store_error(e))?;
        Ok(len)
    }

    /// The snapshot under `key`, `None` if there never was one.
    pub fn load<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Snapshot<T>>, ChassisError> {
        let Some(record) = self.db.get(key).map_err(|e| self.store_error(e))? else {
            return Ok(None);
        };
        let (sequences, payload) =
            decode_record(&record).map_err(|message| ChassisError::SnapshotCorrupt {
                key: key.into(),
                message,
            })?;
        let state = postcard::from_bytes(payload).map_err(|e| ChassisError::SnapshotCorrupt {
            key: key.into(),
            message: format!("state does not decode: {e}"),
        })?;
        Ok(Some(Snapshot { sequences, state }))
    }

    /// Stores raw bytes under `key`, bypassing the format (tests of corruption use it).
    pub fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<(), ChassisError> {
        self.db
            .insert(key, bytes)
            .map_err(|e| self.store_error(e))?;
        self.db.flush().map_err(|e| self.store_error(e))?;
        Ok(())
    }

    fn store_error(&self, e: sled::Error) -> ChassisError {
        ChassisError::SnapshotStore {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

fn encode_record(sequences: &[u64], payload: &[u8]) -> Option<Vec<u8>> {
    let count = u16::try_from(sequences.len()).ok()?;
    let mut out = Vec::with_capacity(header_len(sequences.len()) + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for seq in sequences {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = checksum(&out[4..], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn decode_record(record: &[u8]) -> Result<(Vec<u64>, &[u8]), String> {
    if record.len() < PREFIX_LEN {
        return Err(format!(
            "record is {} bytes, shorter than any header",
            record.len()
        ));
    }
    if &record[0..4] != MAGIC {
        return Err("not a millrace snapshot (bad magic)".into());
    }
    let version = u16::from_le_bytes([record[4], record[5]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let count = usize::from(u16::from_le_bytes([record[6], record[7]]));
    let header = header_len(count);
    if record.len() < header {
        return Err(format!(
            "record is {} bytes, shorter than its {header}-byte header",
            record.len()
        ));
    }
    let (head, payload) = record.split_at(header);
    let sequences = (0..count)
        .map(|i| le_u64(&head[PREFIX_LEN + 8 * i..]))
        .collect();
    let len_at = PREFIX_LEN + 8 * count;
    let len = le_u64(&head[len_at..]);
    if len != payload.len() as u64 {
        return Err(format!(
            "payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    let crc_at = len_at + 8;
    let stored = u32::from_le_bytes([
        head[crc_at],
        head[crc_at + 1],
        head[crc_at + 2],
        head[crc_at + 3],
    ]);
    let actual = checksum(&head[4..crc_at], payload);
    if stored != actual {
        return Err(format!(
            "checksum mismatch: stored {stored:08x}, computed {actual:08x}"
        ));
    }
    Ok((sequences, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn store() -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn open_waits_for_a_lock_this_process_is_about_to_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let held = open_sled(&path).expect("first open");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        open_sled(&path).expect("the second open waits for the first handle to go");
        release.join().expect("release thread");
    }

    #[test]
    fn state_and_sequence_round_trip_and_survive_reopen() {
        let (dir, s) = store();
        let state: BTreeMap<String, u64> = [("EWR".to_string(), 3), ("JFK".to_string(), 7)].into();
        s.save("counts", &[42, 7], &state).expect("save");
        drop(s);
        let s = SnapshotStore::open(dir.path()).expect("reopen");
        let snap = s
            .load::<BTreeMap<String, u64>>("counts")
            .expect("load")
            .expect("present");
        assert_eq!(
            snap,
            Snapshot {
                sequences: vec![42, 7],
                state
            }
        );
        assert!(s.load::<u64>("absent").expect("load").is_none());
    }

    #[test]
    fn corrupt_records_are_refused_with_the_reason() {
        let good =
            encode_record(&[9], &postcard::to_stdvec(&7u64).expect("encode")).expect("record");
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let cases: [(&str, Vec<u8>, &str); 5] = [
            (
                "truncated_header",
                good[..10].to_vec(),
                "shorter than its 28-byte header",
            ),
            (
                "truncated_payload",
                good[..good.len() - 1].to_vec(),
                "payload is",
            ),
            ("flipped_payload_bit", flipped, "checksum mismatch"),
            ("unknown_format_version", bad_version, "format version 9"),
            ("not_a_snapshot", bad_magic, "bad magic"),
        ];
        let (_dir, s) = store();
        for (name, bytes, expected) in cases {
            s.put_raw(name, &bytes).expect("put");
            let err = s.load::<u64>(name).expect_err(name).to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(
                err.contains(name),
                "{name}: error names the snapshot: {err}"
            );
        }
    }
}
